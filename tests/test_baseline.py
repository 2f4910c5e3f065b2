"""The DCASE autoencoder baseline: its features, and training and scoring through the same jobs."""

import os

import numpy as np
import pytest
import torch

from asd_ray import bundle
from asd_ray.autoencoder import AEConfig, MachineAutoEncoders, MelAutoEncoder, mel_filterbank
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.references import References
from asd_ray.score import ScoreConfig, read_scores, run_score
from asd_ray.train import TrainConfig, train
from tiny import tiny_dataset


def test_mel_filterbank_and_frame_vectors():
    fb = mel_filterbank(16000, 1024, 128)
    assert fb.shape == (128, 513) and fb.min() >= 0 and (fb.sum(dim=1) > 0).all()
    peaks = fb.argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all()  # filters rise in frequency
    model = MelAutoEncoder(AEConfig()).eval()
    wave = torch.randn(3, 16000)
    feats = model.features(wave)
    assert feats.shape == (3, 16000 // 512 + 1 - 4, 640)
    # vector t holds frames t..t+4: its second frame is vector t+1's first
    assert torch.allclose(feats[:, 0, 128:256], feats[:, 1, :128])
    with torch.no_grad():
        assert model(wave).shape == (3,)


def test_each_clip_goes_through_its_machine_types_model():
    torch.manual_seed(0)
    model = MachineAutoEncoders(["fan", "pump"], AEConfig(n_mels=32, hidden=32)).eval()
    wave = torch.randn(4, 8000)
    machine = model.index(["fan", "pump", "toaster", "fan"])
    assert machine.tolist() == [0, 1, -1, 0]
    with torch.no_grad():
        before = model(wave, machine)
        features = model.score_features(wave, machine)
        for p in model.members[1].parameters():  # change the pump's model only
            p.add_(0.5)
        after = model(wave, machine)
    assert torch.isnan(before[2]) and torch.isnan(features[2]).all()  # no model for a toaster
    assert torch.equal(before[[0, 3]], after[[0, 3]]) and before[1] != after[1]
    assert features.shape == (4, 1 + 32 * 5) and torch.allclose(features[[0, 1, 3], 0], before[[0, 1, 3]])


def test_reconstruction_loss_falls():
    torch.manual_seed(0)
    model = MelAutoEncoder(AEConfig(n_mels=32, hidden=32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    t = torch.arange(8000) / 16000
    waves = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (200, 400, 800, 1600)]) + 0.01 * torch.randn(4, 8000)
    losses = []
    for _ in range(100):
        loss = model(waves).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]


@pytest.fixture(scope="module")
def ae_data(ray_local, tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("baseline") / "data"), ["fan", "pump"], 16)


def test_autoencoder_trains_and_scores_through_the_same_jobs(ae_data, tmp_path):
    cfg = TrainConfig(data=ae_data, method="autoencoder", storage_path=str(tmp_path / "runs"), name="ae",
                      epochs=3, batch_size=8, lr=1e-3, clip_seconds=1.0, cpus_per_worker=0.5,
                      autoencoder={"n_mels": 64, "hidden": 64}, validation={"ref_clips": 4, "test_clips": 8})
    result = train(cfg)
    losses = [m["loss"] for m in result["history"]]
    assert losses[-1] < losses[0], losses
    assert 0 <= result["metrics"]["official_score"] <= 1
    model, loss_fn, info = bundle.load_bundle(result["bundle"])
    assert info.method == "autoencoder" and loss_fn is None and isinstance(model, MachineAutoEncoders)
    assert model.machines == ["fan", "pump"]  # a model per machine type, one bundle

    tables, refs = {}, {}
    settings = {"mse": dict(autoencoder_score="mse"), "mahalanobis": {},  # the default: the pooled covariance
                "official": dict(autoencoder_score="mahalanobis", autoencoder_covariance="domain")}
    for how, fields in settings.items():
        out = str(tmp_path / f"scores-{how}")
        cfg = ScoreConfig(bundle=result["bundle"], data=ae_data, out=out, batch_size=8, **fields)
        summary = run_score(cfg)
        tables[how] = read_scores(out)
        # 2 machines x 2 domains x (4 normal + 4 anomalous)
        assert summary["scored"] == tables[how].num_rows == 2 * 2 * 8
        assert os.path.exists(os.path.join(out, "anomaly_score_fan_section_00_test.csv"))
        assert 0 <= run_evaluate(EvaluateConfig(scores=out))["official_score"] <= 1
        refs[how] = References.from_bytes(open(cfg.references_url, "rb").read())
        assert refs[how].meta["method"] == ("reconstruction" if how == "mse" else "mahalanobis")
        assert refs[how].meta.get("covariance") == {"mse": None, "mahalanobis": "pooled", "official": "domain"}[how]
    assert min(tables["mse"]["score"].to_pylist()) > 2  # reconstruction errors (dB^2), not cosine distances
    # Mahalanobis: a Gaussian per section and domain over the clips' mean error vectors (64 mels x 5 frames);
    # pooled, the domains share one covariance; the official baseline's, each its own
    for how in ("mahalanobis", "official"):
        precisions = refs[how].precisions
        assert {k: v.shape for k, v in precisions.items()} == {(m, "00"): (2, 320, 320) for m in ("fan", "pump")}
        assert all(np.array_equal(p[0], p[1]) == (how == "mahalanobis") for p in precisions.values())
        assert np.isfinite(tables[how]["score"].to_numpy()).all()
    assert tables["mahalanobis"]["score"].to_pylist() != tables["official"]["score"].to_pylist()
    assert tables["mse"]["score"].to_pylist() != tables["mahalanobis"]["score"].to_pylist()
