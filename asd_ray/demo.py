"""``asd-ray demo``: the whole product on local defaults, no cluster and no cloud needed:
synthesize a small dataset, train, fit references, score the test set, evaluate, write the report.

Each stage is the real job with its own config (``synth.*``, ``train.*``, ``score.*`` overrides);
paths left empty are placed under ``workdir``. Re-running resumes training (same run name) and
rewrites the outputs.
"""

from __future__ import annotations

import time

from pydantic import Field, model_validator

from asd_ray import storage, tracking
from asd_ray.config import JobConfig, deep_merge
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.score import ScoreConfig, run_score
from asd_ray.synth.generate import Counts, SynthConfig, synthesize
from asd_ray.train import TrainConfig, train


def _synth() -> SynthConfig:
    return SynthConfig(out="", clip_seconds=5.0,
                       counts=Counts(train_source=150, train_target=10, test_normal=25, test_anomaly=25))


def _train() -> TrainConfig:
    return TrainConfig(data="", storage_path="", name="demo", epochs=6, batch_size=32, clip_seconds=5.0)


def _score() -> ScoreConfig:
    return ScoreConfig(bundle="", data="", out="", batch_size=32)


class DemoConfig(JobConfig):
    workdir: str = Field("runs/demo", description="URL under which data, runs, scores and the report go")
    synth: SynthConfig = Field(default_factory=_synth)
    train: TrainConfig = Field(default_factory=_train)
    score: ScoreConfig = Field(default_factory=_score)

    @model_validator(mode="before")
    @classmethod
    def _on_demo_defaults(cls, data):
        """Overrides such as ``train.epochs=2`` change the demo's stage settings, not replace them."""
        if isinstance(data, dict):
            data = dict(data)
            for key, factory in (("synth", _synth), ("train", _train), ("score", _score)):
                if isinstance(data.get(key), dict):
                    data[key] = deep_merge(factory().model_dump(mode="json"), data[key])
        return data

    def resolved(self) -> "DemoConfig":
        data = self.synth.out or storage.join(self.workdir, "data")
        runs = self.train.storage_path or storage.join(self.workdir, "runs")
        tr = self.train.model_copy(update={"data": self.train.data or data, "storage_path": runs})
        sc = self.score.model_copy(update={"bundle": self.score.bundle or tr.bundle_url,
                                           "data": self.score.data or data,
                                           "out": self.score.out or storage.join(self.workdir, "scores")})
        return self.model_copy(update={"synth": self.synth.model_copy(update={"out": data}), "train": tr, "score": sc})


def run_demo(cfg: DemoConfig) -> dict:
    cfg = cfg.resolved()
    t0 = time.time()
    print(f"[1/4] synthesizing {len(cfg.synth.machines)} machine types into {cfg.synth.out}", flush=True)
    synth = synthesize(cfg.synth)
    print(f"      {synth['clips']} clips in {synth['seconds']} s", flush=True)
    print(f"[2/4] training for {cfg.train.epochs} epochs (run '{cfg.train.name}' in {cfg.train.storage_path})",
          flush=True)
    trained = train(cfg.train)
    print(f"[3/4] fitting references and scoring the test set into {cfg.score.out}", flush=True)
    scored = run_score(cfg.score)
    print("[4/4] evaluating", flush=True)
    evaluation = EvaluateConfig(scores=cfg.score.out, storage=cfg.score.storage,
                                **cfg.score.model_dump(include={"tracking", "tracking_uri", "experiment"}))
    result = run_evaluate(evaluation)
    tracking.log_training(cfg.train, trained)
    tracking.log_scoring(cfg.score, scored)
    tracking.log_evaluation(evaluation, result)
    return {"synth": synth, "train": trained, "score": scored, "evaluation": result, "seconds": time.time() - t0}
