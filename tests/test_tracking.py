"""Where jobs log to MLflow by default, and that ``tracking=false`` logs nothing."""

import os

import mlflow

from asd_ray import tracking
from asd_ray.score import ScoreConfig
from asd_ray.train import TrainConfig


def test_the_default_store_is_beside_the_output_or_the_environments(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data="d", storage_path=str(tmp_path / "runs" / "train"))
    uri, artifacts = tracking.store_for(cfg, cfg.storage_path)
    assert uri == f"sqlite:///{tmp_path}/runs/mlflow/mlflow.db" and artifacts == f"{tmp_path}/runs/mlflow/artifacts"
    assert tracking.store_for(cfg, "s3://bucket/runs/train")[0] == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.store_for(cfg, cfg.storage_path) == ("http://127.0.0.1:1", None)
    given = f"sqlite:///{tmp_path}/elsewhere/my.db"  # a local store: its artifacts beside it, not in ./mlruns
    assert tracking.store_for(cfg.model_copy(update={"tracking_uri": given}), "") == (
        given, f"{tmp_path}/elsewhere/artifacts")


def test_a_run_logs_params_metrics_and_artifacts_and_tracking_false_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = str(tmp_path / "off" / "score")
    with tracking.job_run(ScoreConfig(tracking=False, out=out), out, "score", "x", {"a": 1}) as run:
        assert run is None
    assert not os.path.exists(tmp_path / "off" / "mlflow")

    out = str(tmp_path / "on" / "score")
    cfg = ScoreConfig(out=out, experiment="checks")
    with tracking.job_run(cfg, out, "score", "today", {"a": 1, "model": {"emb_dim": 16, "lists": [1, 2]}},
                          {"asd_ray.scores": out}) as run:
        run.metrics({"scored": 7, "skipped": float("nan")}, step=0)
        run.artifact("manifest.json", b"{}")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/on/mlflow/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("checks").experiment_id])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "today"
    assert logged.data.params == {"a": "1", "model.emb_dim": "16", "model.lists": "[1, 2]"}
    assert logged.data.metrics == {"scored": 7.0}  # a NaN is not logged
    assert [a.path for a in client.list_artifacts(logged.info.run_id)] == ["manifest.json"]
    assert os.path.exists(tmp_path / "on" / "mlflow" / "artifacts")  # artifacts beside the store, not in cwd
