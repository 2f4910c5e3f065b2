"""Ray Tune sweeps on tiny synthetic data: ASHA, the exported best config, resume after an interrupt."""

import json
import os
import signal
import time

import numpy as np
import pytest
from ray.tune import Callback

import mlflow

from asd_ray import tracking
from asd_ray.config import ConfigError, load_config
from asd_ray.sweep import SweepConfig, run_sweep
from asd_ray.train import TrainConfig
from tiny import SMALLEST_MODEL, tiny_dataset



@pytest.fixture(scope="module")
def sweep_data(ray_local, tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("sweep") / "data"), ["fan", "gearbox"], 24)


def _sweep(data: str, storage_path: str, name: str, **kw) -> SweepConfig:
    train_cfg = dict(data=data, num_workers=1, cpus_per_worker=0.5, epochs=3, batch_size=8, clip_seconds=1.0,
                     n_subclusters=2, storage_path=os.path.join(storage_path, "train-runs"), model=SMALLEST_MODEL,
                     validation={"ref_clips": 4, "test_clips": 8}, autoencoder_epochs=0)
    fields = dict(name=name, storage_path=storage_path, train=train_cfg, num_samples=2, max_concurrent=1,
                  space={"lr": {"loguniform": [1e-4, 1e-2]}, "mixup_alpha": {"choice": [0.0, 0.2]}},
                  asha={"grace_period": 1, "reduction_factor": 2}, seed=1)
    fields.update(kw)
    return SweepConfig.model_validate(fields)


class _SlowBeforeTheLastEpoch(Callback):
    """Tune busy with the second-to-last epoch's result (as with a slow logger) while the trial's
    run ends: with Ray's TuneReportCallback the trial then hung, its last epoch never reported."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epochs_done") == 2:
            time.sleep(3)


def test_sweep_stops_bad_trials_and_exports_a_trainable_best_config(sweep_data, tmp_path, mlflow_server):
    cfg = _sweep(sweep_data, str(tmp_path / "tune"), "asha", tracking_uri=mlflow_server, experiment="sweeps")
    # as `asd-ray tune` runs it (logged to the MLflow server), with a slow step in Tune's loop
    result = tracking.tracked_sweep(cfg, lambda c, callbacks: run_sweep(c, callbacks=[*callbacks,
                                                                                       _SlowBeforeTheLastEpoch()]))
    table = result["trials"]
    assert result["metric"] == "official_score" and result["mode"] == "max"  # labelled test clips exist
    assert len(table) == 2 and result["errors"] == 0
    # which trials ASHA cuts depends on noisy scores of tiny models (and so on the CPU); what must hold
    # on every machine is that the cuts are ASHA's rule applied to the objective the trials reported
    expected = _asha_epochs([_history(os.path.join(str(tmp_path / "tune" / "asha"), t)) for t in table["trial"]],
                            max_t=3, reduction_factor=2)
    assert list(table["epochs"]) == expected, table
    assert list(table["stopped_early"]) == [n < 3 for n in expected], table
    assert (table["epochs"] == 3).any()
    assert table["official_score"].between(0, 1).all()
    assert result["best"] == table["official_score"].max()
    for key in ("results_csv", "results_md", "plot", "best_config"):
        assert os.path.getsize(result[key]) > 0, key

    # the exported config is the trials' training config (each trial trained with it) with the best
    # trial's values: a training config as `asd-ray train --config` reads it
    best = load_config(TrainConfig, result["best_config"])
    assert best.lr == pytest.approx(result["best_params"]["lr"])
    assert best.mixup_alpha == result["best_params"]["mixup_alpha"]
    assert best.name == "asha-best"  # its own run name: training it does not resume a trial's run
    # and the storage options as given, not the endpoint the sweep resolved from its environment
    differ = {"lr", "mixup_alpha", "name"}
    assert best.model_dump(exclude=differ) == cfg.train.model_dump(exclude=differ)

    # on the server: the sweep's run, and under it one run per trial with its parameters and epochs
    client = mlflow.MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    (parent,) = [r for r in runs if r.data.tags["asd_ray.job"] == "tune"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2 and len(runs) == 3
    assert parent.data.metrics["best_official_score"] == pytest.approx(result["best"])
    assert parent.data.params["num_samples"] == "2"
    assert {"results.csv", "best_config.yaml", "objective.png"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}
    for lr, epochs in zip(table["lr"], table["epochs"]):
        (run,) = [r for r in trials if float(r.data.params["params/lr"]) == pytest.approx(lr)]
        history = client.get_metric_history(run.info.run_id, "official_score")
        assert len(history) == epochs  # every epoch the trial reported, as Tune reported it


def _history(trial_dir: str) -> list[float]:
    """The objective a trial reported after each epoch, in order."""
    with open(os.path.join(trial_dir, "result.json")) as f:
        rows = [json.loads(line) for line in f]
    return [r["official_score"] for r in sorted(rows, key=lambda r: r["epochs_done"])]


def _asha_epochs(histories: list[list[float]], max_t: int, reduction_factor: float) -> list[int]:
    """Epochs each trial runs under asynchronous successive halving (grace period 1, maximising), for
    trials run one after another: at rungs 1, rf, rf^2 ... < max_t a trial stops when its value is
    below the (1 - 1/rf) quantile of the values earlier trials reported at that rung."""
    milestones = [reduction_factor ** k for k in range(32) if reduction_factor ** k < max_t]
    recorded: dict[int, list[float]] = {m: [] for m in milestones}
    epochs = []
    for history in histories:
        ran = max_t  # a trial that is not cut runs every epoch
        for epoch, value in enumerate(history, start=1):
            if epoch not in recorded:
                continue
            earlier = recorded[epoch]
            stop = bool(earlier) and value < np.nanpercentile(earlier, (1 - 1 / reduction_factor) * 100)
            earlier.append(value)
            if stop:
                ran = epoch
                break
        epochs.append(ran)
    return epochs


class _InterruptAfterFirstTrial(Callback):
    """Ctrl+C, as a user would press it, once the first trial has finished; only once (Tune keeps
    the callback with the sweep's state, so the resumed run has it too)."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)


def _result_lines(trial_dir: str) -> int:
    with open(os.path.join(trial_dir, "result.json")) as f:
        return sum(1 for _ in f)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep_data, tmp_path):
    cfg = _sweep(sweep_data, str(tmp_path / "tune"), "resume", num_samples=2, asha=None, objective="loss")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})})
    first = run_sweep(cfg, callbacks=[_InterruptAfterFirstTrial(str(tmp_path / "interrupted"))])
    done = {t: n for t, n in zip(first["trials"]["trial"], first["trials"]["epochs"]) if n == 2}
    assert len(done) == 1, first["trials"]  # interrupted part way
    lines = {t: _result_lines(os.path.join(cfg.experiment_url, t)) for t in done}

    # resumed with another base config or space: refused before any trial goes on, every change named
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 4}),
                                     "space": {**cfg.space, "mixup_alpha": cfg.space["lr"]}})
    with pytest.raises(ValueError, match=r"sweep 'resume' .* other settings \(space\.mixup_alpha\.choice: \[0\.0, "
                                         r"0\.2\] -> None; .*train\.batch_size: 8 -> 4\)"):
        run_sweep(changed)
    second = run_sweep(cfg)
    assert len(second["trials"]) == 2 and (second["trials"]["epochs"] == 2).all(), second["trials"]
    for trial, n in lines.items():  # finished trials were not run again
        assert _result_lines(os.path.join(cfg.experiment_url, trial)) == n, trial
    assert second["metric"] == "loss"


def test_sweep_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="space.model.no_such_field"):
        load_config(SweepConfig, None, ["space={model.no_such_field: {choice: [1]}}"])
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(SweepConfig, None, ["space={lr: {choice: [0.1], uniform: [0, 1]}}"])
    with pytest.raises(ConfigError, match="space.batch_size"):
        load_config(SweepConfig, None, ["space={batch_size: {choice: [1, 8]}}"])
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"num_samples": 0}))
    with pytest.raises(ConfigError, match="num_samples"):
        load_config(SweepConfig, path)
