"""Faults around object storage: an S3 outage in the middle of a job, and credentials kept out of outputs."""

import io
import json
import os

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from asd_ray import cli, evaluate, storage
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.storage import StorageOptions


def _scores_table(n: int = 40) -> pa.Table:
    rng = np.random.default_rng(0)
    label = np.array(["normal", "anomaly"] * (n // 2))
    domain = np.repeat(["source", "target"], n // 2)
    return pa.table({"clip_id": [f"fan/section_00_{i:04d}" for i in range(n)], "machine": ["fan"] * n,
                     "section": ["00"] * n, "domain": domain.tolist(), "label": label.tolist(),
                     "score": (rng.random(n) + (label == "anomaly")).tolist(), "decision": [0] * n,
                     "reason": pa.array([None] * n, pa.string())})


def _write_scoring_output(url: str, options: StorageOptions) -> None:
    buf = io.BytesIO()
    pq.write_table(_scores_table(), buf)
    storage.write_bytes_atomic(storage.join(url, "scores", "part-0.parquet"), buf.getvalue(), options)
    storage.write_bytes_atomic(storage.join(url, "manifest.json"), json.dumps({"scored": 40}).encode(), options)


@pytest.fixture
def own_s3_server():
    """An S3 server of this test's own, which the test stops and starts again on the same port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    servers = [server]

    def restart():
        servers.append(ThreadedMotoServer(ip_address=host, port=port, verbose=False))
        servers[-1].start()

    yield f"http://{host}:{port}", server, restart
    servers[-1].stop()


def test_s3_outage_mid_job_is_a_clear_error_and_a_rerun_completes(own_s3_server, monkeypatch):
    endpoint, server, restart = own_s3_server
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="asd-outage")
    options = StorageOptions(endpoint_url=endpoint)
    _write_scoring_output("s3://asd-outage/scores", options)
    cfg = EvaluateConfig(scores="s3://asd-outage/scores", storage=options)

    real_plots = evaluate.plots

    def plots_then_outage(table):  # the scores are read; the server goes away before anything is written
        images = real_plots(table)
        server.stop()
        return images

    monkeypatch.setattr(evaluate, "plots", plots_then_outage)
    with pytest.raises(Exception, match=f"Could not connect to the endpoint URL: \"{endpoint}/asd-outage/scores/"):
        run_evaluate(cfg)
    monkeypatch.undo()
    restart()  # moto keeps its buckets in the process, so the data is back
    assert not storage.exists("s3://asd-outage/scores/evaluation/report.md", options)  # nothing claims completeness

    result = run_evaluate(cfg)
    assert storage.exists(result["report"], options)
    csv_text = storage.read_bytes("s3://asd-outage/scores/evaluation/results.csv", options).decode()
    assert csv_text.splitlines()[1].startswith("fan,00,")


def test_credentials_never_in_logs_or_saved_outputs(own_s3_server, monkeypatch, capsys, tmp_path):
    endpoint, _, _ = own_s3_server
    key_id, secret = "AKIATESTNEVERLOGGED1", "sekrit/never-logged-8f2c1d"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="asd-secrets")
    options = StorageOptions(endpoint_url=endpoint)
    _write_scoring_output("s3://asd-secrets/scores", options)

    store = f"sqlite:///{tmp_path}/mlflow.db"  # the run's parameters and artifacts too
    assert cli.main(["evaluate", "--scores", "s3://asd-secrets/scores", f"storage.endpoint_url={endpoint}",
                     f"tracking_uri={store}"]) == 0
    assert cli.main(["train", "--print-config", f"storage.endpoint_url={endpoint}"]) == 0
    assert cli.main(["tune", "--print-config"]) == 0
    out = capsys.readouterr()
    fs, _ = storage.fsspec_fs("s3://asd-secrets", options)
    saved = b"".join(fs.cat_file(p) for p in fs.find("asd-secrets"))
    assert b"report.md" not in saved and len(fs.find("asd-secrets")) > 5  # the job wrote its outputs
    tracked = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"official_score" in tracked and b"asd-secrets" in tracked  # the evaluation was logged
    assert (tmp_path / "artifacts").is_dir() and not os.path.exists("mlruns")  # its artifacts beside the store
    for text in (out.out, out.err, saved.decode("latin-1"), tracked.decode("latin-1")):
        assert secret not in text and key_id not in text


class _Payload:
    """Unpickling this would create a file: the kind of code a tampered bundle could carry."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_tampered_bundle_is_refused_without_running_its_code(tmp_path):
    import pickle

    import torch

    from asd_ray.bundle import BundleError, BundleInfo, load_bundle, save_bundle, weights_bytes
    from asd_ray.labels import LabelMap
    from asd_ray.model import DualStreamNet, ModelConfig

    cfg = ModelConfig(emb_dim=16, fft_channels=[4, 8, 8], spec_channels=[4, 8])
    info = BundleInfo(model=cfg, labels=LabelMap(classes=["a", "b"]), n_subclusters=2, sample_rate=16000,
                      clip_samples=16000)
    url = str(tmp_path / "bundle")
    save_bundle(url, info, weights_bytes(DualStreamNet(cfg), None))
    marker = tmp_path / "pwned"
    with open(tmp_path / "bundle" / "weights.pt", "wb") as f:
        torch.save({"model": _Payload(str(marker))}, f, pickle_module=pickle)
    with pytest.raises(BundleError, match="not a tensors-only weights file"):
        load_bundle(url)
    assert not marker.exists()
