"""What ``asd-ray evaluate`` needs of a scoring output, per machine type and section, built in two
streaming passes over its scores a batch at a time: the driver never holds the scores' rows.

Pass 1: each section's number of clips, score range, the decision threshold's two ends and its
``top`` highest-scoring clips; of a labelled set (every clip with a domain and a label) also each
clip's score, label and domain as numbers (10 bytes a clip: exact AUCs need a section's scores
together). Pass 2: the score histograms on the range pass 1 found and, labelled, the normal clips
nearest the threshold. So an unlabelled set, the usual case, takes memory that does not grow with
its clips; a labelled one 10 bytes a clip.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BINS = 30  # histogram edges: 29 bins from the lowest to the highest score
ORDER = itertools.count()  # ties in the heaps are broken by arrival, never by comparing ids


@dataclass
class Pick:
    """A clip the report shows, and why."""

    clip_id: str
    score: float
    domain: str | None
    label: str | None
    why: str


@dataclass
class Section:
    machine: str
    section: str
    clips: int = 0
    low: float = math.inf
    high: float = -math.inf
    highest_normal: float = -math.inf  # the highest score the scoring job decided normal
    lowest_anomalous: float = math.inf  # the lowest it decided anomalous
    domains: set = field(default_factory=set)
    top: list = field(default_factory=list)  # min-heap (score, order, clip id, domain, label)
    near: list = field(default_factory=list)  # max-heap by distance (-distance, order, clip id, score, domain)
    histogram: dict[str, np.ndarray] = field(default_factory=dict)
    chunks: list = field(default_factory=list)  # labelled: (score, anomaly, target) arrays per batch

    @property
    def threshold(self) -> float | None:
        """Between the highest score decided normal and the lowest decided anomalous."""
        return threshold(self.highest_normal, self.lowest_anomalous)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high + 1e-9, BINS)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labelled sets: every clip's score, whether it is anomalous, whether it is a target clip."""
        return tuple(np.concatenate([c[k] for c in self.chunks]) for k in range(3))

    def picks(self, near: int) -> list[Pick]:
        """The highest scores, then (labelled) the normal clips closest to the threshold."""
        out = [Pick(clip, score, dom, lab, f"top {k + 1}")
               for k, (score, _, clip, dom, lab) in enumerate(sorted(self.top, reverse=True))]
        seen = {p.clip_id for p in out}
        nearest = [(clip, score, dom) for _, _, clip, score, dom in sorted(self.near, reverse=True)]
        out += [Pick(clip, score, dom, "normal", "normal near threshold")
                for clip, score, dom in nearest if clip not in seen][:near]
        return out


def threshold(highest_normal: float, lowest_anomalous: float) -> float | None:
    if math.isfinite(highest_normal) and math.isfinite(lowest_anomalous):
        return (highest_normal + lowest_anomalous) / 2
    for end in (highest_normal, lowest_anomalous):
        if math.isfinite(end):
            return end
    return None


def group_names(labelled: bool, domains: Iterable) -> list[tuple[str, str | None, str | None]]:
    """The histogram's groups: ``(name, domain, label)``; by domain and label, or by domain alone."""
    if labelled:
        return [(f"{d} {lab}", d, lab) for d in ("source", "target") for lab in ("normal", "anomaly")]
    return [(d or "unknown domain", d, None) for d in sorted(domains, key=str)]


@dataclass
class Summary:
    sections: dict[tuple[str, str], Section] = field(default_factory=dict)
    clips: int = 0
    unknown: int = 0  # clips without a domain or a label

    @property
    def labelled(self) -> bool:
        return self.clips > 0 and self.unknown == 0

    @property
    def has_target(self) -> bool:
        return any("target" in s.domains for s in self.sections.values())

    def ordered(self) -> list[Section]:
        return [self.sections[k] for k in sorted(self.sections)]

    def machines(self) -> list[str]:
        return sorted({m for m, _ in self.sections})


def summarize(batches: Callable[[], Iterable[pa.RecordBatch]], top: int = 3, near: int = 2) -> Summary:
    """Two passes over ``batches()`` (scored rows: clip_id, machine, section, domain, label, score and,
    where the scoring job made them, decision)."""
    summary = Summary()
    for batch in batches():
        for key, rows, cols in _sections(batch):
            _first(summary, summary.sections.setdefault(key, Section(*key)), rows, cols, top)
    for batch in batches():
        for key, rows, cols in _sections(batch):
            _second(summary, summary.sections[key], rows, cols, top + near)
    return summary


def _sections(batch: pa.RecordBatch):
    """``((machine, section), row indices, columns)`` per section present in the batch."""
    if not batch.num_rows:
        return
    cols = {"clip_id": batch["clip_id"], "domain": _strings(batch["domain"]), "label": _strings(batch["label"])}
    cols["score"] = batch["score"].to_numpy(zero_copy_only=False).astype(float)
    cols["decision"] = (batch["decision"].to_numpy(zero_copy_only=False).astype(float)
                        if "decision" in batch.schema.names else np.full(batch.num_rows, np.nan))  # none made
    key = pc.binary_join_element_wise(batch["machine"].cast(pa.string()), batch["section"].cast(pa.string()), "\0")
    encoded = key.dictionary_encode()
    codes = encoded.indices.to_numpy()
    for code, joined in enumerate(encoded.dictionary.to_pylist()):
        yield tuple(joined.split("\0")), np.flatnonzero(codes == code), cols


def _strings(column: pa.Array) -> np.ndarray:
    """An object array pointing at one string per distinct value (None where null)."""
    encoded = column.cast(pa.string()).dictionary_encode()
    values = np.array(encoded.dictionary.to_pylist() + [None], dtype=object)
    return values[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)]


def _first(summary: Summary, s: Section, rows: np.ndarray, cols: dict, top: int) -> None:
    score, decision = cols["score"][rows], cols["decision"][rows]
    domain, label = cols["domain"][rows], cols["label"][rows]
    s.clips += len(rows)
    summary.clips += len(rows)
    s.low, s.high = min(s.low, float(score.min())), max(s.high, float(score.max()))
    if (decision == 0).any():
        s.highest_normal = max(s.highest_normal, float(score[decision == 0].max()))
    if (decision == 1).any():
        s.lowest_anomalous = min(s.lowest_anomalous, float(score[decision == 1].min()))
    s.domains |= set(domain.tolist())
    was_labelled = not summary.unknown
    summary.unknown += int(((domain == None) | (label == None)).sum())  # noqa: E711 (elementwise)
    if not summary.unknown:
        s.chunks.append((score, label == "anomaly", domain == "target"))
    elif was_labelled:  # the first clip without a domain or label: not a labelled set, any kept dropped
        for other in summary.sections.values():
            other.chunks = []
    for i in np.argsort(-score)[:top]:
        _push(s.top, top, (float(score[i]), next(ORDER), cols["clip_id"][int(rows[i])].as_py(), domain[i], label[i]))


def _second(summary: Summary, s: Section, rows: np.ndarray, cols: dict, keep: int) -> None:
    score, domain, label = cols["score"][rows], cols["domain"][rows], cols["label"][rows]
    edges = s.edges
    for name, dom, lab in group_names(summary.labelled, s.domains):
        sel = (domain == dom) & ((label == lab) if lab else True)
        counts = np.histogram(score[sel], edges)[0]
        s.histogram[name] = s.histogram.get(name, 0) + counts
    thr = s.threshold
    if summary.labelled and thr is not None and keep:
        normal = np.flatnonzero(label == "normal")
        distance = np.abs(score[normal] - thr)
        for j in np.argsort(distance)[:keep]:
            i = normal[j]
            _push(s.near, keep, (-float(distance[j]), next(ORDER), cols["clip_id"][int(rows[i])].as_py(),
                                 float(score[i]), domain[i]))


def _push(heap: list, size: int, item: tuple) -> None:
    """Keep the ``size`` largest items (by their first fields) in a min-heap."""
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)
