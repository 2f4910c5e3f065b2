"""One command in a process of its own, its resident memory sampled every 50 ms (the benchmarks
that measure a job's driver: ``evaluate_memory.py``, ``ingest_scale.py``)."""

import argparse
import subprocess
import tempfile
import time

import psutil


def run(command: list[str]) -> tuple[float, float, str]:
    """Seconds, peak resident memory (GiB) of the process itself, and its standard output; a
    failure raises with the end of its standard error."""
    t0, peak = time.time(), 0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # no pipe to fill
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        seconds = time.time() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read()[-3000:]}")
        return seconds, peak / 2**30, out.read()


def scale_arguments(doc: str, option: str, at_1x: int, what: str, prefix: str) -> tuple[argparse.Namespace, str]:
    """The scale benchmarks' command line (``--<option>`` at 1x, ``--scales``, ``--dir``) and their folder."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(f"--{option}", type=int, default=at_1x, help=f"{what} at 1x")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    args = p.parse_args()
    return args, args.dir or tempfile.mkdtemp(prefix=prefix)
