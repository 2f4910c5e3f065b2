"""``asd-ray train``: data-parallel training with Ray Train from clip shards at any URL.

The driver builds the label map from the training clips' metadata, hands Ray Train the streaming
training input (``train_input``: row groups dealt in a new order per epoch, read, mixed, cropped
and labelled on CPUs, int16 audio, split across workers) and, when training ends, turns the
last checkpoint into a model bundle. ``train_loop`` is the whole per-worker loop.
Re-running with the same ``name`` and ``storage_path`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from typing import Literal

from pydantic import Field, field_validator

from asd_ray import bundle, console, dataset, storage
from asd_ray.augment import feature_exchange, mixup
from asd_ray.autoencoder import AEConfig
from asd_ray.config import JobConfig, refuse_changes
from asd_ray.framestats import FrameStatsConfig
from asd_ray.labels import LabelMap, class_key
from asd_ray.loss import SubClusterAdaCos
from asd_ray.model import ModelConfig, autocast
from asd_ray.schema import PCM16_FULL_SCALE
from asd_ray.storage import StorageOptions
from asd_ray.tonal import TonalConfig
from asd_ray.tracking import Tracked
from asd_ray.train_input import ReadSettings, ingest_options, training_dataset
from asd_ray.validate import ValidationConfig, load_validation, validation_score

STATE_FILE = "state.pt"
SETTINGS_FILE = "settings.json"
# what a resumed run may change: where and how it runs (the input pipeline's buffers included),
# and how many epochs it runs in all
RESUMABLE = {"name", "storage_path", "bundle", "num_workers", "resize_check_s", "worker_wait_s", "use_gpu",
             "cpus_per_worker", "epochs", "checkpoint_every", "keep_checkpoints", "max_failures", "validation",
             "storage", "shuffle_buffer", "mix_row_groups", "block_clips", "input_buffer_mb", "reads_per_worker",
             "autoencoder_epochs", "progress_s", "tracking", "tracking_uri", "experiment",
             "ensemble", "framestats", "tonal"}
# settings that runs recorded before the setting existed were trained with
LEGACY_SETTINGS = {"class_domain": False}


class TrainConfig(JobConfig, Tracked):
    data: str = Field("runs/demo/data", description="URL of the clip dataset")
    machines: list[str] | None = Field(None, description="machine types to train on (default: all)")
    name: str = Field("asd-train", description="run name; the same name and storage_path resume")
    storage_path: str = Field("runs/train", description="URL under which runs and checkpoints live")
    bundle: str | None = Field(None, description="URL of the model bundle (default <storage_path>/<name>/model)")
    num_workers: int | tuple[int, int] = Field(1, description="training workers; [min, max]: elastic, it carries on "
                                               "with as few as min when nodes are lost and grows back to max")
    resize_check_s: float = Field(60.0, gt=0, description="elastic runs: how often Ray Train looks for room to grow")
    worker_wait_s: float = Field(60.0, gt=0, description="how long a start or restart waits for room for its workers "
                                 "before it tries again; an elastic run that lost a node tries with fewer then")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="leave CPUs free for Ray Data's readers")
    epochs: int = Field(6, ge=1, description="6 beat 10 and 16 in the quality benchmark (README: quality)")
    batch_size: int = Field(64, ge=2, description="per worker")
    shuffle_buffer: int = Field(256, ge=0, description="clips per worker mixed across read tasks before batching")
    mix_row_groups: int = Field(16, ge=1, description="row groups (16 clips each as ingest writes them, from any "
                                                      "shard) read and shuffled together by one read task; its "
                                                      "memory: this many row groups")
    block_clips: int = Field(32, ge=1, description="clips per block of the training input")
    input_buffer_mb: float = Field(512.0, gt=0, description="object-store budget of the training input (Ray Data's "
                                                            "resource limit): blocks read ahead of the workers")
    reads_per_worker: int = Field(2, ge=1, description="read tasks of the training input at once, per worker (of "
                                  "the most workers); they reserve no CPU, so workers holding every CPU do not "
                                  "starve them")
    progress_s: float = Field(30.0, ge=0, description="a progress line (clips done / total, time left) this often "
                              "within an epoch; 0: the epoch lines only")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    mixup_alpha: float = Field(1.0, ge=0, description="mixup's Beta(alpha, alpha); 1: a uniform mixing weight")
    featex: float = Field(0.5, ge=0, le=1, description="share of clips whose branch embeddings are swapped with a "
                                                        "partner's (FeatEx: a second loss on 3x the classes); 0: off")
    grad_clip: float = Field(5.0, gt=0)
    n_subclusters: int = Field(16, ge=1)
    clip_seconds: float = Field(10.0, gt=0, description="clips are cropped / padded to this length")
    sample_rate: int = 16000
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (the last always has one)")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(3, ge=0, description="worker failures to recover from")
    seed: int = 0
    class_domain: bool = Field(True, description="auxiliary classes: machine x section x attributes x domain "
                                                 "(false: without the domain, as runs before it)")
    validation: ValidationConfig | None = Field(None, description="score a small labelled budget every epoch "
                                                                 "(reported as official_score)")
    method: Literal["scadacos", "autoencoder"] = Field(
        "scadacos", description="scadacos: the dual-stream model; autoencoder: the DCASE baseline (comparator)")
    autoencoder_epochs: int = Field(30, ge=0, description="method=scadacos: epochs of the autoencoder baseline (a "
                                    "model per machine type) trained after the dual-stream model in the same job, "
                                    "as run '<name>-autoencoder', into <bundle>/autoencoder; asd-ray score adds "
                                    "its normalised score to the embedding distance (the hybrid score). 0: none")
    ensemble: int = Field(1, ge=1, description="method=scadacos: dual-stream models in all; members 2.. are trained "
                                               "after the first in the same job with seeds seed+1.. (runs "
                                               "'<name>-member-<k>', bundles <bundle>/member-<k>) and asd-ray score "
                                               "averages their normalised scores into the hybrid's one dual-stream "
                                               "term. Each member costs a training")
    framestats: FrameStatsConfig | None = Field(FrameStatsConfig(), description="method=scadacos: the frame-"
                                                "statistics detector (nothing to train) saved beside the model in "
                                                "<bundle>/framestats; asd-ray score adds its normalised score (the "
                                                "hybrid score). null: none")
    tonal: TonalConfig | None = Field(TonalConfig(), description="method=scadacos: the spectral line alarms "
                                      "(nothing to train) saved beside the model in <bundle>/tonal; asd-ray score "
                                      "adds their normalised score (the hybrid score). null: none")
    model: ModelConfig = ModelConfig()
    autoencoder: AEConfig = AEConfig()
    storage: StorageOptions = StorageOptions()

    @field_validator("num_workers")
    @classmethod
    def _worker_range(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        low, high = (value, value) if isinstance(value, int) else value
        if not 1 <= low <= high:
            raise ValueError(f"expected a count >= 1 or [min, max] with 1 <= min <= max, got {value}")
        return value

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def bundle_url(self) -> str:
        return self.bundle or storage.join(self.storage_path, self.name, "model")


def train_loop(config: dict) -> None:
    """One Ray Train worker: resume, then per epoch stream batches, step, report, checkpoint."""
    cfg = TrainConfig.model_validate(config["cfg"])
    labels = LabelMap(classes=config["classes"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # the same initial model and, above all, the same fixed centres on every rank
    model, loss_fn = bundle.build(bundle_info(cfg, labels))
    featex_fn = (SubClusterAdaCos(cfg.model.emb_dim, 3 * len(labels), cfg.n_subclusters)
                 if loss_fn is not None and cfg.featex > 0 else None)  # training only: not in the bundle
    torch.manual_seed(cfg.seed + 1000 * (rank + 1))  # but different mixup / SpecAugment draws
    # everything on the device first, then the optimizer and the restored state: an optimizer state
    # loaded before the model moved would stay on the CPU and the first step on a GPU would fail
    # the autoencoder baseline: a model per machine type, and a batch need not hold every type
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": loss_fn is None})
    core = model.module if hasattr(model, "module") else model
    loss_fn = loss_fn.to(device) if loss_fn is not None else None
    featex_fn = featex_fn.to(device) if featex_fn is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = 0, []  # history: every epoch's metrics, carried in the checkpoints
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = bundle.load_weights(open(os.path.join(d, STATE_FILE), "rb").read(), d)
        start_epoch = restore(state, core, loss_fn, featex_fn, opt)
        history = [m for m in state.get("history", []) if m["epoch"] < start_epoch]
        if rank == 0:
            print(f"train: resumed from the checkpoint after epoch {start_epoch}, {world} worker(s)", flush=True)
    machines = bundle_info(cfg, labels).machines  # class index -> machine type index, for the autoencoder
    class_machine = torch.tensor([machines.index(c.split("|")[0]) for c in labels.classes], device=device)
    shard = ray.train.get_dataset_shard("train")
    val = (load_validation(cfg.validation, cfg.data, cfg.machines, cfg.clip_samples, cfg.storage)
           if cfg.validation and rank == 0 else None)

    clips_per_epoch = config.get("clips") or None  # then what an epoch took (a batch's remainder is dropped)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        lr = cosine_lr(cfg.lr, epoch, cfg.epochs)
        for group in opt.param_groups:
            group["lr"] = lr
        totals = torch.zeros(3, device=device)  # loss sum, correct, clips
        t0 = time.time()
        # every worker reads its own part: rank 0's clips x workers
        progress = console.Progress(f"epoch {epoch + 1}/{cfg.epochs}", clips_per_epoch,
                                    cfg.progress_s if rank == 0 else 0)
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, device=device, drop_last=True,
                                              local_shuffle_buffer_size=cfg.shuffle_buffer):
            audio = batch["audio"].float() / PCM16_FULL_SCALE  # int16 until here, on the device
            if loss_fn is None:  # the autoencoder: reconstruct normal clips with their machine type's model
                x = audio
                with autocast(device):
                    loss = model(x, class_machine[batch["label"]]).mean()
            else:
                x, y = mixup(audio, F.one_hot(batch["label"], len(labels)).float(), cfg.mixup_alpha)
                with autocast(device):
                    emb = model(x)
                loss = loss_fn(emb, y)
                if featex_fn is not None:
                    loss = loss + featex_fn(*feature_exchange(emb, y, cfg.featex))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                correct = ((loss_fn.class_log_probs(emb).argmax(1) == y.argmax(1)).sum() if loss_fn
                           else torch.zeros((), device=device))
            totals += torch.stack([loss.detach() * len(x), correct.float(), torch.tensor(float(len(x)), device=device)])
            progress.update(len(x) * world)
        if world > 1:
            torch.distributed.all_reduce(totals)
        loss_sum, correct, clips = totals.tolist()
        clips_per_epoch = int(clips)
        metrics = {"epoch": epoch, "epochs_done": epoch + 1, "workers": world, "loss": loss_sum / max(clips, 1),
                   "accuracy": correct / max(clips, 1) if loss_fn else float("nan"),
                   "clips_per_s": clips / (time.time() - t0), "lr": lr,
                   "scale": float(loss_fn.scale) if loss_fn else float("nan"), "start_epoch": start_epoch}
        if cfg.validation:
            metrics["official_score"] = validation_score(core, val, device) if val else float("nan")
        history.append(metrics)
        if rank == 0:
            extra = f"  official score {metrics['official_score']:.4f}" if cfg.validation else ""
            print(f"epoch {epoch + 1}/{cfg.epochs}  loss {metrics['loss']:.4f}  aux acc {metrics['accuracy']:.3f}  "
                  f"{metrics['clips_per_s']:.1f} clips/s  lr {metrics['lr']:.2e}  scale {metrics['scale']:.2f}  "
                  f"workers {world}{extra}",
                  flush=True)
        save = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
        if save and rank == 0:
            record_settings(cfg)  # with the first checkpoint: a run that never got one may restart with others
            with tempfile.TemporaryDirectory() as d:
                state = {"model": core.state_dict(), "loss": loss_fn.state_dict() if loss_fn else {},
                         "featex": featex_fn.state_dict() if featex_fn else {},
                         "optimizer": opt.state_dict(), "epoch": epoch, "history": history}
                torch.save(state, os.path.join(d, STATE_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)  # a barrier: every worker reports every epoch


def restore(state: dict, model: torch.nn.Module, loss_fn: torch.nn.Module | None, featex_fn: torch.nn.Module | None,
            opt: torch.optim.Optimizer) -> int:
    """Load a checkpoint's state into modules already on their device and an optimizer built on
    them (``load_state_dict`` puts the optimizer state on each parameter's device); returns the
    epoch to start from."""
    model.load_state_dict(state["model"])
    if loss_fn is not None:
        loss_fn.load_state_dict(state["loss"])
    if featex_fn is not None and state.get("featex"):
        featex_fn.load_state_dict(state["featex"])
    opt.load_state_dict(state["optimizer"])
    return state["epoch"] + 1


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine annealing to 0 over the run's epochs, in closed form: a run resumed with more epochs
    anneals over the new total (a resumed torch scheduler would keep the old period and climb again)."""
    return 0.5 * base * (1 + math.cos(math.pi * epoch / epochs))


def bundle_info(cfg: TrainConfig, labels: LabelMap, training: dict | None = None) -> bundle.BundleInfo:
    return bundle.BundleInfo(method=cfg.method, model=cfg.model, autoencoder=cfg.autoencoder, labels=labels,
                             n_subclusters=cfg.n_subclusters, sample_rate=cfg.sample_rate,
                             clip_samples=cfg.clip_samples, training=training or {})


def companion_configs(cfg: TrainConfig) -> dict[str, TrainConfig]:
    """The models trained beside a dual-stream model, by their folder inside its bundle: ensemble
    members (other seeds) and the autoencoder. Each has the same data and workers and its own run
    (so it resumes by itself) and bundle."""
    if cfg.method != "scadacos":
        return {}
    solo = {"autoencoder_epochs": 0, "ensemble": 1}
    companions = {f"member-{k}": cfg.model_copy(update={
        "name": f"{cfg.name}-member-{k}", "seed": cfg.seed + k, "bundle": storage.join(cfg.bundle_url, f"member-{k}"),
        **solo}) for k in range(1, cfg.ensemble)}
    if cfg.autoencoder_epochs:
        companions[bundle.AUTOENCODER_COMPANION] = cfg.model_copy(update={
            "name": f"{cfg.name}-autoencoder", "method": "autoencoder", "epochs": cfg.autoencoder_epochs,
            "mixup_alpha": 0.0, "validation": None,
            "bundle": storage.join(cfg.bundle_url, bundle.AUTOENCODER_COMPANION), **solo})
    return companions


def ensemble_weights(cfg: TrainConfig) -> dict:
    """The main model's and its members' weights in the hybrid's sum: one term, their mean."""
    if cfg.ensemble == 1:
        return {}
    return {"weight": 1 / cfg.ensemble, "companion_weights": {f"member-{k}": 1 / cfg.ensemble
                                                              for k in range(1, cfg.ensemble)}}


def label_map(cfg: TrainConfig) -> LabelMap:
    """The auxiliary classes of the training clips (metadata only); checks every clip's sample rate."""
    keys = dataset.clip_keys(cfg.data, split="train", machine=cfg.machines, sample_rate=cfg.sample_rate,
                             options=cfg.storage)
    labels = LabelMap.from_clips(class_key(*k, with_domain=cfg.class_domain) for k in keys)
    if len(labels) < 2:
        raise ValueError(f"{cfg.data}: training needs at least 2 auxiliary classes "
                         f"(machine x section x attributes{' x domain' if cfg.class_domain else ''}), "
                         f"found {labels.classes}")
    return labels


def training_data(cfg: TrainConfig, labels: LabelMap, first_epoch: int = 0, meta: bool = False) -> ray.data.Dataset:
    settings = ReadSettings(options=cfg.storage, num_samples=cfg.clip_samples, sample_rate=cfg.sample_rate,
                            classes=labels.classes, with_domain=cfg.class_domain, block_clips=cfg.block_clips,
                            meta=meta)
    return training_dataset(cfg.data, cfg.machines, settings, cfg.seed, cfg.mix_row_groups, first_epoch,
                            read_tasks=cfg.reads_per_worker * cfg.max_workers)


def _input_in_controller(cfg: TrainConfig, labels: LabelMap, first_epoch: int) -> ray.data.Dataset:
    console.input_progress_bars(on_terminal=False)  # the epoch progress lines say it
    return training_data(cfg, labels, first_epoch)


def run_config(cfg: TrainConfig, callbacks: list | None = None) -> ray.train.RunConfig:
    fs, path = storage.pyarrow_fs(cfg.storage_path, cfg.storage)
    return ray.train.RunConfig(
        name=cfg.name, storage_path=path, storage_filesystem=fs, callbacks=callbacks,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        logging_config=console.train_logging_config(),
    )


def make_trainer(cfg: TrainConfig, labels: LabelMap, callbacks: list | None = None,
                 first_epoch: int = 0) -> ray.train.torch.TorchTrainer:
    """The dataset is handed over as a factory: Ray Train builds it in its controller, so that a
    trainer started inside a Tune trial does not run Ray Data in the trial's small placement group.
    ``first_epoch`` (of a resumed run) continues the input's per-epoch orders."""
    workers = cfg.num_workers if isinstance(cfg.num_workers, int) else "{} to {}".format(*cfg.num_workers)
    print(f"train: {len(labels)} auxiliary classes; {workers} worker(s), gpu={cfg.use_gpu}; "
          f"run '{cfg.name}' in {cfg.storage_path}", flush=True)
    # Ray Train reads it from the environment of the process that starts the run and hands it on
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(cfg.worker_wait_s)
    return ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "classes": labels.classes,
                           # for the progress lines' time left (from the shards' footers)
                           "clips": dataset.count_clips(cfg.data, split="train", machine=cfg.machines,
                                                        options=cfg.storage)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                                     **({"GPU": 1} if cfg.use_gpu else {})},
                                               elastic_resize_monitor_interval_s=cfg.resize_check_s),
        run_config=run_config(cfg, callbacks),
        datasets={"train": lambda: _input_in_controller(cfg, labels, first_epoch)},
        dataset_config=ray.train.DataConfig(execution_options={"train": ingest_options(cfg.input_buffer_mb)}),
    )


def resolved(cfg: TrainConfig) -> TrainConfig:
    """Endpoint and region fixed now, so that every worker uses the driver's."""
    return cfg.model_copy(update={"storage": cfg.storage.resolved()})


def _settings(cfg: TrainConfig) -> dict:
    return cfg.model_dump(mode="json", exclude=RESUMABLE)


def record_settings(cfg: TrainConfig) -> None:
    url = storage.join(cfg.storage_path, cfg.name, SETTINGS_FILE)
    if not storage.exists(url, cfg.storage):
        storage.write_bytes_atomic(url, json.dumps(_settings(cfg), indent=1).encode(), cfg.storage)


def check_settings(cfg: TrainConfig) -> None:
    """A run resumes only with the settings it was started with (epochs aside): resuming with another
    lr, model or data would silently give a model trained half one way and half another."""
    url = storage.join(cfg.storage_path, cfg.name, SETTINGS_FILE)
    if not storage.exists(url, cfg.storage):
        return
    refuse_changes(comparable(json.loads(storage.read_bytes(url, cfg.storage))), _settings(cfg),
                   f"run '{cfg.name}' in {cfg.storage_path}")


def comparable(recorded: dict) -> dict:
    """Recorded settings as today's would record them: with the settings added since (at the values
    older runs used) and without those that have become resumable since."""
    return {**LEGACY_SETTINGS, **{k: v for k, v in recorded.items() if k not in RESUMABLE}}


def epochs_done(cfg: TrainConfig) -> int:
    """Epochs of the run's latest complete checkpoint (0 for a new run), read before any trainer starts."""
    fs, run = storage.fsspec_fs(storage.join(cfg.storage_path, cfg.name), cfg.storage)
    states = sorted(fs.glob(f"{run}/checkpoint_*/{STATE_FILE}"))  # checkpoint names sort by time
    if not states:
        return 0
    with fs.open(states[-1], "rb") as f:
        return bundle.load_weights(f.read(), states[-1])["epoch"] + 1


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) the model, then its companions (ensemble members, the autoencoder; the frame
    statistics need no training), and write the model bundle last; returns a summary with per-epoch
    metrics."""
    cfg = resolved(cfg)
    companions = companion_configs(cfg)
    for run in (cfg, *companions.values()):  # first: a refused resume reads no data
        check_settings(run)
        done = epochs_done(run)
        if done > run.epochs:
            raise ValueError(f"run '{run.name}' in {run.storage_path} has {done} epochs done, more than "
                             f"epochs={run.epochs}: ask for at least {done}, or give this run a new name")
    labels = label_map(cfg)
    summary, info, weights = _fit(cfg, labels)
    summary["companions"] = {}
    for folder, companion in companions.items():  # their bundles first: the main bundle, written last, names them
        print(f"train: companion '{folder}', {companion.method}, {companion.epochs} epochs (run '{companion.name}')",
              flush=True)
        summary["companions"][folder], c_info, c_weights = _fit(companion, labels)
        bundle.save_bundle(companion.bundle_url, c_info, c_weights, cfg.storage)
    untrained = {bundle.FRAMESTATS_COMPANION: ("framestats", cfg.framestats),
                 bundle.TONAL_COMPANION: ("tonal", cfg.tonal)} if cfg.method == "scadacos" else {}
    for folder, (method, settings) in untrained.items():  # companions with no weights: nothing to train
        if settings is not None:
            url = storage.join(cfg.bundle_url, folder)
            bundle.save_untrained(url, info.model_copy(update={"method": method, method: settings, "training": {}}),
                                  cfg.storage)
            summary["companions"][folder] = {"bundle": url}
    bundle.save_bundle(cfg.bundle_url, info.model_copy(update={"companions": list(summary["companions"]),
                                                               **ensemble_weights(cfg)}), weights, cfg.storage)
    return summary


def _fit(cfg: TrainConfig, labels: LabelMap) -> tuple[dict, bundle.BundleInfo, bytes]:
    """One Ray Train run (or its resume): its summary, bundle description and weights."""
    done = epochs_done(cfg)
    result = make_trainer(cfg, labels, first_epoch=done).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run '{cfg.name}' finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = bundle.load_weights(open(os.path.join(d, STATE_FILE), "rb").read(), d)
    history = state.get("history") or sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    training = {"data": cfg.data, "run": cfg.name, "epochs": state["epoch"] + 1, "final": result.metrics,
                "history": history,  # every epoch's metrics (workers included: an elastic run's size)
                "config": cfg.model_dump(mode="json", exclude={"storage"})}
    info = bundle_info(cfg, labels, training)
    model, loss_fn = bundle.build(info)
    model.load_state_dict(state["model"])
    if loss_fn is not None:
        loss_fn.load_state_dict(state["loss"])
    return ({"bundle": cfg.bundle_url, "metrics": result.metrics, "history": history,
             "checkpoint": result.checkpoint.path, "classes": len(labels)}, info, bundle.weights_bytes(model, loss_fn))


def summary_text(summary: dict) -> str:
    m = summary["metrics"]
    text = (f"trained {m['epoch'] + 1} epochs: loss {m['loss']:.4f}, aux accuracy {m['accuracy']:.3f}; "
            f"model bundle at {summary['bundle']}\n" + json.dumps(m, indent=None))
    for folder, c in summary.get("companions", {}).items():
        trained = (f"{c['metrics']['epoch'] + 1} epochs, loss {c['metrics']['loss']:.4f}" if "metrics" in c
                   else "nothing to train")
        text += f"\ncompanion '{folder}': {trained}; bundle at {c['bundle']}"
    return text
