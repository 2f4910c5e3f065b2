"""Ray Train pipeline vs a plain single-process PyTorch loop over the same clips held in memory,
same device, same model and batch size, in one run; prints clips/s of each and the ratio.

    python benchmarks/train_throughput.py                 # CPU: 1 and 2 Ray Train workers
    python benchmarks/train_throughput.py --gpu --workers 1 --clips 4096 --batch 64

On CPU each Ray Train worker runs torch with one thread per reserved CPU, so the plain loop is
timed both with 1 thread and with all threads. The Ray figure is the last epoch's clips/s as
measured inside the train loop (reading, decoding, host-to-device copies and the step, after
worker start-up). Target on one GPU: ratio >= 0.9.
"""

import argparse
import tempfile
import time

import numpy as np
import ray
import torch
import torch.nn.functional as F

from asd_ray import dataset
from asd_ray.augment import mixup
from asd_ray.labels import class_key
from asd_ray.loss import SubClusterAdaCos
from asd_ray.model import DualStreamNet
from asd_ray.synth.generate import Counts, SynthConfig, synthesize
from asd_ray.train import TrainConfig, label_map, train


def plain_loop(cfg: TrainConfig, audio: np.ndarray, labels: np.ndarray, n_classes: int, device: str) -> float:
    model = DualStreamNet(cfg.model).to(device).train()
    loss_fn = SubClusterAdaCos(cfg.model.emb_dim, n_classes, cfg.n_subclusters).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    x_all, y_all = torch.from_numpy(audio), torch.from_numpy(labels)
    rate = 0.0
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x_all))
        t0, n = time.time(), 0
        for i in range(0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x = x_all[idx].to(device, non_blocking=True)
            y = F.one_hot(y_all[idx].to(device), n_classes).float()
            x, y = mixup(x, y, cfg.mixup_alpha)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                emb = model(x)
            loss = loss_fn(emb, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            n += len(idx)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = n / (time.time() - t0)  # the last epoch, like the Ray figure
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=192, help="training clips")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--gpu", action="store_true")
    args = p.parse_args()

    ray.init()
    root = tempfile.mkdtemp(prefix="asd-train-bench-")
    per_machine = args.clips // 2
    synthesize(SynthConfig(out=f"{root}/data", machines=["fan", "pump"], clip_seconds=args.seconds,
                           counts=Counts(train_source=per_machine - 8, train_target=8, test_normal=0, test_anomaly=0)),
               progress=False)
    base = TrainConfig(data=f"{root}/data", storage_path=f"{root}/runs", epochs=args.epochs, batch_size=args.batch,
                       clip_seconds=args.seconds, use_gpu=args.gpu,
                       autoencoder_epochs=0, framestats=None, tonal=None)  # the dual-stream model alone, as the loop
    labels = label_map(base)
    rows = dataset.read_clips(base.data, split="train", num_samples=base.clip_samples).take_all()
    audio = np.stack([r["audio"] for r in rows])
    y = np.array([labels.index(*class_key(r["machine"], r["section"], r["domain"], r["attribute_key"], True))
                  for r in rows])
    device = "cuda" if args.gpu else "cpu"
    print(f"data: {len(rows)} clips x {args.seconds:g} s, {len(labels)} classes; batch {args.batch}; "
          f"{args.epochs} epochs; device {device}; {ray.cluster_resources().get('CPU')} CPUs")
    plain = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        plain[threads] = plain_loop(base, audio, y, len(labels), device)
        print(f"plain loop (1 process, {threads} torch threads): {plain[threads]:.1f} clips/s")
    best = max(plain.values())
    for workers in args.workers:
        cpus = max(0.5, (ray.cluster_resources()["CPU"] - 1) / workers) if not args.gpu else 1
        cfg = base.model_copy(update={"num_workers": workers, "cpus_per_worker": cpus, "name": f"bench-{workers}"})
        t0 = time.time()
        result = train(cfg)
        rate = result["metrics"]["clips_per_s"]
        same = plain[1] * workers  # each CPU worker runs torch with 1 thread
        print(f"ray train, {workers} worker(s): {rate:.1f} clips/s (last epoch; whole fit {time.time() - t0:.0f} s); "
              f"ratio to the fastest plain loop {rate / best:.2f}; "
              f"to {workers} x the 1-thread plain loop {rate / same:.2f}")


if __name__ == "__main__":
    main()
