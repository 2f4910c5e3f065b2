"""``asd-ray demo``: the whole product on local defaults, no cluster and no cloud needed."""

from __future__ import annotations

from pydantic import Field

from asd_ray import storage
from asd_ray.config import JobConfig
from asd_ray.synth.generate import Counts, SynthConfig, synthesize


def _demo_synth() -> SynthConfig:
    return SynthConfig(out="", counts=Counts(train_source=200, train_target=10, test_normal=30, test_anomaly=30))


class DemoConfig(JobConfig):
    workdir: str = Field("runs/demo", description="URL under which data, model and reports are written")
    synth: SynthConfig = Field(default_factory=_demo_synth)


def run_demo(cfg: DemoConfig) -> dict:
    synth = cfg.synth.model_copy(update={"out": cfg.synth.out or storage.join(cfg.workdir, "data")})
    print(f"[1/1] synthesizing {len(synth.machines)} machine types into {synth.out}")
    return synthesize(synth)
