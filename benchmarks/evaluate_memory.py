"""``asd-ray evaluate`` on large scoring outputs: its time and peak memory at 1x, 10x, 50x the clips.

Writes scoring outputs as ``asd-ray score`` writes them (score shards of 100,000 rows and a
manifest; no dataset behind them, so the report shows no audio): 2 machine types x 3 sections,
10 % target clips, 10 % anomalous, labelled or not (an unlabelled set gets ``report.html`` only).
Each evaluation runs in a process of its own; its peak resident memory is sampled every 50 ms.

    python benchmarks/evaluate_memory.py                      # 1x = 20,000 clips; 10x; 50x = 1,000,000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_SHARD = 100_000


def write_scores(out: str, clips: int, labelled: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(f"{out}/scores", exist_ok=True)
    for k, start in enumerate(range(0, clips, ROWS_PER_SHARD)):
        row = np.arange(start, min(start + ROWS_PER_SHARD, clips))
        machine = np.where(row % 2 == 0, "fan", "pump")
        section = np.array(["00", "01", "02"])[(row // 2) % 3]
        anomaly = rng.random(len(row)) < 0.1
        domain = np.where(rng.random(len(row)) < 0.1, "target", "source")
        score = rng.normal(size=len(row)) + 2 * anomaly
        unknown = pa.array([None] * len(row), pa.string())
        pq.write_table(pa.table({
            "clip_id": [f"{m}/test/section_{s}_{i:08d}" for m, s, i in zip(machine, section, row)],
            "machine": machine, "section": section,
            "domain": pa.array(domain) if labelled else unknown,
            "label": pa.array(np.where(anomaly, "anomaly", "normal")) if labelled else unknown,
            "score": score, "decision": (score > 1).astype(np.int8), "reason": unknown}),
            f"{out}/scores/part-{k:05d}.parquet")
    with open(f"{out}/manifest.json", "w") as f:
        json.dump({"files": [], "shards": [], "scored": clips, "unscored": 0, "config": {}}, f)


def evaluate(scores: str) -> tuple[float, float]:
    """Seconds and peak resident memory (GiB) of ``asd-ray evaluate`` on ``scores``."""
    t0, peak = time.time(), 0
    proc = subprocess.Popen([sys.executable, "-m", "asd_ray.cli", "evaluate", f"scores={scores}", "tracking=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if proc.returncode:
        raise RuntimeError(f"evaluate {scores} failed:\n{proc.stderr.read()[-3000:]}")
    return time.time() - t0, peak / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=20_000, help="clips at 1x")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--dir", default=None, help="where to write the outputs (default: a temporary folder)")
    args = p.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="evaluate-memory-")
    print("| scale | clips | labelled | seconds | peak memory (GiB) |\n|---|---|---|---|---|")
    for scale in args.scales:
        for labelled in (True, False):
            out = os.path.join(root, f"x{scale}-{'labelled' if labelled else 'unlabelled'}")
            if not os.path.exists(f"{out}/manifest.json"):
                write_scores(out, args.clips * scale, labelled)
            seconds, peak = evaluate(out)
            print(f"| {scale}x | {args.clips * scale:,} | {'yes' if labelled else 'no'} | {seconds:.1f} | {peak:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
