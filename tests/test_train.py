"""Ray Train on tiny synthetic data read from the moto S3 server: 2 CPU workers (gloo)."""

import json
import math
import os

import boto3
import pytest
import torch

from asd_ray import bundle, storage
from asd_ray.train import TrainConfig, train
from tiny import TINY_MODEL, tiny_dataset



@pytest.fixture(scope="module")
def train_data(ray_local, s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="asd-train")
    return tiny_dataset("s3://asd-train/data", ["fan", "compressor"], 48, train_target=8)


def _cfg(data: str, name: str, **kw) -> TrainConfig:
    fields = dict(data=data, storage_path="s3://asd-train/runs", name=name, num_workers=2, cpus_per_worker=0.5,
                  epochs=4, batch_size=8, lr=3e-3, clip_seconds=1.0, n_subclusters=4, keep_checkpoints=10,
                  model=TINY_MODEL, autoencoder_epochs=0)
    fields.update(kw)
    return TrainConfig(**fields)


def test_train_on_s3_checkpoints_and_resumes(train_data):
    first = train(_cfg(train_data, "resume", epochs=4, validation={"ref_clips": 8, "test_clips": 8}))
    losses = [m["loss"] for m in first["history"]]
    assert all(0 <= m["official_score"] <= 1 for m in first["history"])  # validation reported every epoch
    assert [m["epoch"] for m in first["history"]] == [0, 1, 2, 3]
    assert losses[-1] < losses[0], losses
    assert first["checkpoint"].startswith("asd-train/runs/resume/checkpoint_")
    fs, _ = storage.fsspec_fs("s3://asd-train/runs")
    assert fs.exists(f"{first['checkpoint']}/state.pt")  # the checkpoint landed in S3
    # the FeatEx head (3 x 12 classes, 4 sub-clusters) is checkpointed for resuming, not put in the bundle
    with fs.open(f"{first['checkpoint']}/state.pt", "rb") as f:
        state = bundle.load_weights(f.read(), "checkpoint")
    assert state["featex"]["centres"].shape == (3 * 12 * 4, 32)
    assert state["featex"]["scale"] != state["loss"]["scale"]  # its own adaptive scale

    model, loss_fn, info = bundle.load_bundle(first["bundle"])
    assert first["bundle"] == "s3://asd-train/runs/resume/model"
    assert info.training["epochs"] == 4 and len(info.labels) == first["classes"] == 12
    with torch.no_grad():
        assert model(torch.zeros(2, 16000)).shape == (2, 32)

    # same name, more epochs: picks up after epoch 4 instead of starting again
    resumed = train(_cfg(train_data, "resume", epochs=6))
    assert resumed["metrics"]["epoch"] == 5 and resumed["metrics"]["start_epoch"] == 4
    assert [m["epoch"] for m in resumed["history"]] == [0, 1, 2, 3, 4, 5]
    # the learning rate anneals over all 6 epochs from where the 4-epoch run stopped, not a new cycle
    lrs = [m["lr"] for m in resumed["history"]]
    assert lrs[4:] == pytest.approx([0.5 * 3e-3 * (1 + math.cos(math.pi * e / 6)) for e in (4, 5)])
    assert lrs[0] == 3e-3 and lrs[3] < lrs[2] < lrs[1] < lrs[0] and lrs[5] < lrs[4]

    # other settings than the run was started with: refused before training, each change named
    with pytest.raises(ValueError, match=r"lr: 0\.003 -> 0\.001; model\.emb_dim: 32 -> 16\)"):
        train(_cfg(train_data, "resume", epochs=8, lr=1e-3, model={**TINY_MODEL, "emb_dim": 16}))
    with pytest.raises(ValueError, match="has 6 epochs done, more than epochs=5"):
        train(_cfg(train_data, "resume", epochs=5))
    # the settings are checked first: a refused resume reads no data (this data does not exist)
    with pytest.raises(ValueError, match="data: 's3://asd-train/data' -> 's3://asd-train/nowhere'"):
        train(_cfg("s3://asd-train/nowhere", "resume", epochs=8))
    assert bundle.load_bundle(first["bundle"])[2].training["epochs"] == 6  # the bundle of the 6-epoch run stays


def test_bad_inputs_are_clear_errors(train_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no clip shards"):
        train(_cfg(str(tmp_path / "nothing"), "none"))
    with pytest.raises(bundle.BundleError, match="no bundle.json"):
        bundle.load_bundle(str(tmp_path))


def test_a_run_that_failed_before_its_first_checkpoint_restarts_with_corrected_settings(train_data):
    """Settings are recorded with the first checkpoint: a run that never got one is no run to resume."""
    broken = _cfg(train_data, "startup", epochs=1, num_workers=1, max_failures=0,
                  model={**TINY_MODEL, "n_fft": 65536})  # longer than a 1 s clip: the first step fails
    with pytest.raises(Exception, match="[Pp]adding|n_fft|size"):
        train(broken)
    assert not storage.exists("s3://asd-train/runs/startup/settings.json")
    fixed = train(_cfg(train_data, "startup", epochs=1, num_workers=1))
    assert fixed["metrics"]["epochs_done"] == 1
    assert storage.exists("s3://asd-train/runs/startup/settings.json")


def test_training_checks_the_sample_rate_before_it_starts(train_data):
    from asd_ray.synth.generate import Counts, SynthConfig, synthesize

    synthesize(SynthConfig(out="s3://asd-train/8k", sample_rate=8000, clip_seconds=1.0, machines=["fan"],
                           counts=Counts(train_source=4, train_target=2, test_normal=0, test_anomaly=0)),
               progress=False)
    with pytest.raises(Exception, match=r"asd-train/8k/split=train/machine=fan/\S+\.parquet: clip fan/train/"
                                        r"\S+ has sample rate 8000 Hz, expected 16000 Hz"):
        train(_cfg("s3://asd-train/8k", "8k"))
    fs, _ = storage.fsspec_fs("s3://asd-train/runs")
    assert not fs.exists("asd-train/runs/8k")  # refused before anything was started or written


def test_runs_recorded_before_a_setting_became_resumable_still_resume(tmp_path):
    """``shuffle_buffer`` was a recorded setting before the streaming input made it resumable."""
    from asd_ray.train import SETTINGS_FILE, _settings, check_settings

    cfg = TrainConfig(data="anywhere", name="old", storage_path=str(tmp_path))
    os.makedirs(tmp_path / "old")
    (tmp_path / "old" / SETTINGS_FILE).write_text(json.dumps({**_settings(cfg), "shuffle_buffer": 999}))
    check_settings(cfg)  # resumes
    with pytest.raises(ValueError, match=r"lr: 0\.001 -> 0\.002"):
        check_settings(cfg.model_copy(update={"lr": 2e-3}))
