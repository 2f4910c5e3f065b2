"""``asd-ray score``'s fit: each section's references, hybrid norms and decision threshold from the
embedded sample of its normal training clips (``reference_sample.py``), in a Ray task per section.

A section's fitted references stay in the object store, one object per section and model, owned
by the driver, which keeps only the small per-section results (norms, threshold, clips kept): the
scoring actors load the sections they need from there (``Embedder``), and ``save_references``
writes each model's ``references.npz`` from them one section at a time. So the driver's memory
grows with neither the sample nor the number of sections' vectors (``knn`` references are the
sample itself).

Hybrid score: each model's score is standardised per machine and section by the mean and standard
deviation of its training clips' scores (out of sample: leave-one-out where they are references,
held out of the Gaussians and the alarms' means). Thresholds: a normal distribution fitted to the
summed training scores (a single model: a gamma distribution, as the DCASE baseline does), at
``decision_percentile``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import numpy as np
import ray
from scipy import stats

from asd_ray import bundle, storage
from asd_ray.cluster import as_completed
from asd_ray.embedder import hybrid_sum
from asd_ray.reference_sample import SampleChunks, gather
from asd_ray.references import (Groups, Key, References, alarm_references, centroid_references, check_finite,
                                kmeans_references, knn_references, mahalanobis_references, reconstruction_references,
                                read_sections, section_clips, write_sections)

if TYPE_CHECKING:
    from asd_ray.score import ScoreConfig

class FittedSection(NamedTuple):
    """What the driver keeps of a fitted section (its references stay in the object store)."""
    norms: list[tuple[float, float]] | None  # each model's normaliser in the hybrid (None: one model)
    threshold: float
    kept: dict[tuple[str, str, str], int]  # clips in the sample per group
    domain_thresholds: dict[str, float] = {}  # per domain, from its own training clips (``domain_thresholds``)


class Fitted(NamedTuple):
    sections: dict[Key, list[ray.ObjectRef]]  # per section, each model's References as bytes
    summaries: dict[Key, FittedSection]
    seen: dict[tuple[str, str, str], int]  # normal training clips per group, sampled or not


def build_references(cfg: ScoreConfig, info: bundle.BundleInfo, groups: Groups) -> References:
    if info.method == "autoencoder":
        if cfg.autoencoder_score == "mahalanobis":
            return mahalanobis_references(groups, pooled=cfg.autoencoder_covariance == "pooled")
        check_finite(groups, "autoencoder references")  # no vectors: the reconstruction error is the score
        return reconstruction_references({(m, s) for m, s, _ in groups})
    if info.method == "framestats":
        return knn_references(groups, standardise=True)
    if info.method == "tonal":
        return alarm_references(groups)
    if cfg.references == "centroid":
        return centroid_references(groups)
    if cfg.references == "kmeans":
        return kmeans_references(groups, cfg.kmeans_clusters)
    return knn_references(groups)


def method_name(cfg: ScoreConfig, info: bundle.BundleInfo) -> str:
    if info.method == "autoencoder":
        return "reconstruction" if cfg.autoencoder_score == "mse" else "mahalanobis"
    if info.method == "framestats":
        return "framestats"
    if info.method == "tonal":
        return "alarm"
    return cfg.references


def fit_sample(cfg: ScoreConfig, infos: list[bundle.BundleInfo], chunks: SampleChunks,
               seen: dict[tuple[str, str, str], int]) -> Fitted:
    """``fit_section`` for every (machine, section) of the sample, as Ray tasks on the cluster's CPUs
    (a section at cap size takes seconds: Ledoit-Wolf refits, leave-one-out neighbours), at most
    as many at once as it has CPUs, each handed only its own section's chunks; in section order."""
    sections = {}

    def start(key: Key) -> ray.ObjectRef:
        summary, *sections[key] = fit_section.options(num_returns=1 + len(infos)).remote(
            cfg, infos, key, chunks.refs[key])
        return summary

    summaries = dict(as_completed((key, partial(start, key)) for key in chunks.sections()))
    return Fitted({key: sections[key] for key in chunks.sections()},
                  {key: summaries[key] for key in chunks.sections()}, dict(seen))


@ray.remote(num_cpus=1)
def fit_section(cfg: ScoreConfig, infos: list[bundle.BundleInfo], key: Key, chunks: list) -> tuple:
    """One section's references per model from its chunks of the sample, and its decision threshold
    from the training clips' own scores, out of sample; with added models, each model's norm and
    the threshold of the sum. Returns the ``FittedSection``, then each model's references as bytes
    (as a scoring actor loads them)."""
    groups, kept = gather(key, chunks, len(infos), cfg.max_references)  # fresh arrays, writable
    refs = [build_references(cfg, info, g) for info, g in zip(infos, groups)]
    per_model = [r.training_scores(key, section_clips(g, key)) for r, g in zip(refs, groups)]
    domains = np.concatenate([[d] * len(v) for (_, _, d), v in sorted(groups[0].items())])  # section_clips' order
    norms = None if len(refs) == 1 else [section_norm(x) for x in per_model]
    scores = per_model[0] if norms is None else hybrid_sum(per_model, norms, cfg.model_weights())
    pct, hybrid = cfg.decision_percentile, norms is not None
    fitted = FittedSection(norms, threshold(scores, pct, hybrid, key), kept,
                           domain_thresholds(scores, domains, pct, key) if hybrid else {})
    return fitted, *as_loaded(cfg, infos, key, refs, fitted)


def domain_thresholds(scores: np.ndarray, domains: np.ndarray, percentile: float, key: Key) -> dict[str, float]:
    """The hybrid's threshold per domain, from its own training clips' summed scores: the section's
    is set mostly by its many source clips, and a new domain's normal clips, which sit higher in
    the autoencoder's term, crossed it three times as often as intended (README, Scoring). A
    model scored alone keeps the section's: the nearest-neighbour distances put the domains on
    one scale already, and a threshold from a domain's 10 clips only adds noise there (the
    dual-stream model alone: 22-26 % of the target domain's normal clips against 5-12 %). A domain
    with fewer than 2 finite scores gets none (the section's applies)."""
    out = {}
    for domain in sorted(set(domains)):
        own = scores[(domains == domain) & np.isfinite(scores)]
        if len(own) < 2:
            continue
        out[str(domain)] = threshold(own, percentile, normal=True, key=key)
    return out


def as_loaded(cfg: ScoreConfig, infos: list[bundle.BundleInfo], key: Key, refs: list[References],
              fitted: FittedSection) -> list[bytes]:
    """Each model's references of section ``key`` as a scoring actor loads them (``Embedder``): its
    method, and on the main model's the section's threshold, and its norms and the hybrid's
    weights, nothing of other sections."""
    for r, info in zip(refs, infos):
        r.meta = {"method": method_name(cfg, info)}
    if fitted.norms is not None:
        refs[0].meta.update(norms={"|".join(key): fitted.norms}, weights=cfg.model_weights())
    refs[0].meta["domain_thresholds"] = {"|".join(key): fitted.domain_thresholds}
    refs[0].thresholds = {key: fitted.threshold}
    return [r.to_bytes() for r in refs]


def section_norm(training_scores: np.ndarray) -> tuple[float, float]:
    """A detector's normaliser for one section in the hybrid: the mean and standard deviation of its
    training clips' (out-of-sample) scores, over the finite ones (a lone clip's Gaussian score is inf)."""
    finite = training_scores[np.isfinite(training_scores)]
    return float(np.mean(finite)), float(np.std(finite) + 1e-12)


def threshold(scores: np.ndarray, percentile: float, normal: bool, key: Key) -> float:
    """The ``percentile`` of a distribution fitted to normal training scores: a gamma (the DCASE
    baseline's), or a normal one for sums of standardised scores, which can be negative."""
    scores = scores[np.isfinite(scores)]
    if len(scores) < 2:
        raise ValueError(f"{key[0]} section {key[1]}: a decision threshold needs at least 2 normal training "
                         f"clips that are not the only reference of their own; found {len(scores)}")
    if normal:
        return float(stats.norm.ppf(percentile / 100, *stats.norm.fit(scores)))
    shape, loc, scale = stats.gamma.fit(np.maximum(scores, 1e-9))
    return float(stats.gamma.ppf(percentile / 100, shape, loc=loc, scale=scale))


def file_meta(cfg: ScoreConfig, infos: list[bundle.BundleInfo], fitted: Fitted) -> list[dict]:
    """Each model's ``references.npz`` meta: what it was fitted on and how; the main model's also
    the fitting settings, every section's norms and the weights of the hybrid (what
    ``check_reuse`` compares)."""
    kept = {g: n for s in fitted.summaries.values() for g, n in s.kept.items()}
    metas = []
    for info, url in zip(infos, cfg.bundles):
        meta = {"data": cfg.fit_data or cfg.data, "method": method_name(cfg, info), "bundle": url,
                "clips": {"|".join(g): n for g, n in sorted(fitted.seen.items())},
                "kept": {"|".join(g): n for g, n in sorted(kept.items())}}
        if meta["method"] == "mahalanobis":
            meta["covariance"] = cfg.autoencoder_covariance
        metas.append(meta)
    metas[0]["fit"] = fit_settings(cfg)
    metas[0]["domain_thresholds"] = {"|".join(k): s.domain_thresholds for k, s in fitted.summaries.items()}
    if len(infos) > 1:
        metas[0].update(norms={"|".join(k): s.norms for k, s in fitted.summaries.items()},
                        weights=cfg.model_weights())
    return metas


def fit_settings(cfg: ScoreConfig) -> dict:
    """The settings besides the models and methods that change fitted references or thresholds."""
    return {"max_references": cfg.max_references, "decision_percentile": cfg.decision_percentile,
            **({"kmeans_clusters": cfg.kmeans_clusters} if cfg.references == "kmeans" else {})}


def save_references(cfg: ScoreConfig, infos: list[bundle.BundleInfo], fitted: Fitted) -> None:
    """Each model's references file (``cfg.references_urls()``), whole or absent, written from the
    object store one section at a time."""
    for k, (meta, url) in enumerate(zip(file_meta(cfg, infos, fitted), cfg.references_urls())):
        parts = (References.from_bytes(ray.get(fitted.sections[key][k])) for key in sorted(fitted.sections))
        with storage.open_atomic(url, cfg.storage) as out:
            write_sections(out, parts, meta)


def load_fitted(cfg: ScoreConfig, infos: list[bundle.BundleInfo]) -> Fitted:
    """The references an earlier job fitted and saved (``cfg.references_from``, each added model's file
    beside it), checked against this job's models and settings, into the object store a section at
    a time, as ``fit_sample`` leaves them: scoring new clips needs no pass over the training set."""
    urls = cfg.references_from_urls()
    sections, summaries, seen, kept = {}, {}, {}, defaultdict(dict)
    openers = [open_saved(cfg, url, model) for url, model in zip(urls, cfg.bundles)]
    with contextlib.closing(aligned_sections(urls, openers)) as aligned:
        for key, parts in aligned:
            meta = parts[0].meta
            if not sections:
                check_reuse(cfg, infos, urls, [p.meta for p in parts])
                seen = {tuple(g.split("|")): n for g, n in meta.get("clips", {}).items()}
                for group, n in meta.get("kept", {}).items():
                    kept[tuple(group.split("|")[:2])][tuple(group.split("|"))] = n
            norms = meta["norms"]["|".join(key)] if len(parts) > 1 else None
            summaries[key] = FittedSection(norms, parts[0].thresholds[key], kept[key],
                                           meta.get("domain_thresholds", {}).get("|".join(key), {}))
            sections[key] = [ray.put(b) for b in as_loaded(cfg, infos, key, parts, summaries[key])]
    if not sections:
        raise ValueError(f"references_from: {urls[0]} holds no sections")
    return Fitted(sections, summaries, seen)


def open_saved(cfg: ScoreConfig, url: str, model: str) -> Callable[[], BinaryIO]:
    """How to open a saved references file for reading (``read_sections`` opens it once per array)."""
    fs, path = storage.fsspec_fs(url, cfg.storage)
    if not fs.exists(path):
        raise ValueError(f"references_from: {url} (the references of {model}) does not exist")
    return partial(fs.open, path, "rb")


def aligned_sections(urls: list[str], openers: list[Callable[[], BinaryIO]]
                     ) -> Iterator[tuple[Key, list[References]]]:
    """The files' sections side by side, one section at a time; each file must hold the same ones."""
    with contextlib.ExitStack() as readers:
        files = [readers.enter_context(contextlib.closing(read_sections(o))) for o in openers]
        for parts in itertools.zip_longest(*files):
            if any(p is None for p in parts):
                raise ValueError(f"references_from: {', '.join(urls)} hold different numbers of sections")
            keys = [next(iter(p.vectors)) for p in parts]
            if any(k != keys[0] for k in keys):
                raise ValueError(f"references_from: {', '.join(urls)} hold different sections "
                                 f"({', '.join('|'.join(k) for k in keys)})")
            yield keys[0], list(parts)


def check_reuse(cfg: ScoreConfig, infos: list[bundle.BundleInfo], urls: list[str], metas: list[dict]) -> None:
    """Saved references fit this job: each file of its model and method, the main one of this
    job's models, weights and fitting settings (where it records them)."""
    for url, meta, model, info in zip(urls, metas, cfg.bundles, infos):
        for field, want in (("bundle", model), ("method", method_name(cfg, info)),
                            *((("covariance", cfg.autoencoder_covariance),) if info.method == "autoencoder"
                              and cfg.autoencoder_score == "mahalanobis" else ())):
            if meta.get(field) != want:
                raise ValueError(f"references_from: {url} was fitted with {field} {meta.get(field)!r}; this job "
                                 f"has {want!r}: fit them again (leave out references_from)")
    main = metas[0]
    fitted_models = len(next(iter(main["norms"].values()))) if main.get("norms") else 1
    if fitted_models != len(infos) or (len(infos) > 1 and main.get("weights") != cfg.model_weights()):
        raise ValueError(f"references_from: {urls[0]} was fitted for {fitted_models} model(s) with weights "
                         f"{main.get('weights', [1.0])}; this job scores with {len(infos)} ({', '.join(cfg.bundles)}) "
                         f"with weights {cfg.model_weights()}")
    for field, value in main.get("fit", {}).items():
        if fit_settings(cfg).get(field, value) != value:
            raise ValueError(f"references_from: {urls[0]} was fitted with {field}={value}; this job has "
                             f"{field}={fit_settings(cfg)[field]}: set it to {value}, or fit them again")
