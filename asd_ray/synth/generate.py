"""``asd-ray synth``: a DCASE-like dataset of machine sounds with domain shift and subtle faults.

The plan is cut into blocks of ``BLOCK`` clips of one (machine, section, split, domain, label)
group; each block renders from its own seed, so the audio depends on the seed and the counts only,
not on shard size or parallelism. Shards (or WAV files) are written by parallel Ray tasks.
"""

from __future__ import annotations

import io
import json
import time
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import ray
import soundfile as sf
from pydantic import BaseModel, Field, field_validator

from asd_ray import schema, shards, storage
from asd_ray.config import JobConfig
from asd_ray.storage import StorageOptions
from asd_ray.synth import dsp
from asd_ray.synth.machines import MACHINES, Machine

BLOCK = 16
DOMAIN_NOISE = {"source": (0.0, 600.0, 2.0), "target": (1.0, 250.0, 1.2)}  # hum level, cutoff Hz, slope


@dataclass(frozen=True)
class Suite:
    machines: tuple[str, ...]
    seed: int


# Two disjoint parts of the synthetic world. Settings may be chosen on ``tune`` (the four machine
# types the first defaults were chosen on, and two with other kinds of domain shift: a new
# mounting, another microphone); ``confirm`` (other physics, other kinds of domain shift, another
# seed) is only ever run to confirm a choice, never to make one.
SUITES = {"tune": Suite(("pump", "gearbox", "fan", "compressor", "motor", "press"), seed=0),
          "confirm": Suite(("valve", "transformer", "conveyor"), seed=1)}
# a plain synth run (and the demo): the tune suite's first four machine types
DEFAULT_MACHINES = SUITES["tune"].machines[:4]


class Counts(BaseModel):
    """Clips per section. Test counts are per domain."""

    model_config = {"extra": "forbid"}
    train_source: int = Field(990, ge=0)
    train_target: int = Field(10, ge=0)
    test_normal: int = Field(50, ge=0)
    test_anomaly: int = Field(50, ge=0)


class SynthConfig(JobConfig):
    out: str = Field("data/synth", description="URL of the dataset to write")
    format: Literal["parquet", "wav"] = Field("parquet", description="clip shards, or DCASE folders of WAV files")
    machines: list[str] = Field(default_factory=lambda: list(DEFAULT_MACHINES),
                                description=f"machine types (any of {sorted(MACHINES)})")
    sections: int = Field(1, ge=1, le=99, description="sections (machine instances) per machine type")
    counts: Counts = Counts()
    clip_seconds: float = Field(10.0, gt=0, le=60)
    sample_rate: int = Field(16000, ge=8000)
    named_attributes: bool = Field(True, description="false: the clips carry no attributes (noAttribute), as "
                                                     "DCASE 2024/2025 hide them for several machine types; the "
                                                     "sound still depends on them")
    difficulty: float = Field(0.5, ge=0, le=1, description="0: obvious faults, 1: barely there")
    seed: int = 0
    shard_mb: float = Field(64.0, gt=0, description="target shard size")
    storage: StorageOptions = StorageOptions()

    @field_validator("machines")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(MACHINES))
        if unknown or not value:
            raise ValueError(f"unknown machine types {unknown}; expected some of {sorted(MACHINES)}")
        return value

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def strength(self) -> float:
        return 2.0 * (1.0 - self.difficulty) + 0.15


@dataclass(frozen=True, order=True)
class Block:
    machine: str
    section: int
    split: str
    domain: str
    label: str
    start: int
    count: int


def plan(cfg: SynthConfig) -> list[Block]:
    groups = []
    c = cfg.counts
    for domain, n_train in (("source", c.train_source), ("target", c.train_target)):
        groups.append(("train", domain, "normal", n_train))
    for domain in ("source", "target"):
        groups += [("test", domain, "normal", c.test_normal), ("test", domain, "anomaly", c.test_anomaly)]
    blocks = []
    for machine in cfg.machines:
        for section in range(cfg.sections):
            for split, domain, label, total in groups:
                blocks += [Block(machine, section, split, domain, label, s, min(BLOCK, total - s))
                           for s in range(0, total, BLOCK)]
    return blocks


def fault_of(machine: str, clip_id: str) -> str:
    """The fault family of an anomalous synthetic clip: the generator deals them in turn by the
    clip's index (the 4-digit number in its name)."""
    index = int(clip_id.rsplit("/", 1)[-1].split("_")[5])
    return MACHINES[machine].anomalies[index % len(MACHINES[machine].anomalies)]


def _key(*parts) -> list[int]:
    """A numpy seed from mixed parts (strings hashed stably, unlike ``hash``)."""
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]


def render_block(cfg: SynthConfig, b: Block) -> list[dict]:
    """Render one block: clip rows (metadata, attributes, PCM bytes) of the clip format."""
    model: Machine = MACHINES[b.machine]
    inst = model.instance(np.random.default_rng(_key(cfg.seed, b.machine, b.section, "instance")))
    rng = np.random.default_rng(_key(cfg.seed, b.machine, b.section, b.split, b.domain, b.label, b.start))
    T, sr, n = cfg.num_samples, cfg.sample_rate, b.count
    attrs = {a.name: rng.choice(getattr(a, b.domain), n).astype(np.float32) for a in model.attributes}
    faults = np.array([model.anomalies[(b.start + i) % len(model.anomalies)] if b.label == "anomaly" else ""
                       for i in range(n)])
    x = model.render(rng, inst, attrs, faults, cfg.strength, T, sr)
    if b.domain == "target" and "installation" in model.shift:
        x = _installation(np.random.default_rng(_key(cfg.seed, b.machine, b.section, "installation")), x, sr)
    if b.domain == "target" and "microphone" in model.shift:
        x = _microphone(np.random.default_rng(_key(cfg.seed, b.machine, b.section, "microphone")), rng, x, sr)
    outdoor = b.domain == "target" and "outdoor" in model.shift
    background_domain = b.domain if "background" in model.shift else "source"
    x += _background(rng, background_domain, n, T, sr, outdoor) * dsp.col(10 ** (-rng.uniform(6, 15, n) / 20))
    level = 10 ** (rng.uniform(-32, -22, n) / 20)  # random loudness: level carries no label information
    x = dsp.unit_rms(x) * dsp.col(level)
    rows = []
    for i in range(n):
        attributes = {a.name: str(int(attrs[a.name][i])) for a in model.attributes} if cfg.named_attributes else {}
        stem = "_".join([f"section_{b.section:02d}", b.domain, b.split, b.label, f"{b.start + i:04d}",
                         *([f"{k}_{v}" for k, v in attributes.items()] or ["noAttribute"])])
        rows.append({"clip_id": schema.clip_id(b.machine, b.split, stem), "machine": b.machine,
                     "section": f"{b.section:02d}", "domain": b.domain, "split": b.split, "label": b.label,
                     "attributes": attributes, "sample_rate": sr, "num_samples": T,
                     "audio": schema.encode_pcm16(x[i])})
    return rows


def _background(rng, domain: str, n: int, T: int, sr: int, outdoor: bool = False) -> np.ndarray:
    """Factory background; the target domain's has another colour and mains hum (domain shift).
    ``outdoor``: gusty wind instead (low rumble whose level swells and fades)."""
    if outdoor:
        wind = dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, 120.0), 1.5))
        return dsp.unit_rms(wind * (dsp.slow_wobble(rng, n, T, sr, np.full(n, 1.5)) ** 2))
    hum, cutoff, slope = DOMAIN_NOISE[domain]
    bg = dsp.shaped_noise(rng, n, T, sr, dsp.lowpass_env(np.full(n, cutoff), slope))
    if hum:
        t = np.arange(T, dtype=np.float32) / sr
        bg += hum * 0.3 * sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    return dsp.unit_rms(bg)


def _installation(rng: np.random.Generator, x: np.ndarray, sr: int) -> np.ndarray:
    """Another transfer path from machine to microphone (one per section): two resonances of the
    new mounting or pipework and a short room tail, the same for every target clip of a section."""
    T = int(0.15 * sr)
    t = np.arange(T, dtype=np.float32) / sr
    path = np.zeros(T, np.float32)
    path[0] = 1.0
    for f in rng.uniform(300, 4000, 2):
        path += 0.15 * np.exp(-t / 0.01) * np.sin(2 * np.pi * f * t)
    path += 0.3 * rng.standard_normal(T).astype(np.float32) * np.exp(-t / 0.04)
    return dsp.unit_rms(dsp.convolve(x, np.broadcast_to(path, (len(x), T)).copy()))


def _microphone(section_rng: np.random.Generator, rng: np.random.Generator, x: np.ndarray, sr: int) -> np.ndarray:
    """Another microphone (one per section): its own low and high cut-offs and presence peak, and its
    self-noise (hiss), the same response for every target clip of a section."""
    low, high, peak = section_rng.uniform(150, 400), section_rng.uniform(3000, 5000), section_rng.uniform(1500, 3000)
    f = np.fft.rfftfreq(x.shape[-1], 1.0 / sr)
    response = ((f / low) ** 2 / (1 + (f / low) ** 2) / (1 + (f / high) ** 4)
                * (1 + 1.5 * np.exp(-0.5 * ((f - peak) / 300) ** 2))).astype(np.float32)
    heard = dsp.unit_rms(np.fft.irfft(np.fft.rfft(x, axis=-1) * response, n=x.shape[-1], axis=-1).astype(np.float32))
    return heard + 0.05 * rng.standard_normal(x.shape, dtype=np.float32)


def shard_jobs(cfg: SynthConfig, blocks: list[Block], generation: str) -> list[tuple[str, list[Block]]]:
    """Group blocks into shards of about ``shard_mb`` per (split, machine) partition, named per
    partition (see :mod:`asd_ray.shards`)."""
    per_shard = shards.rows_per_shard(cfg.shard_mb, cfg.num_samples)
    chunks = []
    for split in schema.SPLITS:
        for machine in cfg.machines:
            part = [b for b in blocks if b.split == split and b.machine == machine]
            current: list[Block] = []
            for b in part:
                if current and sum(x.count for x in current) + b.count > per_shard:
                    chunks.append((split, machine, current))
                    current = []
                current.append(b)
            if current:
                chunks.append((split, machine, current))
    return shards.partition_shard_urls(cfg.out, "synth", generation, chunks)


def write_job(cfg: SynthConfig, url: str, blocks: list[Block]) -> list[str]:
    """Render ``blocks`` and write them: one shard at ``url``, or one WAV file per clip."""
    rows = [row for b in blocks for row in render_block(cfg, b)]
    if cfg.format == "parquet":
        shards.write_shard(url, schema.clips_table(rows), cfg.storage)
        return [url]
    written = []
    for row in rows:
        machine, split, stem = row["clip_id"].split("/")
        buf = io.BytesIO()
        sf.write(buf, np.frombuffer(row["audio"], "<i2"), row["sample_rate"], format="WAV", subtype="PCM_16")
        wav = storage.join(cfg.out, machine, split, f"{stem}.wav")
        storage.write_bytes_atomic(wav, buf.getvalue(), cfg.storage)
        written.append(wav)
    return written


def synthesize(cfg: SynthConfig, progress: bool = True) -> dict:
    """Generate the dataset with parallel Ray tasks; returns a summary (also saved as ``_manifest.json``)."""
    cfg = cfg.model_copy(update={"storage": cfg.storage.resolved()})
    t0 = time.time()
    blocks = plan(cfg)
    jobs = shard_jobs(cfg, blocks, shards.new_generation())
    task = ray.remote(num_cpus=1)(write_job)
    pending = [task.remote(cfg, url, job_blocks) for url, job_blocks in jobs]
    written: list[str] = []
    while pending:
        done, pending = ray.wait(pending)
        written += [u for urls in ray.get(done) for u in urls]
        if progress:
            print(f"\rsynth: {len(jobs) - len(pending)}/{len(jobs)} {'shards' if cfg.format == 'parquet' else 'parts'}",
                  end="", flush=True)
    if progress:
        print()
    if cfg.format == "parquet":  # the new shards become the live set at once, the old ones go
        shards.publish(cfg.out, written, {(s, m) for s in schema.SPLITS for m in cfg.machines}, cfg.storage)
    counts: dict[str, int] = {}
    for b in blocks:
        key = f"{b.machine}/{b.split}/{b.domain}/{b.label}"
        counts[key] = counts.get(key, 0) + b.count
    summary = {"out": cfg.out, "format": cfg.format, "clips": sum(counts.values()), "files": len(written),
               "seconds": round(time.time() - t0, 1), "counts": counts,
               "config": cfg.model_dump(mode="json", exclude={"storage"})}
    storage.write_bytes_atomic(storage.join(cfg.out, "_manifest.json"), json.dumps(summary, indent=1).encode(),
                               cfg.storage)
    return summary
