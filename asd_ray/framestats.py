"""A detector with nothing to train: statistics of the clip's log-mel frames, scored by the distance
to the nearest normal training clips of its machine, section and domain (issue 15's generic
second detector).

Per clip, in torch on the scoring device (float32):

- the mean and the standard deviation over time of each log-mel band: what the sound is made of
  and how much each band varies;
- the autocorrelation of the broadband energy envelope at lags of 1 to ``lags`` frames: the
  rhythm of events (a belt joint slapping twice, a stroke that comes late);
- the modulation spectrum of ``bands`` groups of bands: the log magnitude of the envelope's
  Fourier coefficients 1 to ``rates`` (cycles per clip), how fast each part of the spectrum beats;
- the cepstrum of the clip's mean power spectrum (``cepstrum_n_fft`` points, coefficients 1 to
  ``cepstrum``): the families of harmonics and their spacing (a rotation rate, a line frequency
  and its harmonics, a whine's sidebands), which 64 mel bands blur. Chosen on the tune suite
  (README, Quality: the statistics alone 85.7 without it, 94.5 with 1,600 coefficients) and
  confirmed on the confirm suite (80.8 -> 88.2);
- how impulsive and how abrupt each band is: the kurtosis of its power over time (log) and the
  standard deviation of its frame-to-frame change (``kurtosis``, ``flux``). A train of short
  impacts and the same energy spread evenly have one spectrum and differ in these. Chosen on the
  tune suite and confirmed (thirtieth session; README, Quality), added after the others, so
  bundles saved before keep the statistics they had (``bundle.load_bundle``).

Each is standardised per machine and section by its normal training clips, and a clip's score is
its Euclidean distance to the nearest of them, per domain divided by that domain's median
leave-one-out distance (``references.knn_references(standardise=True)``). Where the auxiliary
task of the dual-stream model does not need a fault's cues, these statistics still change with
it; the hybrid score adds this score to the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from asd_ray.autoencoder import mel_filterbank, mel_power


class FrameStatsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_mels: int = Field(64, ge=8)
    n_fft: int = Field(1024, ge=64)
    hop_length: int = Field(512, ge=16)
    lags: int = Field(96, ge=1, description="envelope autocorrelation lags, in frames")
    bands: int = Field(8, ge=1, description="groups of mel bands for the modulation spectrum (divides n_mels)")
    rates: int = Field(32, ge=1, description="modulation spectrum coefficients per group, from 1 cycle per clip")
    cepstrum_n_fft: int = Field(4096, ge=64, description="FFT size of the mean power spectrum the cepstrum is of")
    cepstrum: int = Field(1600, ge=0, description="cepstral coefficients, from quefrency 1 sample; 0: none")
    kurtosis: bool = Field(True, description="each mel band's kurtosis of its power over time (log): how "
                                             "impulsive it is (bearing impulses, knocks)")
    flux: bool = Field(True, description="each mel band's standard deviation of its frame-to-frame log-mel "
                                         "change: how abruptly it moves")

    @model_validator(mode="after")
    def _sizes_fit(self) -> "FrameStatsConfig":
        if self.n_mels % self.bands:
            raise ValueError(f"bands={self.bands} must divide n_mels={self.n_mels}")
        if self.cepstrum > self.cepstrum_n_fft // 2:
            raise ValueError(f"cepstrum={self.cepstrum} coefficients need cepstrum_n_fft >= {2 * self.cepstrum} "
                             f"(is {self.cepstrum_n_fft})")
        return self

    @property
    def dim(self) -> int:
        return (2 + self.kurtosis + self.flux) * self.n_mels + self.lags + self.bands * self.rates + self.cepstrum


class FrameStats(nn.Module):
    """Waveforms ``(batch, samples)`` -> ``(batch, FrameStatsConfig.dim)`` clip statistics."""

    def __init__(self, cfg: FrameStatsConfig | None = None, sample_rate: int = 16000):
        super().__init__()
        self.cfg = cfg = cfg or FrameStatsConfig()
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(sample_rate, cfg.n_fft, cfg.n_mels), persistent=False)
        self.register_buffer("cepstrum_window", torch.hann_window(cfg.cepstrum_n_fft), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        with torch.autocast(wave.device.type, enabled=False):
            power = mel_power(wave, self.window, self.mel, cfg.hop_length)  # (batch, n_mels, frames)
            logmel = 10.0 * torch.log10(power + 1e-10)
            frames = logmel.shape[-1]
            envelope = torch.log10(power.sum(1) + 1e-10)
            envelope = envelope - envelope.mean(-1, keepdim=True)
            spectrum = torch.fft.rfft(envelope, n=2 * frames)  # zero-padded: a linear, not circular, correlation
            corr = torch.fft.irfft(spectrum.abs() ** 2, n=2 * frames)[:, :frames]
            corr = corr / (corr[:, :1] + 1e-9)
            corr = F.pad(corr[:, 1:cfg.lags + 1], (0, max(0, cfg.lags + 1 - frames)))  # short clips: zeros
            groups = logmel.reshape(len(logmel), cfg.bands, cfg.n_mels // cfg.bands, frames).mean(2)
            groups = groups - groups.mean(-1, keepdim=True)
            rates = torch.fft.rfft(groups, n=max(frames, 2 * cfg.rates), dim=-1).abs()[:, :, 1:cfg.rates + 1]
            stats = [logmel.mean(-1), logmel.std(-1), corr, torch.log10(rates + 1e-6).flatten(1),
                     self.cepstrum_of(wave)]
            if cfg.kurtosis:
                z = (power - power.mean(-1, keepdim=True)) / (power.std(-1, keepdim=True) + 1e-12)
                stats.append(torch.log((z ** 4).mean(-1) + 1e-6))
            if cfg.flux:
                stats.append(logmel.diff(dim=-1).std(-1))
            return torch.cat(stats, dim=1)

    def cepstrum_of(self, wave: torch.Tensor) -> torch.Tensor:
        """Coefficients 1 to ``cepstrum`` of the real cepstrum of the mean power spectrum (float32)."""
        n_fft = self.cfg.cepstrum_n_fft
        if not self.cfg.cepstrum:  # none asked for: no FFT to take
            return wave.new_zeros(len(wave), 0, dtype=torch.float32)
        spec = torch.stft(wave.float(), n_fft, n_fft // 4, window=self.cepstrum_window, return_complex=True)
        mean_power = (spec.abs() ** 2).mean(-1)
        return torch.fft.irfft(torch.log(mean_power + 1e-10), n=n_fft, dim=-1)[:, 1:self.cfg.cepstrum + 1]
