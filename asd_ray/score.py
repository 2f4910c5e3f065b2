"""``asd-ray score``: embed with Ray Data, fit references on normal training clips, score a test set.

Embedding runs as ``map_batches`` over an actor pool (one model per actor, GPU actors when asked);
the driver streams the embeddings back (256 floats a clip) and keeps only per-group references and
per-clip scores, so memory does not grow with the audio.

References, per (machine, section, domain), from the normal training clips:
``centroid`` (the report's method): the mean embedding; ``kmeans`` (Wilkinghoff's way): k-means
sub-centroids of the source domain plus every target-domain training embedding; ``knn``: every
training embedding, each domain's distances divided by that domain's median leave-one-out
nearest-neighbour distance (so that the dense, many-clip source domain and the few target clips
are on one scale when the minimum over both is taken).
They are saved beside the model (``<bundle>/references.npz``, numpy arrays only).
Score = minimum cosine distance (1 - cosine similarity; for ``knn``, domain-normalised) to the
references of the clip's machine and section, both domains. For an autoencoder bundle: its mean
squared reconstruction error, or the Mahalanobis distance of its mean error vector to a Gaussian
per domain (minimum over both). Decision threshold: a gamma distribution fitted to the training
clips' scores per machine and section, at ``decision_percentile`` (as the DCASE baseline does).

Hybrid score (the default for a bundle trained with its companion autoencoder; any models with
``add_bundles``): every model scores every clip in the same actor; each model's score is
standardised per machine and section by the mean and standard deviation of its training clips'
scores (leave-one-out where they are references) and the standardised scores are added, so that
a fault one detector ignores still raises the sum. Thresholds: a normal distribution fitted to
the summed training scores.

Test clips need no domain or label (the everyday case: new recordings, the DCASE evaluation
set); those stay null in the outputs. Outputs under ``out``: ``scores.parquet`` (clip_id,
machine, section, domain, label, score, decision), the DCASE submission files
``anomaly_score_<machine>_section_<XX>_test.csv`` and ``decision_result_<machine>_section_<XX>_test.csv``,
``unscored.csv`` (clips whose machine/section has no reference: reported, never scored) and, written
last, ``manifest.json``. A run first removes
the old manifest, so an output folder with a manifest is always complete.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import io
import json
import sys
from collections import defaultdict
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
import torch.nn.functional as F
from pydantic import Field
from ray.data.extensions import ArrowTensorArray
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf

from asd_ray import bundle, dataset, schema, storage
from asd_ray.autoencoder import MachineAutoEncoders
from asd_ray.config import JobConfig
from asd_ray.labels import UNKNOWN_DOMAIN
from asd_ray.model import autocast
from asd_ray.storage import StorageOptions

META = ("clip_id", "machine", "section", "domain", "label")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


class ScoreConfig(JobConfig):
    bundle: str = Field("runs/train/asd-train/model", description="URL of the model bundle")
    data: str = Field("runs/demo/data", description="clip dataset: its test split is scored")
    fit_data: str | None = Field(None, description="clip dataset whose normal train split gives the references "
                                                   "(default: data)")
    out: str = Field("runs/score", description="URL of the output folder")
    machines: list[str] | None = None
    references: Literal["centroid", "kmeans", "knn"] = Field(
        "knn", description="knn: every training clip, distances scaled per domain (best measured); "
                           "kmeans: Wilkinghoff's; centroid: the tech report's")
    kmeans_clusters: int = Field(16, ge=1)
    companions: bool = Field(True, description="add the scores of the models trained beside the bundle's (its "
                                               "companion autoencoder: the hybrid score); false: the model alone")
    add_bundles: list[str] = Field(default_factory=list, description="more models (any method) whose scores are "
                                   "added: each detector's score is normalised per machine and section by its "
                                   "training clips' scores (mean 0, standard deviation 1) and the sum is the score")
    autoencoder_score: Literal["mse", "mahalanobis"] = Field(
        "mahalanobis", description="for autoencoder bundles: the mean squared reconstruction error, or the "
                                   "Mahalanobis distance of the clip's mean error vector to its section's and "
                                   "domain's normal clips (the stronger of the official baseline's two)")
    decision_percentile: float = Field(90.0, gt=0, lt=100)
    batch_size: int = Field(64, ge=1)
    actors: int = Field(1, ge=1, description="embedding actors (one model each)")
    use_gpu: bool = False
    cpus_per_actor: float = Field(1.0, gt=0)
    buffer_mb: int = Field(256, ge=64, description="Ray Data object-store budget of the embedding pipeline: "
                                                    "memory stays bounded whatever the dataset size")
    references_to: str | None = Field(None, description="URL of the fitted references "
                                                        "(default: beside the model, <bundle>/references.npz)")
    storage: StorageOptions = StorageOptions()

    @property
    def references_url(self) -> str:
        return self.references_to or storage.join(self.bundle, "references.npz")

    @property
    def bundles(self) -> list[str]:
        return [self.bundle, *self.add_bundles]

    def references_urls(self) -> list[str]:
        """The main model's references, then each added model's beside them (``references-<i>.npz``)."""
        main = self.references_url
        return [main, *(f"{main.removesuffix('.npz')}-{i}.npz" for i in range(1, len(self.bundles)))]


def embedding_column(k: int) -> str:
    return "embedding" if k == 0 else f"embedding_{k}"


class Embedder:
    """Ray Data actor: the models (the main one and any added ones) per actor, waveform batches in,
    one vector per clip and model out: unit-norm embeddings, or for the autoencoder baseline its
    mean squared error followed by its mean error vector."""

    def __init__(self, bundle_urls: list[str] | str, options: dict, use_gpu: bool):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        urls = [bundle_urls] if isinstance(bundle_urls, str) else bundle_urls
        self.models = [bundle.load_bundle(u, StorageOptions(**options), self.device)[0] for u in urls]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        columns = {}
        with torch.inference_mode(), autocast(self.device):
            pcm = torch.as_tensor(batch["audio"], device=self.device)  # int16 until it is on the device
            wave = pcm.float() / schema.PCM16_FULL_SCALE
            for k, model in enumerate(self.models):
                if isinstance(model, MachineAutoEncoders):
                    emb = model.score_features(wave, model.index(batch["machine"]).to(self.device)).float()
                else:
                    emb = F.normalize(model(wave).float(), dim=1)
                columns[embedding_column(k)] = ArrowTensorArray.from_numpy(emb.cpu().numpy())
        release_freed_memory()
        # Arrow, not numpy: unknown domains and labels stay string nulls (numpy None would become NaN)
        return pa.table({**{k: pa.array(batch[k], pa.string()) for k in META}, **columns})


def release_freed_memory() -> None:
    """Hand freed heap back to the OS. Every batch allocates and frees tens of MB of audio and
    activations; glibc keeps such freed blocks fragmented in the heap, so a long-lived actor's
    memory would creep up with the number of batches it has seen."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def embed(cfg: ScoreConfig, info: bundle.BundleInfo, url: str, split: str) -> ray.data.Dataset:
    ds = dataset.read_clips(url, split=split, machine=cfg.machines, num_samples=info.clip_samples,
                            sample_rate=info.sample_rate, pcm16=True, options=cfg.storage)
    return ds.map_batches(Embedder, fn_constructor_kwargs={"bundle_urls": cfg.bundles,
                                                           "options": cfg.storage.model_dump(),
                                                           "use_gpu": cfg.use_gpu},
                          compute=ray.data.ActorPoolStrategy(size=cfg.actors), batch_size=cfg.batch_size,
                          batch_format="numpy", num_gpus=1 if cfg.use_gpu else 0, num_cpus=cfg.cpus_per_actor)


def limit_buffering(cfg: ScoreConfig) -> None:
    """Keep memory flat as the dataset grows.

    - An object-store budget: without one, readers run ahead of slower embedding actors and park
      audio in the object store (up to 30% of RAM by default).
    - Blocks of at most an eighth of it: Ray Data would otherwise make a block of each shard
      (up to 128 MB), so memory would grow with the shard size.
    - Reads in workers of their own: a worker that read Parquet keeps Arrow's memory after the task.
    """
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=cfg.buffer_mb * 2**20)
    ctx.target_max_block_size = min(ctx.target_max_block_size, cfg.buffer_mb * 2**20 // 8)
    ctx.isolate_read_workers = True


Groups = dict[tuple[str, str, str], list[np.ndarray]]  # (machine, section, domain) -> unit-norm embeddings


class References:
    """Reference vectors per (machine, section), each tagged with its domain and a distance scale
    (1 except for ``knn``). ``origins`` (fit time only, not saved) gives, for a reference that is
    itself a training clip, that clip's index among the group's training clips (source first), else -1."""

    def __init__(self, vectors: dict[tuple[str, str], np.ndarray], domains: dict[tuple[str, str], np.ndarray],
                 thresholds: dict[tuple[str, str], float] | None = None, meta: dict | None = None,
                 scales: dict[tuple[str, str], np.ndarray] | None = None,
                 origins: dict[tuple[str, str], np.ndarray] | None = None,
                 precisions: dict[tuple[str, str], np.ndarray] | None = None):
        self.vectors, self.domains, self.precisions = vectors, domains, precisions
        self.scales = scales or {k: np.ones(len(v)) for k, v in vectors.items()}
        self.origins = origins or {k: np.full(len(v), -1) for k, v in vectors.items()}
        self.thresholds, self.meta = thresholds or {}, meta or {}

    def score(self, machine: str, section: str, emb: np.ndarray) -> np.ndarray:
        """Minimum scaled cosine distance of unit-norm ``emb`` rows to the group's references (for
        the autoencoder baseline, whose references are empty, its reconstruction error)."""
        if self.meta.get("method") == "reconstruction":
            return emb[:, 0].astype(np.float64)
        if self.precisions is not None:  # Gaussians: the nearest by Mahalanobis distance
            return mahalanobis(emb[:, 1:], self.vectors[(machine, section)], self.precisions[(machine, section)])
        return nearest(emb, self.vectors[(machine, section)], self.scales[(machine, section)])

    def training_scores(self, key: tuple[str, str], clips: np.ndarray) -> np.ndarray:
        """Scores of the group's own training clips (in ``origins`` order), each with itself left
        out where it is a reference: otherwise such a clip would score 0."""
        exclude = np.full(len(clips), -1)
        own = np.flatnonzero(self.origins[key] >= 0)
        exclude[self.origins[key][own]] = own
        return nearest(clips, self.vectors[key], self.scales[key], exclude)

    def to_bytes(self) -> bytes:
        keys = sorted(self.vectors)
        buf = io.BytesIO()
        np.savez(buf, groups=np.array([f"{m}|{s}" for m, s in keys]),
                 sizes=np.array([len(self.vectors[k]) for k in keys]),
                 vectors=np.concatenate([self.vectors[k] for k in keys]).astype(np.float32),
                 domains=np.concatenate([self.domains[k] for k in keys]).astype(str),
                 scales=np.concatenate([self.scales[k] for k in keys]).astype(np.float64),
                 thresholds=np.array([self.thresholds.get(k, np.nan) for k in keys]),
                 meta=np.array(json.dumps(self.meta)),
                 **({"precisions": np.concatenate([self.precisions[k] for k in keys]).astype(np.float32)}
                    if self.precisions is not None else {}))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "References":
        z = np.load(io.BytesIO(data), allow_pickle=False)
        keys = [tuple(g.split("|")) for g in z["groups"]]
        bounds = np.cumsum([0, *z["sizes"]])
        vectors = {k: z["vectors"][a:b] for k, a, b in zip(keys, bounds[:-1], bounds[1:])}
        domains = {k: z["domains"][a:b] for k, a, b in zip(keys, bounds[:-1], bounds[1:])}
        scales = {k: z["scales"][a:b] for k, a, b in zip(keys, bounds[:-1], bounds[1:])}
        thresholds = {k: float(t) for k, t in zip(keys, z["thresholds"])}
        precisions = ({k: z["precisions"][a:b] for k, a, b in zip(keys, bounds[:-1], bounds[1:])}
                      if "precisions" in z else None)
        return cls(vectors, domains, thresholds, json.loads(str(z["meta"])), scales, precisions=precisions)


def nearest(queries: np.ndarray, vectors: np.ndarray, scales: np.ndarray, exclude: np.ndarray | None = None,
            chunk: int = 1024) -> np.ndarray:
    """Per query row, the minimum of ``(1 - query . vector) / scale`` over the reference vectors,
    leaving out reference ``exclude[i]`` for query ``i`` (-1: none). Chunked over the queries, so
    memory is ``chunk x references`` however many clips there are."""
    out = np.empty(len(queries))
    for a in range(0, len(queries), chunk):
        dist = (1.0 - queries[a:a + chunk] @ vectors.T) / scales
        if exclude is not None:
            rows = np.flatnonzero(exclude[a:a + chunk] >= 0)
            dist[rows, exclude[a:a + chunk][rows]] = np.inf
        out[a:a + chunk] = dist.min(axis=1)
    return out


def mahalanobis(queries: np.ndarray, means: np.ndarray, precisions: np.ndarray) -> np.ndarray:
    """Per query row, the minimum squared Mahalanobis distance to the Gaussians ``(means[j], precisions[j])``."""
    out = np.full(len(queries), np.inf)
    for mean, precision in zip(means, precisions):
        d = queries.astype(np.float64) - mean
        out = np.minimum(out, np.einsum("ij,jk,ik->i", d, precision.astype(np.float64), d))
    return out


def group_embeddings(emb: np.ndarray, machines: np.ndarray, sections: np.ndarray, domains: np.ndarray) -> Groups:
    groups: Groups = defaultdict(list)
    for e, key in zip(emb, zip(machines, sections, domains)):
        groups[key].append(e)
    return dict(groups)


def _by_section(groups: Groups):
    """``(machine, section), domain, embeddings (array), index of its first clip among the
    section's training clips`` for every group, sources before targets."""
    offsets: dict[tuple[str, str], int] = defaultdict(int)
    for (machine, section, domain), embs in sorted(groups.items()):
        key = (machine, section)
        yield key, domain, np.stack(embs), offsets[key]
        offsets[key] += len(embs)


def _references(parts: dict[tuple[str, str], list[tuple]]) -> References:
    """References from ``(domain, vectors, scales, origins)`` parts per section."""
    def cat(i):
        return {k: np.concatenate([p[i] for p in ps]) for k, ps in parts.items()}
    domains = {k: np.concatenate([[p[0]] * len(p[1]) for p in ps]) for k, ps in parts.items()}
    return References(cat(1), domains, scales=cat(2), origins=cat(3))


def reconstruction_references(groups) -> References:
    """For the autoencoder baseline: no vectors, the clip's reconstruction error is its score."""
    keys = sorted(groups)
    return References({k: np.zeros((0, 1), np.float32) for k in keys}, {k: np.array([], str) for k in keys},
                      meta={"method": "reconstruction"})


def _finite(groups: Groups, what: str) -> None:
    for (machine, section, domain), embs in groups.items():
        if not np.isfinite(np.stack(embs)).all():
            raise ValueError(f"{what}: no model for machine type '{machine}' (section {section}, {domain}): the "
                             f"autoencoder bundle was trained on other machine types")


def mahalanobis_references(groups: Groups) -> References:
    """For the autoencoder baseline: a Gaussian per (machine, section, domain) over the normal clips'
    mean reconstruction-error vectors (Ledoit-Wolf shrinkage: a few target clips in 640 dimensions)."""
    _finite(groups, "autoencoder references")
    parts, precisions = defaultdict(list), defaultdict(list)
    for key, domain, embs, _ in _by_section(groups):
        fit = LedoitWolf().fit(embs[:, 1:].astype(np.float64))
        parts[key].append((domain, fit.location_[None], np.ones(1), np.full(1, -1)))
        precisions[key].append(fit.precision_[None])
    refs = _references(parts)
    refs.precisions = {k: np.concatenate(v) for k, v in precisions.items()}
    return refs


def centroid_references(groups: Groups) -> References:
    """The report's references: the unit-norm mean embedding per (machine, section, domain)."""
    parts = defaultdict(list)
    for key, domain, embs, _ in _by_section(groups):
        centre = embs.mean(axis=0)
        parts[key].append((domain, (centre / np.linalg.norm(centre))[None], np.ones(1), np.full(1, -1)))
    return _references(parts)


def kmeans_references(groups: Groups, clusters: int) -> References:
    """Wilkinghoff's references: k-means sub-centroids of the source domain, every target clip."""
    parts = defaultdict(list)
    for key, domain, embs, first in _by_section(groups):
        if domain == "source":
            centres = KMeans(n_clusters=min(clusters, len(embs)), n_init=10, random_state=0).fit(embs).cluster_centers_
            vectors, origins = centres / np.linalg.norm(centres, axis=1, keepdims=True), np.full(len(centres), -1)
        else:  # few target clips: all kept
            vectors, origins = embs, first + np.arange(len(embs))
        parts[key].append((domain, vectors, np.ones(len(vectors)), origins))
    return _references(parts)


def knn_references(groups: Groups) -> References:
    """Every training embedding is a reference; a domain's distances are divided by its median
    leave-one-out nearest-neighbour distance among its own training clips."""
    parts = defaultdict(list)
    for key, domain, embs, first in _by_section(groups):
        if len(embs) < 2:
            raise ValueError(f"references=knn needs at least 2 normal training clips per machine, section and "
                             f"domain; {key[0]} section {key[1]} {domain} has {len(embs)}")
        own = np.arange(len(embs))
        scale = max(float(np.median(nearest(embs, embs, np.ones(len(embs)), exclude=own))), 1e-6)
        parts[key].append((domain, embs, np.full(len(embs), scale), first + own))
    return _references(parts)


def build_references(cfg: ScoreConfig, info: bundle.BundleInfo, groups: Groups) -> References:
    if info.method == "autoencoder":
        if cfg.autoencoder_score == "mahalanobis":
            return mahalanobis_references(groups)
        _finite(groups, "autoencoder references")  # no vectors: the reconstruction error is the score
        return reconstruction_references({(m, s) for m, s, _ in groups})
    if cfg.references == "centroid":
        return centroid_references(groups)
    if cfg.references == "kmeans":
        return kmeans_references(groups, cfg.kmeans_clusters)
    return knn_references(groups)


def method_name(cfg: ScoreConfig, info: bundle.BundleInfo) -> str:
    if info.method == "autoencoder":
        return "reconstruction" if cfg.autoencoder_score == "mse" else "mahalanobis"
    return cfg.references


def fit_references(cfg: ScoreConfig, infos: list[bundle.BundleInfo]) -> list[References]:
    """Embed the normal training clips and build references per model, and decision thresholds.
    With added models, each model's scores are normalised per (machine, section) by the mean and
    standard deviation of its training clips' scores (saved in the main references' ``meta``), and
    the thresholds are those of the summed scores."""
    source = cfg.fit_data or cfg.data
    groups: list[Groups] = [defaultdict(list) for _ in infos]
    for batch in embed(cfg, infos[0], source, "train").iter_batches(batch_size=1024, batch_format="numpy"):
        # the train split is normal operation: a clip without a label counts as normal
        for i in np.flatnonzero([lab in ("normal", None) for lab in batch["label"]]):
            key = (batch["machine"][i], batch["section"][i], batch["domain"][i] or UNKNOWN_DOMAIN)
            for k, g in enumerate(groups):
                g[key].append(batch[embedding_column(k)][i])
    if not groups[0]:
        raise ValueError(f"{source}: no normal training clips to fit references on")
    refs = [build_references(cfg, info, g) for info, g in zip(infos, groups)]
    for r, info, url, g in zip(refs, infos, cfg.bundles, groups):
        r.meta = {"data": source, "method": method_name(cfg, info), "bundle": url,
                  "clips": {f"{m}|{s}|{d}": len(e) for (m, s, d), e in g.items()}}
    if len(refs) > 1:
        refs[0].meta["norms"] = {}
    for key in refs[0].vectors:  # thresholds from the training clips' own scores
        per_model = []
        for r, g in zip(refs, groups):
            clips = np.stack([e for (m, s, _), embs in sorted(g.items()) if (m, s) == key for e in embs])
            per_model.append(r.training_scores(key, clips) if r.meta["method"] in ("knn", "kmeans", "centroid")
                             else r.score(*key, clips))
        scores = per_model[0]
        if len(refs) > 1:
            norms = [(float(np.mean(x[np.isfinite(x)])), float(np.std(x[np.isfinite(x)]) + 1e-12)) for x in per_model]
            refs[0].meta["norms"]["|".join(key)] = norms
            scores = sum((x - mu) / sd for x, (mu, sd) in zip(per_model, norms))
        scores = scores[np.isfinite(scores)]
        if len(scores) < 2:
            raise ValueError(f"{key[0]} section {key[1]}: a decision threshold needs at least 2 normal training "
                             f"clips that are not the only reference of their own; found {len(scores)}")
        if len(refs) > 1:  # sums of standardised scores can be negative: a normal fit, not a gamma
            refs[0].thresholds[key] = float(stats.norm.ppf(cfg.decision_percentile / 100, *stats.norm.fit(scores)))
        else:
            shape, loc, scale = stats.gamma.fit(np.maximum(scores, 1e-9))
            refs[0].thresholds[key] = float(stats.gamma.ppf(cfg.decision_percentile / 100, shape, loc=loc,
                                                            scale=scale))
    return refs


def clip_scores(refs: list[References], machine: str, section: str, batch: dict[str, np.ndarray],
                idx: np.ndarray) -> np.ndarray:
    """Scores of rows ``idx`` of a batch: the main model's, or the sum of every model's normalised ones."""
    if len(refs) == 1:
        return refs[0].score(machine, section, batch["embedding"][idx])
    norms = refs[0].meta["norms"][f"{machine}|{section}"]
    return sum((r.score(machine, section, batch[embedding_column(k)][idx]) - mu) / sd
               for k, (r, (mu, sd)) in enumerate(zip(refs, norms)))


def score_test(cfg: ScoreConfig, info: bundle.BundleInfo,
               refs: list[References]) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Scores of every test clip, and the clips that could not be scored (with why). Each batch's
    rows become a small Arrow table at once: a few dozen bytes a clip stay in memory, no audio."""
    parts: list[pa.Table] = []
    unscored: list[tuple[str, str]] = []
    for batch in embed(cfg, info, cfg.data, "test").iter_batches(batch_size=1024, batch_format="numpy"):
        for (machine, section), idx in _group_rows(batch).items():
            if any((machine, section) not in r.vectors for r in refs):
                unscored += [(batch["clip_id"][i], f"no references for machine '{machine}' section '{section}'")
                             for i in idx]
                continue
            scores = clip_scores(refs, machine, section, batch, idx)
            parts.append(pa.table({**{k: pa.array(batch[k][idx], pa.string()) for k in META},
                                   "score": pa.array(scores, pa.float64()),
                                   "decision": pa.array(scores > refs[0].thresholds[(machine, section)], pa.int8())}))
    table = pa.concat_tables(parts) if parts else _empty_scores()
    ids = table["clip_id"]
    if pc.count_distinct(ids).as_py() != len(ids):
        raise RuntimeError("a test clip was scored twice; refusing to write")  # never expected: a guard
    return table.sort_by("clip_id"), sorted(unscored)


def _empty_scores() -> pa.Table:
    return pa.table({**{k: pa.array([], pa.string()) for k in META}, "score": pa.array([], pa.float64()),
                     "decision": pa.array([], pa.int8())})


def _group_rows(batch: dict[str, np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    keys = np.array([f"{m}|{s}" for m, s in zip(batch["machine"], batch["section"])])
    return {tuple(k.split("|")): np.flatnonzero(keys == k) for k in np.unique(keys)}


def submission_files(table: pa.Table) -> dict[str, bytes]:
    """The DCASE CSVs: ``<file>.wav,<score>`` and ``<file>.wav,<0|1>`` per machine and section."""
    files: dict[str, bytes] = {}
    df = table.to_pydict()
    groups = sorted({(m, s) for m, s in zip(df["machine"], df["section"])})
    for machine, section in groups:
        schema.check_name("machine", machine, "scores")  # both become part of file names
        schema.check_name("section", section, "scores")
        idx = [i for i, (m, s) in enumerate(zip(df["machine"], df["section"])) if (m, s) == (machine, section)]
        for prefix, column in (("anomaly_score", "score"), ("decision_result", "decision")):
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows([f"{df['clip_id'][i].rsplit('/', 1)[-1]}.wav", df[column][i]] for i in idx)
            files[f"{prefix}_{machine}_section_{section}_test.csv"] = buf.getvalue().encode()
    return files


def run_score(cfg: ScoreConfig) -> dict:
    cfg = cfg.model_copy(update={"storage": cfg.storage.resolved()})
    main = bundle.load_bundle(cfg.bundle, cfg.storage)[2]
    if cfg.companions:  # from here on the models are named explicitly (and so in the manifest)
        cfg = cfg.model_copy(update={"companions": False, "add_bundles": [
            *(storage.join(cfg.bundle, c) for c in main.companions), *cfg.add_bundles]})
    infos = [main, *(bundle.load_bundle(url, cfg.storage)[2] for url in cfg.add_bundles)]
    for url, info in zip(cfg.bundles[1:], infos[1:]):
        if info.sample_rate != infos[0].sample_rate:
            raise ValueError(f"add_bundles: {url} was trained at {info.sample_rate} Hz, {cfg.bundle} at "
                             f"{infos[0].sample_rate} Hz; added models must share the main model's sample rate")
    limit_buffering(cfg)
    names = " + ".join(method_name(cfg, info) for info in infos)
    print(f"score: fitting {names} references on {cfg.fit_data or cfg.data} (train, normal)", flush=True)
    refs = fit_references(cfg, infos)
    for r, url in zip(refs, cfg.references_urls()):
        storage.write_bytes_atomic(url, r.to_bytes(), cfg.storage)
    print(f"score: scoring {cfg.data} (test) with {cfg.actors} embedding actor(s)", flush=True)
    table, unscored = score_test(cfg, infos[0], refs)
    write_outputs(cfg, table, unscored)
    return {"out": cfg.out, "scored": table.num_rows, "unscored": unscored,
            "groups": sorted({f"{m} section {s}" for m, s in zip(table["machine"].to_pylist(),
                                                                 table["section"].to_pylist())})}


def write_outputs(cfg: ScoreConfig, table: pa.Table, unscored: list[tuple[str, str]]) -> None:
    fs, root = storage.fsspec_fs(cfg.out, cfg.storage)
    manifest_url = storage.join(cfg.out, "manifest.json")
    storage.remove(manifest_url, cfg.storage)  # from here until the end the folder is incomplete
    files = submission_files(table)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    files["scores.parquet"] = buf.getvalue()
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([("clip_id", "reason"), *unscored])
    files["unscored.csv"] = out.getvalue().encode()
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(cfg.out, name), data, cfg.storage)
    stale = [p for p in fs.glob(f"{root}/*_section_*_test.csv") if p.rsplit("/", 1)[-1] not in files]
    for path in stale:
        fs.rm_file(path)
    manifest = {"files": sorted(files), "scored": table.num_rows, "unscored": len(unscored),
                "config": cfg.model_dump(mode="json", exclude={"storage"})}
    storage.write_bytes_atomic(manifest_url, json.dumps(manifest, indent=1).encode(), cfg.storage)


def read_scores(url: str, options: StorageOptions | None = None) -> pa.Table:
    """The scores of a complete scoring output (one with a manifest)."""
    if not storage.exists(storage.join(url, "manifest.json"), options):
        raise FileNotFoundError(f"{url}: no manifest.json - not a scoring output, or an incomplete one")
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(url, "scores.parquet"), options)))
