"""A small labelled validation budget, scored inside training every epoch (`validation=` in the train config).

Up to ``ref_clips`` normal training clips per (machine, section, domain) give centroid
references and up to ``test_clips`` test clips per (machine, section) are scored against them, as
``asd-ray score`` does; the result is the official DCASE score (harmonic mean of AUC source,
AUC target and pAUC). The clips are read once per worker with pyarrow (a few MB) and kept in memory.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from asd_ray import metrics, schema, shards
from asd_ray.score import centroid_references, group_embeddings, reconstruction_references
from asd_ray.storage import StorageOptions


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(None, description="labelled clip dataset (default: the training data)")
    ref_clips: int = Field(32, ge=1, description="normal training clips per machine/section/domain")
    test_clips: int = Field(64, ge=2, description="labelled test clips per machine/section")


def _take(url: str, split: str, machines: list[str] | None, limit: int, group_cols: tuple[str, ...],
          num_samples: int, options: StorageOptions | None) -> dict[str, np.ndarray]:
    counts: dict[tuple, int] = defaultdict(int)
    rows: dict[str, list] = defaultdict(list)
    for shard in shards.list_shards(url, split, machines, options):
        table = shards.read_shard(shard, ["machine", "section", "domain", "label", "audio"], options)
        for r in table.to_pylist():
            key = tuple(r[c] for c in group_cols)
            if counts[key] >= limit or r["label"] is None or r["domain"] is None:
                continue
            counts[key] += 1
            wave = np.zeros(num_samples, np.float32)
            decoded = schema.decode_pcm16(r["audio"])[:num_samples]
            wave[:len(decoded)] = decoded
            for c in ("machine", "section", "domain", "label"):
                rows[c].append(r[c])
            rows["audio"].append(wave)
    return {k: np.stack(v) if k == "audio" else np.array(v) for k, v in rows.items()}


def load_validation(cfg: ValidationConfig, train_data: str, machines: list[str] | None, num_samples: int,
                    options: StorageOptions | None = None) -> dict[str, dict[str, np.ndarray]]:
    url = cfg.data or train_data
    refs = _take(url, "train", machines, cfg.ref_clips, ("machine", "section", "domain"), num_samples, options)
    test = _take(url, "test", machines, cfg.test_clips, ("machine", "section"), num_samples, options)
    if not test or not refs:
        raise ValueError(f"{url}: validation needs labelled train and test clips (machine types {machines})")
    return {"refs": refs, "test": test}


@torch.no_grad()
def _embed(model: torch.nn.Module, audio: np.ndarray, device: torch.device, batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(audio), batch):
        emb = model(torch.as_tensor(audio[i:i + batch], device=device)).float()
        out.append((emb[:, None] if emb.ndim == 1 else F.normalize(emb, dim=1)).cpu().numpy())
    return np.concatenate(out)


def validation_score(model: torch.nn.Module, val: dict[str, dict[str, np.ndarray]], device: torch.device) -> float:
    """Official DCASE score of ``model`` (in eval mode for the call) on the validation budget."""
    was_training = model.training
    model.eval()
    try:
        r, t = val["refs"], val["test"]
        emb = _embed(model, t["audio"], device)
        if emb.shape[1] == 1:  # the autoencoder baseline: its reconstruction error is the score
            refs = reconstruction_references(set(zip(t["machine"], t["section"])))
        else:
            refs = centroid_references(group_embeddings(_embed(model, r["audio"], device), r["machine"], r["section"],
                                                         r["domain"]))
    finally:
        model.train(was_training)
    rows = []
    for machine, section in sorted(set(zip(t["machine"], t["section"]))):
        keep = (t["machine"] == machine) & (t["section"] == section)
        if (machine, section) not in refs.vectors:
            continue
        scores = refs.score(machine, section, emb[keep])
        rows.append(metrics.section_metrics((t["label"][keep] == "anomaly").astype(int), t["domain"][keep], scores))
    return metrics.official_score(rows)
