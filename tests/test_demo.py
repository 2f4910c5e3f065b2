"""The README's first command, shrunk: `asd-ray demo` end to end on local folders."""

import json
import os

import mlflow

from asd_ray import cli
from browser import open_in_chromium


def test_demo_runs_every_stage_and_reports(ray_local, tmp_path, capsys):
    work = str(tmp_path / "demo")
    code = cli.main(["demo", f"workdir={work}", "synth.clip_seconds=1", "synth.machines=[fan,gearbox]",
                     "synth.counts={train_source: 16, train_target: 4, test_normal: 4, test_anomaly: 4}",
                     "train.epochs=1", "train.batch_size=8", "train.clip_seconds=1", "train.n_subclusters=2",
                     "train.model={emb_dim: 16, n_fft: 256, hop_length: 128, fft_channels: [4, 8, 8], "
                     "spec_channels: [4, 8], freq_width: 8, time_width: 8}",
                     "train.autoencoder_epochs=1", "train.autoencoder={n_mels: 32, hidden: 32}"])
    out = capsys.readouterr().out
    assert code == 0
    for stage in ("[1/4] synthesizing", "[2/4] training", "[3/4] fitting", "[4/4] evaluating", "official score"):
        assert stage in out
    assert "| fan | 00 |" in out and "| gearbox | 00 |" in out
    assert "companion 'autoencoder'" in out
    for path in ("data/_manifest.json", "runs/demo/model/bundle.json", "runs/demo/model/autoencoder/bundle.json",
                 "scores/manifest.json",
                 "scores/anomaly_score_fan_section_00_test.csv", "scores/evaluation/report.md",
                 "scores/evaluation/roc_gearbox.png"):
        assert os.path.exists(os.path.join(work, path)), path

    # every stage logged to the local MLflow store beside the outputs (no server)
    store = f"sqlite:///{work}/mlflow/mlflow.db"
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("asd-ray")
    runs = {(r.data.tags["asd_ray.job"], r.info.run_name): r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {("train", "demo"), ("train", "demo-autoencoder"), ("score", "scores"),
                         ("evaluate", "scores")}, set(runs)
    trained, companion = runs[("train", "demo")], runs[("train", "demo-autoencoder")]
    assert companion.data.tags["mlflow.parentRunId"] == trained.info.run_id
    assert trained.data.params["epochs"] == "1" and trained.data.params["model.emb_dim"] == "16"
    assert trained.data.tags["asd_ray.bundle"] == os.path.join(work, "runs", "demo", "model")
    losses = client.get_metric_history(trained.info.run_id, "loss")
    assert [m.step for m in losses] == [0] and losses[0].value > 0
    evaluated = runs[("evaluate", "scores")].data.metrics
    summary = json.load(open(os.path.join(work, "runs", "demo", "model", "bundle.json")))["training"]
    assert summary["history"][0]["loss"] == losses[0].value
    assert 0 <= evaluated["official_score"] <= 1 and "fan.00.auc_source" in evaluated and "gearbox.score" in evaluated
    assert f"{100 * evaluated['official_score']:.2f}" in out  # the score it printed
    artifacts = {a.path for a in client.list_artifacts(runs[("evaluate", "scores")].info.run_id)}
    assert {"report.md", "results.csv", "roc_fan.png"} <= artifacts
    assert runs[("score", "scores")].data.metrics["scored"] == 2 * 2 * (4 + 4)

    # the HTML report in a real browser: no console errors, every image decoded, every clip playable
    page = os.path.join(work, "scores", "evaluation", "report.html")
    seen = open_in_chromium(page, os.environ.get("ASD_REPORT_SCREENSHOT") or str(tmp_path / "report.png"))
    assert seen["errors"] == [] and seen["title"] == "Anomaly detection report"
    assert len(seen["images"]) >= 2 * (2 + 5) and all(width > 0 for width in seen["images"]), seen["images"]
    # per machine: the top 3 clips and 2 normal clips near the threshold
    assert len(seen["audio"]) == 2 * 5 and all(a["played"] is True and a["duration"] > 0.9 for a in seen["audio"])
    assert "report.html" in {a.path for a in client.list_artifacts(runs[("evaluate", "scores")].info.run_id)}
