"""Domains and labels of a scored evaluation set from the official DCASE evaluator's ground truth.

The evaluator (``nttcslab/dcase2023_task2_evaluator`` and its 2024/2025 successors) keeps, per
machine type and section, three headerless CSV files named ``ground_truth_<machine>_section_<XX>_test.csv``:

- ``ground_truth_data/``: ``<file>.wav,<0 normal | 1 anomaly>``
- ``ground_truth_domain/``: ``<file>.wav,<0 source | 1 target>``
- ``ground_truth_attributes/`` (the name map, optional here): ``<file>.wav,<full dev-style name>``

where ``<file>`` is the evaluation set's name (``section_00_0000``). A scored clip is found by its
file name, or by its full name through the name map (for a set ingested under its full names).
Every scored clip of a machine/section must have ground truth and every ground-truth clip must be
scored: an evaluation of part of a section would be misleading.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa

from asd_ray import schema, storage
from asd_ray.score_output import score_columns, sections
from asd_ray.storage import StorageOptions

FOLDERS = {"label": "ground_truth_data", "domain": "ground_truth_domain", "names": "ground_truth_attributes"}
VALUES = {"label": {"0": "normal", "1": "anomaly"}, "domain": {"0": "source", "1": "target"}}


def _url(root: str, kind: str, machine: str, section: str) -> str:
    return storage.join(root, FOLDERS[kind], f"ground_truth_{machine}_section_{section}_test.csv")


def _read(url: str, options: StorageOptions | None, allowed: dict[str, str] | None) -> dict[str, str]:
    if not storage.exists(url, options):
        raise FileNotFoundError(f"{url}: no such ground-truth file")
    out = {}
    for n, row in enumerate(csv.reader(io.StringIO(storage.read_bytes(url, options).decode())), start=1):
        if not row:
            continue
        if len(row) < 2 or not row[0].endswith(".wav") or (allowed is not None and row[1].strip() not in allowed):
            raise ValueError(f"{url}: line {n} is {row!r}, expected <file>.wav,"
                             f"{'|'.join(allowed) if allowed else '<full name>'}")
        out[row[0]] = allowed[row[1].strip()] if allowed is not None else row[1].strip()
    return out


def apply(table: pa.Table, root: str, options: StorageOptions | None = None) -> pa.Table:
    """``table`` (scores) with ``domain`` and ``label`` from the ground truth under ``root``."""
    d = score_columns(table)
    domains, labels = d["domain"].copy(), d["label"].copy()
    for (machine, section), keep in sections(d):
        rows = np.flatnonzero(keep)
        clip_ids = d["clip_id"].take(pa.array(rows)).to_pylist()
        schema.check_name("machine", machine, "scores")
        schema.check_name("section", section, "scores")
        truth = {kind: _read(_url(root, kind, machine, section), options, VALUES[kind]) for kind in VALUES}
        names_url = _url(root, "names", machine, section)
        full_to_file = ({f"{full.removesuffix('.wav')}.wav": f for f, full in _read(names_url, options, None).items()}
                        if storage.exists(names_url, options) else {})
        seen = set()
        for i, clip_id in zip(rows, clip_ids):
            name = clip_id.rsplit("/", 1)[-1] + ".wav"
            file = name if name in truth["label"] else full_to_file.get(name, name)
            if file not in truth["label"] or file not in truth["domain"]:
                missing = _url(root, "label" if file not in truth["label"] else "domain", machine, section)
                raise ValueError(f"{missing}: no row for scored clip {clip_id} ({name})")
            labels[i], domains[i] = truth["label"][file], truth["domain"][file]
            seen.add(file)
        unscored = sorted(set(truth["label"]) - seen)
        if unscored:
            raise ValueError(f"{_url(root, 'label', machine, section)}: {len(unscored)} clips have ground truth but "
                             f"no score (e.g. {unscored[0]}): score the whole section, or evaluate another output")
    return (table.set_column(table.schema.get_field_index("domain"), "domain", pa.array(domains.tolist(), pa.string()))
            .set_column(table.schema.get_field_index("label"), "label", pa.array(labels.tolist(), pa.string())))
