"""``asd-ray tune``: search training hyperparameters with Ray Tune.

Each trial is a Tune function that runs a whole Ray Train job (``train.make_trainer``) on the
base training config with the trial's values set, and forwards every epoch's metrics to Tune, so
that ASHA can stop a bad trial after any epoch. The objective is the official DCASE score on a
small labelled validation budget (``train.validation``), or the auxiliary loss where the data has
no labelled test clips. The sweep lives at ``<storage_path>/<name>``: running it again with the
same name resumes it (finished trials are kept, unfinished ones continue from their last Train
checkpoint). At the end it writes ``results.csv``/``results.md``, ``objective.png`` and
``best_config.yaml``, a training config that ``asd-ray train --config`` takes as is.
"""

from __future__ import annotations

import io
import json
import math
from typing import Literal

import ray
import ray.tune
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.tune.schedulers import ASHAScheduler

from asd_ray import shards, storage
from asd_ray.config import JobConfig, deep_merge, parse_overrides, refuse_changes
from asd_ray.labels import LabelMap
from asd_ray.storage import StorageOptions
from asd_ray.tracking import Tracked
from asd_ray.train import (RESUMABLE, SETTINGS_FILE, TrainConfig, comparable, label_map, make_trainer,
                            resolved)
from asd_ray.tune_reports import fit_in_trial
from asd_ray.validate import ValidationConfig


class Dim(BaseModel):
    """One searched hyperparameter: exactly one of the four kinds."""

    model_config = ConfigDict(extra="forbid")

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="[low, high), as Tune's randint")
    choice: list | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Dim":
        kinds = [k for k in ("loguniform", "uniform", "randint", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, randint, choice (got {kinds or 'none'})")
        return self

    def values(self) -> list:
        """The choices, or the ends of the range, to check against the training config."""
        if self.choice is not None:
            return self.choice
        low, high = self.randint or self.uniform or self.loguniform
        return [low, high - 1] if self.randint else [low, high]

    def domain(self):
        if self.loguniform:
            return ray.tune.loguniform(*self.loguniform)
        if self.uniform:
            return ray.tune.uniform(*self.uniform)
        if self.randint:
            return ray.tune.randint(*self.randint)
        return ray.tune.choice(self.choice)


def _default_space() -> dict[str, Dim]:
    return {"lr": Dim(loguniform=(3e-4, 3e-3)), "weight_decay": Dim(loguniform=(1e-6, 1e-3)),
            "mixup_alpha": Dim(uniform=(0.2, 1.5)), "featex": Dim(choice=[0.0, 0.5]),
            "model.fft_magnitude": Dim(choice=["log", "both"]), "n_subclusters": Dim(choice=[4, 16]),
            "model.freq_width": Dim(choice=[0, 8, 16]), "model.time_width": Dim(choice=[0, 16, 32])}


class AshaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period: int = Field(1, ge=1, description="epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(2, gt=1)


class SweepConfig(JobConfig, Tracked):
    name: str = Field("asd-sweep", description="sweep name; the same name and storage_path resume")
    storage_path: str = Field("runs/tune", description="URL under which the sweep and its trials live")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(validation=ValidationConfig()),
                               description="base training config; each trial sets the searched fields")
    space: dict[str, Dim] = Field(default_factory=_default_space,
                                  description="dotted TrainConfig field -> search dimension")
    search: Literal["random", "optuna"] = "random"
    num_samples: int = Field(8, ge=1, description="trials")
    max_concurrent: int | None = Field(None, ge=1, description="default: what the cluster's GPUs (or CPUs) hold")
    objective: Literal["auto", "official_score", "loss"] = Field(
        "auto", description="auto: official_score when the data has labelled test clips, else loss")
    asha: AshaConfig | None = AshaConfig()
    trial_cpus: float = Field(0.1, gt=0, description="CPUs held by each trial's driver (its Train workers "
                                                     "and Ray Data ask for their own)")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial")
    seed: int | None = 0
    storage: StorageOptions = StorageOptions()

    @model_validator(mode="after")
    def _space_fits_training_config(self) -> "SweepConfig":
        """Every searched value must make a valid training config (unknown fields are refused there)."""
        for key, dim in self.space.items():
            for value in dim.values():
                try:
                    _trial_config(self.train, {key: value})
                except ValueError as e:
                    raise ValueError(f"space.{key}: value {value!r} is not valid for the training config: "
                                     f"{e}") from None
        return self

    @property
    def experiment_url(self) -> str:
        return storage.join(self.storage_path, self.name)


def _trial_config(base: TrainConfig, params: dict) -> TrainConfig:
    data = deep_merge(base.model_dump(mode="json"), parse_overrides([f"{k}={yaml.safe_dump(v).strip()}"
                                                                     for k, v in params.items()]))
    return TrainConfig.model_validate(data)


def _has_labels(url: str, machines: list[str] | None, options: StorageOptions) -> bool:
    for shard in shards.list_shards(url, "test", machines, options):
        labels = shards.read_shard(shard, ["label"], options).column("label")
        if labels.null_count < len(labels):
            return True
    return False


def _objective(cfg: SweepConfig) -> tuple[str, str]:
    if cfg.objective == "loss" or cfg.train.validation is None:
        return "loss", "min"
    if cfg.objective == "official_score":
        return "official_score", "max"
    url = cfg.train.validation.data or cfg.train.data
    return ("official_score", "max") if _has_labels(url, cfg.train.machines, cfg.train.storage) else ("loss", "min")


def run_trial(params: dict, base: dict, classes: list[str], objective: str, trials_url: str) -> None:
    """One Tune trial: a Ray Train run named after the trial, so that a resumed sweep resumes it."""
    cfg = _trial_config(TrainConfig.model_validate(base), params["params"])
    if objective == "loss":
        cfg = cfg.model_copy(update={"validation": None})
    name = f"trial_{ray.tune.get_context().get_trial_id()}"
    cfg = cfg.model_copy(update={"name": name, "storage_path": trials_url})
    fit_in_trial(lambda callbacks: make_trainer(cfg, LabelMap(classes=classes), callbacks=callbacks))


def _concurrency(cfg: SweepConfig) -> int:
    if cfg.max_concurrent:
        return cfg.max_concurrent
    res = ray.cluster_resources()
    if cfg.train.use_gpu:
        return max(1, int(res.get("GPU", 0) // cfg.train.max_workers))
    # a trial needs its workers' CPUs plus about one CPU for Ray Data's readers
    return max(1, int(res.get("CPU", 1) // (cfg.train.max_workers * cfg.train.cpus_per_worker + 1)))


def _settings(cfg: SweepConfig) -> dict:
    """What a resumed sweep must keep: the base training config (where and how it runs aside), the
    space and the search."""
    return {**cfg.model_dump(mode="json", exclude={"name", "storage_path", "train", "max_concurrent", "trial_cpus",
                                                   "max_failures", "storage", "tracking", "tracking_uri",
                                                   "experiment"}),
            "train": cfg.train.model_dump(mode="json", exclude=RESUMABLE)}


def _tuner(cfg: SweepConfig, trainable, metric: str, mode: str, callbacks: list | None) -> ray.tune.Tuner:
    """A new Tuner, or the interrupted sweep of the same name restored (with the settings it was
    started with: otherwise its old trials would go on under new ones)."""
    fs, path = storage.pyarrow_fs(cfg.experiment_url, cfg.storage)
    settings_url = storage.join(cfg.experiment_url, SETTINGS_FILE)
    if ray.tune.Tuner.can_restore(path, storage_filesystem=fs):
        if storage.exists(settings_url, cfg.storage):
            recorded = json.loads(storage.read_bytes(settings_url, cfg.storage))
            refuse_changes({**recorded, "train": comparable(recorded.get("train", {}))}, _settings(cfg),
                           f"sweep '{cfg.name}' in {cfg.storage_path}")
        print(f"tune: resuming sweep '{cfg.name}' from {cfg.experiment_url}", flush=True)
        return ray.tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                      storage_filesystem=fs)
    storage.write_bytes_atomic(settings_url, json.dumps(_settings(cfg), indent=1).encode(), cfg.storage)
    parent_fs, parent = storage.pyarrow_fs(cfg.storage_path, cfg.storage)
    concurrency = _concurrency(cfg)
    # the limit goes on the searcher itself: Tune's max_concurrent_trials does not reach a
    # BasicVariantGenerator built here
    if cfg.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = ConcurrencyLimiter(OptunaSearch(seed=cfg.seed), max_concurrent=concurrency)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrency)
    scheduler = (ASHAScheduler(time_attr="epochs_done", max_t=cfg.train.epochs, grace_period=cfg.asha.grace_period,
                               reduction_factor=cfg.asha.reduction_factor) if cfg.asha else None)
    return ray.tune.Tuner(
        trainable,
        param_space={"params": {k: d.domain() for k, d in cfg.space.items()}},
        tune_config=ray.tune.TuneConfig(metric=metric, mode=mode, num_samples=cfg.num_samples, search_alg=searcher,
                                        scheduler=scheduler),
        run_config=ray.tune.RunConfig(name=cfg.name, storage_path=parent, storage_filesystem=parent_fs,
                                      failure_config=ray.tune.FailureConfig(max_failures=cfg.max_failures),
                                      callbacks=callbacks),
    )


def run_sweep(cfg: SweepConfig, callbacks: list | None = None) -> dict:
    """Run (or resume) the sweep; write the results table, plot and best training config."""
    given = cfg.train.storage  # the exported best config keeps the user's, not this environment's endpoint
    cfg = cfg.model_copy(update={"storage": cfg.storage.resolved(), "train": resolved(cfg.train)})
    metric, mode = _objective(cfg)
    labels = label_map(cfg.train)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, base=cfg.train.model_dump(mode="json"), classes=labels.classes,
                                 objective=metric, trials_url=storage.join(cfg.experiment_url, "trials")),
        {"cpu": cfg.trial_cpus})
    print(f"tune: sweep '{cfg.name}': {cfg.num_samples} trials ({cfg.search} search"
          f"{', ASHA' if cfg.asha else ''}), objective {metric} ({mode}), at {cfg.experiment_url}", flush=True)
    grid = _tuner(cfg, trainable, metric, mode, callbacks).fit()
    table = _results_table(grid, cfg, metric, mode)
    best = grid.get_best_result(metric=metric, mode=mode, scope="all")
    best_cfg = _trial_config(cfg.train, best.config["params"]).model_copy(
        update={"name": f"{cfg.name}-best", "storage_path": cfg.train.storage_path, "storage": given})
    out = {"results_csv": storage.join(cfg.experiment_url, "results.csv"),
           "results_md": storage.join(cfg.experiment_url, "results.md"),
           "plot": storage.join(cfg.experiment_url, "objective.png"),
           "best_config": storage.join(cfg.experiment_url, "best_config.yaml")}
    storage.write_bytes_atomic(out["results_csv"], table.to_csv(index=False).encode(), cfg.storage)
    markdown = _markdown(table)
    storage.write_bytes_atomic(out["results_md"], markdown.encode(), cfg.storage)
    storage.write_bytes_atomic(out["plot"], _plot(table, metric, mode), cfg.storage)
    storage.write_bytes_atomic(out["best_config"], _config_yaml(best_cfg).encode(), cfg.storage)
    best_value = table[metric].max() if mode == "max" else table[metric].min()
    return {**out, "markdown": markdown, "metric": metric, "mode": mode, "best": float(best_value), "trials": table,
            "best_params": best.config["params"], "errors": len(grid.errors)}


def _results_table(grid, cfg: SweepConfig, metric: str, mode: str):
    """One row per trial: its parameters, epochs run, final and best objective."""
    import pandas as pd

    rows = []
    for result in grid:
        history = result.metrics_dataframe
        values = history[metric] if history is not None and metric in history else pd.Series(dtype=float)
        rows.append({"trial": result.path.rstrip("/").rsplit("/", 1)[-1],
                     **{k: result.config["params"][k] for k in cfg.space},
                     "epochs": int(result.metrics.get("epochs_done", 0)) if result.metrics else 0,
                     "stopped_early": bool(result.metrics) and result.metrics.get("epochs_done", 0) < cfg.train.epochs,
                     "error": type(result.error).__name__ if result.error else "",
                     f"final_{metric}": (result.metrics or {}).get(metric, math.nan),
                     metric: (values.max() if mode == "max" else values.min()) if len(values) else math.nan})
    return pd.DataFrame(rows).sort_values("trial").reset_index(drop=True)


def _markdown(table) -> str:
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _plot(table, metric: str, mode: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(1, len(table) + 1)
    ax.scatter(x, table[metric], c=["tab:orange" if s else "tab:blue" for s in table["stopped_early"]])
    ax.plot(x, table[metric].cummax() if mode == "max" else table[metric].cummin(), color="grey")
    ax.set_xlabel("trial (orange: stopped early by ASHA)")
    ax.set_ylabel(metric)
    ax.set_title("objective per trial, best so far")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _config_yaml(cfg: TrainConfig) -> str:
    data = cfg.model_dump(mode="json")
    return "# best configuration of a Tune sweep: asd-ray train --config <this file>\n" + \
        yaml.safe_dump(data, sort_keys=False)
