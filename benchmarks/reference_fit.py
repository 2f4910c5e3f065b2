"""Fitting references alone, at 10^3 to 10^6 training embeddings per section: time and peak memory.

    python benchmarks/reference_fit.py [--sizes 1000,10000,100000,1000000] [--max-references 10000]
    python benchmarks/reference_fit.py --detector autoencoder [--covariance pooled|domain]

Random vectors (one machine and section: ``n`` source clips and 10 target clips) stream in
batches of 1,024 through the same code ``asd-ray score`` runs in its driver: the bounded
``ClipSample``, then the references and the out-of-sample thresholds. ``dual-stream``: 256-d unit
vectors, ``knn`` references. ``autoencoder``: 641 numbers a clip (the reconstruction error, then
its 640-d error vector), a Gaussian per domain (Ledoit-Wolf) and the cross-fitted training
scores. Peak memory is the largest resident set of this process above its size before the fit,
sampled every 50 ms.
"""

import argparse
import threading
import time

import numpy as np
import psutil

from asd_ray.bundle import BundleInfo
from asd_ray.labels import LabelMap
from asd_ray.model import ModelConfig
from asd_ray.references import ClipSample
from asd_ray.score import ScoreConfig, references_from_sample


class PeakRss(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.base = psutil.Process().memory_info().rss
        self.peak, self.running = self.base, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
            time.sleep(0.05)


def fit(n: int, max_references: int, detector: str = "dual-stream",
        covariance: str = "pooled") -> tuple[float, float, int]:
    rng = np.random.default_rng(n)
    cfg = ScoreConfig(max_references=max_references, autoencoder_covariance=covariance)
    method, dims = ("autoencoder", 641) if detector == "autoencoder" else ("scadacos", 256)
    info = BundleInfo(method=method, model=ModelConfig(), labels=LabelMap(classes=["a", "b"]), n_subclusters=2,
                      sample_rate=16000, clip_samples=16000)
    monitor = PeakRss()
    monitor.start()
    t0 = time.time()
    sample = ClipSample(max_references)
    for start in range(0, n + 10, 1024):  # the stream of embedded batches
        count = min(1024, n + 10 - start)
        batch = rng.normal(size=(count, dims)).astype(np.float32)
        batch /= np.linalg.norm(batch, axis=1, keepdims=True)
        for i, vector in enumerate(batch):
            k = start + i
            domain = "source" if k < n else "target"
            sample.add(("fan", "00", domain), f"fan/train/section_00_{domain}_{k:08d}", (vector,))
    references_from_sample(cfg, [info], sample)
    seconds = time.time() - t0
    monitor.running = False
    monitor.join()
    return seconds, (monitor.peak - monitor.base) / 2**20, sum(sample.kept().values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--max-references", type=int, default=ScoreConfig.model_fields["max_references"].default)
    p.add_argument("--detector", choices=["dual-stream", "autoencoder"], default="dual-stream")
    p.add_argument("--covariance", choices=["pooled", "domain"], default="pooled", help="autoencoder only")
    a = p.parse_args()
    print("| training embeddings per section | training clips kept | fit time (s) | peak memory above start (MiB) |")
    print("|---|---|---|---|")
    for n in map(int, a.sizes.split(",")):
        seconds, mib, kept = fit(n, a.max_references, a.detector, a.covariance)
        print(f"| {n:,} | {kept:,} | {seconds:.1f} | {mib:.0f} |", flush=True)


if __name__ == "__main__":
    main()
