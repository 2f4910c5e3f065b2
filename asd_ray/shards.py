"""Clip shards in storage: atomic writes, partition-pruned listing, validated reads.

A shard is one Parquet file of clips of one (split, machine) partition, at
``<root>/split=<split>/machine=<machine>/<prefix>-<index>-<generation>.parquet``: the index counts
within the partition (so a partition's names do not depend on the others), the generation is new
for every run. Each shard is written atomically (:func:`asd_ray.storage.write_bytes_atomic`).

The set of live shards is ``<root>/_shards.json``, replaced in one atomic write when a run has
written all its shards (:func:`publish`); only then are the shards it replaces removed. A reader
lists the live set, so it sees the old dataset or the new one, never a mix, and a run killed part
way leaves the old dataset as it was (its own shards are unlisted until the next run removes them).
A folder without ``_shards.json`` (written by other tools) is listed by its files. Readers skip
names that start with ``.`` or ``_`` (temporary files, manifests, reject lists).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from asd_ray import schema, storage
from asd_ray.storage import StorageOptions

ROWS_PER_ROW_GROUP = 16  # the unit the training input deals in random order (train_input.py)
LIVE_FILE = "_shards.json"


def new_generation() -> str:
    return uuid.uuid4().hex[:10]


def shard_url(root: str, split: str, machine: str, name: str) -> str:
    return storage.join(root, schema.partition_dir(split, machine), f"{name}.parquet")


def partition_shard_urls(root: str, prefix: str, generation: str,
                         chunks: Iterable[tuple[str, str, object]]) -> list[tuple[str, object]]:
    """``(url, chunk)`` for ``(split, machine, chunk)`` items, named ``<prefix>-<index>-<generation>``
    with the index counted per partition."""
    counts: dict[tuple[str, str], int] = {}
    out = []
    for split, machine, chunk in chunks:
        index = counts.get((split, machine), 0)
        counts[(split, machine)] = index + 1
        out.append((shard_url(root, split, machine, f"{prefix}-{index:05d}-{generation}"), chunk))
    return out


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
    """URLs of the live shards under ``root`` in the matching partitions."""
    splits = _as_list(split) or ["*"]
    machines = _as_list(machine) or ["*"]
    live = _live(root, options)
    if live is not None:
        wanted = {schema.partition_dir(s, m) for s in splits for m in machines}
        return sorted(storage.join(root, rel) for rel in live if any(_matches(_partition(rel), w) for w in wanted))
    return _listed(root, splits, machines, options)


def _partition(rel: str) -> str:
    return rel.rsplit("/", 1)[0]


def _matches(partition: str, pattern: str) -> bool:
    (split, machine), (want_split, want_machine) = partition.split("/"), pattern.split("/")
    return want_split in ("split=*", split) and want_machine in ("machine=*", machine)


def _live(root: str, options: StorageOptions | None) -> list[str] | None:
    """The live shards (paths relative to ``root``) from ``_shards.json``; None without one."""
    url = storage.join(root, LIVE_FILE)
    if not storage.exists(url, options):
        return None
    return json.loads(storage.read_bytes(url, options))["shards"]


def _listed(root: str, splits: list[str], machines: list[str], options: StorageOptions | None) -> list[str]:
    fs, path = storage.fsspec_fs(root, options)
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


def publish(root: str, written: Iterable[str], partitions: Iterable[tuple[str, str]],
            options: StorageOptions | None = None) -> list[str]:
    """Make ``written`` the live shards of ``partitions`` (the other partitions keep theirs) in one
    atomic write of ``_shards.json``, then remove every other shard file of those partitions: the
    replaced generation and any left by a killed run. Returns the removed URLs."""
    partitions = {schema.partition_dir(s, m) for s, m in partitions}
    prefix = storage.canonical(root).rstrip("/") + "/"
    new = {storage.canonical(u)[len(prefix):] for u in written}
    old = _live(root, options)
    if old is None:  # a folder without a live set: everything in it counts as live until now
        old = [storage.canonical(u)[len(prefix):] for u in _listed(root, ["*"], ["*"], options)]
    kept = {rel for rel in old if _partition(rel) not in partitions}
    live = sorted(kept | new)
    storage.write_bytes_atomic(storage.join(root, LIVE_FILE), json.dumps({"shards": live}, indent=0).encode(),
                               options)
    fs, _ = storage.fsspec_fs(root, options)
    removed = []
    for part in sorted(partitions):
        split, machine = (p.split("=", 1)[1] for p in part.split("/"))
        for url in _listed(root, [split], [machine], options):
            if storage.canonical(url)[len(prefix):] not in new:
                fs.rm_file(storage.strip_protocol(url))
                removed.append(url)
    return removed
