"""Batch scoring at 1x, 10x and 50x data: clips/s and peak memory (the driver's and all
processes'), and clips/s of a plain single-process loop (pyarrow read, decode, forward) on the
same device.

    python benchmarks/score_throughput.py [--clips 960] [--seconds 10] [--gpu]
    python benchmarks/score_throughput.py --clips 200 --seconds 1 --small --scales 1,10,50   # CPU size
    python benchmarks/score_throughput.py ... --hybrid   # the default score: the model and its three companions
    python benchmarks/score_throughput.py ... --train-clips 400 --scale-train --max-references 200   # the fit pass

With ``--scale-train`` the training clips grow with the test clips (``--train-clips`` source clips
per machine at 1x, and a quarter as many, at least 4, target clips): past ``--max-references`` per machine,
section and domain, the fit pass embeds the sample only (``asd_ray/reference_sample.py``).

Peak memory is the largest sum of proportional set sizes (PSS: shared pages are split between the
processes that map them, not counted once per process) over this process and all its children
(the local Ray: raylet, object store, workers), sampled every 0.5 s; per process, its own memory
(PSS without the object store's pages; the store's size is a setting, ``buffer_mb`` bounds what
the job keeps there).
The models are freshly initialised: throughput does not depend on training. With ``--hybrid``
the bundle holds the companions ``asd-ray train`` saves by default (the autoencoder, a model per
machine type; the frame statistics; the line alarms) and the job scores with all four, as users'
jobs do; the plain loop still runs the dual-stream model alone.
"""

import argparse
import tempfile
import threading
import time

import numpy as np
import psutil
import torch

from asd_ray import bundle, schema, shards, storage
from asd_ray.cluster import ensure_ray
from asd_ray.labels import LabelMap
from asd_ray.loss import SubClusterAdaCos
from asd_ray.model import DualStreamNet, ModelConfig
from asd_ray.references import References
from asd_ray.score import ScoreConfig, run_score
from asd_ray.synth.generate import Counts, SynthConfig, synthesize


SMALL = dict(emb_dim=64, n_fft=512, hop_length=256, fft_channels=[16, 32, 32], spec_channels=[16, 32])


class PeakMemory(threading.Thread):
    """Peak memory of this process and all its children (the local Ray), sampled every 0.5 s.

    A process's own memory is its PSS without the pages of the object store it maps
    (``/dev/shm/plasma*``): those are the object store's, whose size is a setting, and a consumer of
    a block that its producer no longer maps would otherwise look as if it held the block itself.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.store, self.driver, self.running = 0, 0, 0, True
        self.each: dict[int, tuple[int, str]] = {}  # pid -> (its own peak memory, name)

    def run(self):
        me = psutil.Process()
        while self.running:
            total = store = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    maps = p.memory_maps()
                    name = " ".join(p.cmdline())[:40] or p.name()
                except psutil.Error:
                    continue
                shared = sum(m.pss for m in maps if "plasma" in m.path)
                own = sum(m.pss for m in maps) - shared
                total, store = total + own + shared, store + shared
                if own > self.each.get(p.pid, (0, ""))[0]:
                    self.each[p.pid] = (own, name)
                if p is me:
                    self.driver = max(self.driver, own)  # this process: the job's driver
            self.peak, self.store = max(self.peak, total), max(self.store, store)
            time.sleep(0.5)

    def largest(self, n: int = 3) -> str:
        """The processes of the largest own peaks, whenever each was reached."""
        return "; ".join(f"{name.strip()} {own / 2**30:.2f}" for own, name in sorted(self.each.values())[::-1][:n])


def plain_loop(data: str, bundle_url: str, device: str, batch: int) -> float:
    model, _, info = bundle.load_bundle(bundle_url, device=device)
    t0, n = time.time(), 0
    for url in shards.list_shards(data, split="test"):
        table = shards.read_shard(url, columns=["audio"])
        audio = np.stack([schema.decode_pcm16(a)[: info.clip_samples] for a in table["audio"].to_pylist()])
        for i in range(0, len(audio), batch):
            with torch.inference_mode():
                model(torch.as_tensor(audio[i:i + batch], device=device)).cpu()
            n += len(audio[i:i + batch])
    return n / (time.time() - t0)


def save_companions(url: str, info: bundle.BundleInfo) -> list[str]:
    """The companions ``asd-ray train`` saves beside a dual-stream model by default, untrained."""
    folders = [bundle.AUTOENCODER_COMPANION, bundle.FRAMESTATS_COMPANION, bundle.TONAL_COMPANION]
    for folder in folders:  # each folder is named after its method
        bundle.save_untrained(f"{url}/{folder}", info.model_copy(update={"method": folder}))
    return folders


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=960,
                   help="test clips at 1x: enough to fill the read and object-store buffers")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--buffer-mb", type=int, default=ScoreConfig.model_fields["buffer_mb"].default)
    p.add_argument("--scales", default="1,10")
    p.add_argument("--shard-mb", type=float, default=None, help="shard size of the synthesized data (default: "
                   "synth's); memory is flat only once 1x fills whole shards")
    p.add_argument("--hybrid", action="store_true", help="score with the default hybrid of four (the model and "
                                                         "its autoencoder, frame statistics and line alarms)")
    p.add_argument("--train-clips", type=int, default=16, help="normal training clips per machine and section, "
                   "source domain (and a quarter as many, at least 4, in the target domain)")
    p.add_argument("--scale-train", action="store_true", help="the training clips grow with the scale too")
    p.add_argument("--max-references", type=int, default=ScoreConfig.model_fields["max_references"].default)
    p.add_argument("--sections", type=int, default=1, help="sections per machine type (the counts are per section)")
    p.add_argument("--actor-sections", type=int, default=ScoreConfig.model_fields["actor_sections"].default)
    p.add_argument("--small", action="store_true", help="a small model (CPU runs): the pipeline, not the model, "
                                                        "is what is measured")
    args = p.parse_args()
    ensure_ray()  # as the jobs start Ray
    root = tempfile.mkdtemp(prefix="asd-score-bench-")
    model_cfg = ModelConfig(**SMALL) if args.small else ModelConfig()
    model, loss = DualStreamNet(model_cfg), SubClusterAdaCos(model_cfg.emb_dim, 2, 16)
    info = bundle.BundleInfo(model=model.cfg, labels=LabelMap(classes=["fan|00|source", "pump|00|source"]),
                             n_subclusters=16, sample_rate=16000, clip_samples=int(args.seconds * 16000))
    if args.hybrid:
        info = info.model_copy(update={"companions": save_companions(f"{root}/model", info)})
    bundle.save_bundle(f"{root}/model", info, bundle.weights_bytes(model, loss))
    device = "cuda" if args.gpu else "cpu"
    runs = {}
    for scale in map(int, args.scales.split(",")):  # every Ray run first: the plain loop would grow this process's heap
        per_domain = args.clips * scale // 4 // args.sections  # 2 machines x 2 domains, half normal half anomalous
        data = f"{root}/data-{scale}x"
        shard = {"shard_mb": args.shard_mb} if args.shard_mb else {}
        source = args.train_clips * (scale if args.scale_train else 1)
        synthesize(SynthConfig(out=data, machines=["fan", "pump"], sections=args.sections, clip_seconds=args.seconds,
                               **shard,
                               counts=Counts(train_source=source, train_target=max(4, source // 4),
                                             test_normal=per_domain // 2, test_anomaly=per_domain // 2)),
                   progress=False)
        monitor = PeakMemory()
        monitor.start()
        t0 = time.time()
        cfg = ScoreConfig(bundle=f"{root}/model", data=data, out=f"{root}/out-{scale}x", batch_size=args.batch,
                          use_gpu=args.gpu, buffer_mb=args.buffer_mb, max_references=args.max_references,
                          actor_sections=args.actor_sections)
        summary = run_score(cfg)
        wall = time.time() - t0
        monitor.running = False
        monitor.join()
        meta = References.from_bytes(storage.read_bytes(cfg.references_url)).meta
        runs[scale] = (data, summary["scored"], sum(meta["clips"].values()), sum(meta["kept"].values()), wall, monitor)
    for scale, (data, scored, train, kept, wall, monitor) in runs.items():
        total = scored + kept  # test clips scored + train clips embedded for the references
        plain = plain_loop(data, f"{root}/model", device, args.batch)
        print(f"{scale:>2}x: {scored} test clips + {kept} of {train} train clips x {args.seconds:g} s in "
              f"{wall:.1f} s = {total / wall:.1f} clips/s; peak memory (all processes, PSS) "
              f"{monitor.peak / 2**30:.2f} GiB, driver {monitor.driver / 2**30:.2f} GiB; "
              f"plain loop {plain:.1f} clips/s; ratio {total / wall / plain:.2f}")
        print(f"    largest peaks of single processes (own memory, GiB): {monitor.largest()}; "
              f"object store pages in use at most {monitor.store / 2**30:.2f} GiB")

if __name__ == "__main__":
    main()
