"""The bounded sample of normal training clips that ``asd-ray score`` fits references on: chosen
before any audio is read, kept out of the driver.

Per (machine, section, domain), the ``max_references`` normal training clips (label ``normal`` or
none) of smallest seeded hash of their clip id (``rank``): the same clips whatever order the data
comes in, and below the limit every clip. Three steps:

1. ``training_cutoffs``: a Ray task per shard reads its clip ids and keys (no audio) and returns,
   per group, its count and its ``limit`` smallest ranks; the driver merges them into each group's
   cutoff, the largest rank kept (``RankCutoffs``: at most ``limit`` numbers per group, 8 bytes each).
2. The scoring pipeline reads, decodes and embeds only the clips at or below their group's cutoff
   (``keep_sampled``, the reader's row filter): a training set a hundred times the limit costs the
   limit's embedding, not its own.
3. ``SampleChunks``: each embedded batch goes to the object store, one object per section; the
   driver holds their references, not the vectors, so its memory does not grow with the sections
   or the sample; each section's fitting task gathers its own chunks (``gather``).
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import ray

from asd_ray import dataset
from asd_ray.cluster import as_completed
from asd_ray.labels import UNKNOWN_DOMAIN
from asd_ray.storage import StorageOptions

Group = tuple[str, str, str]  # (machine, section, domain)
Groups = dict[Group, np.ndarray]  # one vector per clip
SAMPLE_COLUMNS = ["clip_id", "machine", "section", "domain", "label"]


def rank(seed: int, clip_id: str) -> int:
    """A clip's place in the seeded sample: the smallest ranks are kept."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{clip_id}".encode(), digest_size=8).digest(), "big")


def ranks(seed: int, clip_ids: Iterable[str]) -> np.ndarray:
    return np.fromiter((rank(seed, c) for c in clip_ids), np.uint64)


def normal_groups(rows: pa.Table) -> tuple[np.ndarray, list[Group | None]]:
    """Each row's group, None where the clip is not normal (a training clip without a label is)."""
    labels = rows["label"].to_pylist()
    groups = [(m, s, d or UNKNOWN_DOMAIN) if lab in ("normal", None) else None for m, s, d, lab in zip(
        rows["machine"].to_pylist(), rows["section"].to_pylist(), rows["domain"].to_pylist(), labels)]
    return np.array(rows["clip_id"].to_pylist(), object), groups


class RankCutoffs:
    """Per group, how many normal training clips were offered (``seen``) and their ``limit``
    smallest ranks, merged from any number of parts in any order."""

    def __init__(self, limit: int):
        self.limit = limit
        self.seen: Counter[Group] = Counter()
        self.smallest: dict[Group, np.ndarray] = {}
        self._pending: dict[Group, list[np.ndarray]] = defaultdict(list)

    def add(self, group: Group, group_ranks: np.ndarray, count: int | None = None) -> None:
        self.seen[group] += len(group_ranks) if count is None else count
        self._pending[group].append(group_ranks)
        if sum(map(len, self._pending[group])) > self.limit:  # compact: memory stays at ~2x the limit a group
            self._compact(group)

    def _compact(self, group: Group) -> None:
        both = np.concatenate([self.smallest.get(group, np.empty(0, np.uint64)), *self._pending.pop(group)])
        self.smallest[group] = np.sort(both)[:self.limit]

    def merge(self, other: RankCutoffs) -> None:
        for group, count in other.finished().seen.items():
            self.add(group, other.smallest[group], count)

    def finished(self) -> RankCutoffs:
        for group in list(self._pending):
            self._compact(group)
        return self

    def cutoffs(self) -> dict[Group, int]:
        """Each group's largest rank kept: a clip is in the sample if its rank is at most this."""
        return {g: int(r[-1]) for g, r in self.finished().smallest.items() if len(r)}


@ray.remote(num_cpus=1)
def shard_ranks(url: str, limit: int, seed: int, options: StorageOptions | None) -> RankCutoffs:
    """One shard's normal clips: per group, the count and the ``limit`` smallest ranks (no audio read)."""
    part = RankCutoffs(limit)
    for rows in dataset.shard_rows(url, SAMPLE_COLUMNS, {}, options, batch_rows=65_536):
        ids, groups = normal_groups(rows)
        by_group = defaultdict(list)
        for i, g in enumerate(groups):
            if g is not None:
                by_group[g].append(i)
        for g, idx in by_group.items():
            part.add(g, ranks(seed, ids[idx]))
    return part.finished()


def training_cutoffs(shard_urls: list[str], limit: int, seed: int = 0,
                     options: StorageOptions | None = None) -> RankCutoffs:
    """The sample's cutoffs over the shards (``dataset.checked_shards``; the embedding pass reads the
    same list): a task per shard, at most as many at once as the cluster has CPUs, merged as they
    finish."""
    merged = RankCutoffs(limit)
    for _, part in as_completed((shard, functools.partial(shard_ranks.remote, shard, limit, seed, options))
                                for shard in shard_urls):
        merged.merge(part)
    return merged.finished()


def keep_sampled(rows: pa.Table, seed: int, cutoffs: dict[Group, int]) -> pa.Table:
    """The rows of ``rows`` in the sample: normal, rank at most their group's cutoff."""
    ids, groups = normal_groups(rows)
    keep = [g is not None and g in cutoffs and rank(seed, c) <= cutoffs[g] for c, g in zip(ids, groups)]
    return rows.filter(pa.array(keep, pa.bool_()))


def sample_filter(cutoffs: RankCutoffs, seed: int = 0) -> functools.partial:
    """The reader's row filter for the sample (``dataset.read_clips(row_filter=...)``)."""
    return functools.partial(keep_sampled, seed=seed, cutoffs=cutoffs.cutoffs())


class SampleChunks:
    """The embedded sample in the object store: per (machine, section), the references of its chunks,
    each ``(clip ids, domains, [vectors of each model])``."""

    def __init__(self):
        self.refs: dict[tuple[str, str], list[ray.ObjectRef]] = defaultdict(list)

    def add(self, machine: str, section: str, clip_ids: np.ndarray, domains: np.ndarray,
            vectors: list[np.ndarray]) -> None:
        self.refs[(machine, section)].append(ray.put((np.asarray(clip_ids, object), np.asarray(domains, object),
                                                      [np.asarray(v, np.float32) for v in vectors])))

    def add_batch(self, batch: dict[str, np.ndarray], columns: list[str]) -> None:
        """A batch of embedded clips (every one in the sample), split by section."""
        domains = np.array([d or UNKNOWN_DOMAIN for d in batch["domain"]], object)
        sections = np.array([f"{m}|{s}" for m, s in zip(batch["machine"], batch["section"])], object)
        for key in np.unique(sections):
            idx = np.flatnonzero(sections == key)
            self.add(*key.split("|", 1), batch["clip_id"][idx], domains[idx], [batch[c][idx] for c in columns])

    def sections(self) -> list[tuple[str, str]]:
        return sorted(self.refs)


def gather(key: tuple[str, str], chunks: list[ray.ObjectRef], models: int, limit: int, seed: int = 0
           ) -> tuple[list[Groups], dict[Group, int]]:
    """One section's chunks -> each model's vectors per group in clip id order, at most ``limit`` a
    group (the smallest ranks: a clip id that comes twice can pass its group's cutoff twice), and
    how many each group kept."""
    parts = ray.get(list(chunks))
    ids = np.concatenate([p[0] for p in parts])
    domains = np.concatenate([p[1] for p in parts])
    vectors = [np.concatenate([p[2][k] for p in parts]) for k in range(models)]
    groups: list[Groups] = [{} for _ in range(models)]
    kept = {}
    for domain in sorted(set(domains)):
        idx = np.flatnonzero(domains == domain)
        if len(idx) > limit:
            idx = idx[np.argsort(ranks(seed, ids[idx]), kind="stable")[:limit]]
        idx = idx[np.argsort(ids[idx], kind="stable")]
        for k in range(models):
            groups[k][(*key, domain)] = vectors[k][idx]
        kept[(*key, domain)] = len(idx)
    return groups, kept

