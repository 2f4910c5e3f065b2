"""``asd-ray ingest``: DCASE folders of WAV files -> clip shards.

Reads the DCASE 2023-2025 dev/eval layout ``<machine>/{train,test}/<name>.wav`` with names
``section_XX_{source|target}_{train|test}_{normal|anomaly}_NNNN[_<attr>_<value>...].wav``
(``noAttribute`` for none) and unlabelled eval test files ``section_XX_NNNN.wav``.
Files are read in parallel Ray tasks, one task per output shard. A bad file (unreadable, empty,
wrong sample rate, multi-channel, unparseable name) goes to ``<dest>/_rejects.csv`` with the
reason; the good ones are written. Shard names are stable and shards of earlier runs that this run
did not write are removed, so a re-run replaces instead of duplicating; readers see the old set of
shards until the new one is complete (:func:`asd_ray.shards.publish`). A machine folder whose name
is not letters, digits and ``-`` is rejected (names become file names).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

import numpy as np
import ray
import soundfile as sf
from pydantic import Field

from asd_ray import schema, shards, storage
from asd_ray.config import JobConfig
from asd_ray.storage import StorageOptions

LABELLED = re.compile(r"^section_(\d{2})_(source|target)_(train|test)_(normal|anomaly)_(\d+)(?:_(.+))?$")
UNLABELLED = re.compile(r"^section_(\d{2})_(\d+)$")


class IngestConfig(JobConfig):
    src: str = Field(description="URL of a DCASE folder: <src>/<machine>/{train,test}/*.wav")
    dest: str = Field(description="URL of the clip dataset to write")
    sample_rate: int = Field(16000, description="every clip must have this rate")
    shard_mb: float = Field(64.0, gt=0)
    storage: StorageOptions = StorageOptions()

    @property
    def rejects_url(self) -> str:
        return storage.join(self.dest, "_rejects.csv")


class BadClip(ValueError):
    pass


@dataclass(frozen=True)
class WavFile:
    url: str
    machine: str
    split: str
    stem: str
    size: int


def parse_name(machine: str, split: str, stem: str) -> dict:
    """Clip metadata from a DCASE file name; raises BadClip saying what was expected."""
    m = LABELLED.match(stem)
    if m:
        section, domain, name_split, label, _, rest = m.groups()
        if name_split != split:
            raise BadClip(f"name says split '{name_split}' but the file is in the '{split}' folder")
        attributes = {}
        if rest and rest != "noAttribute":
            tokens = rest.split("_")
            if len(tokens) % 2:
                raise BadClip(f"attributes '{rest}' are not <name>_<value> pairs")
            attributes = dict(zip(tokens[::2], tokens[1::2]))
        return {"section": section, "domain": domain, "label": label, "attributes": attributes}
    m = UNLABELLED.match(stem)
    if m and split == "test":
        return {"section": m.group(1), "domain": None, "label": None, "attributes": {}}
    raise BadClip("unparseable name: expected section_XX_{source|target}_{train|test}_{normal|anomaly}_NNNN"
                  "[_<attr>_<value>...] (or section_XX_NNNN for unlabelled test clips)")


def read_wav(data: bytes, expected_rate: int) -> np.ndarray:
    """Decode WAV bytes to int16 samples, rejecting what the clip format cannot hold."""
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception as e:  # soundfile raises several types for broken files
        raise BadClip(f"unreadable audio: {e}") from None
    if audio.shape[1] != 1:
        raise BadClip(f"{audio.shape[1]} channels, expected mono")
    if rate != expected_rate:
        raise BadClip(f"sample rate {rate} Hz, expected {expected_rate} Hz")
    if audio.shape[0] == 0:
        raise BadClip("empty: no samples")
    return audio[:, 0]


def discover(cfg: IngestConfig) -> tuple[list[WavFile], list[tuple[str, str]]]:
    fs, root = storage.fsspec_fs(cfg.src, cfg.storage)
    if not fs.isdir(root):
        raise FileNotFoundError(f"ingest source {cfg.src} is not a folder")
    files, rejects = [], []
    for path, info in sorted(fs.find(root, detail=True).items()):
        if not path.lower().endswith(".wav"):
            continue
        url = storage.full_url(cfg.src, path)
        parts = path[len(root):].strip("/").split("/")
        if len(parts) < 3 or parts[-2] not in schema.SPLITS:
            rejects.append((url, "not in a <machine>/train or <machine>/test folder"))
            continue
        problem = schema.name_problem("machine", parts[-3])
        if problem:
            rejects.append((url, f"machine folder '{parts[-3]}': {problem.split(': ', 1)[1]}"))
            continue
        files.append(WavFile(url, parts[-3], parts[-2], parts[-1].rsplit(".", 1)[0], int(info.get("size") or 0)))
    return files, rejects


def ingest_chunk(cfg: IngestConfig, url: str, files: list[WavFile]) -> tuple[str | None, int, list[tuple[str, str]]]:
    """Read ``files`` and write them as one shard at ``url``; returns (shard, clips, rejects)."""
    fs, _ = storage.fsspec_fs(cfg.src, cfg.storage)
    rows, rejects = [], []
    for f in files:
        try:
            meta = parse_name(f.machine, f.split, f.stem)
            samples = read_wav(fs.cat_file(storage.strip_protocol(f.url)), cfg.sample_rate)
        except (BadClip, OSError) as e:
            rejects.append((f.url, str(e)))
            continue
        rows.append({**meta, "clip_id": schema.clip_id(f.machine, f.split, f.stem), "machine": f.machine,
                     "split": f.split, "sample_rate": cfg.sample_rate, "num_samples": len(samples),
                     "audio": samples.astype("<i2").tobytes()})
    if not rows:
        return None, 0, rejects
    shards.write_shard(url, schema.clips_table(rows), cfg.storage)
    return url, len(rows), rejects


def ingest(cfg: IngestConfig, progress: bool = True) -> dict:
    """Run the ingest; returns a summary with the counts and every reject."""
    cfg = cfg.model_copy(update={"storage": cfg.storage.resolved()})
    files, rejects = discover(cfg)
    chunks = []
    limit = cfg.shard_mb * 1e6
    for split in schema.SPLITS:
        for machine in sorted({f.machine for f in files if f.split == split}):
            chunk: list[WavFile] = []
            for f in (f for f in files if f.split == split and f.machine == machine):
                if chunk and sum(c.size for c in chunk) + f.size > limit:
                    chunks.append((split, machine, chunk))
                    chunk = []
                chunk.append(f)
            if chunk:
                chunks.append((split, machine, chunk))
    jobs = shards.partition_shard_urls(cfg.dest, "ingest", shards.new_generation(), chunks)
    task = ray.remote(num_cpus=1)(ingest_chunk)
    pending = [task.remote(cfg, url, chunk) for url, chunk in jobs]
    written, clips = set(), 0
    while pending:
        done, pending = ray.wait(pending)
        for shard, n, bad in ray.get(done):
            written |= {shard} if shard else set()
            clips += n
            rejects += bad
        if progress:
            print(f"\ringest: {len(jobs) - len(pending)}/{len(jobs)} shards", end="", flush=True)
    if progress and jobs:
        print()
    # the new shards become the live set at once; the ones they replace go only then
    shards.publish(cfg.dest, written, {(f.split, f.machine) for f in files}, cfg.storage)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(rejects))
    storage.write_bytes_atomic(cfg.rejects_url, buf.getvalue().encode(), cfg.storage)
    return {"src": cfg.src, "dest": cfg.dest, "clips": clips, "shards": len(written),
            "rejected": len(rejects), "rejects_file": cfg.rejects_url, "rejects": sorted(rejects)}
