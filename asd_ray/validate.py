"""A small labelled validation budget, scored inside training every epoch (`validation=` in the train config).

Up to ``ref_clips`` normal training clips per (machine, section, domain) give centroid
references, and up to ``test_clips`` test clips per (machine, section, domain, label) are scored
against them, as ``asd-ray score`` does; the result is the official DCASE score (harmonic mean of
AUC source, AUC target and pAUC), so both domains always count.

The budget is a seeded sample, the same whatever the shard order: in each group the clips with
the smallest hash of ``(seed, clip_id)``. Choosing reads only the metadata columns, keeping at
most the budget per group in memory; then only the row groups that hold the chosen clips are read
with their audio (a few MB, kept in memory by rank 0).
"""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from asd_ray import metrics, schema, shards, storage
from asd_ray.autoencoder import MachineAutoEncoders
from asd_ray.reference_sample import rank
from asd_ray.references import centroid_references, group_embeddings, reconstruction_references
from asd_ray.storage import StorageOptions

META = ["clip_id", "machine", "section", "domain", "label"]


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(None, description="labelled clip dataset (default: the training data)")
    ref_clips: int = Field(32, ge=1, description="normal training clips per machine/section/domain")
    test_clips: int = Field(16, ge=1, description="labelled test clips per machine/section/domain/label")
    seed: int = Field(0, description="which clips the budget holds")


def choose(url: str, split: str, machines: list[str] | None, limit: int, group_cols: tuple[str, ...], seed: int,
           options: StorageOptions | None, normal_only: bool = False) -> dict[str, list[int]]:
    """Per shard, the rows of the sample: up to ``limit`` labelled clips per ``group_cols`` group,
    those of smallest rank. Reads the metadata columns only."""
    heaps: dict[tuple, list] = defaultdict(list)  # max-heaps (negated ranks) of at most ``limit``
    for shard in shards.list_shards(url, split, machines, options):
        table = shards.read_shard(shard, META, options)
        for row, r in enumerate(table.to_pylist()):
            if r["label"] is None or r["domain"] is None or (normal_only and r["label"] != "normal"):
                continue
            item = (-rank(seed, r["clip_id"]), shard, row)
            heap = heaps[tuple(r[c] for c in group_cols)]
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    chosen: dict[str, list[int]] = defaultdict(list)
    for heap in heaps.values():
        for _, shard, row in heap:
            chosen[shard].append(row)
    return {s: sorted(rows) for s, rows in sorted(chosen.items())}


def read_rows(chosen: dict[str, list[int]], num_samples: int, options: StorageOptions | None) -> dict[str, np.ndarray]:
    """The chosen rows with their audio (float32, ``num_samples`` long), reading only the row
    groups that hold them."""
    cols: dict[str, list] = defaultdict(list)
    for shard, rows in chosen.items():
        fs, path = storage.fsspec_fs(shard, options)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            schema.validate_schema(pf.schema_arrow, shard)
            starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
            group = {r: int(np.searchsorted(starts, r, side="right")) - 1 for r in rows}
            groups = sorted(set(group.values()))
            table = pf.read_row_groups(groups, columns=META + ["audio"])
        first = dict(zip(groups, np.cumsum([0] + [starts[g + 1] - starts[g] for g in groups])))  # in ``table``
        local = [int(first[group[r]] + r - starts[group[r]]) for r in rows]
        for r in table.take(local).to_pylist():
            wave = np.zeros(num_samples, np.float32)
            decoded = schema.decode_pcm16(r["audio"])[:num_samples]
            wave[:len(decoded)] = decoded
            for c in ("machine", "section", "domain", "label"):
                cols[c].append(r[c])
            cols["audio"].append(wave)
    return {k: np.stack(v) if k == "audio" else np.array(v) for k, v in cols.items()}


def load_validation(cfg: ValidationConfig, train_data: str, machines: list[str] | None, num_samples: int,
                    options: StorageOptions | None = None) -> dict[str, dict[str, np.ndarray]]:
    url = cfg.data or train_data
    refs = choose(url, "train", machines, cfg.ref_clips, ("machine", "section", "domain"), cfg.seed, options,
                  normal_only=True)
    test = choose(url, "test", machines, cfg.test_clips, ("machine", "section", "domain", "label"), cfg.seed,
                  options)
    if not test or not refs:
        raise ValueError(f"{url}: validation needs normal training clips and test clips with known domain and label "
                         f"(machine types {machines or 'all'}); found {sum(map(len, refs.values()))} and "
                         f"{sum(map(len, test.values()))}. Point validation.data at a labelled set, or set "
                         f"validation=null")
    return {"refs": read_rows(refs, num_samples, options), "test": read_rows(test, num_samples, options)}


@torch.no_grad()
def _embed(model: torch.nn.Module, audio: np.ndarray, machines: np.ndarray, device: torch.device,
           batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(audio), batch):
        wave = torch.as_tensor(audio[i:i + batch], device=device)
        if isinstance(model, MachineAutoEncoders):  # its reconstruction error per clip
            out.append(model(wave, model.index(machines[i:i + batch]).to(device)).float()[:, None].cpu().numpy())
        else:
            out.append(F.normalize(model(wave).float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def validation_score(model: torch.nn.Module, val: dict[str, dict[str, np.ndarray]], device: torch.device) -> float:
    """Official DCASE score of ``model`` (in eval mode for the call) on the validation budget."""
    was_training = model.training
    model.eval()
    try:
        r, t = val["refs"], val["test"]
        emb = _embed(model, t["audio"], t["machine"], device)
        if isinstance(model, MachineAutoEncoders):  # the autoencoder baseline: its reconstruction error is the score
            refs = reconstruction_references(set(zip(t["machine"], t["section"])))
        else:
            ref_emb = _embed(model, r["audio"], r["machine"], device)
            refs = centroid_references(group_embeddings(ref_emb, r["machine"], r["section"],
                                                         r["domain"]))
    finally:
        model.train(was_training)
    rows = []
    for machine, section in sorted(set(zip(t["machine"], t["section"]))):
        keep = (t["machine"] == machine) & (t["section"] == section)
        if (machine, section) not in refs.vectors:
            continue
        scores = refs.score(machine, section, emb[keep])
        rows.append(metrics.section_metrics((t["label"][keep] == "anomaly").astype(int), t["domain"][keep], scores,
                                            machine=machine, section=section))
    return metrics.official_score(rows)
