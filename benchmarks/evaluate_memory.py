"""``asd-ray evaluate`` on large scoring outputs: its time and peak memory at 1x, 10x, 50x the clips.

Writes scoring outputs as ``asd-ray score`` writes them (score shards of 100,000 rows and a
manifest; no dataset behind them, so the report shows no audio): 2 machine types x 3 sections,
10 % target clips, 10 % anomalous, labelled or not (an unlabelled set gets ``report.html`` only).
Each evaluation runs in a process of its own; its peak resident memory is sampled every 50 ms.

    python benchmarks/evaluate_memory.py                      # 1x = 20,000 clips; 10x; 50x = 1,000,000
"""

import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import peak_memory

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
    seconds, peak, _ = peak_memory.run([sys.executable, "-m", "asd_ray.cli", "evaluate", f"scores={scores}",
                                        "tracking=false"])
    return seconds, peak


def main() -> None:
    args, root = peak_memory.scale_arguments(__doc__, "clips", 20_000, "clips", "evaluate-memory-")
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
