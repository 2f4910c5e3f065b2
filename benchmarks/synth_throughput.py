"""Time the default synthetic dataset (4 machine types, 1,200 clips of 10 s each) end to end.

    python benchmarks/synth_throughput.py [--out DIR] [key=value ...]

Prints clips, wall time, clips/s and MB written. Target: under 2 minutes on a 2-core machine.
"""

import argparse
import shutil
import tempfile
import time

from asd_ray.cluster import ensure_ray
from asd_ray.config import load_config
from asd_ray.synth.generate import SynthConfig, synthesize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="asd-synth-bench-")
    cfg = load_config(SynthConfig, None, args.overrides, out=out)
    t0 = time.time()
    ensure_ray()
    t1 = time.time()
    summary = synthesize(cfg, progress=False)
    t2 = time.time()
    mb = sum(f.stat().st_size for f in __import__("pathlib").Path(out).rglob("*") if f.is_file()) / 1e6
    print(f"ray start: {t1 - t0:.1f} s")
    print(f"synth: {summary['clips']} clips x {cfg.clip_seconds:g} s in {t2 - t1:.1f} s "
          f"({summary['clips'] / (t2 - t1):.1f} clips/s, {mb:.0f} MB in {summary['files']} files)")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
