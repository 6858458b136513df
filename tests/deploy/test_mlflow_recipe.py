"""deploy/mlflow's server settings, run for real: `mlflow server` configured the way
docker-compose.yml configures it (store and artifact destination from MLFLOW_BACKEND_STORE_URI /
MLFLOW_ARTIFACTS_DESTINATION, proxied artifacts, default allowed hosts), against the test suite's
moto S3 server. PostgreSQL is replaced by sqlite (no database server here); the S3 side is real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "mlflow" / "docker-compose.yml"
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def test_compose_server_settings_store_artifacts_in_s3(moto_server, s3_bucket, s3_storage_options, tmp_path,
                                                      migrated_mlflow_db):
    pytest.importorskip("boto3")
    import mlflow
    import s3fs

    svc = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]
    port = _free_port()
    # The compose command, bound to loopback on a free port, one worker (answers /health in 9-25 s
    # instead of 30-50 s with the default 4 workers).
    args = [a for a in svc["command"][2:] if not a.startswith(("--host", "--port", "--workers"))]
    cmd = [MLFLOW, "server", *args, "--host=127.0.0.1", f"--port={port}", "--workers=1"]
    env = {
        **os.environ,  # moto endpoint + fake AWS credentials from the session fixture
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{s3_bucket}/mlflow-artifacts",
        "MLFLOW_SERVER_ALLOWED_HOSTS": "",  # the recipe's default: localhost + private IPs
        # the job-execution runner (a huey consumer: one more process importing MLflow) serves
        # MLflow's GenAI jobs, which the recipe's users do not run: not what this test checks
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    # the store created and migrated once per session (~50 migrations, 1.6 s; more under load)
    shutil.copyfile(migrated_mlflow_db, tmp_path / "mlflow.db")
    assert set(svc["environment"]) >= {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        client = mlflow.MlflowClient(tracking_uri=url)
        exp_id = client.create_experiment("deploy-recipe")
        run = client.create_run(exp_id)
        (tmp_path / "note.txt").write_text("hello from the recipe test\n")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        client.log_metric(run.info.run_id, "x", 1.0)
        client.set_terminated(run.info.run_id)
        # Proxied artifacts: the run's artifact URI is the server's, the bytes are in the bucket.
        assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        fs = s3fs.S3FileSystem(**s3_storage_options)
        fs.invalidate_cache()
        keys = fs.find(f"{s3_bucket}/mlflow-artifacts")
        assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
