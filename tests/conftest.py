"""Shared fixtures: a real S3 API server on 127.0.0.1 (moto server mode) and one local Ray.

Fake credentials and the endpoint go into the environment before Ray starts, so that Ray's
worker processes inherit them and reach the same server, as they would reach real S3.
"""

from __future__ import annotations

import logging
import os
import uuid

import pytest

for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(var, None)
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
})


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log lines


@pytest.fixture(scope="session")
def s3_endpoint():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # the GPU machine's carry holds no S3 server: only the gpu tests (local folders) run there
        yield None
        return

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture
def bucket(s3_endpoint) -> str:
    """A fresh, empty bucket; returns its ``s3://`` URL."""
    import boto3

    name = f"asd-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    import ray

    # Many tiny Train runs, one after another: Ray Train's controller looks at its workers every 0.5 s
    # instead of 2 s (it sees a run end sooner), and Ray keeps up to 8 idle workers (default: one per
    # CPU) so that the next run's tasks find a process with torch imported. Measured: a one-epoch
    # tiny run 20 s -> 15 s on a 2-core machine.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"  # inherited by the local raylet's workers
    # the dashboard serves the state API that Ray Train's placement-group cleaner needs (see asd_ray/cluster.py)
    ray.init(num_cpus=2, include_dashboard=True, object_store_memory=400 * 1024**2,
             runtime_env={"env_vars": {"AWS_ENDPOINT_URL": s3_endpoint} if s3_endpoint else {}},
             _system_config={"num_workers_soft_limit": 8})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_synth_config():
    """A small synthetic dataset config: 2 s clips, a few clips per group."""
    from asd_ray.synth.generate import Counts, SynthConfig

    def make(out: str, **kw) -> SynthConfig:
        fields = dict(out=out, clip_seconds=2.0, machines=["pump", "fan"],
                      counts=Counts(train_source=20, train_target=4, test_normal=4, test_anomaly=4))
        fields.update(kw)
        return SynthConfig(**fields)

    return make


class MlflowServer:
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend), its own process group."""

    def __init__(self):
        import socket
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        self.home = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(self.home / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                      str(port), "--workers", "1", "--backend-store-uri",
                                      f"sqlite:///{self.home}/mlflow.db", "--default-artifact-root",
                                      f"file://{self.home}/artifacts"],
                                     stdout=self.log, stderr=self.log, start_new_session=True,
                                     # no job runner: its ~8 worker processes took most of the start
                                     # and, idle, 14% of a core; the tests run no server-side jobs
                                     env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def wait(self, seconds: float = 90) -> str:
        import time
        import urllib.request

        deadline = time.time() + seconds
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self.url
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(self.home / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        """Killed, not asked to stop (a graceful stop took 4-6 s): the tests that used it are done."""
        import shutil
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


_mlflow: MlflowServer | None = None


@pytest.hookimpl(trylast=True)  # after `-m` has deselected what will not run
def pytest_collection_modifyitems(items):
    """The cluster's tests first: they start Ray nodes of their own, and the session's local Ray,
    once started, keeps about 5% of a 2-core machine busy while idle (its idle workers, dashboard
    and raylet), which the cluster's node starts and jobs would share.

    The MLflow server takes about 11 s to start on a 2-core machine: started as soon as a test
    that needs it is collected, it comes up while the tests before that one run."""
    global _mlflow
    items.sort(key=lambda item: item.path.name != "test_jobs_on_cluster.py")  # stable: otherwise in order
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in items):
        _mlflow = MlflowServer()


def pytest_unconfigure(config):
    if _mlflow is not None and _mlflow.proc.poll() is None:  # started, but its test did not run
        _mlflow.stop()


@pytest.fixture(scope="session")
def mlflow_server():
    """The server's URL."""
    global _mlflow
    server = _mlflow = _mlflow or MlflowServer()
    yield server.wait()
    server.stop()
