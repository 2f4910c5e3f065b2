"""Screen a candidate fifth detector on a quality run's data: the envelope spectrum (eighteenth session).

Vibration monitoring finds bearing impulses, knocks and once-per-revolution modulation in the
spectrum of a band's envelope, at modulation rates up to hundreds of Hz. The frame statistics see
modulation only up to their frame rate's Nyquist (about 15 Hz at hop 512). Here, per clip: the
power of ``bands`` equal-width frequency bands over 2 ms frames (STFT of 256 points, hop 32), each
divided by its mean (modulation depth, not level), then Welch's estimate of each envelope's power
spectrum (1 s Hann segments, averaged), pooled into ``rates`` log-spaced bins from 2 Hz to 250 Hz,
in log10. Scored as the frame statistics are (``knn_references(standardise=True)``), standardised
by the section's training-clip scores, and either added to the run's hybrid as a fifth term or
appended to the frame statistics' vector. Not adopted: it won on the tune suites and lost on
confirm (README, Quality).

    python benchmarks/envelope_screen.py --out /tmp/qs/tune6-hard --run final16     # choose here
    python benchmarks/envelope_screen.py --out /tmp/qs/confirm --run final14 --set 8 32
"""

import argparse

import numpy as np
import torch

from asd_ray import schema
from asd_ray.framestats import FrameStats, FrameStatsConfig

from framestats_screen import detector_z, official, statistics, suite


def envelope_spectrum(wave: torch.Tensor, bands: int, rates: int, sample_rate: int, n_fft: int = 256, hop: int = 32,
                      lowest_hz: float = 2.0) -> torch.Tensor:
    """Waveforms ``(batch, samples)`` -> ``(batch, bands * rates)`` log envelope spectra."""
    power = torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    envelope = power[:, 1:].reshape(len(wave), bands, (n_fft // 2) // bands, -1).sum(2)
    envelope = envelope / (envelope.mean(-1, keepdim=True) + 1e-10) - 1
    frame_rate, segment = sample_rate / hop, int(sample_rate / hop)  # 1 s segments: 1 Hz resolution
    if envelope.shape[-1] < segment:
        envelope = torch.nn.functional.pad(envelope, (0, segment - envelope.shape[-1]))
    count = envelope.shape[-1] // segment
    segments = envelope[..., :count * segment].reshape(len(wave), bands, count, segment) * torch.hann_window(segment)
    spectrum = (torch.fft.rfft(segments, dim=-1).abs() ** 2).mean(2)
    freqs = torch.fft.rfftfreq(segment, 1 / frame_rate)
    edges = torch.logspace(np.log10(lowest_hz), np.log10(frame_rate / 2), rates + 1)
    bins = torch.bucketize(freqs, edges) - 1
    kept = (bins >= 0) & (bins < rates)
    pooled = torch.zeros(len(wave), bands, rates).index_add_(2, bins[kept], spectrum[..., kept])
    counts = torch.zeros(rates).index_add_(0, bins[kept], torch.ones(int(kept.sum())))
    return torch.log10(pooled / counts.clamp(min=1) + 1e-8).flatten(1)


def envelopes(audio: np.ndarray, sample_rate: int, bands: int, rates: int, batch: int = 64) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([envelope_spectrum(torch.from_numpy(pcm.astype(np.float32) / schema.PCM16_FULL_SCALE),
                                                 bands, rates, sample_rate).numpy()
                               for pcm in np.split(audio, range(batch, len(audio), batch))])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run whose detectors' scores to add to")
    p.add_argument("--set", nargs=2, type=int, action="append", metavar=("BANDS", "RATES"),
                   help="bands and rates of one setting (repeat; default: 8 32 and 16 16)")
    args = p.parse_args()
    train, train_audio, test, test_audio, table, z = suite(args.out, args.run)
    rate = train["sample_rate"][0]
    model = FrameStats(FrameStatsConfig(), rate)
    frame_train, frame_test = statistics(model, train_audio), statistics(model, test_audio)
    print(f"| detector | alone | in the hybrid ({args.run}) |\n|---|---|---|")
    print(f"| the run's hybrid | | {official(table, z.sum(0))} |", flush=True)
    for bands, rates in args.set or [(8, 32), (16, 16)]:
        env_train, env_test = envelopes(train_audio, rate, bands, rates), envelopes(test_audio, rate, bands, rates)
        score, env_z = detector_z(train, env_train, test, env_test)
        print(f"| envelope spectrum {bands} x {rates}, a fifth term | {official(table, score)} | "
              f"{official(table, z.sum(0) + env_z)} |", flush=True)
        score, frame_z = detector_z(train, np.hstack([frame_train, env_train]), test, np.hstack([frame_test, env_test]))
        print(f"| frame statistics with it appended | {official(table, score)} | "
              f"{official(table, z.sum(0) - z[2] + frame_z)} |", flush=True)


if __name__ == "__main__":
    main()
