"""Experiment tracking with MLflow: what each job did, where the tools ML engineers use can read it.

Every job logs one MLflow run (a sweep: a parent run with one child run per trial, through Ray
Tune's ``MLflowLoggerCallback``). The store is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``
(a server: credentials from the environment, as MLflow reads them), else a local SQLite store
with its artifacts beside the job's output: ``<output's parent>/mlflow`` (``runs/mlflow`` for
the local defaults), or ``./mlflow`` where the output is in object storage. Logging happens in
the job's driver, never in Ray workers, so a local store is always on the driver's disk.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

from pydantic import BaseModel, Field

from asd_ray import console, storage

STORE_FOLDER = "mlflow"


class Tracked(BaseModel):
    """The tracking settings every job config has."""

    tracking: bool = Field(True, description="log the job to MLflow (false: off)")
    tracking_uri: str | None = Field(None, description="MLflow server or store; default $MLFLOW_TRACKING_URI, else "
                                     "a local store beside the job's output (<output's parent>/mlflow)")
    experiment: str = Field("asd-ray", min_length=1, description="MLflow experiment name")


def store_for(cfg: Tracked, output: str) -> tuple[str, str | None]:
    """The tracking URI and, for a local store, its artifact folder."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("sqlite:///"):  # a local store: its artifacts beside it (MLflow: ./mlruns)
        return uri, os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")) or ".", "artifacts")
    if uri:
        return uri, None  # a server keeps its own artifact store
    near = (os.path.dirname(os.path.abspath(storage.strip_protocol(output).rstrip("/"))) if storage.is_local(output)
            else os.getcwd())
    root = os.path.join(near, STORE_FOLDER)
    os.makedirs(root, exist_ok=True)
    return f"sqlite:///{os.path.join(root, 'mlflow.db')}", os.path.join(root, "artifacts")


def experiment_id(cfg: Tracked, output: str) -> tuple[str, str]:
    """The tracking URI, and the experiment's id there (created where missing)."""
    import mlflow

    if not console.verbose():  # its store set-up lines ("Creating initial MLflow database tables")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
    uri, artifacts = store_for(cfg, output)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return uri, exp.experiment_id
    try:
        return uri, client.create_experiment(cfg.experiment, artifact_location=artifacts and f"file://{artifacts}")
    except mlflow.exceptions.MlflowException:  # created meanwhile by another job
        return uri, client.get_experiment_by_name(cfg.experiment).experiment_id


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: dotted keys, values as text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


@contextmanager
def job_run(cfg: Tracked, output: str, job: str, run_name: str, params: dict,
            tags: dict | None = None) -> Iterator[object | None]:
    """An MLflow run for a job, or None with tracking off. Yields ``(client, run_id)``."""
    if not cfg.tracking:
        yield None
        return
    import mlflow

    uri, exp = experiment_id(cfg, output)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(exp, run_name=run_name, tags={"asd_ray.job": job, **(tags or {})})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in flat_params(params).items()])
        yield RunLog(client, run_id, uri)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    print(f"{job}: logged to MLflow run {run_id} (experiment '{cfg.experiment}' at {uri})", flush=True)


class RunLog:
    """What a job logs into its run."""

    def __init__(self, client, run_id: str, uri: str):
        self.client, self.run_id, self.uri = client, run_id, uri

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        import mlflow

        finite = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}
        self.client.log_batch(self.run_id, metrics=[mlflow.entities.Metric(k, v, 0, step) for k, v in finite.items()])

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def artifact(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path)


EPOCH_METRICS = ("loss", "accuracy", "official_score", "clips_per_s", "lr", "scale", "workers")


def log_training(cfg, summary: dict) -> None:
    """A training run: its settings, every epoch's metrics (step = epoch), its bundle; companions
    (ensemble members, the autoencoder) as runs nested under it."""
    from asd_ray.train import companion_configs

    with job_run(cfg, cfg.storage_path, "train", cfg.name, cfg.model_dump(mode="json", exclude={"storage"}),
                 {"asd_ray.bundle": summary["bundle"]}) as run:
        if run is None:
            return
        _log_history(run, summary)
        run.artifact("bundle.json", storage.read_bytes(storage.join(summary["bundle"], "bundle.json"), cfg.storage))
        for folder, companion in companion_configs(cfg).items():
            part = summary["companions"][folder]
            child = run.client.create_run(run.client.get_run(run.run_id).info.experiment_id, run_name=companion.name,
                                          tags={"mlflow.parentRunId": run.run_id, "asd_ray.job": "train",
                                                "asd_ray.bundle": part["bundle"]})
            _log_history(RunLog(run.client, child.info.run_id, run.uri), part)
            run.client.set_terminated(child.info.run_id, "FINISHED")


def _log_history(run: RunLog, summary: dict) -> None:
    for m in summary["history"]:
        run.metrics({k: m[k] for k in EPOCH_METRICS if k in m}, step=m["epoch"])


def log_scoring(cfg, summary: dict) -> None:
    with job_run(cfg, cfg.out, "score", os.path.basename(cfg.out.rstrip("/")) or "score",
                 cfg.model_dump(mode="json", exclude={"storage"}), {"asd_ray.scores": summary["out"]}) as run:
        if run is None:
            return
        run.metrics({"scored": summary["scored"], "unscored": summary["unscored"]})
        manifest = storage.join(cfg.out, "manifest.json")
        if storage.exists(manifest, cfg.storage):
            run.artifact("manifest.json", storage.read_bytes(manifest, cfg.storage))


def log_evaluation(cfg, result: dict) -> None:
    """The official score, every machine's and section's metrics, and the report with its images."""
    with job_run(cfg, cfg.scores, "evaluate", os.path.basename(cfg.scores.rstrip("/")) or "evaluate",
                 cfg.model_dump(mode="json", exclude={"storage"}), {"asd_ray.scores": cfg.scores}) as run:
        if run is None:
            return
        values = {"official_score": result["official_score"]}
        values.update({f"{m}.score": v for m, v in result["per_machine"].items()})
        for r in result["rows"] or []:
            values.update({f"{r['machine']}.{r['section']}.{k}": r[k] for k in ("auc_source", "auc_target", "pauc")
                           if k in r})
        run.metrics(values)
        for name in result.get("files", []):
            run.artifact(name, storage.read_bytes(storage.join(cfg.out_url, name), cfg.storage))


def tracked_sweep(cfg, run_sweep) -> dict:
    """A sweep as a parent run (its settings, the best result, results table, plot and best
    config as artifacts) and each trial a child run with its parameters and every reported
    epoch, logged as results arrive by Ray Tune's own ``MLflowLoggerCallback``."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    with job_run(cfg, cfg.storage_path, "tune", cfg.name, cfg.model_dump(mode="json", exclude={"storage"}),
                 {"asd_ray.sweep": cfg.experiment_url}) as run:
        if run is None:
            return run_sweep(cfg)
        callback = MLflowLoggerCallback(tracking_uri=run.uri, experiment_name=cfg.experiment, save_artifact=False,
                                        tags={"mlflow.parentRunId": run.run_id, "asd_ray.job": "tune-trial",
                                              "asd_ray.sweep": cfg.experiment_url})
        result = run_sweep(cfg, callbacks=[callback])
        run.metrics({f"best_{result['metric']}": result["best"], "trials": len(result["trials"]),
                     "errors": result["errors"]})
        for key in ("results_csv", "results_md", "plot", "best_config"):
            url = result[key]
            run.artifact(url.rstrip("/").rsplit("/", 1)[-1], storage.read_bytes(url, cfg.storage))
        return result
