"""The tiny models and datasets the tests share: 1 s clips, a few of each kind, models that train
in seconds on a CPU."""

from asd_ray.synth.generate import Counts, SynthConfig, synthesize

TINY_MODEL = dict(emb_dim=32, n_fft=256, hop_length=128, fft_channels=[8, 16, 16], spec_channels=[8, 16],
                  freq_width=8, time_width=8)
SMALLEST_MODEL = dict(emb_dim=16, n_fft=256, hop_length=128, fft_channels=[4, 8, 8], spec_channels=[4, 8],
                      freq_width=8, time_width=8)


def tiny_dataset(out: str, machines: list[str], train_source: int, train_target: int = 4, test: int = 4) -> str:
    """A synthetic dataset of 1 s clips at ``out``: per machine type ``test`` normal and ``test``
    anomalous test clips per domain."""
    synthesize(SynthConfig(out=out, clip_seconds=1.0, machines=machines,
                           counts=Counts(train_source=train_source, train_target=train_target, test_normal=test,
                                         test_anomaly=test)), progress=False)
    return out
