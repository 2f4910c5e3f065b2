"""``asd-ray score``: fit references on normal training clips, score a test set, all in Ray Data.

Two streaming passes over an actor pool (the models loaded once per actor, GPU actors when
asked). Fit: a bounded sample of the normal training clips per machine, section and domain
(``max_references``), chosen from their clip ids before any audio is read
(``reference_sample.py``); the actors embed it into the object store, and Ray tasks, one per
section, build the references and the decision thresholds from it (``reference_fit.py``), which
stay there, one object per section and model; each model's ``references.npz`` is written from
them a section at a time. Score: an actor loads the sections its batches need (at most
``actor_sections`` at once), embeds its test clips and returns their scores and decisions, never
embeddings; Ray Data writes them as Parquet shards under ``out/scores/`` as they stream. The
driver holds no per-clip state and no references; ``score_output.py`` then derives the DCASE
files from the shards and writes ``manifest.json`` last.

Hybrid score (the default for a bundle trained with companions: the autoencoder, the frame
statistics and the spectral line alarms; any models with ``add_bundles``): every model scores
every clip in the same actor; each model's score is standardised per machine and section by its
training clips' scores and the standardised scores are added, so that a fault one detector
ignores still raises the sum (``reference_fit.py``).

Test clips need no domain or label (the everyday case: new recordings, the DCASE evaluation
set); those stay null in the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pyarrow as pa
import ray
from pydantic import Field, model_validator

from asd_ray import bundle, dataset, reference_sample, storage
from asd_ray.config import JobConfig
from asd_ray.embedder import Embedder, embedding_column
from asd_ray.reference_fit import Fitted, fit_sample, load_fitted, method_name, save_references
from asd_ray.reference_sample import RankCutoffs, SampleChunks
from asd_ray.score_output import finish_outputs, prepare_outputs, read_scores, scores_url
from asd_ray.storage import StorageOptions
from asd_ray.tracking import Tracked

__all__ = ["ScoreConfig", "run_score", "read_scores", "fit_references"]


class ScoreConfig(JobConfig, Tracked):
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
    max_references: int = Field(10_000, ge=2, description="training clips kept per machine, section and domain "
                                "(a seeded sample, the same in any order; memory and knn cost grow with it, "
                                "not with the training set)")
    companions: bool = Field(True, description="add the scores of the models trained beside the bundle's (its "
                                               "companion autoencoder, frame statistics and line alarms: the "
                                               "hybrid score); false: the model alone")
    add_bundles: list[str] = Field(default_factory=list, description="more models (any method) whose scores are "
                                   "added: each detector's score is normalised per machine and section by its "
                                   "training clips' scores (mean 0, standard deviation 1) and the sum is the score")
    weights: list[float] = Field(default_factory=list, description="each model's weight in that sum, the main "
                                 "model's first (default: 1 each). companions=true: as trained (an ensemble's "
                                 "members share one term), 1 for add_bundles")
    autoencoder_score: Literal["mse", "mahalanobis"] = Field(
        "mahalanobis", description="for autoencoder bundles: the mean squared reconstruction error, or the "
                                   "Mahalanobis distance of the clip's mean error vector to its section's and "
                                   "domain's normal clips (the stronger of the official baseline's two)")
    autoencoder_covariance: Literal["pooled", "domain"] = Field(
        "pooled", description="the autoencoder's Mahalanobis score: one covariance per section, pooled over its "
                              "domains' deviations from their own means (the target domain's few clips give only "
                              "a mean; won on both quality suites), or each domain's own (the official "
                              "baseline's: the comparator)")
    decision_percentile: float = Field(90.0, gt=0, lt=100)
    batch_size: int = Field(64, ge=1)
    actors: int = Field(1, ge=1, description="embedding actors (one model each)")
    use_gpu: bool = False
    cpus_per_actor: float = Field(1.0, gt=0)
    buffer_mb: int = Field(256, ge=64, description="Ray Data object-store budget of the embedding pipeline: "
                                                    "memory stays bounded whatever the dataset size")
    actor_sections: int = Field(8, ge=1, description="sections whose references a scoring actor keeps loaded "
                                "(the least recently used dropped): its memory holds this many sections' "
                                "references, however many the data has")
    rows_per_file: int = Field(100_000, ge=1, description="test clips per Parquet shard of the scores")
    references_to: str | None = Field(None, description="URL of the fitted references "
                                                        "(default: beside the model, <bundle>/references.npz)")
    references_from: str | None = Field(None, description="URL of references an earlier job fitted with the same "
                                        "models and settings (its references.npz; each added model's file beside it): "
                                        "score with them, without a pass over the training clips")
    storage: StorageOptions = StorageOptions()

    @model_validator(mode="after")
    def _fit_or_reuse(self) -> ScoreConfig:
        if self.references_from and (self.fit_data or self.references_to):
            given = " and ".join(f for f in ("fit_data", "references_to") if getattr(self, f))
            raise ValueError(f"references_from: the references are fitted already; {given} would fit and save them "
                             f"again: give one or the other")
        return self

    @model_validator(mode="after")
    def _one_weight_per_model(self) -> ScoreConfig:
        if self.weights and (len(self.weights) != len(self.bundles) or min(self.weights) <= 0):
            raise ValueError(f"weights: expected a positive number per model, {len(self.bundles)} in all (the main "
                             f"model's, then one per add_bundles entry), got {self.weights}")
        return self

    def model_weights(self) -> list[float]:
        return self.weights or [1.0] * len(self.bundles)

    @property
    def references_url(self) -> str:
        return self.references_to or storage.join(self.bundle, "references.npz")

    @property
    def bundles(self) -> list[str]:
        return [self.bundle, *self.add_bundles]

    def references_urls(self) -> list[str]:
        """The main model's references, then each added model's beside them (``references-<i>.npz``)."""
        return self._beside(self.references_url)

    def references_from_urls(self) -> list[str]:
        return self._beside(self.references_from)

    def _beside(self, main: str) -> list[str]:
        return [main, *(f"{main.removesuffix('.npz')}-{i}.npz" for i in range(1, len(self.bundles)))]


def embed(cfg: ScoreConfig, info: bundle.BundleInfo, url: str, split: str,
          references: ray.ObjectRef | None = None, row_filter: Callable[[pa.Table], pa.Table] | None = None,
          shard_urls: list[str] | None = None) -> ray.data.Dataset:
    ds = dataset.read_clips(url, split=split, machine=cfg.machines, num_samples=info.clip_samples,
                            sample_rate=info.sample_rate, pcm16=True, read_tasks=2 * cfg.actors,
                            row_filter=row_filter, options=cfg.storage, shard_urls=shard_urls)
    return ds.map_batches(Embedder, fn_constructor_kwargs={"bundle_urls": cfg.bundles,
                                                           "options": cfg.storage.model_dump(),
                                                           "use_gpu": cfg.use_gpu, "references": references,
                                                           "cached_sections": cfg.actor_sections},
                          compute=ray.data.ActorPoolStrategy(size=cfg.actors), batch_size=cfg.batch_size,
                          batch_format="numpy", num_gpus=1 if cfg.use_gpu else 0, num_cpus=cfg.cpus_per_actor)


def limit_buffering(cfg: ScoreConfig) -> None:
    """Keep memory flat as the dataset grows.

    - An object-store budget: without one, readers run ahead of slower embedding actors and park
      audio in the object store (up to 30% of RAM by default).
    - Blocks of at most an eighth of it: Ray Data would otherwise make a block of each shard
      (up to 128 MB), so memory would grow with the shard size.
    - Each shard read by a task of its own in batches (``dataset.read_clips``).
    """
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=cfg.buffer_mb * 2**20)
    ctx.target_max_block_size = min(ctx.target_max_block_size, cfg.buffer_mb * 2**20 // 8)


def sample_training_clips(cfg: ScoreConfig, info: bundle.BundleInfo, models: int
                          ) -> tuple[SampleChunks, RankCutoffs]:
    """The bounded sample of normal training clips, embedded into the object store by the actors."""
    source = cfg.fit_data or cfg.data
    shard_urls = dataset.checked_shards(source, "train", cfg.machines, cfg.storage)  # one list for both passes
    cutoffs = reference_sample.training_cutoffs(shard_urls, cfg.max_references, options=cfg.storage)
    if not cutoffs.seen:
        raise ValueError(f"{source}: no normal training clips to fit references on")
    chunks, columns = SampleChunks(), [embedding_column(k) for k in range(models)]
    sample = embed(cfg, info, source, "train", row_filter=reference_sample.sample_filter(cutoffs),
                   shard_urls=shard_urls)
    for batch in sample.iter_batches(batch_size=1024, batch_format="numpy"):
        chunks.add_batch(batch, columns)
    return chunks, cutoffs


def fit_references(cfg: ScoreConfig, infos: list[bundle.BundleInfo]) -> Fitted:
    """Every section's references per model (in the object store), norms and decision thresholds,
    from the sample of normal training clips."""
    chunks, cutoffs = sample_training_clips(cfg, infos[0], len(infos))
    return fit_sample(cfg, infos, chunks, cutoffs.seen)


def run_score(cfg: ScoreConfig) -> dict:
    cfg = cfg.model_copy(update={"storage": cfg.storage.resolved()})
    main = bundle.load_bundle(cfg.bundle, cfg.storage)[2]
    if cfg.companions:  # from here on the models and their weights are named explicitly (and so in the manifest)
        if cfg.weights:
            raise ValueError("weights: the companions' weights are the bundle's; give weights with companions=false "
                             "and every model in add_bundles")
        companions = [storage.join(cfg.bundle, c) for c in main.companions]
        weights = [main.weight, *(main.companion_weights.get(c, 1.0) for c in main.companions)]
        cfg = cfg.model_copy(update={"companions": False, "add_bundles": [*companions, *cfg.add_bundles],
                                     "weights": [*weights, *[1.0] * len(cfg.add_bundles)]})
    infos = [main, *(bundle.load_bundle(url, cfg.storage)[2] for url in cfg.add_bundles)]
    for url, info in zip(cfg.bundles[1:], infos[1:]):
        if info.sample_rate != infos[0].sample_rate:
            raise ValueError(f"add_bundles: {url} was trained at {info.sample_rate} Hz, {cfg.bundle} at "
                             f"{infos[0].sample_rate} Hz; added models must share the main model's sample rate")
    limit_buffering(cfg)
    test_urls = dataset.checked_shards(cfg.data, "test", cfg.machines, cfg.storage)  # read and counted: one list
    names = " + ".join(method_name(cfg, info) for info in infos)
    if cfg.references_from:
        print(f"score: {names} references from {cfg.references_from} (fitted by an earlier job)", flush=True)
        fitted = load_fitted(cfg, infos)
    else:
        print(f"score: fitting {names} references on {cfg.fit_data or cfg.data} (train, normal)", flush=True)
        fitted = fit_references(cfg, infos)
        save_references(cfg, infos, fitted)
    print(f"score: scoring {cfg.data} (test) with {cfg.actors} actor(s) into {scores_url(cfg.out)}", flush=True)
    prepare_outputs(cfg.out, cfg.storage)
    shipped = ship_sections(fitted.sections)
    fs, path = storage.pyarrow_fs(scores_url(cfg.out), cfg.storage)
    embed(cfg, main, cfg.data, "test", references=shipped, shard_urls=test_urls).write_parquet(
        path, filesystem=fs, min_rows_per_file=cfg.rows_per_file,
        ray_remote_args={"num_cpus": 0})  # a few KB of scores a batch; the actors may hold every CPU
    expected = dataset.count_clips(cfg.data, options=cfg.storage, shard_urls=test_urls)
    return finish_outputs(cfg.out, cfg.storage, cfg.model_dump(mode="json", exclude={"storage"}), expected=expected)


def ship_sections(sections: dict[tuple[str, str], list[ray.ObjectRef]]) -> ray.ObjectRef:
    """A dict ``"machine|section"`` -> that section's fitted references (each model's, as bytes, in
    the object store): each actor loads the sections its batches need."""
    return ray.put({"|".join(key): refs for key, refs in sorted(sections.items())})

