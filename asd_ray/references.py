"""Normal references per machine and section, and the distances of clips to them.

Fitted per section from a sample of its normal training clips: per (machine, section, domain) at
most ``max_references`` of them (``reference_sample.py``), so memory and time are bounded by the
setting, not by the number of training clips. Below the limit every clip is kept.

Methods: ``centroid`` (the report's): the mean embedding per domain; ``kmeans`` (Wilkinghoff's):
k-means sub-centroids of the source domain plus every target clip; ``knn``: every kept clip, each
domain's distances divided by its median leave-one-out nearest-neighbour distance, so the dense
source and the few target clips share one scale (cosine distances of unit-norm embeddings; for the
frame statistics, Euclidean distances of the vectors standardised by the section's training
clips, ``standardise=True``). For the autoencoder baseline: its reconstruction
error, or the Mahalanobis distance of its mean error vector to a Ledoit-Wolf Gaussian per domain
(each domain's own covariance, or one pooled over the section's domains).
``alarm`` (the tonal detector): the largest standardised rise of any dimension above a domain's
mean. A clip's score is the minimum over both domains' references. Distances run in torch on the
device given (the scoring actor's GPU where it has one), in chunks of queries, so memory is chunk
x references, never references x references.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import numpy as np
import torch

Key = tuple[str, str]  # (machine, section)
Groups = dict[tuple[str, str, str], np.ndarray]  # (machine, section, domain) -> one vector per clip


class References:
    """Reference vectors per (machine, section), each tagged with its domain and a distance scale
    (1 except for ``knn`` and ``alarm``); Gaussians (``precisions``) for the autoencoder's Mahalanobis score.

    With ``standard`` (per section, the training clips' mean and standard deviation ``(2, dim)``),
    vectors are standardised by it and compared by Euclidean distance (the frame statistics), or
    with ``meta["method"] == "alarm"`` by their largest rise above each domain's mean (the tonal
    detector).

    Fit time only, not saved: ``origins`` gives, for a reference that is itself a training clip,
    that clip's index among the section's kept training clips (source first), else -1;
    ``held_out`` the Gaussians' (and the alarms') out-of-sample scores of those clips."""

    def __init__(self, vectors: dict[Key, np.ndarray], domains: dict[Key, np.ndarray],
                 thresholds: dict[Key, float] | None = None, meta: dict | None = None,
                 scales: dict[Key, np.ndarray] | None = None, origins: dict[Key, np.ndarray] | None = None,
                 precisions: dict[Key, np.ndarray] | None = None, held_out: dict[Key, np.ndarray] | None = None,
                 standard: dict[Key, np.ndarray] | None = None):
        self.vectors, self.domains, self.precisions, self.held_out = vectors, domains, precisions, held_out
        self.standard = standard
        self.scales = scales or {k: np.ones(len(v)) for k, v in vectors.items()}
        self.origins = origins or {k: np.full(len(v), -1) for k, v in vectors.items()}
        self.thresholds, self.meta = thresholds or {}, meta or {}

    def score(self, machine: str, section: str, emb: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
        """Minimum scaled cosine distance of unit-norm ``emb`` rows to the section's references
        (for the autoencoder baseline: its reconstruction error, or the Mahalanobis distance)."""
        if self.meta.get("method") == "reconstruction":
            return emb[:, 0].astype(np.float64)
        return self._against((machine, section), emb, slice(None), device)

    def score_and_domain(self, machine: str, section: str, emb: np.ndarray, device: torch.device | str = "cpu"
                         ) -> tuple[np.ndarray, np.ndarray | None]:
        """``score``, and per clip the domain of the references that gave it (the nearest domain;
        None for the reconstruction error, which has no references): the same distances, taken
        a domain at a time."""
        key = (machine, section)
        if self.meta.get("method") == "reconstruction":
            return self.score(machine, section, emb), None
        domains = np.array(list(dict.fromkeys(self.domains[key])), object)
        per_domain = np.stack([self._against(key, emb, self.domains[key] == d, device) for d in domains])
        return per_domain.min(axis=0), domains[per_domain.argmin(axis=0)]

    def _against(self, key: Key, emb: np.ndarray, rows, device: torch.device | str) -> np.ndarray:
        """The clips' scores against the section's references ``rows``."""
        if self.precisions is not None:
            return mahalanobis(emb[:, 1:], self.vectors[key][rows], self.precisions[key][rows], device)
        if self.meta.get("method") == "alarm":
            return alarms(self.standardised(key, emb), self.vectors[key][rows], self.scales[key][rows], device=device)
        return nearest(self.standardised(key, emb), self.vectors[key][rows], self.scales[key][rows], device=device,
                       euclidean=self.standard is not None)

    def standardised(self, key: Key, vectors: np.ndarray) -> np.ndarray:
        if self.standard is None:
            return vectors
        mean, std = self.standard[key]
        return (vectors - mean) / std

    def training_scores(self, key: Key, clips: np.ndarray) -> np.ndarray:
        """Scores of the section's own kept training clips (in ``origins`` order), each with itself
        left out where it is a reference: otherwise such a clip would score 0. Gaussians give the
        scores of their clips held out of the fit (see ``mahalanobis_references``)."""
        if self.held_out is not None:
            return self.held_out[key]
        if self.meta.get("method") == "reconstruction" or not len(self.vectors[key]):
            return self.score(*key, clips)
        exclude = np.full(len(clips), -1)
        own = np.flatnonzero(self.origins[key] >= 0)
        exclude[self.origins[key][own]] = own
        return nearest(self.standardised(key, clips), self.vectors[key], self.scales[key], exclude,
                       euclidean=self.standard is not None)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        write_sections(buf, [self], self.meta)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "References":
        """A whole file, every section (``read_sections`` reads one at a time)."""
        refs = cls({}, {}, {})
        for part in read_sections(lambda: io.BytesIO(data)):
            refs.meta = part.meta
            for name in ("vectors", "domains", "thresholds", "scales", "precisions", "standard"):
                if getattr(part, name) is not None:
                    setattr(refs, name, {**(getattr(refs, name) or {}), **getattr(part, name)})
        refs.origins = {k: np.full(len(v), -1) for k, v in refs.vectors.items()}
        return refs


def section_arrays(refs: References, key: Key) -> dict[str, np.ndarray]:
    """Section ``key``'s rows of each array ``to_bytes`` saves per reference (``standard``: one row)."""
    arrays = {"vectors": np.asarray(refs.vectors[key], np.float32), "domains": np.asarray(refs.domains[key], str),
              "scales": np.asarray(refs.scales[key], np.float64)}
    if refs.precisions is not None:
        arrays["precisions"] = np.asarray(refs.precisions[key], np.float32)
    if refs.standard is not None:
        arrays["standard"] = np.asarray(refs.standard[key], np.float32)[None]
    return arrays


class _Rows:
    """One saved array's rows, appended section by section to a spool (memory up to 16 MB, then a
    temporary file); domains kept as runs of one name, since their width is known only at the end."""

    def __init__(self):
        self.file = tempfile.SpooledTemporaryFile(16 * 2**20)
        self.rows, self.dtype, self.shape, self.runs = 0, None, None, []

    def add(self, name: str, key: Key, a: np.ndarray) -> None:
        if self.shape is not None and a.shape[1:] != self.shape:
            raise ValueError(f"references of {key[0]} section {key[1]}: {name} rows of shape {a.shape[1:]}, the "
                             f"sections before {self.shape}")
        self.shape, self.rows = a.shape[1:], self.rows + len(a)
        if a.dtype.kind == "U":
            starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]]) if len(a) else np.array([], int)
            self.runs += [(str(a[i]), int(n)) for i, n in zip(starts, np.diff(np.r_[starts, len(a)]))]
        else:
            self.dtype = a.dtype
            self.file.write(np.ascontiguousarray(a).tobytes())

    def write(self, out) -> None:
        """As one ``.npy`` member: the header, then the rows."""
        dtype = self.dtype or np.dtype(f"<U{max([len(v) for v, _ in self.runs], default=1)}")
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": (self.rows, *self.shape)})
        if self.dtype is None:
            for value, n in self.runs:
                out.write(np.full(n, value, dtype).tobytes())
            return
        self.file.seek(0)
        shutil.copyfileobj(self.file, out)


def write_sections(out, parts: Iterable[References], meta: dict) -> None:
    """The ``.npz`` that ``from_bytes`` reads, written to the binary file ``out`` from references
    of one or more sections each, taken one at a time (``meta``: the file's): memory holds one
    part and the spooled rows, never the whole file's arrays at once."""
    rows: dict[str, _Rows] = {}
    try:
        _write_sections(out, parts, meta, rows)
    finally:
        for spool in rows.values():
            spool.file.close()


def _write_sections(out, parts: Iterable[References], meta: dict, rows: dict[str, _Rows]) -> None:
    groups, sizes, thresholds = [], [], []
    for part in parts:
        for key in sorted(part.vectors):
            arrays = section_arrays(part, key)
            if groups and sorted(arrays) != sorted(rows):
                raise ValueError(f"references of {key[0]} section {key[1]}: {sorted(arrays)}, the sections before "
                                 f"{sorted(rows)}")
            for name, a in arrays.items():
                rows.setdefault(name, _Rows()).add(name, key, a)
            groups.append(f"{key[0]}|{key[1]}")
            sizes.append(len(part.vectors[key]))
            thresholds.append(part.thresholds.get(key, np.nan))
    small = {"groups": np.array(groups, str), "sizes": np.array(sizes, np.int64),
             "thresholds": np.array(thresholds, np.float64), "meta": np.array(json.dumps(meta))}
    with zipfile.ZipFile(out, "w", allowZip64=True) as npz:  # uncompressed, as np.savez
        for name, a in small.items():
            with npz.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, a, allow_pickle=False)
        for name, spool in rows.items():
            with npz.open(f"{name}.npy", "w", force_zip64=True) as member:
                spool.write(member)


def read_sections(open_file: Callable[[], BinaryIO]) -> Iterator[References]:
    """Each section's references, one at a time, from a file that ``to_bytes`` or ``write_sections``
    wrote (its ``meta`` on each): the rows of each array are read as they come, so memory holds one
    section's, however large the file.

    ``open_file()`` opens the file for reading; each array is read through a file of its own, so
    that every stream reads in order. Through one shared file the reads would jump between the
    arrays at every section, and on object storage each jump refetches a read-ahead block (s3fs:
    50 MB): 32 sections of 10,000 references, a 322 MiB file, fetched 1,915 MiB that way."""
    with contextlib.ExitStack() as opened:
        npz = zipfile.ZipFile(opened.enter_context(open_file()))
        small = {name: np.lib.format.read_array(npz.open(f"{name}.npy"), allow_pickle=False)
                 for name in ("groups", "sizes", "thresholds", "meta")}
        meta = json.loads(str(small["meta"]))
        arrays = [n for n in ("vectors", "domains", "scales", "precisions", "standard") if f"{n}.npy" in npz.namelist()]
        rows = {n: _RowReader(zipfile.ZipFile(opened.enter_context(open_file())).open(f"{n}.npy")) for n in arrays}
        for group, size, threshold in zip(small["groups"], small["sizes"], small["thresholds"]):
            key = tuple(str(group).split("|"))
            part = {name: r.take(1 if name == "standard" else int(size)) for name, r in rows.items()}
            yield References({key: part["vectors"]}, {key: part["domains"]},
                             {} if np.isnan(threshold) else {key: float(threshold)}, meta, {key: part["scales"]},
                             precisions={key: part["precisions"]} if "precisions" in part else None,
                             standard={key: part["standard"][0]} if "standard" in part else None)


class _RowReader:
    """The rows of one ``.npy`` member, read in order, a number at a time."""

    def __init__(self, member):
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, self.dtype = read_header(member)
        if fortran:
            raise ValueError("references file: arrays in Fortran order are not written by asd_ray")
        self.member, self.row_shape = member, shape[1:]
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))

    def take(self, n: int) -> np.ndarray:
        data = self.member.read(n * self.row_bytes)
        if len(data) != n * self.row_bytes:
            raise ValueError(f"references file: an array ends {n * self.row_bytes - len(data)} bytes early")
        return np.frombuffer(bytearray(data), self.dtype).reshape(n, *self.row_shape)  # writable


def nearest(queries: np.ndarray, vectors: np.ndarray, scales: np.ndarray, exclude: np.ndarray | None = None,
            chunk: int = 1024, device: torch.device | str = "cpu", euclidean: bool = False) -> np.ndarray:
    """Per query row, the minimum of ``(1 - query . vector) / scale`` (with ``euclidean``,
    ``|query - vector| / scale``) over the reference vectors (float32), leaving out reference
    ``exclude[i]`` for query ``i`` (-1: none). Chunked over the queries: memory is
    ``chunk x references`` however many clips there are."""
    refs = torch.as_tensor(np.asarray(vectors, np.float32), device=device)
    scale = torch.as_tensor(np.asarray(scales, np.float32), device=device)
    out = np.empty(len(queries))
    for a in range(0, len(queries), chunk):
        q = torch.as_tensor(np.asarray(queries[a:a + chunk], np.float32), device=device)
        dist = (torch.cdist(q, refs) if euclidean else 1.0 - q @ refs.T) / scale
        if exclude is not None:
            rows = np.flatnonzero(exclude[a:a + chunk] >= 0)
            dist[torch.as_tensor(rows), torch.as_tensor(exclude[a:a + chunk][rows])] = torch.inf
        out[a:a + chunk] = dist.min(dim=1).values.double().cpu().numpy()
    return out


def mahalanobis(queries: np.ndarray, means: np.ndarray, precisions: np.ndarray,
                device: torch.device | str = "cpu") -> np.ndarray:
    """Per query row, the minimum squared Mahalanobis distance to the Gaussians ``(means[j], precisions[j])``
    (float64: precisions of near-singular covariances have a wide range)."""
    q = torch.as_tensor(np.asarray(queries, np.float64), device=device)
    out = torch.full((len(q),), torch.inf, dtype=torch.float64, device=device)
    for mean, precision in zip(means, precisions):
        d = q - torch.as_tensor(np.asarray(mean, np.float64), device=device)
        p = torch.as_tensor(np.asarray(precision, np.float64), device=device)
        out = torch.minimum(out, ((d @ p) * d).sum(dim=1))
    return out.cpu().numpy()


def _by_section(groups: Groups):
    """``(machine, section), domain, vectors, index of its first clip among the section's training
    clips`` for every group, sources before targets."""
    offsets: dict[Key, int] = defaultdict(int)
    for (machine, section, domain), vectors in sorted(groups.items()):
        key = (machine, section)
        yield key, domain, np.asarray(vectors), offsets[key]
        offsets[key] += len(vectors)


def section_clips(groups: Groups, key: Key) -> np.ndarray:
    """The section's training clips in ``origins`` order."""
    return np.concatenate([np.asarray(v) for (m, s, _), v in sorted(groups.items()) if (m, s) == key])


def _references(parts: dict[Key, list[tuple]]) -> References:
    """References from ``(domain, vectors, scales, origins)`` parts per section."""
    def cat(i):
        return {k: np.concatenate([p[i] for p in ps]) for k, ps in parts.items()}
    domains = {k: np.concatenate([[p[0]] * len(p[1]) for p in ps]) for k, ps in parts.items()}
    return References(cat(1), domains, scales=cat(2), origins=cat(3))


def reconstruction_references(keys) -> References:
    """For the autoencoder baseline: no vectors, the clip's reconstruction error is its score."""
    keys = sorted(keys)
    return References({k: np.zeros((0, 1), np.float32) for k in keys}, {k: np.array([], str) for k in keys},
                      meta={"method": "reconstruction"})


def check_finite(groups: Groups, what: str) -> None:
    for (machine, section, domain), vectors in groups.items():
        if not np.isfinite(np.asarray(vectors)).all():
            raise ValueError(f"{what}: no model for machine type '{machine}' (section {section}, {domain}): the "
                             f"autoencoder bundle was trained on other machine types")


def mahalanobis_references(groups: Groups, folds: int = 5, pooled: bool = False) -> References:
    """For the autoencoder baseline: a Gaussian per (machine, section, domain) over the normal clips'
    mean reconstruction-error vectors (Ledoit-Wolf shrinkage: a few target clips in 640 dimensions).
    ``pooled``: each domain keeps its own mean, but the covariance is the section's within-domain
    covariance over all its domains (see ``gaussians``); false: each domain's own, as the official
    baseline fits them.

    A Gaussian fitted on a clip scores it far lower than an unseen normal clip (10 target clips in
    640 dimensions: almost zero), so thresholds and score norms need the training clips' scores
    out of sample: each clip is scored by Gaussians fitted without its fold (``folds`` folds of its
    domain, clip ``i`` in fold ``i % folds``); the nearest counts, as for a test clip. A domain with
    a single clip gives no such score (inf)."""
    check_finite(groups, "autoencoder references")
    sections = defaultdict(list)
    for key, domain, vectors, _ in _by_section(groups):
        sections[key].append((domain, vectors[:, 1:].astype(np.float64)))
    parts, precisions, held_out = defaultdict(list), defaultdict(list), {}
    for key, domains in sections.items():
        xs = [x for _, x in domains]
        fits = gaussians(xs, pooled)
        for (domain, _), (mean, precision) in zip(domains, fits):
            parts[key].append((domain, mean[None], np.ones(1), np.full(1, -1)))
            precisions[key].append(precision[None])
        held_out[key] = np.concatenate([cross_fitted_mahalanobis(xs, d, folds, pooled, fits) for d in range(len(xs))])
    refs = _references(parts)
    refs.precisions = {k: np.concatenate(v) for k, v in precisions.items()}
    refs.held_out = held_out
    return refs


def gaussians(xs: list[np.ndarray], pooled: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(mean, precision)`` per domain's clips ``xs``. Pooled: the deviations of every domain's
    clips from their own domain's mean share one covariance, so the target domain's few clips need
    only give a mean (a covariance in 640 dimensions from 10 clips is mostly shrinkage)."""
    from sklearn.covariance import LedoitWolf  # here, not at the top: scoring actors import this module

    if not pooled:
        return [(fit.location_, fit.precision_) for fit in (LedoitWolf().fit(x) for x in xs)]
    means = [x.mean(axis=0) for x in xs]
    fit = LedoitWolf(assume_centered=True).fit(np.concatenate([x - m for x, m in zip(xs, means)]))
    return [(m, fit.precision_) for m in means]


def cross_fitted_mahalanobis(xs: list[np.ndarray], d: int, folds: int, pooled: bool = False,
                             fits: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Each row of domain ``d``'s clips, scored by the Gaussians fitted without its fold (row ``i`` in
    fold ``i % folds``): the smallest distance over the domains; inf for a lone row, which has
    nothing to be compared with. ``fits``: ``gaussians(xs, pooled)`` when the caller has them. Per
    domain, only domain ``d``'s Gaussian changes with the fold, so the others are fitted once;
    pooled, every fold refits the shared covariance."""
    x = xs[d]
    own = np.full(len(x), np.inf)
    if len(x) < 2:
        return own
    if not pooled and fits is None:
        fits = gaussians(xs, pooled)
    fold = np.arange(len(x)) % min(folds, len(x))
    for f in range(min(folds, len(x))):
        if pooled:
            fold_fits = gaussians([x[fold != f] if j == d else other for j, other in enumerate(xs)], pooled)
        else:
            fold_fits = fits[:d] + gaussians([x[fold != f]], pooled) + fits[d + 1:]
        own[fold == f] = mahalanobis(x[fold == f], np.stack([m for m, _ in fold_fits]),
                                     np.stack([p for _, p in fold_fits]))
    return own


def centroid_references(groups: Groups) -> References:
    """The report's references: the unit-norm mean embedding per (machine, section, domain)."""
    parts = defaultdict(list)
    for key, domain, vectors, _ in _by_section(groups):
        centre = vectors.mean(axis=0)
        parts[key].append((domain, (centre / np.linalg.norm(centre))[None], np.ones(1), np.full(1, -1)))
    return _references(parts)


def kmeans_references(groups: Groups, clusters: int) -> References:
    """Wilkinghoff's references: k-means sub-centroids of the source domain, every target clip."""
    from sklearn.cluster import KMeans  # here, not at the top: scoring actors import this module

    parts = defaultdict(list)
    for key, domain, vectors, first in _by_section(groups):
        if domain == "source":
            centres = KMeans(n_clusters=min(clusters, len(vectors)), n_init=10,
                             random_state=0).fit(vectors).cluster_centers_
            refs, origins = centres / np.linalg.norm(centres, axis=1, keepdims=True), np.full(len(centres), -1)
        else:  # few target clips: all kept
            refs, origins = vectors, first + np.arange(len(vectors))
        parts[key].append((domain, refs, np.ones(len(refs)), origins))
    return _references(parts)


def section_standards(groups: Groups) -> dict[Key, np.ndarray]:
    """Per section, its normal training clips' mean and standard deviation ``(2, dim)``."""
    standard = {}
    for key in sorted({(m, s) for m, s, _ in groups}):
        clips = section_clips(groups, key).astype(np.float64)
        standard[key] = np.stack([clips.mean(axis=0), clips.std(axis=0) + 1e-6])
    return standard


def knn_references(groups: Groups, standardise: bool = False) -> References:
    """Every kept training embedding is a reference; a domain's distances are divided by its median
    leave-one-out nearest-neighbour distance among its own training clips. With ``standardise``
    (the frame statistics): each dimension standardised by the section's training clips, Euclidean
    distances."""
    parts, standard = defaultdict(list), section_standards(groups) if standardise else {}
    for key, domain, vectors, first in _by_section(groups):
        if len(vectors) < 2:
            what = "the frame statistics need" if standardise else "references=knn needs"
            raise ValueError(f"{what} at least 2 normal training clips per machine, section and domain; "
                             f"{key[0]} section {key[1]} {domain} has {len(vectors)}")
        if standardise:
            vectors = ((vectors - standard[key][0]) / standard[key][1]).astype(np.float32)
        own = np.arange(len(vectors))
        scale = max(float(np.median(nearest(vectors, vectors, np.ones(len(vectors)), exclude=own,
                                            euclidean=standardise))), 1e-6)
        parts[key].append((domain, vectors, np.full(len(vectors), scale), first + own))
    refs = _references(parts)
    refs.standard = standard or None
    return refs


def alarm_references(groups: Groups) -> References:
    """Spectral line alarms (the tonal detector): per (machine, section, domain) the mean of its
    normal clips' vectors, each dimension standardised by the section's normal clips; a clip's
    alarm is its largest rise above a domain's mean, divided by that domain's median leave-one-out
    alarm (its own clips' alarms against the mean of the others), the smaller over the domains.
    The training scores are out of sample the same way (``held_out``)."""
    parts, standard, held_out, fitted = defaultdict(list), section_standards(groups), defaultdict(list), []
    for key, domain, vectors, _ in _by_section(groups):
        if len(vectors) < 2:
            raise ValueError(f"the tonal detector needs at least 2 normal training clips per machine, section and "
                             f"domain; {key[0]} section {key[1]} {domain} has {len(vectors)}")
        x = (vectors - standard[key][0]) / standard[key][1]
        loo = leave_one_out_rises(x)
        scale = max(float(np.median(loo)), 1e-6)
        parts[key].append((domain, x.mean(axis=0, keepdims=True).astype(np.float32), np.full(1, scale),
                           np.full(1, -1)))
        fitted.append((key, domain, x, loo / scale))
    refs = _references(parts)
    refs.standard, refs.meta = standard, {"method": "alarm"}
    for key, domain, x, own in fitted:
        others = refs.domains[key] != domain
        other = alarms(x, refs.vectors[key][others], refs.scales[key][others])
        held_out[key].append(np.minimum(own, other))
    refs.held_out = {k: np.concatenate(v) for k, v in held_out.items()}
    return refs


def leave_one_out_rises(x: np.ndarray) -> np.ndarray:
    """Each row's largest rise above the mean of the other rows, ``(n * mean - x_i) / (n - 1)``."""
    return np.max(x - (len(x) * x.mean(axis=0) - x) / (len(x) - 1), axis=1)


def alarms(queries: np.ndarray, means: np.ndarray, scales: np.ndarray, chunk: int = 1024,
           device: torch.device | str = "cpu") -> np.ndarray:
    """Per query row, the minimum over the reference rows of ``max(query - mean) / scale`` (float32,
    chunked over the queries; inf without references)."""
    refs = torch.as_tensor(np.asarray(means, np.float32), device=device)
    scale = torch.as_tensor(np.asarray(scales, np.float32), device=device)
    out = np.full(len(queries), np.inf)
    if not len(refs):
        return out
    for a in range(0, len(queries), chunk):
        q = torch.as_tensor(np.asarray(queries[a:a + chunk], np.float32), device=device)
        rises = (q[:, None, :] - refs[None]).amax(dim=2) / scale
        out[a:a + chunk] = rises.min(dim=1).values.double().cpu().numpy()
    return out


def group_embeddings(emb: np.ndarray, machines: np.ndarray, sections: np.ndarray, domains: np.ndarray) -> Groups:
    keys = list(zip(machines, sections, domains))
    return {k: emb[[i for i, x in enumerate(keys) if x == k]] for k in sorted(set(keys))}
