"""Clip shards in storage: atomic writes, partition-pruned listing, validated reads.

A shard is one Parquet file of clips of one (split, machine) partition, at
``<root>/split=<split>/machine=<machine>/<name>.parquet``. Writers give shards deterministic
names, so a re-run overwrites instead of duplicating, and publish each shard atomically
(see :func:`asd_ray.storage.write_bytes_atomic`): a killed writer leaves complete shards only.
Readers skip names that start with ``.`` or ``_`` (temporary files, manifests, reject lists).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from asd_ray import schema, storage
from asd_ray.storage import StorageOptions

ROWS_PER_ROW_GROUP = 64


def shard_url(root: str, split: str, machine: str, name: str) -> str:
    return storage.join(root, schema.partition_dir(split, machine), f"{name}.parquet")


def rows_per_shard(target_mb: float, num_samples: int) -> int:
    """How many clips of ``num_samples`` PCM samples fill a shard of about ``target_mb`` MB."""
    return max(1, int(target_mb * 1e6 // (2 * num_samples + 200)))


def write_shard(url: str, table: pa.Table, options: StorageOptions | None = None) -> str:
    """Validate ``table`` and publish it as one Parquet object at ``url``, all or nothing."""
    schema.validate_schema(table.schema, url)
    schema.validate_rows(table, url)
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(schema.CLIP_SCHEMA.metadata), buf,
                   row_group_size=ROWS_PER_ROW_GROUP, compression={"audio": "none", **_meta_codecs()})
    storage.write_bytes_atomic(url, buf.getvalue(), options)
    return url


def _meta_codecs() -> dict[str, str]:
    return {c: "zstd" for c in schema.METADATA_COLUMNS}


def list_shards(
    root: str,
    split: str | Iterable[str] | None = None,
    machine: str | Iterable[str] | None = None,
    options: StorageOptions | None = None,
) -> list[str]:
    """URLs of the shards under ``root``, listing only the partition folders that match."""
    fs, path = storage.fsspec_fs(root, options)
    splits = _as_list(split) or ["*"]
    machines = _as_list(machine) or ["*"]
    found: set[str] = set()
    for s in splits:
        for m in machines:
            for p in fs.glob(f"{path}/{schema.partition_dir(s, m)}/*.parquet"):
                name = p.rsplit("/", 1)[-1]
                if not name.startswith((".", "_")):
                    found.add(storage.full_url(root, p))
    return sorted(found)


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def read_shard(url: str, columns: list[str] | None = None, options: StorageOptions | None = None) -> pa.Table:
    """Read one shard, checking its schema first; errors name the shard and the column."""
    fs, path = storage.fsspec_fs(url, options)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        schema.validate_schema(pf.schema_arrow, url)
        return pf.read(columns=columns)


def remove_stale(root: str, keep: set[str], partitions: Iterable[tuple[str, str]],
                 options: StorageOptions | None = None) -> list[str]:
    """Delete shards in ``partitions`` that this run did not write (left by an earlier, larger run)."""
    fs, _ = storage.fsspec_fs(root, options)
    keep = {storage.canonical(u) for u in keep}
    removed = []
    for split, machine in set(partitions):
        for url in list_shards(root, split, machine, options):
            if url not in keep:
                fs.rm_file(storage.strip_protocol(url))
                removed.append(url)
    return removed
