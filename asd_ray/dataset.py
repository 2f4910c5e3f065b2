"""Reading clip shards as a Ray Dataset: partition-pruned, filtered, decoded to fixed-length float32."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.extensions import ArrowTensorArray

from asd_ray import schema, shards, storage
from asd_ray.heap import release_freed_memory
from asd_ray.storage import StorageOptions


META_COLUMNS = ("clip_id", "machine", "section", "domain", "split", "label")


def attribute_key(pairs: list[tuple[str, str]] | None) -> str:
    """Canonical text of a clip's attributes, e.g. ``load=40,speed=1500`` (keys sorted)."""
    return ",".join(f"{k}={v}" for k, v in sorted(pairs or []))


def decode_batch(batch: pa.Table, num_samples: int, crop: str = "start", sample_rate: int | None = None,
                 pcm16: bool = False, rng: np.random.Generator | None = None) -> pa.Table:
    """Clip rows -> a table with ``audio`` as ``(rows, num_samples)`` float32 in [-1, 1]
    (or, with ``pcm16``, the stored int16 samples: half the bytes to move, scaled where they are used).

    Clips longer than ``num_samples`` are cropped (from the start, the centre, or, with
    ``crop="random"``, a window drawn from ``rng``), shorter ones zero-padded at the end. A clip
    whose bytes do not match its ``num_samples`` is an error that names the clip and its shard.
    """
    n = batch.num_rows
    bad = schema.bad_name(batch)  # names from the data must be safe file names before anything uses them
    if bad:
        row, problem = bad
        where = batch.column("path")[row].as_py() if "path" in batch.column_names else "?"
        raise schema.SchemaError(f"{where}: clip {batch['clip_id'][row]}: {problem}")
    audio = np.zeros((n, num_samples), np.int16 if pcm16 else np.float32)
    lengths = batch.column("num_samples").to_numpy()
    rates = batch.column("sample_rate").to_numpy()
    for i, raw in enumerate(batch.column("audio").to_pylist()):
        where = batch.column("path")[i].as_py() if "path" in batch.column_names else "?"
        if len(raw) != 2 * lengths[i]:
            raise schema.SchemaError(f"{where}: clip {batch['clip_id'][i]} has {len(raw)} audio bytes, "
                                     f"expected 2 * num_samples = {2 * lengths[i]}")
        if sample_rate is not None and rates[i] != sample_rate:
            raise schema.SchemaError(f"{where}: clip {batch['clip_id'][i]} has sample rate {rates[i]} Hz, "
                                     f"expected {sample_rate} Hz (the model's)")
        wave = np.frombuffer(raw, dtype="<i2") if pcm16 else schema.decode_pcm16(raw)
        spare = max(0, len(wave) - num_samples)
        start = int(rng.integers(spare + 1)) if crop == "random" else spare // 2 if crop == "center" else 0
        wave = wave[start:start + num_samples]
        audio[i, :len(wave)] = wave
    # an Arrow table, not numpy: a column of unknown domains or labels (all null) must stay a string
    # column of nulls; as a numpy object array of None, Ray Data would turn it into float NaN
    out = {c: batch.column(c).cast(pa.string()) for c in META_COLUMNS}
    out["attribute_key"] = pa.array([attribute_key(a) for a in batch.column("attributes").to_pylist()], pa.string())
    out["audio"] = ArrowTensorArray.from_numpy(audio)
    table = pa.table(out)
    del batch, audio
    release_freed_memory()
    return table


@dataclass(frozen=True)
class RowGroup:
    url: str
    index: int
    rows: int


def row_groups(urls: list[str], options: StorageOptions | None = None) -> list[RowGroup]:
    """Every row group of the shards, from their footers (read in parallel: cheap, metadata only),
    each shard's schema checked on the way."""
    if not urls:
        return []
    fs, _ = storage.pyarrow_fs(urls[0], options)

    def footer(url: str) -> list[RowGroup]:
        meta = pq.read_metadata(storage.strip_protocol(url), filesystem=fs)
        schema.validate_schema(meta.schema.to_arrow_schema(), url)
        return [RowGroup(url, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]

    with ThreadPoolExecutor(16) as pool:
        return [g for groups in pool.map(footer, urls) for g in groups]


Filter = str | Iterable[str] | None


def count_clips(url: str, *, split: Filter = None, machine: Filter = None,
                options: StorageOptions | None = None, shard_urls: list[str] | None = None) -> int:
    """How many clips the matching shards hold (or ``shard_urls``, listed already), from their footers."""
    urls = shard_urls if shard_urls is not None else shards.list_shards(url, split, machine, options)
    return sum(g.rows for g in row_groups(urls, options))


def checked_shards(url: str, split: Filter, machine: Filter, options: StorageOptions | None) -> list[str]:
    """The matching shards, every one's schema checked before any read task starts."""
    urls = shards.list_shards(url, split, machine, options)
    if not urls:
        raise FileNotFoundError(f"no clip shards under {url} (split={split}, machine={machine})")
    row_groups(urls, options)
    return urls


def read_clips(url: str, *, split: Filter = None, machine: Filter = None, section: Filter = None,
               domain: Filter = None, num_samples: int = 160_000, crop: str = "start",
               sample_rate: int | None = None, pcm16: bool = False, read_tasks: int | None = None,
               row_filter: Callable[[pa.Table], pa.Table] | None = None,
               options: StorageOptions | None = None, shard_urls: list[str] | None = None) -> ray.data.Dataset:
    """A Ray Dataset of the clips under ``url`` that match the filters.

    ``split`` and ``machine`` prune whole partition folders; ``section`` and ``domain`` filter
    rows. Rows carry ``clip_id, machine, section, domain, split, label, attribute_key`` and
    ``audio`` (float32, ``num_samples`` long). With ``sample_rate``, a clip of another rate is an
    error naming it. With ``pcm16``, ``audio`` stays int16 (scale by ``schema.PCM16_FULL_SCALE``).
    ``row_filter`` (a picklable function of a table of raw rows) drops rows before their audio is
    decoded (the reference sample: ``reference_sample.keep_sampled``). ``shard_urls``: the shards,
    listed and checked already (``checked_shards``), so that two passes read the same ones.

    One read task per shard, streaming it in batches of ``READ_ROWS`` clips: a read worker's memory
    is one batch's, whatever the shard and dataset sizes (Ray Data's Parquet reader hands a task
    several files and grew its workers with the data: measured in ``benchmarks/score_throughput.py``).
    With ``read_tasks``, at most that many run at once and they reserve no CPU: a pipeline whose
    actors hold every CPU still reads (Ray Data would otherwise wait for a free CPU forever).
    """
    urls = shard_urls if shard_urls is not None else checked_shards(url, split, machine, options)
    kwargs = {"num_samples": num_samples, "crop": crop, "sample_rate": sample_rate, "pcm16": pcm16,
              "filters": {k: [v] if isinstance(v, str) else list(v)
                          for k, v in (("section", section), ("domain", domain)) if v is not None},
              "row_filter": row_filter, "options": options}
    return ray.data.from_items([{"url": u} for u in urls], override_num_blocks=len(urls)).map_batches(
        read_shard_batches, fn_kwargs=kwargs, batch_size=1, batch_format="pyarrow",
        **({"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=read_tasks)} if read_tasks else {}))


READ_ROWS = 64


def read_shard_batches(shard: pa.Table, num_samples: int, crop: str, sample_rate: int | None, pcm16: bool,
                       filters: dict[str, list[str]], options: StorageOptions | None,
                       row_filter: Callable[[pa.Table], pa.Table] | None = None) -> Iterator[pa.Table]:
    """One shard (a one-row table of its URL) -> decoded batches of its matching clips."""
    for rows in shard_rows(shard["url"][0].as_py(), None, filters, options):
        if row_filter is not None:
            rows = row_filter(rows)
        if rows.num_rows:
            yield decode_batch(rows, num_samples, crop, sample_rate, pcm16)


def shard_rows(url: str, columns: list[str] | None, filters: dict[str, list[str]],
               options: StorageOptions | None, batch_rows: int | None = None) -> Iterator[pa.Table]:
    """A shard's matching rows (``columns`` of them, and ``path``) in batches of ``batch_rows``
    (default ``READ_ROWS``)."""
    fs, path = storage.pyarrow_fs(url, options)
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows or READ_ROWS, columns=columns):
            rows = pa.Table.from_batches([batch])
            for name, values in filters.items():
                rows = rows.filter(pc.is_in(rows[name], pa.array(values, pa.string())))
            if rows.num_rows:
                yield rows.append_column("path", pa.array([url] * rows.num_rows, pa.string()))


KEY_COLUMNS = ["clip_id", "machine", "section", "domain", "attributes", "sample_rate"]


def shard_keys(shard: pa.Table, sample_rate: int | None, options: StorageOptions | None) -> dict[str, np.ndarray]:
    """One shard -> the distinct keys of its clips: a few, however many clips."""
    keys = set()
    for batch in shard_rows(shard["url"][0].as_py(), KEY_COLUMNS, {}, options):
        if sample_rate is not None:  # checked here, before any training starts, as scoring checks it
            rates = batch["sample_rate"].to_numpy()
            for i in np.flatnonzero(rates != sample_rate)[:1]:
                raise schema.SchemaError(f"{batch['path'][i].as_py()}: clip {batch['clip_id'][i].as_py()} has "
                                         f"sample rate {rates[i]} Hz, expected {sample_rate} Hz (the training "
                                         f"config's sample_rate)")
        keys.update("\t".join([m, s, d or "", attribute_key(a)]) for m, s, d, a in zip(
            batch["machine"].to_pylist(), batch["section"].to_pylist(), batch["domain"].to_pylist(),
            batch["attributes"].to_pylist()))
    return {"key": np.array(sorted(keys), dtype=object)}


def clip_keys(url: str, *, split: Filter = None, machine: Filter = None, sample_rate: int | None = None,
              options: StorageOptions | None = None) -> list[tuple[str, str, str | None, str]]:
    """The distinct ``(machine, section, domain, attribute_key)`` of the matching clips (domain None
    where unknown), reading no audio. With ``sample_rate``, a clip of another rate is an error
    naming it and its shard.

    A task per shard returns its distinct keys, gathered as they stream in (``Dataset.unique`` would
    start an all-to-all hash aggregation; ``read_parquet`` a pool of 32 footer-reading actors, a
    minute of process start-up on a small cluster, for footers ``row_groups`` has already read)."""
    urls = checked_shards(url, split, machine, options)
    kwargs = {"sample_rate": sample_rate, "options": options}
    keys: set[str] = set()
    for batch in ray.data.from_items([{"url": u} for u in urls], override_num_blocks=len(urls)).map_batches(
            shard_keys, fn_kwargs=kwargs, batch_size=1, batch_format="pyarrow").iter_batches(
            batch_size=None, batch_format="pyarrow"):
        keys.update(batch["key"].to_pylist())
    return sorted((m, s, d or None, a) for m, s, d, a in (k.split("\t") for k in keys))


def read_some_clips(url: str, split: str, machine: str, clip_ids: Iterable[str],
                    options: StorageOptions | None = None) -> dict[str, tuple[np.ndarray, int]]:
    """A few clips' int16 audio and sample rate, by clip id (for a report): each shard's clip ids
    are read, then only the row groups that hold a wanted clip."""
    wanted = set(clip_ids)
    out: dict[str, tuple[np.ndarray, int]] = {}
    fs, _ = storage.pyarrow_fs(url, options)
    for shard_url in shards.list_shards(url, split, machine, options):
        if len(out) == len(wanted):
            break
        with fs.open_input_file(storage.strip_protocol(shard_url)) as f:
            pf = pq.ParquetFile(f)
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            ids = pf.read(columns=["clip_id"]).column(0).to_pylist()
            rows = [i for i, c in enumerate(ids) if c in wanted]
            groups = sorted({int(np.searchsorted(starts, r, side="right") - 1) for r in rows})
            if not groups:
                continue
            part = pf.read_row_groups(groups, columns=["clip_id", "audio", "num_samples", "sample_rate"])
        for clip, raw, rate in zip(part["clip_id"].to_pylist(), part["audio"].to_pylist(),
                                   part["sample_rate"].to_pylist()):
            if clip in wanted:
                out[clip] = (np.frombuffer(raw, "<i2").copy(), int(rate))
    return out
