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
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import s3fs

import yaml

from asd_ray import bundle
from tiny import SMALLEST_MODEL

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
TINY_MODEL = json.dumps(SMALLEST_MODEL)  # a key=value override: YAML's flow style reads JSON


def _free_ports(n: int) -> list[int]:
    """``n`` different free ports: each socket stays bound until all are picked (one port picked and
    released at a time can come back twice: a node once got the same port for two components)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port")


class LocalCluster:
    """A Ray cluster of real nodes on this machine, each its own ``ray start --block`` process
    group (raylet, object store, workers): a head without CPUs for work, and worker nodes that a
    test can lose (SIGKILL to the whole node) and add. Every port is picked free, so that it does
    not meet the session's local Ray. Token authentication is on, as Ray 2.60 turns it on when a
    token exists (``ray get-auth-token --generate`` into this cluster's own ``$HOME``)."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env, self.nodes, self.cpus = home, env, {}, {}
        self.temp_dirs: dict[str, str] = {}
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        self.token = (home / ".ray" / "auth_token").read_text().strip()
        self.gcs_port, self.dashboard_port, client_port = _free_ports(3)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # ready when its raylet is registered, not when the dashboard answers: `ray start` can still
        # fail after that (CI of 2d7dfc0)
        self._start_until_ready("head", ["--head", "--num-cpus=0", f"--port={self.gcs_port}",
                                         "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                                         f"--ray-client-server-port={client_port}"],
                                lambda: any(n["is_head_node"] and n["state"] == "ALIVE" for n in self._state("nodes")))

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Each node its own temp dir, as each machine of a cluster its own disk: nodes sharing one
        would share the runtime environments' files, and one node's clean-up would delete another's
        working directory."""
        log = open(self.home / f"{name}.log", "w")
        # the head's in particular: `ray start --head` records its address in <temp dir>/ray_current_cluster,
        # and in the default one it would replace the session's local Ray there, which Ray Train's
        # placement-group cleaner looks up (short: socket paths are limited)
        temp_dir = tempfile.mkdtemp(prefix="rc-" if name == "head" else "rn-", dir="/tmp")
        self.temp_dirs[name] = temp_dir
        ports = [f"--{p}={port}" for p, port in zip(NODE_PORTS, _free_ports(len(NODE_PORTS)))]
        proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                 f"--temp-dir={temp_dir}", "--object-store-memory=150000000", *ports, *args],
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
            assert time.time() < deadline, "the cluster did not reach the state waited for; nodes: " + "; ".join(
                f"{n['node_id'][:8]} {n['state']} {sorted(n.get('resources_total', {}))}"
                for n in self._state("nodes"))
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
        assert name not in self.nodes and name not in self.temp_dirs, f"a node named {name} was started before"
        self.cpus[name] = cpus
        self._start_until_ready(name, [f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={cpus}",
                                       f"--resources={json.dumps({f'node-{name}': 1})}"],
                                lambda: any(n["state"] == "ALIVE" and f"node-{name}" in n.get("resources_total", {})
                                            for n in self._state("nodes")),
                                env={**self.env, "RAY_AUTH_MODE": "token"})  # a joining node needs it said (Ray 2.60)

    def _start_until_ready(self, name: str, args: list[str], ready, env: dict[str, str] | None = None) -> None:
        """`ray start` gives a raylet 30 s (hard-coded in Ray 2.60's node.py) to register with the
        GCS; on this 2-core machine under load a worker node (CI of a4dca02) and the head (CI of
        2d7dfc0) once took longer and exited: started again, as an autoscaler starts another."""
        for attempt in range(3):
            self._start(name, args, env)
            try:
                self._wait(ready)
                return
            except AssertionError as e:
                if attempt == 2 or not str(e).startswith(f"{name}: ") or "timed out during startup" not in str(e):
                    raise
                self.lose(name)
                shutil.rmtree(self.temp_dirs.pop(name), ignore_errors=True)

    def workers(self) -> list[str]:
        return [n for n in self.nodes if n != "head"]

    def only_workers(self, count: int, cpus: int = 1, prefix: str = "node") -> None:
        """Exactly ``count`` worker nodes of ``cpus`` CPUs each, so that a test that counts CPUs knows
        them all: nodes of another size are lost, nodes of this size kept (a node's start costs
        seconds of this machine's two cores), new ones (``<prefix>-<i>``) added."""
        keep = [n for n in self.workers() if self.cpus[n] == cpus][:count]
        for name in set(self.workers()) - set(keep):
            self.lose(name)
        self._wait(lambda: self.alive_workers() == len(keep))
        for i in range(count - len(keep)):
            self.add_worker(f"{prefix}-{i}", cpus)

    def lose(self, name: str) -> None:
        """The node is gone at once: its raylet, object store and every worker process."""
        proc, log = self.nodes.pop(name)
        try:  # the node's processes start sessions of their own: kill its whole process tree
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        tree += [p for p in psutil.process_iter(["cmdline"])  # and any that left the tree: each names
                 if any(self.temp_dirs[name] in arg for arg in p.info["cmdline"] or [])]  # the node's own temp dir
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
        for temp_dir in self.temp_dirs.values():
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory):
    """A head and two 1-CPU worker nodes. The nodes' environment is a cluster node's: the package's
    Python first on PATH (what ``python`` in a job's entrypoint runs), the S3 endpoint set. Yields
    the cluster and the environment of a user's shell (``RAY_AUTH_MODE=token``, the token in
    ``~/.ray/auth_token``)."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               AWS_ENDPOINT_URL=s3_endpoint,
               # a lost node is declared dead after ~3 s instead of ~15 s (Ray's defaults: 3 s x 5 checks)
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
               # Ray Train's controller looks at its workers every 0.5 s instead of 2 s (conftest.py)
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5")
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


def train_args(data: str, runs: str, name: str, *extra: str) -> list[str]:
    return ["jobs/train.py", "--config", "infra/configs/train-s3.yaml", f"data={data}", f"storage_path={runs}",
            f"name={name}", "use_gpu=false", "cpus_per_worker=1", "batch_size=8", "clip_seconds=1",
            "n_subclusters=2", "validation=null", "autoencoder_epochs=0", "max_failures=3", f"model={TINY_MODEL}",
            *extra]


EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) .* workers (\d+)")
RESUMED_LINE = re.compile(r"resumed from the checkpoint after epoch (\d+), (\d+) worker")


def lose_a_training_node(nodes: LocalCluster, job_id: str, after_epoch: int, deadline: float) -> str:
    """Wait until the run has reported ``after_epoch`` epochs, then lose a node that hosts one of its
    Train workers."""
    while time.time() < deadline:
        epochs = [int(e) for e, _, _ in EPOCH_LINE.findall(nodes.job_logs(job_id))]
        hosts = nodes.nodes_of_actors("RayTrainWorker")
        if epochs and max(epochs) >= after_epoch and hosts:
            assert nodes.job_status(job_id) == "RUNNING"
            lost = sorted(hosts)[0]
            nodes.lose(lost)
            return lost
        time.sleep(0.2)
    raise AssertionError(f"{job_id}: not seen training: {nodes.job_logs(job_id)[-3000:]}")


def training_history(env: dict, run: str) -> list[dict]:
    """Every epoch's metrics as the run's bundle records them."""
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
    info = json.loads(fs.cat(f"{run.removeprefix('s3://')}/model/bundle.json"))
    assert info["training"]["epochs"] == len(info["training"]["history"])
    return info["training"]["history"]


def wait_for(nodes: LocalCluster, job_id: str, deadline: float) -> str:
    while nodes.job_status(job_id) in ("PENDING", "RUNNING") and time.time() < deadline:
        time.sleep(1.0)
    logs = nodes.job_logs(job_id)
    assert nodes.job_status(job_id) == "SUCCEEDED", logs[-4000:]
    return logs


SCORE = ["actors=2", "cpus_per_actor=0.5", "use_gpu=false", "batch_size=2"]


@pytest.fixture(scope="module")
def submitted(cluster, s3_endpoint):
    """The synth, train and score jobs submitted one after the other, on a bucket of this module's;
    yields where each wrote (the score job's output is the undisturbed run of the node-loss test).

    The training job, two workers on the two 1-CPU worker nodes, loses one of them after its second
    epoch; a new node joins (a preempted instance replaced)."""
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
                  f"storage_path={paths['runs']}", "num_workers=2", "use_gpu=false", "cpus_per_worker=1", "epochs=4",
                  "batch_size=8", "clip_seconds=1", "n_subclusters=2", "validation=null", "autoencoder_epochs=0",
                  "max_failures=3", f"model={TINY_MODEL}"],
        "score": ["jobs/score.py", "--config", "infra/configs/score-s3.yaml",
                  f"bundle={paths['runs']}/dual-stream-v1/model", f"data={paths['data']}", f"out={paths['scores']}",
                  *SCORE],
    }
    statuses, lost = {}, None
    for name, args in steps.items():
        if name == "train":
            submit(nodes.address, env, "e2e-train", *args, wait=False)
            deadline = time.time() + 300
            lost = lose_a_training_node(nodes, "e2e-train", 2, deadline)
            nodes.add_worker("worker-2")
            wait_for(nodes, "e2e-train", deadline)
        else:
            done = submit(nodes.address, env, f"e2e-{name}", *args)
            assert done.returncode == 0, f"{name}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        statuses[name] = nodes.job_status(f"e2e-{name}")
    return {**paths, "statuses": statuses, "score_args": steps["score"], "lost_in_training": lost,
            "train_logs": nodes.job_logs("e2e-train")}


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
    # quiet by default: the job's own lines, not Ray's INFO lines (reports, operator tables, plans)
    train_logs = submitted["train_logs"]
    assert len(EPOCH_LINE.findall(train_logs)) >= 4, train_logs[-3000:]
    for noise in ("Reporting training result", "Execution plan", "ListFiles:", "Checkpoint successfully created"):
        assert noise not in train_logs, noise


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
        assert nodes.job_status("lost") in ("PENDING", "RUNNING"), nodes.job_logs("lost")[-3000:]
        if "score: scoring" in nodes.job_logs("lost"):
            hosts = nodes.nodes_of_actors("Embedder")  # any: two nodes are left for their replacement
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
    if len(nodes.nodes) < 4:  # head and three workers: a worker to lose and two to carry on
        nodes.add_worker("spare-2")
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


def test_training_that_loses_a_node_resumes_from_its_last_checkpoint_on_a_new_node(cluster, submitted):
    """The fixture's training job lost a node after its second epoch: it waited for room for two
    workers, went on from its last checkpoint (not from scratch) on the new node, and its bundle
    records every epoch once, each with two workers."""
    assert submitted["lost_in_training"] and submitted["statuses"]["train"] == "SUCCEEDED"
    resumed = [int(e) for e, _ in RESUMED_LINE.findall(submitted["train_logs"])]
    assert resumed and min(resumed) >= 1, submitted["train_logs"][-3000:]
    history = training_history(cluster[1], f"{submitted['runs']}/dual-stream-v1")
    assert [m["epoch"] for m in history] == [0, 1, 2, 3]
    assert [m["workers"] for m in history] == [2, 2, 2, 2]
    assert history[-1]["start_epoch"] == max(resumed)


def test_elastic_training_shrinks_when_a_node_is_lost_and_grows_when_one_joins(cluster, submitted):
    """``num_workers=[1, 2]``: two workers on two 1-CPU nodes; one node is lost and the run carries
    on with one worker; a node joins and the run grows back to two. Growth waits for Ray's resource
    coordinator (it looks at the nodes every 20 s), so the run has epochs to spare and is stopped
    once it has grown; its last checkpoint records every epoch so far once, with its worker count."""
    nodes, env = cluster
    nodes.only_workers(2, prefix="elastic")  # the two 1-CPU nodes the tests before left
    # worker_wait_s: the first restart after the loss asks for two workers (Ray's view of the nodes
    # is stale) and waits this long before it tries with one (README: training)
    submit(nodes.address, env, "train-elastic", *train_args(
        submitted["data"], submitted["runs"], "elastic", "num_workers=[1,2]", "resize_check_s=1", "worker_wait_s=10",
        "epochs=60"), wait=False)
    deadline = time.time() + 420

    def epoch_workers() -> list[int]:
        logs = nodes.job_logs("train-elastic")
        assert time.time() < deadline and nodes.job_status("train-elastic") == "RUNNING", logs[-3000:]
        return [int(w) for _, _, w in EPOCH_LINE.findall(logs)]

    lose_a_training_node(nodes, "train-elastic", 2, deadline)
    while 1 not in epoch_workers():
        time.sleep(0.2)
    nodes.add_worker("elastic-c")

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
    run = f"{submitted['runs'].removeprefix('s3://')}/elastic"

    def last_checkpoints_history() -> list[dict]:
        fs.invalidate_cache()
        newest = max(fs.glob(f"{run}/checkpoint_*/state.pt"))  # names carry the time they were taken
        return bundle.load_weights(fs.cat(newest), "checkpoint")["history"]

    # stopped once a checkpoint taken after the growth exists (an epoch line comes before its checkpoint)
    def grown(workers: list[int]) -> bool:
        return 1 in workers and 2 in workers[workers.index(1):]

    while not grown([m["workers"] for m in last_checkpoints_history()]):
        epoch_workers()  # the run still going, the deadline not passed
        time.sleep(1.0)
    job(nodes.address, env, "stop", "train-elastic")

    # a restart that waited for room waited worker_wait_s, not Ray Train's default 60 s
    assert set(re.findall(r"startup timed out after ([\d.]+) seconds", nodes.job_logs("train-elastic"))) <= {"10.0"}
    history = last_checkpoints_history()
    assert [m["epoch"] for m in history] == list(range(len(history)))  # every epoch once, none lost
    workers = [m["workers"] for m in history]
    shrunk = workers.index(1)
    assert workers[0] == 2 and 2 in workers[shrunk:], workers  # two, then one, then two again


def test_a_sweep_that_loses_a_node_retries_its_trials_from_their_checkpoints(cluster, submitted):
    """Two trials at once on two 2-CPU nodes; the node running one trial's driver (and with it its
    Train controller) is lost after a checkpoint: Tune retries the trial on another node and its
    Train run goes on from its last checkpoint; the sweep finishes with both trials complete.

    Five epochs, the node lost once both trials have printed their second: the lost trial has up to
    three epochs left to run, not a fraction of one (with three epochs, a trial once finished before
    its node went, and nothing was retried)."""
    import pandas as pd

    nodes, env = cluster
    nodes.only_workers(2, cpus=2, prefix="tune")
    sweep = f"{submitted['bucket']}/tune"
    submit(nodes.address, env, "tune-lost", "jobs/tune.py", "name=lost", f"storage_path={sweep}", "num_samples=2",
           "max_concurrent=2", "asha=null", "objective=loss", "max_failures=1", "space={lr: {choice: [0.001, 0.003]}}",
           f"train.data={submitted['data']}", f"train.storage_path={submitted['runs']}", "train.num_workers=1",
           "train.use_gpu=false", "train.cpus_per_worker=1", "train.epochs=5", "train.batch_size=8",
           "train.clip_seconds=1", "train.n_subclusters=2", "train.validation=null", "train.autoencoder_epochs=0",
           f"train.model={TINY_MODEL}", wait=False)
    deadline, lost = time.time() + 300, None
    while lost is None and time.time() < deadline:
        # both trials past a checkpoint: whichever trial's driver is lost has one to go on from
        trained = set(re.findall(r"RayTrainWorker pid=(\d+)[^)]*\)\S* epoch [2-9]/", nodes.job_logs("tune-lost")))
        hosts = nodes.nodes_of_actors("ImplicitFunc")
        if len(trained) >= 2 and hosts:
            assert nodes.job_status("tune-lost") == "RUNNING"
            lost = sorted(hosts)[0]
            nodes.lose(lost)
        time.sleep(0.2)
    assert lost, f"no trial seen training: {nodes.job_logs('tune-lost')[-3000:]}"
    nodes.add_worker("tune-c", cpus=2)
    logs = wait_for(nodes, "tune-lost", deadline + 120)

    resumed = [int(e) for e, _ in RESUMED_LINE.findall(logs)]
    assert "terminated successfully after retrying" in logs  # Tune's word for a trial that failed once
    assert resumed and min(resumed) >= 1, logs[-3000:]  # and it went on from its checkpoint
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
    with fs.open(f"{sweep.removeprefix('s3://')}/lost/results.csv") as f:
        table = pd.read_csv(f)
    assert len(table) == 2 and list(table["epochs"]) == [5, 5] and table["error"].isna().all(), table


class NodeMemory(threading.Thread):
    """Each cluster process's peak own memory (its PSS without the object store's pages, which the
    store's size bounds) and the object store's peak, sampled every second from every node's
    process tree."""

    def __init__(self, nodes: LocalCluster):
        super().__init__(daemon=True)
        self.nodes, self.running, self.own, self.store = nodes, True, {}, 0

    def run(self) -> None:
        while self.running:
            store = 0
            for proc, _ in list(self.nodes.nodes.values()):
                with contextlib.suppress(psutil.Error):
                    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            maps = p.memory_maps()
                            shared = sum(m.pss for m in maps if "plasma" in m.path)
                            own = sum(m.pss for m in maps) - shared
                            store += shared
                            name = " ".join(p.cmdline())[:60]
                            self.own[p.pid] = max(self.own.get(p.pid, (0, name)), (own, name))
            self.store = max(self.store, store)
            time.sleep(1.0)


def write_long_clips(root: Path, test_clips: int, seconds: float, sample_rate: int = 16000) -> int:
    """A dataset of noise clips (one machine type and section, a few training clips per domain, many
    long test clips) written as the clip format; returns its audio bytes."""
    from asd_ray import schema, shards

    rng, written, total = np.random.default_rng(0), [], 0
    n = int(seconds * sample_rate)

    def clip(split: str, i: int, domain: str, label: str) -> dict:
        audio = rng.integers(-3000, 3000, n, dtype=np.int16).tobytes()
        return {"clip_id": f"fan/{split}/{domain}_{label}_{i:05d}", "machine": "fan", "section": "00",
                "domain": domain, "split": split, "label": label, "attributes": {}, "sample_rate": sample_rate,
                "num_samples": n, "audio": audio}

    groups = [("train", [clip("train", i, d, "normal") for d in schema.DOMAINS for i in range(8)])]
    for start in range(0, test_clips, 100):
        groups.append(("test", [clip("test", i, schema.DOMAINS[i % 2], schema.LABELS[i // 2 % 2])
                                for i in range(start, min(start + 100, test_clips))]))
    for k, (split, rows) in enumerate(groups):
        url = shards.shard_url(str(root), split, "fan", f"part-{k:03d}.parquet")
        shards.write_shard(url, schema.clips_table(rows))
        written.append(url)
        total += sum(len(r["audio"]) for r in rows)
    shards.publish(str(root), written, [("train", "fan"), ("test", "fan")])
    return total


def test_scoring_far_more_data_than_its_object_store_budget_finishes_in_bounded_memory(cluster, submitted,
                                                                                       tmp_path_factory):
    """1,000 clips of 10 s (320 MB) through a scoring job whose object-store budget is 64 MB, on
    nodes of 150 MB object stores: it finishes, every clip scored once, with the object stores'
    and each process's peak memory, read from the cluster's processes, bounded."""
    from asd_ray import bundle
    from asd_ray.labels import LabelMap
    from asd_ray.loss import SubClusterAdaCos
    from asd_ray.model import DualStreamNet, ModelConfig

    nodes, env = cluster
    root = tmp_path_factory.mktemp("long-clips")  # a folder every node of this machine reaches
    data_bytes = write_long_clips(root / "data", test_clips=1000, seconds=10)
    model_cfg = ModelConfig.model_validate(yaml.safe_load(TINY_MODEL))
    model, loss = DualStreamNet(model_cfg), SubClusterAdaCos(model_cfg.emb_dim, 2, 2)
    info = bundle.BundleInfo(model=model_cfg, labels=LabelMap(classes=["a", "b"]), n_subclusters=2,
                             sample_rate=16000, clip_samples=160000)
    bundle.save_bundle(str(root / "model"), info, bundle.weights_bytes(model, loss))

    out = f"{submitted['bucket']}/scores/pressure"
    monitor = NodeMemory(nodes)
    monitor.start()
    try:
        submit(nodes.address, env, "pressure", "jobs/score.py", "--config", "infra/configs/score-s3.yaml",
               f"bundle={root / 'model'}", f"data={root / 'data'}", f"out={out}", "actors=2", "cpus_per_actor=0.5",
               "use_gpu=false", "batch_size=16", "buffer_mb=64", wait=False)
        wait_for(nodes, "pressure", time.time() + 400)
    finally:
        monitor.running = False
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
    assert json.loads(fs.cat(f"{out.removeprefix('s3://')}/manifest.json"))["scored"] == 1000
    largest = sorted(monitor.own.values())[::-1][:4]
    print(f"data {data_bytes / 2**20:.0f} MiB; object stores' peak {monitor.store / 2**20:.0f} MiB; largest "
          "processes: " + "; ".join(f"{name} {own / 2**20:.0f} MiB" for own, name in largest))
    # the stores held a part of the data at a time (unbounded, the nodes' 150 MB stores would fill),
    # and no process came near holding it (each: its batches through the model, ~0.5 GB)
    assert monitor.store < data_bytes and largest[0][0] < 2**30, (monitor.store, largest)
