"""``asd-ray ingest``: folders of WAV files -> clip shards.

Reads every published DCASE layout (2020-2025, dev and eval), MIMII, MIMII DUE and ToyADMOS2 as
:mod:`asd_ray.layouts` describes them, each file's metadata from its path.
The source is listed one folder at a time and its files stream into parallel Ray tasks, one task
per output shard, a bounded number in flight: the driver never holds the whole listing. A bad file (unreadable, empty,
wrong sample rate, multi-channel, unparseable name) goes to ``<dest>/_rejects.csv`` with the
reason; the good ones are written. Shard names are stable and shards of earlier runs that this run
did not write are removed, so a re-run replaces instead of duplicating; readers see the old set of
shards until the new one is complete (:func:`asd_ray.shards.publish`). A machine folder whose name
is not letters, digits and ``-`` is rejected (names become file names).
"""

from __future__ import annotations

import csv
import io
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
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


Reject = tuple[str, str]  # (url, reason)


def discover(cfg: IngestConfig) -> Iterator[WavFile | Reject]:
    """Every WAV file under ``src`` with what its path says (:mod:`asd_ray.layouts`), or a reject
    where no layout explains it, yielded one folder at a time in name order. Only the folder being
    listed is held (its names and sizes), and of MIMII the clips of one group until its split is
    drawn: memory follows the largest folder, not the dataset."""
    fs, root = storage.fsspec_fs(cfg.src, cfg.storage)
    if not fs.isdir(root):
        raise FileNotFoundError(f"ingest source {cfg.src} is not a folder")
    root = root.rstrip("/")
    groups: dict[str, list[WavFile]] = {}  # MIMII clips by their group's folder, until it is listed whole
    yield from _folder(fs, cfg.src, root, root, groups)
    for members in groups.values():  # none are left: each group's folder was listed above
        yield from _drawn(members)


def _folder(fs, src: str, root: str, folder: str, groups: dict[str, list[WavFile]]) -> Iterator[WavFile | Reject]:
    entries = sorted(fs.ls(folder, detail=True), key=lambda e: e["name"])
    fs.invalidate_cache(folder)  # s3fs keeps every listing it made: this one is not needed again
    subfolders = []
    for entry in entries:
        path = entry["name"].rstrip("/")
        if path == folder:  # an object store's folder marker
            continue
        if entry["type"] == "directory":
            subfolders.append(path)
        elif path.lower().endswith(".wav"):
            item = _wav_file(src, root, path, int(entry.get("size") or 0), groups)
            if item is not None:
                yield item
    for sub in subfolders:
        yield from _folder(fs, src, root, sub, groups)
    if folder in groups:  # a MIMII group: its normal/ and abnormal/ folders are both listed now
        yield from _drawn(groups.pop(folder))


def _wav_file(src: str, root: str, path: str, size: int,
              groups: dict[str, list[WavFile]]) -> WavFile | Reject | None:
    """The file as a WavFile, a reject, or (MIMII) held back in its group and returned as ``None``."""
    url = storage.full_url(src, path)
    try:
        clip = identify(path[len(root):].strip("/").rsplit(".", 1)[0].split("/"))
    except BadName as e:
        return url, str(e)
    problem = schema.name_problem("machine", clip.machine)
    if problem:
        return url, f"machine folder '{clip.machine}': {problem.split(': ', 1)[1]}"
    wav = WavFile(url, clip, size)
    if clip.split is None:
        groups.setdefault(posixpath.dirname(posixpath.dirname(path)), []).append(wav)
        return None
    return wav


def _drawn(members: list[WavFile]) -> list[WavFile]:
    assign_splits([f.clip for f in members])
    return members


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


class RejectLog:
    """Rejected files, written to a local temporary CSV as they come (any number of them) and
    published to ``_rejects.csv`` at the end; the first ``keep`` are kept for the summary."""

    def __init__(self, keep: int = 100):
        self.file = tempfile.TemporaryFile()
        self.text = io.TextIOWrapper(self.file, encoding="utf-8", newline="")
        self.writer = csv.writer(self.text)
        self.writer.writerow(["path", "reason"])
        self.count, self.keep, self.first = 0, keep, []

    def add(self, rejects: list[Reject]) -> None:
        self.writer.writerows(rejects)
        self.count += len(rejects)
        self.first += rejects[:self.keep - len(self.first)]

    def publish(self, url: str, options: StorageOptions) -> None:
        self.text.flush()
        self.file.seek(0)
        with storage.open_atomic(url, options) as out:
            shutil.copyfileobj(self.file, out)
        self.text.close()


class ShardWriter:
    """Files in, shard-writing Ray tasks out: one open chunk per (split, machine), sent as a task
    when the next file would take it past ``shard_mb``; at most ``window`` tasks in flight."""

    def __init__(self, cfg: IngestConfig, rejects: RejectLog, progress: bool):
        self.cfg, self.rejects = cfg, rejects
        self.generation = shards.new_generation()
        self.task, self.window = None, 0  # set when the first shard is sent: nothing needs Ray before
        self.chunks: dict[tuple[str, str], list[WavFile]] = {}
        self.sizes: dict[tuple[str, str], int] = {}
        self.index: dict[tuple[str, str], int] = {}  # shards sent per partition: the next one's number
        self.pending: list[ray.ObjectRef] = []
        self.written: set[str] = set()
        self.clips = 0
        self.meter = console.Progress("ingest", None, every_s=10 if progress else 0, unit="shards")

    def add(self, f: WavFile) -> None:
        key = (f.split, f.machine)
        chunk = self.chunks.setdefault(key, [])
        if chunk and self.sizes[key] + f.size > self.cfg.shard_mb * 1e6:
            self._send(key)
            chunk = self.chunks[key] = []
            self.sizes[key] = 0
        chunk.append(f)
        self.sizes[key] = self.sizes.get(key, 0) + f.size

    def finish(self) -> None:
        for key in sorted(self.chunks):
            if self.chunks[key]:
                self._send(key)
        while self.pending:
            self._collect()

    def _send(self, key: tuple[str, str]) -> None:
        index = self.index.get(key, 0)
        self.index[key] = index + 1
        url = shards.shard_url(self.cfg.dest, *key, f"ingest-{index:05d}-{self.generation}")
        if self.task is None:
            self.task = ray.remote(num_cpus=1)(ingest_chunk)
            self.window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self.pending.append(self.task.remote(self.cfg, url, self.chunks[key]))
        while len(self.pending) >= self.window:
            self._collect()

    def _collect(self) -> None:
        done, self.pending = ray.wait(self.pending)
        for shard, n, bad in ray.get(done):
            self.written |= {shard} if shard else set()
            self.clips += n
            self.rejects.add(bad)
        self.meter.update(len(done))


def ingest(cfg: IngestConfig, progress: bool = True) -> dict:
    """Run the ingest; returns a summary with the counts and the first rejects (all of them are
    in ``_rejects.csv``). Files stream from the listing into shard-writing tasks: the driver holds
    one folder's listing, one open chunk per partition and the tasks in flight."""
    cfg = cfg.model_copy(update={"storage": cfg.storage.resolved()})
    rejects = RejectLog()
    writer = ShardWriter(cfg, rejects, progress)
    wavs = 0
    for item in discover(cfg):  # one item per WAV file
        wavs += 1
        if isinstance(item, WavFile):
            writer.add(item)
        else:
            rejects.add([item])
    if wavs and not writer.chunks:
        raise ValueError(f"{cfg.src}: none of its {wavs} WAV files is in a layout understood here ("
                         + "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items())
                         + f"); e.g. {rejects.first[0][0]}")
    writer.finish()
    # the new shards become the live set at once; the ones they replace go only then
    shards.publish(cfg.dest, writer.written, writer.chunks, cfg.storage)
    rejects.publish(cfg.rejects_url, cfg.storage)
    return {"src": cfg.src, "dest": cfg.dest, "clips": writer.clips, "shards": len(writer.written),
            "rejected": rejects.count, "rejects_file": cfg.rejects_url, "rejects": rejects.first}
