"""The training input alone (no model), at 1x, 10x ... the clips: time to first batch, clips/s, peak
object-store bytes, peak memory of the driver and Ray's worker processes, and how batches mix machine
types and domains. Runs the streaming input (``asd_ray.train_input``) and, for comparison, v1's input
(decode to float32, then ``randomize_block_order``, an all-to-all stage), and one model training
step on this machine's CPU for the clips/s that the input has to keep up with. With --label-scan,
also the training job's metadata pass before it (``train.label_map``: every shard's key columns read
by a task per shard, the distinct classes gathered in the driver): its time and peak memory.

    python benchmarks/train_input.py                                   # 1x and 10x, 1 s clips
    python benchmarks/train_input.py --scales 1 10 50 --skip-v1 --label-scan

1x is 7 machine types x 300 clips (297 source + 3 target: 1 %, as DCASE's 990 + 10), written as
ingest writes them: one machine type per partition, shards of --shard-mb, target clips last, noise
as audio (the input does not look at it). Each pipeline is consumed as a Ray Train worker consumes
it: one ``streaming_split`` iterator, batches of --batch clips through a --shuffle-buffer local
shuffle buffer, for --epochs epochs; figures are from the last epoch except time to first batch
(the first). Ray gets --cpus logical CPUs (say, a GPU worker's share of a node). Each pipeline
runs in a process and Ray cluster of its own.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import ray

from asd_ray import shards
from asd_ray.dataset import read_clips
from asd_ray.schema import clips_table
from asd_ray.labels import LabelMap, class_key
from asd_ray.train import TrainConfig, label_map, training_data
from asd_ray.train_input import ingest_options

MACHINES = ["fan", "gearbox", "pump", "slider", "valve", "bearing", "toycar"]


def write_dataset(root: str, clips_per_machine: int, clip_seconds: float, shard_mb: float, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    n_samples = int(clip_seconds * 16000)
    per_shard = shards.rows_per_shard(shard_mb, n_samples)
    n_target = max(1, clips_per_machine // 100)
    written = []
    for m, machine in enumerate(MACHINES):
        rows = [{"clip_id": f"{machine}/train/section_00_{dom}_train_normal_{i:06d}", "machine": machine,
                 "section": "00", "domain": dom, "split": "train", "label": "normal", "attributes": {"speed": "1"},
                 "sample_rate": 16000, "num_samples": n_samples, "path": f"{machine}/train/{i}.wav",
                 "audio": rng.integers(-3000, 3000, n_samples, dtype=np.int16).astype("<i2").tobytes()}
                for i, dom in enumerate(["source"] * (clips_per_machine - n_target) + ["target"] * n_target)]
        chunks = [("train", machine, rows[i:i + per_shard]) for i in range(0, len(rows), per_shard)]
        for url, chunk in shards.partition_shard_urls(root, "clips", shards.new_generation(), chunks):
            written.append(shards.write_shard(url, clips_table(chunk)))
    shards.publish(root, written, [("train", m) for m in MACHINES])
    return len(MACHINES) * clips_per_machine


class Peaks(threading.Thread):
    """Samples the object store's use and the unique memory (USS) of the driver and this Ray
    cluster's worker processes (the raylet's children: tasks, actors, idle workers)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.stop, self.store, self.memory = interval, threading.Event(), 0, 0
        self.at_peak: list[tuple[int, str]] = []  # (USS, process) at the memory peak

    def run(self) -> None:
        from ray._private import ray_constants
        from ray._private.internal_api import memory_summary

        address = ray.get_runtime_context().gcs_address
        node = ray._private.worker._global_node
        raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
        while not self.stop.is_set():
            text = memory_summary(address=address, stats_only=True)
            used = re.search(r"Plasma memory usage (\d+) MiB", text)
            self.store = max(self.store, int(used.group(1)) * 2**20 if used else 0)
            sizes = []
            for p in [psutil.Process()] + raylet.children(recursive=True):  # this cluster's workers only
                try:
                    sizes.append((p.memory_full_info().uss, (p.cmdline() or [p.name()])[0][:40]))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            total = sum(u for u, _ in sizes)
            if total > self.memory:
                self.memory, self.at_peak = total, sorted(sizes, reverse=True)
            self.stop.wait(self.interval)

    def largest(self, count: int = 6) -> str:
        return ", ".join(f"{name} {uss / 2**20:.0f}" for uss, name in self.at_peak[:count])


def consume(ds, batch: int, shuffle_buffer: int, epochs: int, buffer_mb: float) -> dict:
    ds.context.execution_options = ingest_options(buffer_mb)  # as Ray Train's DataConfig sets it
    it = ds.streaming_split(1, equal=True)[0]
    peaks = Peaks()
    peaks.start()
    first = None
    for epoch in range(epochs):
        t0, clips, machines, targets = time.time(), 0, [], []
        for b in it.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True,
                                 local_shuffle_buffer_size=shuffle_buffer):
            if first is None:
                first = time.time() - t0
            clips += len(b["machine"])
            machines.append(b["machine"])
            targets.append(float(np.mean(b["domain"] == "target")))
        seconds = time.time() - t0
    peaks.stop.set()
    peaks.join()
    all_machines = np.concatenate(machines)
    share = {m: float(np.mean(all_machines == m)) for m in set(all_machines)}
    expected_distinct = sum(1 - (1 - p) ** batch for p in share.values())  # batches drawn at random
    target_share = float(np.mean(targets))
    return {"first_batch_s": first, "clips_per_s": clips / seconds, "store_peak_mb": peaks.store / 2**20,
            "memory_peak_mb": peaks.memory / 2**20, "processes_at_peak": len(peaks.at_peak),
            "largest_at_peak": peaks.largest(),
            "distinct": float(np.mean([len(set(m)) for m in machines])), "expected_distinct": expected_distinct,
            "batches_with_target": float(np.mean([t > 0 for t in targets])),
            "expected_with_target": 1 - (1 - target_share) ** batch, "target_share": target_share,
            "target_share_std": float(np.std(targets))}


def model_step_rate(clip_seconds: float, batch: int, steps: int = 5) -> float:
    """Clips/s of the default model's training step (forward, loss, backward, AdamW) on this CPU."""
    import torch
    import torch.nn.functional as F

    from asd_ray.loss import SubClusterAdaCos
    from asd_ray.model import DualStreamNet, ModelConfig

    model, loss_fn = DualStreamNet(ModelConfig()).train(), SubClusterAdaCos(256, 21, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, int(clip_seconds * 16000)) * 0.1
    y = F.one_hot(torch.randint(0, 21, (batch,)), 21).float()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.time()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.time() - t0)


def scan_labels(cfg: TrainConfig) -> dict:
    peaks = Peaks()
    peaks.start()
    t0 = time.time()
    labels = label_map(cfg)
    seconds = time.time() - t0
    peaks.stop.set()
    peaks.join()
    return {"seconds": seconds, "classes": len(labels), "store_peak_mb": peaks.store / 2**20,
            "memory_peak_mb": peaks.memory / 2**20, "processes_at_peak": len(peaks.at_peak),
            "largest_at_peak": peaks.largest()}


def measure(args, root: str, pipeline: str) -> dict:
    """One pipeline on one dataset, in a Ray cluster of its own (so that no run inherits the
    workers, heap or object store of another)."""
    ray.init(num_cpus=args.cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = TrainConfig(data=root, clip_seconds=args.clip_seconds, batch_size=args.batch,
                      shuffle_buffer=args.shuffle_buffer, input_buffer_mb=args.buffer_mb,
                      **({"mix_row_groups": args.mix_row_groups} if args.mix_row_groups else {}))
    if pipeline == "label scan":
        return scan_labels(cfg)
    if pipeline == "streaming":
        # the classes of the written data, known here: the job's metadata pass (train.label_map) is
        # not part of the input and would leave its worker's heap in the measured cluster
        labels = LabelMap.from_clips(class_key(m, "00", d, "speed=1", with_domain=cfg.class_domain)
                                     for m in MACHINES for d in ("source", "target"))
        ds = training_data(cfg, labels, meta=True)
    else:
        ds = read_clips(root, split="train", num_samples=cfg.clip_samples).randomize_block_order()
    return {"mix_row_groups": cfg.mix_row_groups, **consume(ds, args.batch, args.shuffle_buffer, args.epochs,
                                                            args.buffer_mb)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    p.add_argument("--clips-per-machine", type=int, default=300, help="at 1x")
    p.add_argument("--clip-seconds", type=float, default=1.0)
    p.add_argument("--shard-mb", type=float, default=64.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--shuffle-buffer", type=int, default=256)
    p.add_argument("--buffer-mb", type=float, default=512.0, help="object-store budget of the input")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cpus", type=int, default=4)
    p.add_argument("--skip-v1", action="store_true")
    p.add_argument("--label-scan", action="store_true", help="also measure the job's label scan")
    p.add_argument("--rows-per-group", type=int, default=shards.ROWS_PER_ROW_GROUP,
                   help="Parquet row group size of the written data (ingest's by default)")
    p.add_argument("--mix-row-groups", type=int, default=None, help="default: the training config's")
    p.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    p.add_argument("--measure", nargs=2, metavar=("DATA", "PIPELINE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args, *args.measure)), flush=True)
        return

    shards.ROWS_PER_ROW_GROUP = args.rows_per_group
    root_dir = args.dir or tempfile.mkdtemp(prefix="train-input-")
    rows = []
    try:
        for scale in args.scales:
            root = os.path.join(root_dir, f"x{scale}-rg{args.rows_per_group}-mb{args.shard_mb:g}")
            if not os.path.exists(os.path.join(root, shards.LIVE_FILE)):
                write_dataset(root, args.clips_per_machine * scale, args.clip_seconds, args.shard_mb)
            for pipeline in (["label scan"] if args.label_scan else []) + ["streaming"] + (
                    [] if args.skip_v1 else ["v1 (block order)"]):
                out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--measure", root, pipeline],
                                     capture_output=True, text=True)
                result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                if out.returncode or not result:
                    raise RuntimeError(f"{pipeline} at {scale}x failed:\n{out.stderr[-3000:]}")
                rows.append({"scale": scale, "clips": len(MACHINES) * args.clips_per_machine * scale,
                             "pipeline": pipeline, **json.loads(result[0][len("RESULT "):])})
                print(rows[-1], flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root_dir, ignore_errors=True)

    scans, rows = [r for r in rows if r["pipeline"] == "label scan"], [r for r in rows if r["pipeline"] != "label scan"]
    if scans:
        print(f"\nlabel scan (train.label_map), {args.cpus} logical CPUs")
        print("| scale | clips | seconds | classes | peak object store (MB) | peak memory (MB) | largest processes "
              "at the peak (MB) |")
        print("|---|---|---|---|---|---|---|")
        for r in scans:
            print(f"| {r['scale']}x | {r['clips']} | {r['seconds']:.1f} | {r['classes']} | {r['store_peak_mb']:.0f} | "
                  f"{r['memory_peak_mb']:.0f} | {r['largest_at_peak']} |")
    step = model_step_rate(args.clip_seconds, args.batch)
    print(f"\ntraining input, {args.clip_seconds:g} s clips, row groups of {args.rows_per_group} clips read "
          f"{rows[0]['mix_row_groups']} per task, batch {args.batch}, shuffle buffer {args.shuffle_buffer}, "
          f"object-store budget {args.buffer_mb:g} MB, {args.cpus} logical CPUs ({psutil.cpu_count()} on this machine)")
    print("| scale | clips | pipeline | first batch (s) | clips/s | peak object store (MB) | peak memory (MB) | "
          "machine types per batch (random batches) | batches with a target clip (random batches) | "
          "target share per batch: mean +- sd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scale']}x | {r['clips']} | {r['pipeline']} | {r['first_batch_s']:.2f} | {r['clips_per_s']:.0f} | "
              f"{r['store_peak_mb']:.0f} | {r['memory_peak_mb']:.0f} | "
              f"{r['distinct']:.2f} ({r['expected_distinct']:.2f}) | "
              f"{100 * r['batches_with_target']:.0f} % ({100 * r['expected_with_target']:.0f} %) | "
              f"{100 * r['target_share']:.2f} % +- {100 * r['target_share_std']:.2f} |")
    print(f"\nmodel training step (default model, CPU, {torch_threads()} threads): {step:.1f} clips/s; "
          f"streaming input / model step: " + ", ".join(
              f"{r['scale']}x {r['clips_per_s'] / step:.0f}x" for r in rows if r["pipeline"] == "streaming"))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
