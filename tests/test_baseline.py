"""The DCASE autoencoder baseline: its features, and training and scoring through the same jobs."""

import os

import pytest
import torch

from asd_ray import bundle
from asd_ray.autoencoder import AEConfig, MelAutoEncoder, mel_filterbank
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.score import ScoreConfig, read_scores, run_score
from asd_ray.train import TrainConfig, train


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
    from asd_ray.synth.generate import Counts, SynthConfig, synthesize

    out = str(tmp_path_factory.mktemp("baseline") / "data")
    synthesize(SynthConfig(out=out, clip_seconds=1.0, machines=["fan", "pump"],
                           counts=Counts(train_source=16, train_target=4, test_normal=4, test_anomaly=4)),
               progress=False)
    return out


def test_autoencoder_trains_and_scores_through_the_same_jobs(ae_data, tmp_path):
    cfg = TrainConfig(data=ae_data, method="autoencoder", storage_path=str(tmp_path / "runs"), name="ae",
                      epochs=3, batch_size=8, lr=1e-3, clip_seconds=1.0, cpus_per_worker=0.5,
                      autoencoder={"n_mels": 64, "hidden": 64}, validation={"ref_clips": 4, "test_clips": 8})
    result = train(cfg)
    losses = [m["loss"] for m in result["history"]]
    assert losses[-1] < losses[0], losses
    assert 0 <= result["metrics"]["official_score"] <= 1
    model, loss_fn, info = bundle.load_bundle(result["bundle"])
    assert info.method == "autoencoder" and loss_fn is None and isinstance(model, MelAutoEncoder)

    out = str(tmp_path / "scores")
    summary = run_score(ScoreConfig(bundle=result["bundle"], data=ae_data, out=out, batch_size=8))
    table = read_scores(out)
    assert summary["scored"] == table.num_rows == 2 * 2 * 8  # 2 machines x 2 domains x (4 normal + 4 anomalous)
    assert max(table["score"].to_pylist()) > 2  # reconstruction errors (dB^2), not cosine distances in [0, 2]
    assert os.path.exists(os.path.join(out, "anomaly_score_fan_section_00_test.csv"))
    evaluation = run_evaluate(EvaluateConfig(scores=out))
    assert 0 <= evaluation["official_score"] <= 1
