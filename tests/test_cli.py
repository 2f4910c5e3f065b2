"""The ``asd-ray`` command's habits: --version, --help with examples, exit codes, quiet output."""

import logging
import warnings

import pytest

from asd_ray import __version__, cli, console


def test_version_and_help_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"asd-ray {__version__}"
    for command in cli.EXAMPLES:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"asd-ray {command}" in text and "--verbose" in text, command


def test_bad_config_and_bad_input_exit_2_with_what_was_expected(ray_local, tmp_path, capsys):
    assert cli.main(["train", "epochs=-1"]) == cli.BAD_INPUT
    assert "epochs" in capsys.readouterr().err
    missing = tmp_path / "nothing-here"
    assert cli.main(["train", f"data={missing}", "tracking=false"]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert "asd-ray train:" in err and str(missing) in err and "Traceback" not in err


def test_ray_console_lines_filtered_warnings_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "SEEN_WARNINGS", tmp_path / "seen")
    quiet = console._QuietRay()

    def record(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, "f.py", 1, msg, None, None)

    assert not quiet.filter(record("ray.data._internal.execution.streaming_executor", logging.INFO, "Execution plan"))
    assert not quiet.filter(record("ray.train", logging.INFO, "Reporting training result 1"))
    assert quiet.filter(record("ray.data._internal.progress.logging_progress", logging.INFO, "Total Progress: 5/9"))
    assert not quiet.filter(record("ray.data._internal.progress.logging_progress", logging.INFO, "ListFiles: 0/1"))
    assert quiet.filter(record("asd_ray.score", logging.INFO, "ours"))  # other loggers untouched
    warning = record("ray._private.authentication", logging.WARNING, "Token authentication is enabled")
    assert quiet.filter(warning) and not quiet.filter(warning)  # once, then not on later runs
    assert quiet.filter(record("ray.data", logging.WARNING, "another warning"))
    error = record("ray.train", logging.ERROR, "worker died")
    assert quiet.filter(error) and quiet.filter(error)  # errors always

    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: shown.append(str(message)))
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    console.show_ray_warnings_once()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for _ in range(2):
            warnings.warn_explicit("deprecated in Ray", DeprecationWarning, "/x/site-packages/ray/data/a.py", 1)
            warnings.warn_explicit("ours", UserWarning, "/x/asd_ray/score.py", 1)
    assert shown == ["deprecated in Ray", "ours", "ours"]


def test_verbose_keeps_rays_own_logging(monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert "configure_logging" not in console.ray_init_options()
    assert console.train_logging_config().log_level == "INFO"
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    assert console.ray_init_options()["configure_logging"] is False
    assert console.train_logging_config().log_level == "WARNING"


def test_a_submitted_jobs_own_runtime_env_wins_where_both_set_a_key(monkeypatch):
    """Ray refuses to merge runtime envs that set the same key: ours gives way to the job's."""
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": '
                                                      '{"ASD_RAY_VERBOSE": "1"}, "worker_process_setup_hook": "m.f"}}')
    env = console.ray_init_options()["runtime_env"]
    assert env == {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert set(console.ray_init_options()["runtime_env"]) == {"env_vars", "worker_process_setup_hook"}
