"""Cluster definitions: every manifest parses, and every entry point and config it names exists and validates."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asd_ray.cli import build_parser
from asd_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MANIFESTS = sorted(INFRA.rglob("*.yaml"))
SECRET_LIKE = re.compile(r"(AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|secret_key\s*[:=])", re.IGNORECASE)


def _entrypoint_config(command: str):
    """`python jobs/X.py --config F k=v ...` -> the job's config model, validated."""
    args = shlex.split(command)
    assert args[0] == "python" and args[1].startswith("jobs/"), command
    script = ROOT / args[1]
    assert script.exists(), f"{command}: {args[1]} does not exist"
    job = script.stem
    assert f'main(["{job}"' in script.read_text(), f"{args[1]} does not run `asd-ray {job}`"
    parsed = build_parser().parse_args([job, *args[2:]])
    assert parsed.config, f"{command}: no --config"
    assert (ROOT / parsed.config).exists(), f"{command}: {parsed.config} does not exist"
    model = {"train": "asd_ray.train:TrainConfig", "tune": "asd_ray.sweep:SweepConfig",
             "score": "asd_ray.score:ScoreConfig", "synth": "asd_ray.synth.generate:SynthConfig"}[job]
    module, name = model.split(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    return load_config(cls, ROOT / parsed.config, parsed.overrides)


def test_there_is_something_to_check():
    names = {p.relative_to(INFRA).as_posix() for p in MANIFESTS}
    assert {"kuberay/raycluster.yaml", "kuberay/rayjob-train.yaml", "kuberay/rayjob-tune.yaml",
            "kuberay/rayjob-score.yaml", "launcher/aws-gpu.yaml"} <= names
    assert (INFRA / "docker" / "Dockerfile").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_manifest_parses_and_holds_no_secrets(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)
    assert not SECRET_LIKE.search(path.read_text())


@pytest.mark.parametrize("path", sorted((INFRA / "kuberay").glob("*.yaml")), ids=lambda p: p.name)
def test_kuberay_manifests(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["rayVersion"] == "2.60.0"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert container["image"].split("/")[-1].startswith("asd-ray:")
    assert any("nvidia.com/gpu" in c["resources"]["limits"]
               for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
    if doc["kind"] == "RayJob":
        cfg = _entrypoint_config(doc["spec"]["entrypoint"])
        assert cfg is not None


def test_cluster_launcher_config():
    doc = yaml.safe_load((INFRA / "launcher" / "aws-gpu.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "docker",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in doc, key
    assert doc["head_node_type"] in doc["available_node_types"]
    assert doc["docker"]["image"].split("/")[-1].startswith("asd-ray:")
    for command in re.findall(r"-- (python jobs/\S+ --config \S+)", (INFRA / "launcher" / "aws-gpu.yaml").read_text()):
        _entrypoint_config(command)


@pytest.mark.parametrize("path", sorted((INFRA / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_job_configs_validate(path):
    job = path.name.split("-")[0]
    cfg = _entrypoint_config(f"python jobs/{job}.py --config {path.relative_to(ROOT)}")
    assert "s3://" in yaml.safe_dump(cfg.model_dump(mode="json"))


def test_dockerfile_copies_what_exists():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:2\.60\.0-\S+$", text, re.M)
    for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_gpu_check_names_its_steps_and_runs_only_those_asked(tmp_path):
    """``benchmarks/gpu_check.sh`` runs only on a device lent now and then: its dry run (any machine)
    goes through the whole script under ``set -u`` (an unset variable fails it) and prints each step."""
    def dry(**env) -> list[str]:
        run = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path)], capture_output=True,
                             text=True, env={**os.environ, "GPU_CHECK_DRY": "1", "PYTHON": sys.executable, **env})
        assert run.returncode == 0, run.stderr
        return [line for line in run.stdout.splitlines() if line.startswith("gpu_check: would run ")]

    steps = {line.split()[3]: line.split(": ", 2)[2] for line in dry()}
    assert list(steps) == ["gpu-tests", "train", "model-bf16", "model-bf16-compile", "score"]
    for command in steps.values():
        for word in command.split():
            if word.endswith(".py"):
                assert (ROOT / word).exists(), f"{command}: {word} does not exist"
    assert [line.split()[3] for line in dry(GPU_CHECK_ONLY="score train-input")] == ["score", "train-input"]


@pytest.mark.parametrize("folder", ["benchmarks", "jobs"])
def test_benchmarks_and_jobs_import_only_what_asd_ray_has(folder):
    """Scripts that no other test runs still name only modules and names that exist (a function
    moved to another module breaks a benchmark only when someone next runs it)."""
    import ast
    import importlib.util

    missing = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asd_ray"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                            and not (hasattr(module, "__path__")  # a package's submodule
                                     and importlib.util.find_spec(f"{node.module}.{a.name}"))]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("asd_ray") and importlib.util.find_spec(a.name) is None:
                        missing.append(f"{path.name}: {a.name}")
    assert not missing
