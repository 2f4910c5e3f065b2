"""Vectorised signal building blocks for the synthetic machines.

Every function works on a batch of clips at once: arrays are ``(clips, samples)`` float32 and
per-clip parameters are ``(clips,)`` arrays, so a whole shard renders in a handful of numpy calls.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import next_fast_len

F32 = np.float32


def col(x) -> np.ndarray:
    """Per-clip parameter as a column, ready to broadcast against ``(clips, samples)``."""
    return np.asarray(x, dtype=F32).reshape(-1, 1)


def unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) + 1e-8)


def shaped_noise(rng: np.random.Generator, n: int, T: int, sr: int, envelope) -> np.ndarray:
    """Gaussian noise with magnitude spectrum ``envelope(freqs)`` (shape ``(n, F)`` or ``(F,)``), unit RMS."""
    freqs = np.fft.rfftfreq(T, 1.0 / sr).astype(F32)
    spec = rng.standard_normal((n, len(freqs)), dtype=F32) + 1j * rng.standard_normal((n, len(freqs)), dtype=F32)
    spec *= np.asarray(envelope(freqs), dtype=F32)
    return unit_rms(np.fft.irfft(spec, n=T, axis=-1).astype(F32))


def lowpass_env(cutoff: np.ndarray, order: float = 2.0):
    return lambda f: 1.0 / (1.0 + (f[None, :] / col(cutoff)) ** order)


def bandpass_env(center: np.ndarray, width: np.ndarray):
    return lambda f: np.exp(-0.5 * ((f[None, :] - col(center)) / col(width)) ** 2)


def slow_wobble(rng: np.random.Generator, n: int, T: int, sr: int, depth: np.ndarray) -> np.ndarray:
    """Smooth random speed fluctuation ``1 + depth * w(t)``, ``w`` a sum of three slow sinusoids."""
    t = np.arange(T, dtype=F32) / sr
    w = np.zeros((n, T), F32)
    for _ in range(3):
        f = rng.uniform(0.05, 0.8, (n, 1)).astype(F32)
        ph = rng.uniform(0, 2 * np.pi, (n, 1)).astype(F32)
        w += np.sin(2 * np.pi * f * t + ph) / 3
    return 1.0 + col(depth) * w


def phase(freq: np.ndarray, sr: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Running phase (radians, wrapped) of an instantaneous frequency track ``(n, T)`` in Hz."""
    ph = np.cumsum(freq.astype(np.float64), axis=-1) * (2 * np.pi / sr)
    if rng is not None:
        ph += rng.uniform(0, 2 * np.pi, (freq.shape[0], 1))
    return np.mod(ph, 2 * np.pi).astype(F32)


def harmonics(ph: np.ndarray, amps: np.ndarray, orders, rng: np.random.Generator) -> np.ndarray:
    """``sum_k amps[:, k] * sin(orders[k] * ph + random phase)``."""
    out = np.zeros_like(ph)
    for k, order in enumerate(orders):
        offset = rng.uniform(0, 2 * np.pi, (ph.shape[0], 1)).astype(F32)
        out += col(amps[:, k]) * np.sin(F32(order) * ph + offset)
    return out


def event_train(rng: np.random.Generator, T: int, sr: int, rate: np.ndarray, jitter_s: np.ndarray,
                amp_sigma: np.ndarray | float = 0.1, keep_prob: np.ndarray | float = 1.0) -> np.ndarray:
    """Unit impulses at ``k / rate`` (per clip) with Gaussian timing jitter and log-normal amplitudes."""
    n = len(rate)
    rate = np.asarray(rate, dtype=np.float64)
    max_events = int(np.ceil(T / sr * rate.max())) + 2
    k = np.arange(max_events)[None, :]
    times = (k + rng.uniform(0, 1, (n, 1))) / rate[:, None] + rng.standard_normal((n, max_events)) * col(jitter_s)
    idx = np.round(times * sr).astype(np.int64)
    amp = np.exp(rng.standard_normal((n, max_events)) * col(amp_sigma))
    amp *= rng.uniform(0, 1, (n, max_events)) < col(keep_prob)
    valid = (idx >= 0) & (idx < T)
    out = np.zeros((n, T), F32)
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    np.add.at(out, (rows[valid], idx[valid]), amp[valid].astype(F32))
    return out


def resonance(freq: np.ndarray, decay_s: np.ndarray, sr: int, length_s: float = 0.05) -> np.ndarray:
    """Impulse responses ``exp(-t / decay) sin(2 pi f t)`` of per-clip resonators, ``(n, L)``."""
    t = np.arange(int(length_s * sr), dtype=F32) / sr
    return np.exp(-t / col(decay_s)) * np.sin(2 * np.pi * col(freq) * t)


def convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Row-wise linear convolution, cropped to ``x``'s length (FFT based)."""
    T = x.shape[-1]
    size = next_fast_len(T + kernel.shape[-1] - 1, real=True)
    out = np.fft.irfft(np.fft.rfft(x, size, axis=-1) * np.fft.rfft(kernel, size, axis=-1), size, axis=-1)
    return out[:, :T].astype(F32)


def pulse_window(ph: np.ndarray, width: float) -> np.ndarray:
    """A smooth once-per-cycle pulse of a phase track: 1 near phase 0, 0 elsewhere."""
    return np.exp((np.cos(ph) - 1.0) / (width ** 2)).astype(F32)
