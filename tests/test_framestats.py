"""The frame-statistics detector: its features and its standardised nearest-neighbour references."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from asd_ray.framestats import FrameStats, FrameStatsConfig
from asd_ray.references import References, knn_references

SR = 16000


@pytest.mark.parametrize("seconds", [0.5, 1.0, 5.0])
def test_statistics_have_one_size_for_any_clip_length(seconds):
    for cfg in (FrameStatsConfig(), FrameStatsConfig(cepstrum=0)):
        out = FrameStats(cfg)(torch.randn(3, int(seconds * SR)))
        assert out.shape == (3, cfg.dim) and torch.isfinite(out).all()


def test_a_bad_setting_is_refused_when_the_config_is_read():
    """Before a training job starts, not when it saves the bundle at its end."""
    from asd_ray.config import ConfigError, load_config
    from asd_ray.train import TrainConfig

    with pytest.raises(ConfigError, match=r"framestats: .*bands=5 must divide n_mels=64"):
        load_config(TrainConfig, None, ["framestats.bands=5"])
    with pytest.raises(ConfigError, match=r"cepstrum=3000 coefficients need cepstrum_n_fft >= 6000 \(is 4096\)"):
        load_config(TrainConfig, None, ["framestats.cepstrum=3000"])
    assert load_config(TrainConfig, None, ["framestats.cepstrum=0"]).framestats.dim == 608
    assert load_config(TrainConfig, None, ["framestats.cepstrum=0", "framestats.kurtosis=false",
                                           "framestats.flux=false"]).framestats.dim == 480
    assert load_config(TrainConfig, None, ["framestats=null"]).framestats is None


def clicks(rng: np.random.Generator, n: int, pairs: bool, seconds: float = 4.0) -> np.ndarray:
    """A hum with a click every 0.25 s, or (``pairs``) the same number of clicks in pairs 0.1 s
    apart: the same sounds, only their rhythm differs."""
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        wave = 0.05 * np.sin(2 * np.pi * 120 * t + rng.uniform(0, 6.3)) + 0.01 * rng.normal(size=t.size)
        start = rng.uniform(0, 0.25)
        times = (start + 0.5 * np.arange(8))[:, None] + np.array([0.0, 0.1]) if pairs else start + 0.25 * np.arange(16)
        for at in np.ravel(times):
            i = int(at * SR)
            burst = rng.normal(size=400) * np.exp(-np.arange(400) / 60)
            wave[i:i + 400] += 0.5 * burst[:len(wave[i:i + 400])]
        out.append(wave)
    return np.stack(out).astype(np.float32)


def test_a_fault_that_changes_only_the_rhythm_of_events_scores_higher():
    """Clicks in pairs instead of evenly spaced (conveyor's doubled joint slap): the spectrum is the
    same; the envelope's autocorrelation and modulation spectrum are not."""
    rng = np.random.default_rng(0)
    model = FrameStats()
    with torch.no_grad():
        features = {name: model(torch.from_numpy(clicks(rng, n, pairs))).numpy()
                    for name, n, pairs in (("train", 40, False), ("normal", 20, False), ("fault", 20, True))}

    def auc(dims: slice) -> float:
        refs = knn_references({("conveyor", "00", "source"): features["train"][:30, dims],
                               ("conveyor", "00", "target"): features["train"][30:, dims]}, standardise=True)
        scores = refs.score("conveyor", "00", np.concatenate([features["normal"][:, dims], features["fault"][:, dims]]))
        return roc_auc_score([0] * 20 + [1] * 20, scores)

    assert auc(slice(None)) > 0.95
    assert auc(slice(0, 2 * model.cfg.n_mels)) < 0.75  # the bands' mean and spread alone barely see it


def hum(rng: np.random.Generator, n: int, interharmonics: bool, seconds: float = 2.0) -> np.ndarray:
    """Harmonics of 120 Hz with random levels and phases in noise, or (``interharmonics``) with
    weak components at the odd multiples of 60 Hz between them as well: a new family of harmonics
    (a half-rate rotation, a DC-biased core) about 20 dB below the old one."""
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        wave = 0.02 * rng.normal(size=t.size)
        for k in range(1, 30):
            wave += 0.1 / k * rng.uniform(0.7, 1.3) * np.sin(2 * np.pi * 120 * k * t + rng.uniform(0, 6.3))
            if interharmonics:
                wave += 0.01 / k * np.sin(2 * np.pi * 60 * (2 * k - 1) * t + rng.uniform(0, 6.3))
        out.append(wave)
    return np.stack(out).astype(np.float32)


def test_a_new_family_of_harmonics_is_seen_by_the_cepstrum():
    rng = np.random.default_rng(3)
    model = FrameStats()
    with torch.no_grad():
        features = {name: model(torch.from_numpy(hum(rng, n, fault))).numpy()
                    for name, n, fault in (("train", 30, False), ("normal", 15, False), ("fault", 15, True))}
    cepstrum = slice(model.cfg.dim - model.cfg.cepstrum, None)
    refs = knn_references({("transformer", "00", "source"): features["train"][:, cepstrum]}, standardise=True)
    scores = refs.score("transformer", "00", np.concatenate([features["normal"][:, cepstrum],
                                                             features["fault"][:, cepstrum]]))
    assert roc_auc_score([0] * 15 + [1] * 15, scores) > 0.95


def test_impulses_raise_each_bands_kurtosis_and_flux():
    """A hum with steady noise, and the same noise energy in 16 bursts of 25 ms (bearing impulses,
    knocks): each band's kurtosis over time and its frame-to-frame change rise."""
    rng = np.random.default_rng(1)
    n = 4 * SR
    hum = 0.05 * np.sin(2 * np.pi * 120 * np.arange(n) / SR)
    gate = np.zeros(n)
    for k in range(16):
        gate[k * n // 16:k * n // 16 + 400] = 1.0
    steady = np.stack([hum + 0.02 * rng.normal(size=n) for _ in range(8)])
    bursts = np.stack([hum + 0.02 * rng.normal(size=n) * gate * np.sqrt(n / gate.sum()) for _ in range(8)])
    cfg = FrameStatsConfig()
    with torch.no_grad():
        a, b = (FrameStats(cfg)(torch.from_numpy(x.astype(np.float32))).numpy().mean(0) for x in (steady, bursts))
    m, start = cfg.n_mels, cfg.dim - 2 * cfg.n_mels  # the two families come last
    kurtosis, flux = slice(start, start + m), slice(start + m, start + 2 * m)
    assert np.median(b[kurtosis] - a[kurtosis]) > 0.5  # log kurtosis (measured: 1.09, 3 times as impulsive)
    assert np.median(b[flux] / a[flux]) > 4.0  # measured: 16.8


def test_a_bundle_saved_before_the_impulse_statistics_keeps_the_statistics_it_had(tmp_path):
    import json

    from asd_ray.bundle import PRE_IMPULSE_FRAMESTATS, BundleInfo, load_bundle, save_untrained
    from asd_ray.labels import LabelMap
    from asd_ray.model import ModelConfig

    info = BundleInfo(method="framestats", model=ModelConfig(), labels=LabelMap(classes=["a", "b"]),
                      n_subclusters=1, sample_rate=SR, clip_samples=SR)
    for folder, old in (("new", False), ("old", True)):
        save_untrained(str(tmp_path / folder), info)
        if old:  # as written before the two families existed
            meta = json.loads((tmp_path / folder / "bundle.json").read_text())
            meta["framestats"] = {k: v for k, v in meta["framestats"].items() if k not in PRE_IMPULSE_FRAMESTATS}
            (tmp_path / folder / "bundle.json").write_text(json.dumps(meta))
        model, _, loaded = load_bundle(str(tmp_path / folder))
        assert (loaded.framestats.kurtosis, loaded.framestats.flux) == ((False, False) if old else (True, True))
        assert model(torch.randn(2, SR)).shape == (2, 2080 if old else 2208)


def test_standardised_references_round_trip_and_leave_each_training_clip_out():
    rng = np.random.default_rng(1)
    scale = np.array([1.0, 100.0, 0.01])  # dimensions of very different ranges count alike once standardised
    source, target = rng.normal(size=(30, 3)) * scale, 5 + rng.normal(size=(5, 3)) * scale
    refs = knn_references({("valve", "00", "source"): source, ("valve", "00", "target"): target}, standardise=True)
    key = ("valve", "00")
    mean, std = refs.standard[key]
    np.testing.assert_allclose(mean, np.concatenate([source, target]).mean(0), rtol=1e-6)
    loaded = References.from_bytes(refs.to_bytes())
    queries = rng.normal(size=(7, 3)) * scale
    np.testing.assert_allclose(loaded.score(*key, queries), refs.score(*key, queries), rtol=1e-5)

    clips = np.concatenate([source, target])
    held_out = refs.training_scores(key, clips)
    assert (held_out > 0).all()  # a clip is not its own neighbour
    z = (clips - mean) / std
    first = np.sqrt(((z[1:30] - z[0]) ** 2).sum(1)).min()  # clip 0's nearest other source clip
    nearest_target = np.sqrt(((z[30:] - z[0]) ** 2).sum(1)).min()
    source_scale = refs.scales[key][0]
    target_scale = refs.scales[key][-1]
    assert held_out[0] == pytest.approx(min(first / source_scale, nearest_target / target_scale), rel=1e-4)


def test_a_domain_with_one_training_clip_is_refused_with_the_section_named():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="the frame statistics need at least 2 .* valve section 00 target has 1"):
        knn_references({("valve", "00", "source"): rng.normal(size=(5, 3)),
                        ("valve", "00", "target"): rng.normal(size=(1, 3))}, standardise=True)
