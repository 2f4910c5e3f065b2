"""The scoring actor: every model of a job loaded once per actor, waveform batches in; vectors out
(to fit references) or, given the fitted references, scores and decisions out.

Kept apart from ``score.py`` (the driver's side: the pipeline, outputs) and ``reference_fit.py``
(the fitting tasks: references, thresholds) so that an actor imports only what it runs: torch and
the models, not scipy's or scikit-learn's fitting code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import ray
import torch
import torch.nn.functional as F
from ray.data.extensions import ArrowTensorArray

from asd_ray import bundle, schema
from asd_ray.autoencoder import MachineAutoEncoders
from asd_ray.framestats import FrameStats
from asd_ray.heap import release_freed_memory
from asd_ray.model import autocast
from asd_ray.references import References
from asd_ray.score_output import META
from asd_ray.storage import StorageOptions
from asd_ray.tonal import TonalSpectrum


def embedding_column(k: int) -> str:
    return "embedding" if k == 0 else f"embedding_{k}"


class Embedder:
    """Ray Data actor: the models (the main one and any added ones), waveform batches in.

    Without references, one vector per clip and model out: unit-norm embeddings, or for the
    autoencoder baseline its mean squared error followed by its mean error vector, for the frame
    statistics and the tonal detector their vectors. With ``references`` (an object reference to
    a dict ``"machine|section"`` -> object references to that section's fitted ``References``, one
    per model, as bytes), each clip's score and decision out instead, or the reason it has none.
    An actor loads a section's references when a batch first needs them and keeps at most
    ``cached_sections`` loaded (the least recently used dropped): its memory is that many
    sections' references, however many sections the data has."""

    def __init__(self, bundle_urls: list[str] | str, options: dict, use_gpu: bool,
                 references: ray.ObjectRef | None = None, cached_sections: int = 8):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        urls = [bundle_urls] if isinstance(bundle_urls, str) else bundle_urls
        self.models = [bundle.load_bundle(u, StorageOptions(**options), self.device)[0] for u in urls]
        self.sections: dict[str, ray.ObjectRef] | None = None if references is None else ray.get(references)
        self.loaded: OrderedDict[str, list[References]] = OrderedDict()
        self.cached_sections = cached_sections

    def section_refs(self, key: str) -> list[References] | None:
        """Section ``key``'s (``machine|section``) references of every model; None where it has none."""
        if key in self.loaded:
            self.loaded.move_to_end(key)
        elif key in self.sections:
            self.loaded[key] = [References.from_bytes(b) for b in ray.get(self.sections[key])]
            while len(self.loaded) > self.cached_sections:
                self.loaded.popitem(last=False)
        return self.loaded.get(key)

    def embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = {}
        with torch.inference_mode(), autocast(self.device):
            pcm = torch.tensor(batch["audio"], device=self.device)  # int16 until on the device; batches are read-only
            wave = pcm.float() / schema.PCM16_FULL_SCALE
            for k, model in enumerate(self.models):
                if isinstance(model, MachineAutoEncoders):
                    emb = model.score_features(wave, model.index(batch["machine"]).to(self.device)).float()
                elif isinstance(model, (FrameStats, TonalSpectrum)):
                    emb = model(wave)
                else:
                    emb = F.normalize(model(wave).float(), dim=1)
                columns[embedding_column(k)] = emb.cpu().numpy()
        return columns

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        columns = self.embed(batch)
        # Arrow, not numpy: unknown domains and labels stay string nulls (numpy None would become NaN)
        meta = {k: pa.array(batch[k], pa.string()) for k in META}
        if self.sections is None:
            out = pa.table({**meta, **{k: ArrowTensorArray.from_numpy(v) for k, v in columns.items()}})
        else:
            out = pa.table({**meta, **score_batch(self.section_refs, batch, columns, self.device)})
        release_freed_memory()
        return out


def score_batch(section_refs: Callable[[str], list[References] | None], batch: dict[str, np.ndarray],
                columns: dict[str, np.ndarray], device: torch.device) -> dict[str, pa.Array]:
    """Score, decision and (for a clip that has none) the reason, per row of a batch;
    ``section_refs("machine|section")``: that section's references of every model, or None."""
    n = len(batch["clip_id"])
    score, decision, reason = np.full(n, np.nan), np.zeros(n, np.int8), np.full(n, None, object)
    keys = np.array([f"{m}|{s}" for m, s in zip(batch["machine"], batch["section"])])
    for group in np.unique(keys):
        idx = np.flatnonzero(keys == group)
        machine, section = group.split("|")
        refs = section_refs(group)
        if refs is None:
            reason[idx] = f"no references for machine '{machine}' section '{section}'"
            continue
        score[idx], domain = clip_scores(refs, machine, section, {k: v[idx] for k, v in columns.items()}, device)
        decision[idx] = score[idx] > thresholds(refs[0], machine, section, domain)
    scored = reason == None  # noqa: E711 (elementwise)
    return {"score": pa.array(score, pa.float64(), mask=~scored),
            "decision": pa.array(decision, pa.int8(), mask=~scored),
            "reason": pa.array(reason, pa.string())}


def clip_scores(refs: list[References], machine: str, section: str, columns: dict[str, np.ndarray],
                device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """The main model's scores, or the weighted sum of every model's scores normalised per section;
    and for the sum, per clip the domain of the main model's nearest references (else None)."""
    if len(refs) == 1:  # thresholds per domain are the hybrid's only: no domain needed
        return refs[0].score(machine, section, columns["embedding"], device), None
    main, domain = refs[0].score_and_domain(machine, section, columns[embedding_column(0)], device)
    others = [r.score(machine, section, columns[embedding_column(k)], device) for k, r in enumerate(refs) if k]
    return hybrid_sum([main, *others], refs[0].meta["norms"][f"{machine}|{section}"],
                      refs[0].meta.get("weights") or [1.0] * len(refs)), domain  # fitted before weights: 1 each


def thresholds(main: References, machine: str, section: str, domain: np.ndarray | None) -> np.ndarray | float:
    """Each clip's decision threshold: that of the domain of its nearest references, fitted on that
    domain's training clips alone, so that the few clips of a new domain are judged by their own
    spread; the section's where the domain has none (references fitted before, or too few clips)."""
    section_threshold = main.thresholds[(machine, section)]
    per_domain = main.meta.get("domain_thresholds", {}).get(f"{machine}|{section}", {})
    if domain is None or not per_domain:
        return section_threshold
    return np.array([per_domain.get(d, section_threshold) for d in domain])


def hybrid_sum(per_model: list[np.ndarray], norms: list[tuple[float, float]], weights: list[float]) -> np.ndarray:
    """The hybrid score: each model's scores standardised by its section's normaliser, weighted, added."""
    return sum(w * (x - mu) / sd for x, (mu, sd), w in zip(per_model, norms, weights))
