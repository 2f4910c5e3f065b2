"""The clip format: one Parquet row per clip. The single definition of it, versioned.

Schema version 1, columns:

==============  =======================  ===============================================
column          arrow type               meaning
==============  =======================  ===============================================
clip_id         string, not null         unique, stable: ``<machine>/<split>/<file stem>``
machine         string, not null         machine type, e.g. ``fan``
section         string, not null         two-digit section, e.g. ``00``
domain          string                   ``source`` / ``target``; null when unknown (eval)
split           string, not null         ``train`` / ``test``
label           string                   ``normal`` / ``anomaly``; null when unknown (eval)
attributes      map<string, string>      operating conditions, e.g. ``{"speed": "1500rpm"}``
sample_rate     int32, not null          Hz
num_samples     int64, not null          samples in ``audio``
audio           binary, not null         mono 16-bit little-endian PCM
==============  =======================  ===============================================

Files carry ``asd_ray.schema_version`` in their Parquet key/value metadata.
Shards live in hive folders ``split=<split>/machine=<machine>/`` so that a job can read one
split or one machine without listing the rest; the partition values are also kept in the rows.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = "1"
VERSION_KEY = b"asd_ray.schema_version"

DOMAINS = ("source", "target")
SPLITS = ("train", "test")
LABELS = ("normal", "anomaly")

CLIP_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("machine", pa.string(), nullable=False),
        pa.field("section", pa.string(), nullable=False),
        pa.field("domain", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("num_samples", pa.int64(), nullable=False),
        pa.field("audio", pa.binary(), nullable=False),
    ],
    metadata={VERSION_KEY: SCHEMA_VERSION.encode()},
)
METADATA_COLUMNS = [f.name for f in CLIP_SCHEMA if f.name != "audio"]


class SchemaError(ValueError):
    """A clip table does not follow the clip format; the message names the source and column."""


# Machine and section values become file names (the DCASE CSVs, the report's plots), and the
# official evaluator splits those names on "_": so only letters, digits and "-", and two digits.
NAME_RULES = {"machine": (re.compile(r"[A-Za-z0-9-]+"), "letters, digits and '-' only (it becomes part of file "
                                                        "names, which the DCASE evaluator splits on '_')"),
              "section": (re.compile(r"[0-9]{2}"), "two digits, e.g. '00'")}


def name_problem(column: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``machine`` / ``section`` value, or None when it is."""
    pattern, expected = NAME_RULES[column]
    if isinstance(value, str) and pattern.fullmatch(value):
        return None
    return f"{column}={value!r}: expected {expected}"


def bad_name(table: pa.Table) -> tuple[int, str] | None:
    """The first row whose machine or section value could not be a file name, and why; None if none."""
    for column in NAME_RULES:
        for value in pc.unique(table.column(column)).to_pylist():
            problem = name_problem(column, value)
            if problem:
                return table.column(column).to_pylist().index(value), problem
    return None


def check_name(column: str, value: object, source: str) -> str:
    """``value`` if it is a valid ``machine`` / ``section`` value, else an error naming ``source``."""
    problem = name_problem(column, value)
    if problem:
        raise SchemaError(f"{source}: {problem}")
    return value


def validate_schema(schema: pa.Schema, source: str) -> None:
    """Check that ``schema`` has every clip column with the right type (extra columns are allowed)."""
    for field in CLIP_SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            raise SchemaError(f"{source}: missing column '{field.name}' (expected {field.type})")
        actual = schema.field(idx).type
        if not actual.equals(field.type) and not (
            pa.types.is_large_string(actual) and pa.types.is_string(field.type)
            or pa.types.is_large_binary(actual) and pa.types.is_binary(field.type)
        ):
            raise SchemaError(f"{source}: column '{field.name}' has type {actual}, expected {field.type}")
    version = (schema.metadata or {}).get(VERSION_KEY)
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise SchemaError(f"{source}: clip schema version {version.decode()}, this asd_ray reads {SCHEMA_VERSION}")


def validate_rows(table: pa.Table, source: str) -> None:
    """Check the values the types cannot: machine and section names, allowed labels/domains/splits
    and audio lengths."""
    bad = bad_name(table)
    if bad:
        row, problem = bad
        raise SchemaError(f"{source}: row {row} ({table['clip_id'][row]}): {problem}")
    for column, allowed, nullable in (("domain", DOMAINS, True), ("split", SPLITS, False), ("label", LABELS, True)):
        values = table.column(column).to_pylist()
        for row, value in enumerate(values):
            if (value is None and not nullable) or (value is not None and value not in allowed):
                raise SchemaError(f"{source}: row {row} ({table['clip_id'][row]}): {column}={value!r}, "
                                  f"expected one of {allowed}")
    lengths = np.array([len(a) for a in table.column("audio").to_pylist()]) if table.num_rows else np.zeros(0)
    expected = 2 * table.column("num_samples").to_numpy()
    bad = np.flatnonzero(lengths != expected)
    if len(bad):
        row = int(bad[0])
        raise SchemaError(
            f"{source}: row {row} ({table['clip_id'][row]}): audio has {lengths[row]} bytes, "
            f"expected 2 * num_samples = {expected[row]}"
        )


def encode_pcm16(wave: np.ndarray) -> bytes:
    """float waveform in [-1, 1] -> little-endian int16 PCM bytes (clipped, rounded)."""
    return (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


PCM16_FULL_SCALE = 32767.0


def decode_pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_FULL_SCALE


def clips_table(rows: list[dict]) -> pa.Table:
    """Build a schema-conforming table from clip dicts (``attributes`` as a dict, ``audio`` as bytes)."""
    columns = {f.name: [r.get(f.name) for r in rows] for f in CLIP_SCHEMA}
    columns["attributes"] = [list((r.get("attributes") or {}).items()) for r in rows]
    table = pa.Table.from_pydict(columns, schema=CLIP_SCHEMA)
    return table


def clip_id(machine: str, split: str, stem: str) -> str:
    return f"{machine}/{split}/{stem}"


def partition_dir(split: str, machine: str) -> str:
    return f"split={split}/machine={machine}"
