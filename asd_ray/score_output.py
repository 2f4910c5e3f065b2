"""A scoring job's output folder: per-clip scores as Parquet shards, the DCASE submission files
derived from them, ``unscored.csv``, and ``manifest.json`` written last.

``out/scores/*.parquet``: clip_id, machine, section, domain, label, score, decision, reason
(score and decision null, reason given, for a clip that could not be scored). The DCASE files
``anomaly_score_<machine>_section_<XX>_test.csv`` / ``decision_result_...`` are written in one
streaming pass over the shards, a batch at a time, each file published whole. A run first removes
the manifest and the old shards, so a folder with a manifest is complete and re-runs are safe.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from asd_ray import schema, storage
from asd_ray.storage import StorageOptions

META = ("clip_id", "machine", "section", "domain", "label")
SCORES = "scores"
EXAMPLES = 20  # unscored clips named in the job's summary (all of them are in unscored.csv)


def scores_url(out: str) -> str:
    return storage.join(out, SCORES)


def prepare_outputs(out: str, options: StorageOptions | None) -> None:
    """From here until ``finish_outputs`` the folder is incomplete (no manifest) and holds no old shards."""
    storage.remove(storage.join(out, "manifest.json"), options)
    fs, path = storage.fsspec_fs(scores_url(out), options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def shard_urls(out: str, options: StorageOptions | None) -> list[str]:
    fs, path = storage.fsspec_fs(scores_url(out), options)
    return sorted(storage.full_url(out, p) for p in fs.glob(f"{path}/*.parquet"))


def _batches(out: str, options: StorageOptions | None, columns: list[str]):
    for url in shard_urls(out, options):
        fs, path = storage.fsspec_fs(url, options)
        with fs.open(path, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=columns)


def finish_outputs(out: str, options: StorageOptions | None, config: dict, expected: int) -> dict:
    """Derive the DCASE files and ``unscored.csv`` from the shards, check that every test clip is
    there once (``expected`` clips were read), then write the manifest."""
    fs, root = storage.fsspec_fs(out, options)
    scored, unscored, examples, groups = 0, 0, [], set()
    with ExitStack() as stack:
        files: dict[str, object] = {}

        def append(name: str, rows: list[tuple]) -> None:
            if name not in files:
                files[name] = stack.enter_context(storage.open_atomic(storage.join(out, name), options))
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            files[name].write(buf.getvalue().encode())
        append("unscored.csv", [("clip_id", "reason")])
        for batch in _batches(out, options, ["clip_id", "machine", "section", "score", "decision", "reason"]):
            rows: dict[str, list[tuple]] = defaultdict(list)
            for clip, machine, section, score, decision, reason in zip(*batch.to_pydict().values()):
                if reason is not None:
                    unscored += 1
                    if len(examples) < EXAMPLES:
                        examples.append((clip, reason))
                    rows["unscored.csv"].append((clip, reason))
                    continue
                if (machine, section) not in groups:
                    schema.check_name("machine", machine, "scores")  # both become part of file names
                    schema.check_name("section", section, "scores")
                    groups.add((machine, section))
                wav = f"{clip.rsplit('/', 1)[-1]}.wav"
                rows[f"anomaly_score_{machine}_section_{section}_test.csv"].append((wav, score))
                rows[f"decision_result_{machine}_section_{section}_test.csv"].append((wav, decision))
                scored += 1
            for name, part in rows.items():
                append(name, part)
        written = sorted(files)
    if scored + unscored != expected:
        raise RuntimeError(f"{scores_url(out)}: {scored + unscored} rows for {expected} test clips; refusing to "
                           f"write the manifest (re-run the job)")
    for path in fs.glob(f"{root}/*_section_*_test.csv"):
        if path.rsplit("/", 1)[-1] not in written:
            fs.rm_file(path)  # a section of an earlier run that this one does not have
    manifest = {"files": sorted(written), "shards": [u.rsplit("/", 1)[-1] for u in shard_urls(out, options)],
                "scored": scored, "unscored": unscored, "config": config}
    storage.write_bytes_atomic(storage.join(out, "manifest.json"), json.dumps(manifest, indent=1).encode(), options)
    return {"out": out, "scored": scored, "unscored": unscored, "unscored_examples": examples,
            "groups": sorted(f"{m} section {s}" for m, s in groups)}


def read_scores(url: str, options: StorageOptions | None = None, by_clip_id: bool = True) -> pa.Table:
    """The scores of a complete scoring output (one with a manifest), by clip id (or, without
    ``by_clip_id``, in the shards' order, without a sorted copy): every scored clip (those that
    could not be scored are in ``unscored.csv``). For evaluation and reports: this one reads the
    whole table."""
    # each batch filtered as it comes: the unfiltered table is never held whole
    tables = [pa.Table.from_batches([b]) for b in scored_batches(url, options)]
    empty = pa.table({**{c: pa.array([], pa.string()) for c in META}, "score": pa.array([], pa.float64()),
                      "decision": pa.array([], pa.int8())})
    table = pa.concat_tables(tables) if tables else empty
    del tables
    return table.sort_by("clip_id") if by_clip_id else table


def scored_batches(url: str, options: StorageOptions | None = None) -> Iterator[pa.RecordBatch]:
    """The scored rows of a complete scoring output, a batch at a time, in the shards' order."""
    if not storage.exists(storage.join(url, "manifest.json"), options):
        raise FileNotFoundError(f"{url}: no manifest.json - not a scoring output, or an incomplete one")
    for batch in _batches(url, options, [*META, "score", "decision", "reason"]):
        yield batch.filter(batch["reason"].is_null()).drop_columns(["reason"])


def score_columns(table: pa.Table) -> dict[str, np.ndarray | pa.Array]:
    """A scores table as numpy columns, a few bytes a clip: ``machine``, ``section``, ``domain`` and
    ``label`` (few distinct values) as object arrays that point at one string per value (None where
    unknown), ``score`` and ``decision`` as floats, ``clip_id`` left an Arrow array (the callers take
    the few ids they show). ``to_pydict`` made a string object per clip and column instead: 0.8 GB a
    million clips (``benchmarks/evaluate_memory.py``)."""
    def column(name: str) -> pa.Array:
        chunks = table[name].chunks
        return pa.concat_arrays(chunks) if chunks else pa.array([], table.schema.field(name).type)

    out: dict[str, np.ndarray | pa.Array] = {}
    for name in ("machine", "section", "domain", "label"):
        encoded = column(name).cast(pa.string()).dictionary_encode()
        values = np.array(encoded.dictionary.to_pylist() + [None], dtype=object)
        out[name] = values[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)]
    for name in ("score", "decision"):
        if name in table.column_names:
            out[name] = column(name).to_numpy(zero_copy_only=False).astype(float)
    out["clip_id"] = column("clip_id")
    return out


def sections(table: dict[str, np.ndarray]) -> list[tuple[tuple[str, str], np.ndarray]]:
    """``((machine, section), its rows as a mask)`` of ``score_columns``, sorted."""
    keys = sorted(set(zip(table["machine"], table["section"])))
    return [((m, s), (table["machine"] == m) & (table["section"] == s)) for m, s in keys]
