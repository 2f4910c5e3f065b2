"""Every GPU path of the product, on CUDA: training (bf16 autocast, the loss and FeatEx heads and
validation on the device) for one epoch and resumed with more, through a killed worker; scoring
with GPU actors against the same scores on the CPU; the autoencoder companion trained and scored on
the GPU; a Tune sweep whose trial trains on the GPU. Local folders only (no S3), so that the GPU
machine needs no S3 server. Skipped without CUDA; ``benchmarks/gpu_check.sh`` runs them
(``python -m pytest -m gpu``).

``ASD_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead (``use_gpu=false``): a check of the tests
themselves where no GPU is lent.
"""

import glob
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from asd_ray.train import TrainConfig, train
from tiny import TINY_MODEL, tiny_dataset

ON_CPU = os.environ.get("ASD_GPU_TESTS_ON_CPU") == "1"
GPU = torch.cuda.is_available() and not ON_CPU
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def gpu_data(ray_local, tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("gpu") / "data"), ["fan", "pump"], 24, test=6)


def _cfg(data: str, runs: str, name: str, **kw) -> TrainConfig:
    fields = dict(data=data, storage_path=runs, name=name, num_workers=1, use_gpu=GPU, cpus_per_worker=1,
                  epochs=1, batch_size=8, clip_seconds=1.0, n_subclusters=4, model=TINY_MODEL, featex=0.5,
                  autoencoder_epochs=0, validation={"ref_clips": 4, "test_clips": 4})
    fields.update(kw)
    return TrainConfig(**fields)


class _KillAWorkerAtTheNextCheckpoint(threading.Thread):
    """Kills the run's Train worker (SIGKILL, as an out-of-memory kill would) once, when the run
    has written a checkpoint more than it had at the start."""

    def __init__(self, run_dir: str):
        super().__init__(daemon=True)
        self.run_dir, self.killed, self.running = run_dir, None, True
        self.before = len(glob.glob(f"{run_dir}/checkpoint_*"))

    def run(self) -> None:
        from ray.util.state import list_actors

        while self.running and self.killed is None:
            if len(glob.glob(f"{self.run_dir}/checkpoint_*")) > self.before:
                workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                                      detail=True)
                if workers:
                    self.killed = workers[0]["pid"]
                    os.kill(self.killed, signal.SIGKILL)
            time.sleep(0.2)


def test_training_on_the_gpu_resumes_with_more_epochs_and_after_a_killed_worker(gpu_data, tmp_path):
    runs = str(tmp_path / "runs")
    first = train(_cfg(gpu_data, runs, "gpu-run", epochs=1))
    assert [m["epoch"] for m in first["history"]] == [0]
    assert 0 <= first["history"][0]["official_score"] <= 1  # validation on the device, every epoch

    killer = _KillAWorkerAtTheNextCheckpoint(os.path.join(runs, "gpu-run"))
    killer.start()
    resumed = train(_cfg(gpu_data, runs, "gpu-run", epochs=4))  # the optimizer state restored on the GPU
    killer.running = False
    assert killer.killed, "no worker was killed"
    assert [m["epoch"] for m in resumed["history"]] == [0, 1, 2, 3]
    assert 1 <= resumed["metrics"]["start_epoch"] <= 3  # after the kill: from a checkpoint, not from scratch
    assert all(np.isfinite(m["loss"]) for m in resumed["history"])


@pytest.fixture(scope="module")
def gpu_bundle(gpu_data, tmp_path_factory):
    """A dual-stream model and its companion autoencoder, both trained on the GPU."""
    runs = str(tmp_path_factory.mktemp("gpu-runs"))
    return train(_cfg(gpu_data, runs, "gpu-hybrid", epochs=2, autoencoder_epochs=2, validation=None))["bundle"]


def test_scoring_with_gpu_actors_gives_the_cpus_scores(gpu_data, gpu_bundle, tmp_path):
    """GPU actors (bf16 autocast) score every clip once, the hybrid score (the autoencoder on the
    GPU too) close to the same job's on the CPU in float32."""
    from asd_ray.score import ScoreConfig, read_scores, run_score

    scores = {}
    for device, use_gpu in (("gpu", GPU), ("cpu", False)):
        out = str(tmp_path / device)
        run_score(ScoreConfig(bundle=gpu_bundle, data=gpu_data, out=out, use_gpu=use_gpu, batch_size=8,
                              references_to=os.path.join(out, "references.npz")))
        scores[device] = read_scores(out)
    gpu, cpu = scores["gpu"], scores["cpu"]
    assert gpu.num_rows == cpu.num_rows == 2 * 2 * (6 + 6)
    assert gpu["clip_id"].to_pylist() == cpu["clip_id"].to_pylist()
    a, b = gpu["score"].to_numpy(), cpu["score"].to_numpy()
    assert np.isfinite(a).all() and np.corrcoef(a, b)[0, 1] > 0.95, (a, b)


def test_the_autoencoder_trains_and_scores_on_the_gpu(gpu_data, tmp_path):
    from asd_ray.score import ScoreConfig, read_scores, run_score

    result = train(_cfg(gpu_data, str(tmp_path / "runs"), "gpu-ae", method="autoencoder", epochs=2,
                        validation=None, mixup_alpha=0.0))
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    for mode in ("mse", "mahalanobis"):
        out = str(tmp_path / mode)
        run_score(ScoreConfig(bundle=result["bundle"], data=gpu_data, out=out, use_gpu=GPU, batch_size=8,
                              autoencoder_score=mode, references_to=os.path.join(out, "references.npz")))
        assert np.isfinite(read_scores(out)["score"].to_numpy()).all()


def test_a_sweep_trains_its_trial_on_the_gpu(gpu_data, tmp_path):
    from asd_ray.sweep import SweepConfig, run_sweep

    cfg = SweepConfig(name="gpu-sweep", storage_path=str(tmp_path / "tune"), num_samples=1, max_concurrent=1,
                      asha=None, space={"lr": {"choice": [1e-3]}},
                      train=_cfg(gpu_data, str(tmp_path / "runs"), "unused", epochs=2))
    result = run_sweep(cfg)
    assert result["errors"] == 0 and list(result["trials"]["epochs"]) == [2]
