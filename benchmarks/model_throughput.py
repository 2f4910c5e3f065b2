"""Model step throughput: forward + backward + AdamW step of the dual-stream net with the
Sub-Cluster AdaCos loss, batch 64 of 10 s clips at 16 kHz, random audio.

    python benchmarks/model_throughput.py                      # CPU, float32
    python benchmarks/model_throughput.py --device cuda --bf16 --compile

Prints parameters and training clips/s. Target on an H100: >= 2,000 clips/s.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from asd_ray.loss import SubClusterAdaCos
from asd_ray.model import DualStreamNet


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    model = DualStreamNet().to(dev).train()
    loss_fn = SubClusterAdaCos(model.cfg.emb_dim, args.classes).to(dev).train()
    params = sum(q.numel() for q in model.parameters())
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, int(args.seconds * 16000), device=dev) * 0.1
    y = F.one_hot(torch.randint(0, args.classes, (args.batch,), device=dev), args.classes).float()

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; bf16={args.bf16} compile={args.compile}")
    print(f"parameters: {params:,}")
    print(f"train step, batch {args.batch} x {args.seconds:g} s: {args.batch * args.steps / dt:.1f} clips/s "
          f"({dt / args.steps * 1000:.0f} ms/step)")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
