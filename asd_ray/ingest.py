"""``asd-ray ingest``: folders of WAV files -> clip shards.

Reads every published DCASE layout (2020-2025, dev and eval), MIMII, MIMII DUE and ToyADMOS2 as
:mod:`asd_ray.layouts` describes them, each file's metadata from its path.
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
from dataclasses import dataclass

import numpy as np
import ray
import soundfile as sf
from pydantic import Field

from asd_ray import console, schema, shards, storage
from asd_ray.config import JobConfig
from asd_ray.layouts import LAYOUTS, BadName, Clip, assign_splits, identify
from asd_ray.storage import StorageOptions

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
    clip: Clip
    size: int

    @property
    def machine(self) -> str:
        return self.clip.machine

    @property
    def split(self) -> str:
        return self.clip.split


def parse_name(machine: str, split: str, stem: str) -> dict:
    """Clip metadata from a DCASE file name in a ``train`` or ``test`` folder; raises BadClip
    saying what was expected."""
    try:
        clip = identify([machine, split, stem])
    except BadName as e:
        raise BadClip(str(e)) from None
    return {"section": clip.section, "domain": clip.domain, "label": clip.label, "attributes": clip.attributes}


def read_wav(data: bytes, expected_rate: int, channel: int | None = None) -> np.ndarray:
    """Decode WAV bytes to int16 samples, rejecting what the clip format cannot hold; of a
    multi-channel file ``channel`` is kept (where the layout names one), else it is refused."""
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception as e:  # soundfile raises several types for broken files
        raise BadClip(f"unreadable audio: {e}") from None
    if channel is not None and audio.shape[1] > 1:
        if channel >= audio.shape[1]:
            raise BadClip(f"{audio.shape[1]} channels, expected at least {channel + 1}")
        audio = audio[:, channel:channel + 1]
    if audio.shape[1] != 1:
        raise BadClip(f"{audio.shape[1]} channels, expected mono")
    if rate != expected_rate:
        raise BadClip(f"sample rate {rate} Hz, expected {expected_rate} Hz")
    if audio.shape[0] == 0:
        raise BadClip("empty: no samples")
    return audio[:, 0]


def discover(cfg: IngestConfig) -> tuple[list[WavFile], list[tuple[str, str]]]:
    """Every WAV file under ``src`` with what its path says (:mod:`asd_ray.layouts`); files that no
    layout explains are rejects. A folder of which no file fits any layout is an error."""
    fs, root = storage.fsspec_fs(cfg.src, cfg.storage)
    if not fs.isdir(root):
        raise FileNotFoundError(f"ingest source {cfg.src} is not a folder")
    files, rejects, wavs = [], [], 0
    for path, info in sorted(fs.find(root, detail=True).items()):
        if not path.lower().endswith(".wav"):
            continue
        wavs += 1
        url = storage.full_url(cfg.src, path)
        parts = path[len(root):].strip("/").rsplit(".", 1)[0].split("/")
        try:
            clip = identify(parts)
        except BadName as e:
            rejects.append((url, str(e)))
            continue
        problem = schema.name_problem("machine", clip.machine)
        if problem:
            rejects.append((url, f"machine folder '{clip.machine}': {problem.split(': ', 1)[1]}"))
            continue
        files.append(WavFile(url, clip, int(info.get("size") or 0)))
    if wavs and not files:
        raise ValueError(f"{cfg.src}: none of its {wavs} WAV files is in a layout understood here ("
                         + "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items()) + f"); e.g. {rejects[0][0]}")
    assign_splits([f.clip for f in files])
    return files, rejects


def ingest_chunk(cfg: IngestConfig, url: str, files: list[WavFile]) -> tuple[str | None, int, list[tuple[str, str]]]:
    """Read ``files`` and write them as one shard at ``url``; returns (shard, clips, rejects)."""
    fs, _ = storage.fsspec_fs(cfg.src, cfg.storage)
    rows, rejects = [], []
    for f in files:
        c = f.clip
        try:
            samples = read_wav(fs.cat_file(storage.strip_protocol(f.url)), cfg.sample_rate, c.channel)
        except (BadClip, OSError) as e:
            rejects.append((f.url, str(e)))
            continue
        rows.append({"section": c.section, "domain": c.domain, "label": c.label, "attributes": c.attributes,
                     "clip_id": schema.clip_id(c.machine, c.split, c.stem), "machine": c.machine,
                     "split": c.split, "sample_rate": cfg.sample_rate, "num_samples": len(samples),
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
    meter = console.Progress("ingest", len(jobs), every_s=10 if progress else 0, unit="shards")
    while pending:
        done, pending = ray.wait(pending)
        for shard, n, bad in ray.get(done):
            written |= {shard} if shard else set()
            clips += n
            rejects += bad
        meter.update(len(done))
    # the new shards become the live set at once; the ones they replace go only then
    shards.publish(cfg.dest, written, {(f.split, f.machine) for f in files}, cfg.storage)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(rejects))
    storage.write_bytes_atomic(cfg.rejects_url, buf.getvalue().encode(), cfg.storage)
    return {"src": cfg.src, "dest": cfg.dest, "clips": clips, "shards": len(written),
            "rejected": len(rejects), "rejects_file": cfg.rejects_url, "rejects": sorted(rejects)}
