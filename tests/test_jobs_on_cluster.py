"""Jobs submitted to a running Ray cluster, as README says users run them.

A real head (`ray start --head` on 127.0.0.1, token authentication on as Ray 2.60 turns it on when
a token exists) and `ray job submit --working-dir . -- python jobs/<job>.py --config
infra/configs/<job>-s3.yaml key=value ...`, each job reading and writing the moto S3 server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import s3fs

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
TINY_MODEL = ("{emb_dim: 16, n_fft: 256, hop_length: 128, fft_channels: [4, 8, 8], spec_channels: [4, 8], "
              "freq_width: 8, time_width: 8}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port")


class LocalCluster:
    """A Ray cluster of real nodes on this machine, each its own ``ray start --block`` process
    group (raylet, object store, workers): a head without CPUs for work, and worker nodes that a
    test can lose (SIGKILL to the whole node) and add. Every port is picked free, so that it does
    not meet the session's local Ray. Token authentication is on, as Ray 2.60 turns it on when a
    token exists (``ray get-auth-token --generate`` into this cluster's own ``$HOME``)."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env, self.nodes = home, env, {}
        # a temp dir of its own (short: socket paths are limited): `ray start --head` records its
        # address in <temp dir>/ray_current_cluster, and in the default one it would replace the
        # session's local Ray there, which Ray Train's placement-group cleaner looks up
        self.temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        self.token = (home / ".ray" / "auth_token").read_text().strip()
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self._start("head", ["--head", "--num-cpus=0", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={_free_port()}"])
        self._wait(lambda: self._get("/api/version") is not None)

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.home / f"{name}.log", "w")
        ports = [f"--{p}={_free_port()}" for p in NODE_PORTS]
        proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                 f"--temp-dir={self.temp_dir}", "--object-store-memory=150000000", *ports, *args],
                                env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[name] = (proc, log)

    def _get(self, path: str):
        request = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read() or "null")
        except OSError:
            return None

    def _wait(self, ready, seconds: float = 120) -> None:
        deadline = time.time() + seconds
        while not ready():
            for name, (proc, _) in self.nodes.items():
                assert proc.poll() is None, f"{name}: " + (self.home / f"{name}.log").read_text()[-3000:]
            assert time.time() < deadline, "the cluster did not come up"
            time.sleep(0.5)

    def _state(self, kind: str) -> list[dict]:
        return ((self._get(f"/api/v0/{kind}?limit=1000&detail=1") or {}).get("data", {})
                .get("result", {}).get("result", []))

    def alive_workers(self) -> int:
        return sum(n["state"] == "ALIVE" and not n["is_head_node"] for n in self._state("nodes"))

    def nodes_of_actors(self, class_part: str) -> set[str]:
        """The names of the worker nodes where live actors of a class run."""
        names = {n["node_id"]: k.removeprefix("node-") for n in self._state("nodes")
                 for k in n.get("resources_total", {}) if k.startswith("node-")}
        return {names[a["node_id"]] for a in self._state("actors")
                if a["state"] == "ALIVE" and class_part in a["class_name"] and a.get("node_id") in names}

    def add_worker(self, name: str, cpus: int = 1) -> None:
        expected = self.alive_workers() + 1
        self._start(name, [f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={cpus}",
                           f"--resources={json.dumps({f'node-{name}': 1})}"],
                    env={**self.env, "RAY_AUTH_MODE": "token"})  # a joining node needs it said (Ray 2.60)
        self._wait(lambda: self.alive_workers() >= expected)

    def lose(self, name: str) -> None:
        """The node is gone at once: its raylet, object store and every worker process."""
        proc, log = self.nodes.pop(name)
        try:  # the node's processes start sessions of their own: kill its whole process tree
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()

    def job_status(self, job_id: str) -> str:
        return (self._get(f"/api/jobs/{job_id}") or {}).get("status", "")

    def job_logs(self, job_id: str) -> str:
        return (self._get(f"/api/jobs/{job_id}/logs") or {}).get("logs", "")

    def shutdown(self) -> None:
        for name in list(self.nodes)[::-1]:
            with contextlib.suppress(Exception):  # every node goes, whatever one of them does
                self.lose(name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory):
    """A head and two 1-CPU worker nodes. The nodes' environment is a cluster node's: the package's
    Python first on PATH (what ``python`` in a job's entrypoint runs), the S3 endpoint set. Yields
    the cluster and the environment of a user's shell (``RAY_AUTH_MODE=token``, the token in
    ``~/.ray/auth_token``)."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               AWS_ENDPOINT_URL=s3_endpoint)
    nodes = LocalCluster(home, env)
    try:
        with pytest.raises(urllib.error.HTTPError, match="401"):  # the head refuses a request without the token
            urllib.request.urlopen(f"{nodes.address}/api/version", timeout=5)
        for i in range(2):
            nodes.add_worker(f"worker-{i}")
        yield nodes, {**env, "RAY_AUTH_MODE": "token"}
    finally:
        nodes.shutdown()


def submit(address: str, env: dict, job_id: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess:
    """README's command: ``ray job submit --address ... --working-dir . -- python jobs/...``."""
    return subprocess.run([RAY, "job", "submit", "--address", address, "--submission-id", job_id,
                           *([] if wait else ["--no-wait"]), "--working-dir", ".", "--", "python", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=not wait)


def job(address: str, env: dict, what: str, job_id: str) -> str:
    return subprocess.run([RAY, "job", what, "--address", address, job_id], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout


SCORE = ["actors=2", "cpus_per_actor=0.5", "use_gpu=false", "batch_size=2"]


@pytest.fixture(scope="module")
def submitted(cluster, s3_endpoint):
    """The synth, train and score jobs submitted one after the other, on a bucket of this module's;
    yields where each wrote (the score job's output is the undisturbed run of the node-loss test)."""
    import boto3

    nodes, env = cluster
    bucket = "s3://asd-cluster-jobs"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket[5:])
    paths = {"data": f"{bucket}/datasets/dcase-synth", "runs": f"{bucket}/runs",
             "scores": f"{bucket}/scores/dual-stream-v1", "bucket": bucket}
    steps = {
        "synth": ["jobs/synth.py", "--config", "infra/configs/synth-s3.yaml", f"out={paths['data']}",
                  "clip_seconds=1", "machines=[fan,pump]",
                  "counts={train_source: 12, train_target: 4, test_normal: 20, test_anomaly: 20}"],
        "train": ["jobs/train.py", "--config", "infra/configs/train-s3.yaml", f"data={paths['data']}",
                  f"storage_path={paths['runs']}", "num_workers=1", "use_gpu=false", "cpus_per_worker=1", "epochs=1",
                  "batch_size=8", "clip_seconds=1", "n_subclusters=2", "validation=null", "autoencoder_epochs=0",
                  f"model={TINY_MODEL}"],
        "score": ["jobs/score.py", "--config", "infra/configs/score-s3.yaml",
                  f"bundle={paths['runs']}/dual-stream-v1/model", f"data={paths['data']}", f"out={paths['scores']}",
                  *SCORE],
    }
    statuses = {}
    for name, args in steps.items():
        done = submit(nodes.address, env, f"e2e-{name}", *args)
        assert done.returncode == 0, f"{name}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        statuses[name] = nodes.job_status(f"e2e-{name}")
    return {**paths, "statuses": statuses, "score_args": steps["score"]}


def test_jobs_submitted_to_a_cluster_run_end_to_end_on_s3(cluster, submitted):
    nodes, env = cluster
    done = submit(nodes.address, env, "e2e-evaluate", "jobs/evaluate.py", "--scores", submitted["scores"])
    assert done.returncode == 0, done.stdout[-3000:]
    assert {**submitted["statuses"], "evaluate": nodes.job_status("e2e-evaluate")} == dict.fromkeys(
        ("synth", "train", "score", "evaluate"), "SUCCEEDED")

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
    data, runs, scores = (submitted[k].removeprefix("s3://") for k in ("data", "runs", "scores"))
    assert json.loads(fs.cat(f"{data}/_manifest.json"))
    assert fs.exists(f"{runs}/dual-stream-v1/model/bundle.json")
    manifest = json.loads(fs.cat(f"{scores}/manifest.json"))
    assert manifest["scored"] == 2 * 2 * (20 + 20)  # 2 machines x 2 domains x (normal + anomalous)
    assert fs.exists(f"{scores}/anomaly_score_fan_section_00_test.csv")
    assert fs.exists(f"{scores}/evaluation/report.md")
    logs = job(nodes.address, env, "logs", "e2e-evaluate")
    assert "official score" in logs


def test_a_job_with_a_bad_config_fails_with_its_error_in_the_logs(cluster):
    nodes, env = cluster
    done = submit(nodes.address, env, "bad-config", "jobs/train.py", "--config", "infra/configs/train-s3.yaml",
                  "epochs=-1")
    assert done.returncode != 0
    assert nodes.job_status("bad-config") == "FAILED"
    logs = job(nodes.address, env, "logs", "bad-config")
    assert "epochs" in logs and "greater than" in logs  # pydantic's message, naming the field


def test_scoring_that_loses_a_node_scores_every_clip_once(cluster, submitted):
    """A worker node running a scoring actor is lost mid-job (raylet, object store, workers): Ray
    Data starts the actor again on another node and retries its blocks; the output holds every
    test clip once, with the scores of the undisturbed run (scoring is deterministic)."""
    from asd_ray.score import read_scores

    nodes, env = cluster
    nodes.add_worker("spare")  # where the lost node's actor can go
    out = f"{submitted['bucket']}/scores/lost-a-node"
    submit(nodes.address, env, "lost", *submitted["score_args"], f"out={out}", wait=False)
    deadline, lost = time.time() + 180, None
    while lost is None and time.time() < deadline:  # the scoring pass's actors (the second pass)
        if "score: scoring" in nodes.job_logs("lost"):
            hosts = nodes.nodes_of_actors("Embedder") - {"spare"}
            if hosts:
                time.sleep(1.0)  # some of its batches done
                assert nodes.job_status("lost") == "RUNNING"
                lost = sorted(hosts)[0]
                nodes.lose(lost)
        time.sleep(0.2)
    assert lost, "no scoring actor was seen on a worker node"
    while nodes.job_status("lost") in ("PENDING", "RUNNING") and time.time() < deadline + 300:
        time.sleep(1.0)
    assert nodes.job_status("lost") == "SUCCEEDED", nodes.job_logs("lost")[-3000:]

    before, after = read_scores(submitted["scores"]), read_scores(out)
    assert after.num_rows == 160 and len(set(after["clip_id"].to_pylist())) == 160
    assert after["clip_id"].to_pylist() == before["clip_id"].to_pylist()
    np.testing.assert_allclose(after["score"].to_numpy(), before["score"].to_numpy(), rtol=1e-5)


def test_synth_that_loses_a_node_mid_write_keeps_readers_on_a_whole_dataset(cluster, submitted):
    """A re-run of synth into the same dataset (another seed) loses a worker node while its tasks
    write shards: readers meanwhile see the old dataset whole, the lost tasks run again elsewhere,
    and the job ends with the new dataset whole (every clip once)."""
    from asd_ray import dataset, shards
    from asd_ray.storage import StorageOptions

    nodes, env = cluster
    data = submitted["data"]
    options = StorageOptions(endpoint_url=env["AWS_ENDPOINT_URL"])

    def clip_ids() -> list[str]:
        return sorted(i for u in shards.list_shards(data, options=options)
                      for i in shards.read_shard(u, columns=["clip_id"], options=options)["clip_id"].to_pylist())

    old = shards.list_shards(data, options=options)
    if len(nodes.nodes) < 4:  # head, two workers, the spare: a worker to lose and one to carry on
        nodes.add_worker("spare")
    submit(nodes.address, env, "synth-again", "jobs/synth.py", "--config", "infra/configs/synth-s3.yaml",
           f"out={data}", "clip_seconds=1", "machines=[fan,pump]", "seed=7", "shard_mb=0.2",
           "counts={train_source: 12, train_target: 4, test_normal: 20, test_anomaly: 20}", wait=False)
    deadline, lost = time.time() + 180, None
    while lost is None and time.time() < deadline:
        progress = re.findall(r"synth: (\d+)/(\d+)", nodes.job_logs("synth-again"))
        if progress and 0 < int(progress[-1][0]) < int(progress[-1][1]):
            lost = sorted(n for n in nodes.nodes if n.startswith("worker"))[0]
            nodes.lose(lost)
            assert shards.list_shards(data, options=options) == old  # mid-write: the old dataset, whole
        time.sleep(0.2)
    assert lost, "the synth job was not seen mid-write"
    while nodes.job_status("synth-again") in ("PENDING", "RUNNING") and time.time() < deadline + 300:
        time.sleep(1.0)
    assert nodes.job_status("synth-again") == "SUCCEEDED", nodes.job_logs("synth-again")[-3000:]
    assert not set(shards.list_shards(data, options=options)) & set(old)  # the new generation only
    new = clip_ids()
    assert len(new) == len(set(new)) == dataset.count_clips(data, options=options) == 2 * (12 + 4 + 2 * (20 + 20))
