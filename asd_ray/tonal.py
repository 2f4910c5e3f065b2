"""A detector with nothing to train: spectral line alarms, as vibration monitoring sets them.

Per clip, in torch on the scoring device (float32): the mean power spectrum of the clip at fine
resolution (``n_fft`` points: about 1 Hz at 16 kHz), in dB, minus its own moving average over
``smooth_bins`` bins either side (the local noise floor), up to ``max_hz``. What is left is each
bin's tonal prominence: a line (a mains harmonic, a shaft order, a gear mesh) stands out of it,
broadband noise (wind, fans, the room) does not.

A clip's score (``references.alarm_references``) is the largest rise of any bin above the mean of
the normal training clips of its machine, section and domain, in units of that bin's spread over
the section's normal clips, per domain divided by that domain's median (leave-one-out) rise; the
smaller over the domains counts. One new line is enough to raise it, where in a distance over
all bins (the frame statistics) a few changed numbers among thousands are lost. Chosen on the
tune suite, confirmed on the confirm suite (README, Quality).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class TonalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_fft: int = Field(16384, ge=64, description="FFT size of the mean power spectrum (16,384 at 16 kHz: ~1 Hz)")
    max_hz: float = Field(500.0, gt=0, description="highest frequency watched, Hz")
    smooth_bins: int = Field(8, ge=1, description="the noise floor: the moving average over this many bins "
                                                  "either side")

    def bins(self, sample_rate: int) -> int:
        return max(1, min(self.n_fft // 2 + 1, int(self.max_hz * self.n_fft / sample_rate)))


class TonalSpectrum(nn.Module):
    """Waveforms ``(batch, samples)`` -> ``(batch, TonalConfig.bins(sample_rate))`` tonal prominence, dB."""

    def __init__(self, cfg: TonalConfig | None = None, sample_rate: int = 16000):
        super().__init__()
        self.cfg = cfg = cfg or TonalConfig()
        self.bins = cfg.bins(sample_rate)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n_fft, k = self.cfg.n_fft, self.cfg.smooth_bins
        with torch.autocast(wave.device.type, enabled=False):
            # zero padding, not reflection: a clip shorter than half the FFT is still a spectrum
            spec = torch.stft(wave.float(), n_fft, n_fft // 4, window=self.window, pad_mode="constant",
                              return_complex=True)
            level = 10.0 * torch.log10((spec.abs() ** 2).mean(-1) + 1e-10)  # (batch, n_fft // 2 + 1)
            floor = F.avg_pool1d(F.pad(level[:, None], (k, k), mode="replicate"), 2 * k + 1, stride=1)[:, 0]
            return (level - floor)[:, :self.bins]
