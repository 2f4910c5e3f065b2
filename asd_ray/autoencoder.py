"""The DCASE autoencoder baseline, as a comparator trained and scored through the same jobs.

As in the official DCASE 2020-2025 Task 2 baseline: one model per machine type (here all of them
in one module, trained in one Ray job and saved as one bundle), log-mel spectrogram (128 bins),
vectors of 5 consecutive frames (640 values), a dense autoencoder
640-128-128-128-128-8-128-128-128-128-640 with batch norm and ReLU, trained on normal clips to
reconstruct them. Scores (see ``score``): the clip's mean squared reconstruction error, or the
Mahalanobis distance of its mean error vector to the normal clips' of its section and domain.
Features run in torch inside the model (GPU on a GPU).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class AEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_mels: int = Field(128, ge=8)
    frames: int = Field(5, ge=1, description="consecutive frames per input vector")
    n_fft: int = Field(1024, ge=64)
    hop_length: int = Field(512, ge=16)
    hidden: int = Field(128, ge=8)
    bottleneck: int = Field(8, ge=1)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, ``(n_mels, n_fft // 2 + 1)``."""
    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    edges = torch.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2)
    hz = 700.0 * (10 ** (edges / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def mel_power(wave: torch.Tensor, window: torch.Tensor, mel: torch.Tensor, hop_length: int) -> torch.Tensor:
    """``(batch, n_mels, frames)`` mel-band power of waveforms, in float32 even under autocast (FFTs
    and the logs taken of it need the range); ``window``'s length is the FFT size."""
    with torch.autocast(wave.device.type, enabled=False):
        spec = torch.stft(wave.float(), len(window), hop_length, window=window, return_complex=True).abs() ** 2
        return mel @ spec


class MelAutoEncoder(nn.Module):
    """Waveforms ``(batch, samples)`` -> mean squared reconstruction error per clip ``(batch,)``."""

    def __init__(self, cfg: AEConfig | None = None, sample_rate: int = 16000):
        super().__init__()
        self.cfg = cfg = cfg or AEConfig()
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(sample_rate, cfg.n_fft, cfg.n_mels), persistent=False)
        dim = cfg.n_mels * cfg.frames

        def dense(d_in: int, d_out: int) -> list[nn.Module]:
            return [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]

        h = cfg.hidden
        self.encoder = nn.Sequential(*dense(dim, h), *dense(h, h), *dense(h, h), *dense(h, h),
                                     *dense(h, cfg.bottleneck))
        self.decoder = nn.Sequential(*dense(cfg.bottleneck, h), *dense(h, h), *dense(h, h), *dense(h, h),
                                     nn.Linear(h, dim))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """``(batch, vectors, n_mels * frames)``: log-mel frames stacked ``frames`` at a time."""
        logmel = 10.0 * torch.log10(mel_power(wave, self.window, self.mel, self.cfg.hop_length) + 1e-10)
        vectors = logmel.unfold(2, self.cfg.frames, 1)  # (batch, n_mels, time - frames + 1, frames)
        return vectors.permute(0, 2, 3, 1).flatten(2)  # frame-major, as the baseline's vectors

    def errors(self, wave: torch.Tensor) -> torch.Tensor:
        """Reconstruction errors ``(batch, vectors, n_mels * frames)``."""
        x = self.features(wave)
        flat = x.flatten(0, 1)
        return (self.decoder(self.encoder(flat)).float() - flat).view(x.shape)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per clip ``(batch,)``."""
        return (self.errors(wave) ** 2).mean(dim=(1, 2))


class MachineAutoEncoders(nn.Module):
    """One :class:`MelAutoEncoder` per machine type; each clip goes through its machine type's.
    ``machine`` holds indices into ``machines`` (-1: a type without a model, whose rows stay NaN)."""

    def __init__(self, machines: list[str], cfg: AEConfig | None = None, sample_rate: int = 16000):
        super().__init__()
        self.machines = list(machines)
        self.members = nn.ModuleList(MelAutoEncoder(cfg, sample_rate) for _ in self.machines)

    def index(self, machines) -> torch.Tensor:
        lookup = {m: i for i, m in enumerate(self.machines)}
        return torch.tensor([lookup.get(m, -1) for m in machines], dtype=torch.long)

    def _per_machine(self, wave: torch.Tensor, machine: torch.Tensor, fn, width: int) -> torch.Tensor:
        out = torch.full((len(wave), width), float("nan"), device=wave.device)
        for i in machine.unique().tolist():
            if i >= 0:
                rows = machine == i
                out[rows] = fn(self.members[i], wave[rows]).view(int(rows.sum()), width)
        return out

    def forward(self, wave: torch.Tensor, machine: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per clip ``(batch,)``: the training loss, and the MSE score."""
        return self._per_machine(wave, machine, lambda m, w: m(w), 1)[:, 0]

    def score_features(self, wave: torch.Tensor, machine: torch.Tensor) -> torch.Tensor:
        """``(batch, 1 + n_mels * frames)``: the clip's mean squared error, then its mean error vector."""
        dim = self.members[0].cfg.n_mels * self.members[0].cfg.frames if self.members else 0

        def features(member: MelAutoEncoder, w: torch.Tensor) -> torch.Tensor:
            err = member.errors(w)
            return torch.cat([(err ** 2).mean(dim=(1, 2))[:, None], err.mean(dim=1)], dim=1)
        return self._per_machine(wave, machine, features, 1 + dim)
