"""The tonal detector: the fine spectrum's tonal prominence and its line alarms."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from asd_ray.references import References, alarm_references
from asd_ray.tonal import TonalConfig, TonalSpectrum

SR = 16000


@pytest.mark.parametrize("seconds", [0.25, 1.0, 5.0])
def test_the_spectrum_has_one_size_for_any_clip_length(seconds):
    model = TonalSpectrum()
    out = model(torch.randn(3, int(seconds * SR)))
    assert out.shape == (3, TonalConfig().bins(SR)) == (3, 512) and torch.isfinite(out).all()


def test_settings_are_read_from_the_training_config():
    from asd_ray.config import ConfigError, load_config
    from asd_ray.train import TrainConfig

    assert load_config(TrainConfig, None, ["tonal.max_hz=2000"]).tonal.bins(SR) == 2048
    assert load_config(TrainConfig, None, ["tonal=null"]).tonal is None
    with pytest.raises(ConfigError, match="tonal.max_hz"):
        load_config(TrainConfig, None, ["tonal.max_hz=-1"])


def machine(rng: np.random.Generator, n: int, line: bool, seconds: float = 2.0) -> np.ndarray:
    """Harmonics of 120 Hz in broadband noise whose level varies by 20 dB from clip to clip (wind,
    fans), or (``line``) with a weak tone at 300 Hz as well, below the loudest noise's level in its
    mel band."""
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        wave = 10 ** rng.uniform(-2, -1) * rng.normal(size=t.size)
        for k in range(1, 4):
            wave += 0.1 / k * rng.uniform(0.7, 1.3) * np.sin(2 * np.pi * 120 * k * t + rng.uniform(0, 6.3))
        if line:
            wave += 0.005 * np.sin(2 * np.pi * 300 * t + rng.uniform(0, 6.3))
        out.append(wave)
    return np.stack(out).astype(np.float32)


def test_a_new_line_raises_the_alarm_whatever_the_level_of_the_noise():
    rng = np.random.default_rng(0)
    model = TonalSpectrum()
    with torch.no_grad():
        x = {name: model(torch.from_numpy(machine(rng, n, line))).numpy()
             for name, n, line in (("train", 30, False), ("normal", 20, False), ("fault", 20, True))}
    refs = alarm_references({("transformer", "00", "source"): x["train"]})
    scores = refs.score("transformer", "00", np.concatenate([x["normal"], x["fault"]]))
    assert roc_auc_score([0] * 20 + [1] * 20, scores) > 0.95


def test_alarms_round_trip_leave_each_training_clip_out_and_take_the_nearer_domain():
    rng = np.random.default_rng(1)
    scale = np.array([1.0, 100.0, 0.01])
    source, target = rng.normal(size=(30, 3)) * scale, 5 + rng.normal(size=(6, 3)) * scale
    refs = alarm_references({("valve", "00", "source"): source, ("valve", "00", "target"): target})
    key = ("valve", "00")
    clips = np.concatenate([source, target])
    mean, std = clips.mean(0), clips.std(0) + 1e-6
    z = (clips - mean) / std

    def rise(x, others):
        return np.max(x - others.mean(0))

    loo = {d: np.array([rise(zd[i], np.delete(zd, i, 0)) for i in range(len(zd))])
           for d, zd in (("source", z[:30]), ("target", z[30:]))}
    scales = {d: np.median(v) for d, v in loo.items()}
    np.testing.assert_allclose(refs.scales[key], [scales["source"], scales["target"]], rtol=1e-5)
    held_out = refs.training_scores(key, clips)
    expected = min(loo["source"][0] / scales["source"], rise(z[0], z[30:]) / scales["target"])
    assert held_out[0] == pytest.approx(expected, rel=1e-4)

    queries = rng.normal(size=(7, 3)) * scale
    loaded = References.from_bytes(refs.to_bytes())
    loaded.meta = {"method": "alarm"}  # as asd-ray score saves it
    np.testing.assert_allclose(loaded.score(*key, queries), refs.score(*key, queries), rtol=1e-5)
    q = (queries - mean) / std
    manual = np.minimum((q - z[:30].mean(0)).max(1) / scales["source"], (q - z[30:].mean(0)).max(1) / scales["target"])
    np.testing.assert_allclose(refs.score(*key, queries), manual, rtol=1e-4)


def test_a_domain_with_one_training_clip_is_refused_with_the_section_named():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="the tonal detector needs at least 2 .* valve section 00 target has 1"):
        alarm_references({("valve", "00", "source"): rng.normal(size=(5, 3)),
                          ("valve", "00", "target"): rng.normal(size=(1, 3))})
