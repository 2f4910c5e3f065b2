"""Fitting references alone, at 10^3 to 10^6 training embeddings per section: time and peak memory.

    python benchmarks/reference_fit.py [--sizes 1000,10000,100000,1000000] [--max-references 10000]
    python benchmarks/reference_fit.py --detector autoencoder [--covariance pooled|domain]
    python benchmarks/reference_fit.py --sections 1,4 --sizes 10000 --detector autoencoder

Random vectors (per section of one machine type: ``n`` source clips and 10 target clips) through
the same code ``asd-ray score`` runs: the sample's rank cutoffs from the clip ids in batches of
1,024 (``RankCutoffs``, as its per-shard tasks make them), then vectors for the clips in the sample
only, put into the object store in chunks of at most 1,024 (``SampleChunks``), then each
section's references and out-of-sample thresholds in a Ray task of its own
(``reference_fit.fit_sample``, as many at once as the local Ray has CPUs), then the references
file written from the object store a section at a time (``save_references``, to a temporary
folder). ``dual-stream``: 256-d unit
vectors, ``knn`` references. ``autoencoder``: 641 numbers a clip (the reconstruction error, then
its 640-d error vector), a Gaussian per domain (Ledoit-Wolf) and the cross-fitted training
scores. Peak memory, sampled every 50 ms: the largest resident set of this process (the driver)
above its size before the fit (the object store's pages it wrote, the benchmark's sample,
included), and of any one fitting task's worker process; and the peak of the driver's own heap
while it fits and writes the file (``tracemalloc``, numpy's arrays included). Then the saved file
loaded again as a later job loads it (``references_from``, ``load_fitted``): its time and the
driver's heap peak.
"""

import argparse
import os
import tempfile
import threading
import tracemalloc
import time

import numpy as np
import psutil
import ray

from asd_ray.bundle import BundleInfo
from asd_ray.labels import LabelMap
from asd_ray.model import ModelConfig
from asd_ray.reference_sample import RankCutoffs, SampleChunks, ranks
from asd_ray.reference_fit import fit_sample, load_fitted, save_references
from asd_ray.score import ScoreConfig


class PeakRss(threading.Thread):
    """This process's peak resident set, and the largest of any process running a fitting task."""

    def __init__(self):
        super().__init__(daemon=True)
        self.base = psutil.Process().memory_info().rss
        self.peak, self.task_peak, self.running = self.base, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                if proc.info["cmdline"] and proc.info["cmdline"][0].startswith("ray::fit_section"):
                    self.task_peak = max(self.task_peak, proc.info["memory_info"].rss)
            time.sleep(0.05)


def fit(n: int, max_references: int, detector: str = "dual-stream", covariance: str = "pooled",
        sections: int = 1) -> tuple[float, float, float, float, int, float, float]:
    rng = np.random.default_rng(n)
    folder = tempfile.mkdtemp(prefix="reference-fit-")
    cfg = ScoreConfig(max_references=max_references, autoencoder_covariance=covariance,
                      references_to=os.path.join(folder, "references.npz"))
    method, dims = ("autoencoder", 641) if detector == "autoencoder" else ("scadacos", 256)
    info = BundleInfo(method=method, model=ModelConfig(), labels=LabelMap(classes=["a", "b"]), n_subclusters=2,
                      sample_rate=16000, clip_samples=16000)
    monitor = PeakRss()
    monitor.start()
    t0 = time.time()
    cutoffs = RankCutoffs(max_references)
    sections_ids = {}
    for section in (f"{s:02d}" for s in range(sections)):
        ids = np.array([f"fan/train/section_{section}_{'source' if k < n else 'target'}_{k:08d}"
                        for k in range(n + 10)], object)
        for start in range(0, n + 10, 1024):  # the clip ids as the shards' tasks see them
            for domain in ("source", "target"):
                part = [c for c in ids[start:start + 1024] if f"_{domain}_" in c]
                if part:
                    cutoffs.add(("fan", section, domain), ranks(0, part))
        sections_ids[section] = ids
    cut = cutoffs.cutoffs()
    chunks = SampleChunks()
    for section, ids in sections_ids.items():
        domains = np.array(["source"] * n + ["target"] * 10, object)
        sample_ranks = ranks(0, ids)
        keep = np.flatnonzero(sample_ranks <= np.array([cut[("fan", section, d)] for d in domains], np.uint64))
        for start in range(0, len(keep), 1024):  # the embedded batches of the sample
            at = keep[start:start + 1024]
            batch = rng.normal(size=(len(at), dims)).astype(np.float32)
            batch /= np.linalg.norm(batch, axis=1, keepdims=True)
            chunks.add("fan", section, ids[at], domains[at], [batch])
    tracemalloc.start()  # the driver's own heap (numpy's arrays too) while it fits and writes
    fitted = fit_sample(cfg, [info], chunks, cutoffs.seen)
    save_references(cfg, [info], fitted)
    assert len(fitted.summaries) == sections
    seconds = time.time() - t0
    heap = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    monitor.running = False
    monitor.join()
    kept = sum(n for s in fitted.summaries.values() for n in s.kept.values())
    del fitted, chunks
    reuse = cfg.model_copy(update={"references_to": None, "references_from": cfg.references_to})
    tracemalloc.start()  # a later job's load of the saved file (references_from)
    t1 = time.time()
    assert len(load_fitted(reuse, [info]).summaries) == sections
    reload = time.time() - t1, tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    os.remove(cfg.references_to)
    os.rmdir(folder)
    return seconds, (monitor.peak - monitor.base) / 2**20, heap, monitor.task_peak / 2**20, kept, *reload


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--max-references", type=int, default=ScoreConfig.model_fields["max_references"].default)
    p.add_argument("--detector", choices=["dual-stream", "autoencoder"], default="dual-stream")
    p.add_argument("--covariance", choices=["pooled", "domain"], default="pooled", help="autoencoder only")
    p.add_argument("--sections", default="1", help="sections of the machine type, each n + 10 clips")
    a = p.parse_args()
    ray.init()
    ray.get(ray.remote(lambda: None).remote())  # a worker started before the first timing
    print(f"{ray.cluster_resources()['CPU']:.0f} CPUs")
    print("| sections | training embeddings per section | training clips kept | fit time (s) | driver peak above "
          "start (MiB) | its heap's peak while fitting and writing (MiB) | a fitting task's peak (MiB) | "
          "reloading the file: time (s) | its heap's peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sections in map(int, a.sections.split(",")):
        for n in map(int, a.sizes.split(",")):
            seconds, mib, heap, task_mib, kept, reload_s, reload_mib = fit(n, a.max_references, a.detector,
                                                                           a.covariance, sections)
            print(f"| {sections} | {n:,} | {kept:,} | {seconds:.1f} | {mib:.0f} | {heap:.0f} | {task_mib:.0f} | "
                  f"{reload_s:.1f} | {reload_mib:.0f} |", flush=True)


if __name__ == "__main__":
    main()
