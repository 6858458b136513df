"""`ray start --head` on this machine, `ray job submit` of a small Ray Train job, then stop.

The path users take on a cluster (deploy/README.md): a head node started with the `ray` CLI, a job
submitted through the dashboard's job API with a working directory and a runtime environment that
carries MLFLOW_TRACKING_URI, Train workers on that cluster, the run logged to MLflow by rank 0.

Isolation: `ray stop` stops EVERY Ray process on the machine (including clusters that other tests,
or other people, are using), so this test never calls it. Instead the head runs as
`ray start --head --block` in a session of its own, with its own --temp-dir (so `ray.init()`
elsewhere never discovers it through /tmp/ray/ray_current_cluster) and free ports for everything
that would otherwise take a fixed default (GCS 6379, dashboard 8265, client server 10001,
dashboard agent 52365). Stopping it = SIGTERM to that `ray start --block` process, which shuts down
the processes it started (what `ray stop` would do, for this cluster only); anything of ours still
alive after that (found by session id or by our temp dir in its command line) is SIGKILLed, and
the fixture fails if something survives. It is therefore safe next to other Ray tests.

The jobs are the command users submit, `mvae-dist train --config tiny.yaml ...` on a tiny
embedded data set prepared by the test (one CPU Train worker, MLflow from rank 0; DDP across
workers is covered in tests/train and on the multi-node bed): one stopped with `ray job stop`,
then the same command with `--resume`, which must SUCCEED in the same, then FINISHED, MLflow run.
(A job that only trained 2 steps was a separate test: the resumed job covers it, and each job
costs ~25 s of the suite.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

# two jobs (stopped, then resumed) and the head in one test: ~135 s on two busy xdist workers
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_env() -> dict[str, str]:
    env = os.environ.copy()
    env.pop("RAY_ADDRESS", None)  # never fall through to some other cluster
    env["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60's plain CLI has no auth token otherwise
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `ray`, `python`, `mvae-dist` of this venv
    return env


def _our_processes(session_id: int, temp_dir: str) -> list[int]:
    """PIDs of our head's live processes: in its session, or naming our temp dir on their command
    line (Linux /proc; psutil is not a dependency here)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            in_session = os.getsid(pid) == session_id
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state == b"Z":
            continue  # zombie: already dead, waiting for its parent
        if in_session or temp_dir in cmdline:
            found.append(pid)
    return found


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop only this head: SIGTERM to `ray start --block` (it tears down what it started), then
    SIGKILL whatever of ours is left. Raises if anything survives."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (left := _our_processes(proc.pid, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while (survivors := _our_processes(proc.pid, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not survivors, f"processes of the test's Ray head survived SIGKILL: {survivors}"
    print(f"test Ray head stopped in {time.monotonic() - t0:.1f} s; SIGKILLed leftovers: {left}")


def _wait_for_dashboard(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):  # up, but token authentication is on
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"dashboard at {url} not up after {timeout} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head started with the CLI; yields its job-API address (http://127.0.0.1:PORT)."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed in this environment")
    # Short path: Ray's unix sockets live under the temp dir (107-byte limit on socket paths).
    temp_dir = tempfile.mkdtemp(prefix="rjt", dir="/tmp")
    gcs, dash, client, agent_http, agent_grpc, metrics, rt_env = _free_ports(7)
    log_path = Path(temp_dir) / "ray-start.log"
    cmd = [
        RAY, "start", "--head", "--block",
        "--num-cpus", "2",
        "--disable-usage-stats",
        "--temp-dir", temp_dir,
        "--port", str(gcs),
        "--include-dashboard", "true",
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dash),
        "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(rt_env),
    ]  # fmt: skip
    # No drain on SIGTERM: it waits up to 30 s for Serve-style consumers this test does not have.
    env = {**_ray_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(url, proc, log_path)
        yield {"address": url, "temp_dir": temp_dir}
    finally:
        try:
            _stop_head(proc, temp_dir)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_job(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", *args], env=_ray_env(), capture_output=True, text=True, timeout=timeout
    )


def _job_logs(address: str, submission_id: str) -> str:
    """The job's logs through the job API the CLI calls (a `ray job logs` process costs ~2 s of CPU)."""
    with urllib.request.urlopen(f"{address}/api/jobs/{submission_id}/logs", timeout=30) as r:
        return json.load(r)["logs"]


def _job_status(address: str, submission_id: str) -> dict:
    """The exact status from the job REST API the CLI talks to (`ray job status` prints prose)."""
    with urllib.request.urlopen(f"{address}/api/jobs/{submission_id}", timeout=30) as r:
        return json.load(r)


def test_ray_job_stop_ends_the_run_killed_and_a_resubmitted_resume_succeeds(ray_head, tmp_path):
    """The user's path (deploy/README.md), two jobs on one run of `mvae-dist train --config
    tiny.yaml` (one Train worker: DDP across workers is tests/train's; a second worker per job
    cost ~20 s of the suite here):

    1. `ray job stop` sends SIGTERM and, RAY_JOB_STOP_WAIT_TIME_S (3 s) later, SIGKILL: within that
       window the run must end KILLED in MLflow with its last checkpoint named in a tag and in the
       job's last line (docs/failures.md). The config's relative train.storage_path (runs) would
       vanish with the job's temporary working directory, so checkpoints go to ~/mvae-dist/runs.
    2. The same command with `--resume`, submitted again, continues that run from the named
       checkpoint in the same MLflow run and SUCCEEDS; the run ends FINISHED."""
    import mlflow

    from mvae_dist.data import prepare

    address = ray_head["address"]
    prepare("embedded", str(tmp_path / "data"), dm=1, shard_size=1000, progress=False)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    home = tmp_path / "home"
    env_vars = {"MLFLOW_TRACKING_URI": tracking_uri, "JOB_DATA": str(tmp_path / "data"), "HOME": str(home),
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}  # each report waits for a poll (default 2 s)
    command = ('exec mvae-dist train {resume}--config tiny.yaml data.url="$JOB_DATA" train.name=stopped '
               'train.max_steps={steps} train.checkpoint_every=10 train.eval_every=0 train.log_every=10 '
               'train.num_workers=1')

    def submit(submission_id: str, resume: str, steps: int, *wait: str) -> subprocess.CompletedProcess:
        return _ray_job("submit", "--address", address, "--submission-id", submission_id, *wait,
                        "--working-dir", str(REPO_ROOT / "configs" / "embedded"),
                        "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--",
                        "sh", "-c", command.format(resume=resume, steps=steps))

    first = f"mvae-stop-{uuid.uuid4().hex[:10]}"
    sub = submit(first, "", 5000, "--no-wait")
    assert sub.returncode == 0, sub.stderr[-3000:]
    deadline, logs = time.monotonic() + 150, ""
    while "step 20/" not in logs:  # under way, and it has checkpointed at step 10
        assert time.monotonic() < deadline, logs[-3000:]
        time.sleep(0.5)
        logs = _job_logs(address, first)
    stop = _ray_job("stop", "--address", address, first, timeout=60)
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert _job_status(address, first)["status"] == "STOPPED"
    logs = _job_logs(address, first)
    runs_dir = home / "mvae-dist" / "runs" / "stopped"
    assert "is relative and this is a Ray job's temporary working" in logs, logs[-3000:]
    said = [ln for ln in logs.splitlines() if ln.startswith("mvae-dist: ")]
    assert said and said[-1].startswith("mvae-dist: terminated (SIGTERM); run ended KILLED, last checkpoint: "
                                        f"{runs_dir}/checkpoint_"), logs[-3000:]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("mvae-dist-tests").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "KILLED"
    named = run.data.tags["last_checkpoint"]
    assert said[-1].split("last checkpoint: ", 1)[1].startswith(named)
    # the named checkpoint is still there once the workers, which outlive the driver by a moment,
    # are gone: they began no checkpoint after the stop (at most one already under way landed, and
    # keep_checkpoints = 2 keeps the named one). Without the stop marker, two more landed under
    # load and Ray deleted the named one.
    time.sleep(2)
    sealed = {json.loads(p.read_text())["step"]: str(p.parent)
              for p in runs_dir.glob("checkpoint_*/checkpoint.json")}
    assert named in sealed.values(), (sealed, named)
    named_step = json.loads(Path(named, "checkpoint.json").read_text())["step"]
    assert len([step for step in sealed if step > named_step]) <= 1, (sealed, named)

    second = f"mvae-resume-{uuid.uuid4().hex[:10]}"
    steps = max(sealed) + 2
    t0 = time.monotonic()
    sub = submit(second, "--resume ", steps)
    job, logs = _job_status(address, second), _job_logs(address, second)
    detail = (f"submit rc={sub.returncode} ({time.monotonic() - t0:.0f} s)\n{sub.stdout[-3000:]}\n"
              f"{sub.stderr[-3000:]}\njob: {job.get('status')} {job.get('message')}\nlogs:\n{logs[-4000:]}")
    assert sub.returncode == 0 and job["status"] == "SUCCEEDED", detail
    assert f"finished: {{'step': {steps}" in logs and "mlflow ui" in logs, detail
    assert f"mvae-dist: resuming run 'stopped' from step {max(sealed)}" in logs, detail
    (run,) = client.search_runs([experiment])  # the same MLflow run, continued
    assert run.info.status == "FINISHED", detail
    assert run.data.tags["last_checkpoint"].startswith(str(runs_dir)), detail
