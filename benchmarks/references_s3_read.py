"""Reading a saved references file from object storage a section at a time (``references_from``):
bytes fetched, range requests and time, against a real S3 API server on 127.0.0.1 (moto).

    python benchmarks/references_s3_read.py [--sections 8,32] [--rows 10000] [--shared]

Random 256-d references (``rows`` a section, ten of them in the target domain) are written to the
server with ``write_sections`` through s3fs, then read back with ``read_sections`` as
``load_fitted`` reads them: a file per array, so that each reads in order. ``--shared`` reads every
array through one file instead, as before (each jump between arrays refetches s3fs's read-ahead
block, 50 MB).
"""

import argparse
import os
import time

import boto3
import numpy as np
import s3fs
import s3fs.core
from moto.server import ThreadedMotoServer

from asd_ray.references import References, read_sections, write_sections

BUCKET = "references-bench"


class Unclosed:
    """One open file handed out again and again: every array read through it (``--shared``)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def sections(count: int, rows: int, rng: np.random.Generator):
    for s in range(count):
        key = ("fan", f"{s:02d}")
        yield References({key: rng.standard_normal((rows, 256)).astype(np.float32)},
                         {key: np.array(["source"] * (rows - 10) + ["target"] * 10)}, {key: 1.0}, {},
                         {key: np.ones(rows)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="8,32")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--shared", action="store_true", help="every array through one file, as before")
    args = p.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="bench", secret="bench")
    fetched: list[int] = []
    fetch_range = s3fs.core.S3File._fetch_range

    def counted(self, start, end):
        fetched.append(end - start)
        return fetch_range(self, start, end)

    s3fs.core.S3File._fetch_range = counted
    print("| sections | rows a section | file (MiB) | range requests | fetched (MiB) | time (s) |")
    print("|---|---|---|---|---|---|")
    for count in map(int, args.sections.split(",")):
        path = f"{BUCKET}/references-{count}.npz"
        with fs.open(path, "wb") as f:
            write_sections(f, sections(count, args.rows, np.random.default_rng(count)), {"method": "knn"})
        size = fs.info(path)["size"]
        fetched.clear()
        t0 = time.time()
        if args.shared:
            with fs.open(path, "rb") as f:
                read = sum(1 for _ in read_sections(lambda: Unclosed(f)))
        else:
            read = sum(1 for _ in read_sections(lambda: fs.open(path, "rb")))
        assert read == count
        print(f"| {count} | {args.rows} | {size / 2**20:.0f} | {len(fetched)} | {sum(fetched) / 2**20:.0f} | "
              f"{time.time() - t0:.1f} |", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
