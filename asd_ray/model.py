"""The dual-stream CNN of the tech report, in plain PyTorch.

Input: raw waveforms ``(batch, samples)``. Features are computed inside the model with torch.fft /
torch.stft, so on a GPU they run on the GPU. Each clip is first scaled to unit RMS
(``level_norm``). Two branches, each to half of the embedding:

- FFT branch: log (and/or linear, ``fft_magnitude``) magnitude of the real FFT of the whole clip ->
  strided 1-D convolutions -> adaptive pooling to a fixed number of frequency bins -> dense layers.
- Spectrogram branch: log magnitude STFT, minus each frequency's mean over the clip
  (``spec_mean_norm``), normalised per frequency -> (SpecAugment in training) -> ResNet-style
  2-D CNN (residual blocks, batch norm) -> max over time -> dense.

The two halves are concatenated into the embedding (256-d by default). Any clip length works.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from asd_ray.augment import spec_augment


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emb_dim: int = Field(256, ge=2, multiple_of=2, description="embedding size; each branch gives half")
    n_fft: int = Field(1024, ge=64)
    hop_length: int = Field(512, ge=16)
    fft_channels: list[int] = Field([64, 128, 128], description="1-D conv widths of the FFT branch")
    fft_bins: int = Field(32, ge=1, description="frequency positions kept after the 1-D convs")
    spec_channels: list[int] = Field([16, 32, 64, 128], description="ResNet stage widths")
    freq_masks: int = Field(2, ge=0, description="SpecAugment frequency masks per clip")
    freq_width: int = Field(32, ge=0, description="SpecAugment max frequency-mask width (bins)")
    time_masks: int = Field(2, ge=0, description="SpecAugment time masks per clip")
    time_width: int = Field(20, ge=0, description="SpecAugment max time-mask width (frames)")
    fft_magnitude: Literal["log", "linear", "both"] = Field(
        "both", description="FFT branch input: log |FFT|; |FFT| itself, where the strongest tones dominate; "
                           "or both as two channels")
    level_norm: bool = Field(True, description="scale every clip to unit RMS first: loudness follows microphone "
                                                "placement and gain, not the machine's condition")
    spec_mean_norm: bool = Field(True, description="subtract each clip's mean over time per frequency from its log "
                                                    "spectrogram: the spectrogram branch then sees how the sound "
                                                    "changes, the FFT branch what it is made of")


def log_magnitude(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x + 1e-5)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, for training and scoring alike; never on the CPU. torch 2.13's CPU
    build computes a bf16 Conv1d with 2 input channels and kernel 256 (the FFT branch's first layer
    with ``fft_magnitude=both``) wrongly through oneDNN on CPUs with AMX (cosine 0.02 to float32),
    so bf16 on the CPU is not offered."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def float32_features(wave: torch.Tensor) -> torch.autocast:
    """Feature extraction stays float32 under autocast: FFTs and logs of small magnitudes need the
    range; the CNN layers after it run in the autocast dtype."""
    return torch.autocast(wave.device.type, enabled=False)


class FFTBranch(nn.Module):
    """|rfft(x)| of the whole clip through strided 1-D convolutions."""

    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        self.magnitude = cfg.fft_magnitude
        c_in = 2 if self.magnitude == "both" else 1
        self.norm = nn.BatchNorm1d(c_in)
        layers = []
        for c_out, (k, s) in zip(cfg.fft_channels, [(256, 64), (64, 8), (16, 2)] + [(3, 1)] * 8):
            layers += [nn.Conv1d(c_in, c_out, k, stride=s, padding=k // 2), nn.BatchNorm1d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool1d(cfg.fft_bins)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * cfg.fft_bins, out_dim), nn.BatchNorm1d(out_dim),
                                  nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with float32_features(wave):
            mag = torch.fft.rfft(wave.float()).abs()
            channels = [log_magnitude(mag)] if self.magnitude != "linear" else []
            channels += [mag] if self.magnitude != "log" else []
            spectrum = self.norm(torch.stack(channels, dim=1))
        return self.head(self.pool(self.convs(spectrum)))


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x), inplace=True)


class SpectrogramBranch(nn.Module):
    """Log magnitude spectrogram through a ResNet-style 2-D CNN."""

    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        freqs = cfg.n_fft // 2 + 1
        self.norm = nn.BatchNorm1d(freqs)  # per-frequency normalisation, learned from the data
        c0 = cfg.spec_channels[0]
        self.stem = nn.Sequential(nn.Conv2d(1, c0, 7, 2, 3, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, c_in = [], c0
        for i, c_out in enumerate(cfg.spec_channels):
            blocks += [ResidualBlock(c_in, c_out, 1 if i == 0 else 2), ResidualBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        with torch.no_grad():
            f_out = self.blocks(self.stem(torch.zeros(1, 1, freqs, 8))).shape[2]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * f_out, out_dim), nn.BatchNorm1d(out_dim),
                                  nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        with float32_features(wave):
            spec = torch.stft(wave.float(), self.cfg.n_fft, self.cfg.hop_length, window=self.window,
                              return_complex=True)
            spec = log_magnitude(spec.abs())  # (batch, freq, time)
            if self.cfg.spec_mean_norm:
                spec = spec - spec.mean(dim=2, keepdim=True)
            return self.norm(spec)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(wave)
        if self.training:
            c = self.cfg
            spec = spec_augment(spec, c.freq_masks, c.freq_width, c.time_masks, c.time_width)
        feat = self.blocks(self.stem(spec[:, None]))  # (batch, channels, freq', time')
        return self.head(feat.amax(dim=3))


class DualStreamNet(nn.Module):
    """Waveforms ``(batch, samples)`` -> embeddings ``(batch, emb_dim)``."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        half = self.cfg.emb_dim // 2
        self.fft_branch = FFTBranch(self.cfg, half)
        self.spec_branch = SpectrogramBranch(self.cfg, half)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.cfg.level_norm:
            with float32_features(wave):
                wave = wave.float() / wave.float().pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)
        return torch.cat([self.fft_branch(wave), self.spec_branch(wave)], dim=1)
