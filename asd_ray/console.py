"""What a job prints: by default the job's own lines, progress, warnings and errors; Ray's INFO
lines (operator tables, execution plans, checkpoint and report lines) only with ``--verbose``.

Ray's INFO lines still go to Ray's log files (``/tmp/ray/session_latest/logs``): nothing is lost,
it is only kept off the screen. The setting reaches every Ray worker of the job through a worker
setup hook (:func:`setup_worker`), so a cluster's nodes need no files of ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

VERBOSE_ENV = "ASD_RAY_VERBOSE"
LIBRARIES = ("ray", "mlflow", "sqlalchemy", "alembic")  # whose warnings show once per machine
SEEN_WARNINGS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asd-ray" / "ray-warnings-seen"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def set_verbose(on: bool) -> None:
    """For this process and the Ray workers it starts (they inherit the environment, or get it from
    :func:`ray_init_options`)."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def first_time_seen(text: str) -> bool:
    """Whether ``text`` is new on this machine (then it is recorded as seen)."""
    key = hashlib.sha1(text.encode()).hexdigest()[:16]
    try:
        if SEEN_WARNINGS.exists() and key in SEEN_WARNINGS.read_text().split():
            return False
        SEEN_WARNINGS.parent.mkdir(parents=True, exist_ok=True)
        with SEEN_WARNINGS.open("a") as f:
            f.write(key + "\n")
    except OSError:  # a read-only home: show it
        pass
    return True


class _QuietRay(logging.Filter):
    """On Ray's console handlers: errors pass; a warning passes the first time this machine sees
    it; of the INFO lines only Ray Data's total progress (its form where the output is not a
    terminal: 'Total Progress: rows done/total', every 10 s). Records of other loggers pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("ray"):
            return True
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING:
            return first_time_seen(f"{record.name}:{record.getMessage()}")
        return record.name.endswith("logging_progress") and record.getMessage().startswith("Total Progress")


def quiet_ray_loggers() -> None:
    """Ray's console handlers (and the root logger's, which Ray's records reach) get the filter;
    Ray's file handlers keep everything."""
    if verbose():
        return
    import ray.data  # noqa: F401  (configures the 'ray.data' logger: our filter goes on its handlers after)

    # logging.lastResort: ray.init leaves the driver's 'ray' logger without handlers for a while
    names = ("", "ray", "ray.data", "ray.train", "ray.tune")
    handlers = [h for name in names for h in logging.getLogger(name).handlers]
    for handler in [*handlers, logging.lastResort]:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _QuietRay) for f in handler.filters):
                handler.addFilter(_QuietRay())


def show_ray_warnings_once() -> None:
    """A Python warning raised inside Ray or the tracking libraries (a deprecation, an advisory)
    shows the first time this machine sees it, not on every run; with ``--verbose`` every time.
    Other warnings as usual."""
    if verbose():
        return
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        from_libraries = any(f"{os.sep}{lib}{os.sep}" in filename for lib in LIBRARIES)
        if from_libraries and not first_time_seen(f"{category.__name__}:{message}"):
            return None
        return shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: every Ray worker of a quiet job is quiet too."""
    if verbose():
        return
    quiet_ray_loggers()
    show_ray_warnings_once()
    # Ray Train's worker logs "Reporting training result ..." (INFO) on a logger named by its file
    # path, outside 'ray.train' and so past Train's own level
    import importlib.util

    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


def ray_init_options() -> dict:
    """``ray.init`` arguments for the job's verbosity."""
    # Ray Train's print patch sends a worker's print() to its logger and to stdout: each line twice
    env = {VERBOSE_ENV: "1" if verbose() else "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    runtime_env = {"env_vars": env, "worker_process_setup_hook": "asd_ray.console.setup_worker"}
    # a job submitted with its own runtime env: Ray merges ours into it and refuses a key set in both
    # (the job's wins: e.g. --runtime-env-json '{"env_vars": {"ASD_RAY_VERBOSE": "1"}}')
    submitted = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    env = {k: v for k, v in env.items() if k not in (submitted.get("env_vars") or {})}
    runtime_env = {k: v for k, v in {**runtime_env, "env_vars": env}.items() if k not in submitted or k == "env_vars"}
    options = {"runtime_env": runtime_env}
    if not verbose():  # the driver's 'ray' logger keeps its handlers, and so our filter on them
        options["configure_logging"] = False
    return options


def input_progress_bars(on_terminal: bool = True) -> None:
    """Ray Data's progress bars where its datasets run in this process: on in verbose mode; in
    quiet mode only where this is the driver on a terminal (the training input runs in Ray
    Train's coordinator: there our own epoch progress lines say it)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = verbose() or (on_terminal and sys.stdout.isatty())


def train_logging_config():
    """Ray Train's own log level for the console (its files keep everything)."""
    from ray.train.v2.api.config import LoggingConfig

    return LoggingConfig(log_level="INFO" if verbose() else "WARNING")


class Progress:
    """One line every ``every_s`` seconds, for logs and terminals alike: done/total, rate, time left."""

    def __init__(self, what: str, total: int | None, every_s: float, unit: str = "clips"):
        self.what, self.total, self.every_s, self.unit = what, total, every_s, unit
        self.t0 = self.last = time.time()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.time()
        if self.every_s and now - self.last >= self.every_s:
            self.last = now
            print(self.line(now), flush=True, file=sys.stdout)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.time()) - self.t0, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,}"
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%), {rate:.1f} {self.unit}/s, " \
                    f"{_duration(left)} left"
        else:
            text += f" {self.unit}, {rate:.1f} {self.unit}/s"
        return text


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
