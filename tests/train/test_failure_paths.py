"""Failure paths of `mvae-dist train`: each ends fast, in one line, with nothing left half-done.

Most cases fail before Ray starts (``_init_ray`` is replaced by a failing stub to prove it); one
test runs a real Ray Train group on a corrupt shard to show a worker's DataError is not retried.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

import mvae_dist.train.driver as driver
from mvae_dist.launch.cli import main

TINY = str(Path(__file__).parents[2] / "configs" / "embedded" / "tiny.yaml")


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [ln for ln in err.splitlines() if ln.startswith("mvae-dist: ")]


def _args(data: str, tmp_path: Path, *extra: str, uri: str | None = None) -> list[str]:
    return ["train", "--config", TINY, f"data.url={data}", f"train.storage_path={tmp_path}/runs",
            f"tracking.tracking_uri={uri or f'sqlite:///{tmp_path}/mlflow.db'}", *extra]


def _copy(data: str, tmp_path: Path) -> Path:
    """A private copy of the session's data set (the fixture's is shared and read-only)."""
    return Path(shutil.copytree(data, tmp_path / "data"))


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if `fit` gets as far as starting Ray."""
    monkeypatch.setattr(driver, "_init_ray", lambda address: pytest.fail("Ray must not start"))


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def _runs(uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mvae-dist-tests")  # configs/embedded/tiny.yaml
    return client.search_runs([exp.experiment_id]) if exp else []


def test_an_unreachable_tracking_server_is_one_line_in_seconds(tiny_data, tmp_path, capsys, no_ray):
    uri = f"http://127.0.0.1:{_dead_port()}"
    t0 = time.monotonic()
    assert main(_args(tiny_data, tmp_path, uri=uri)) == 1
    assert time.monotonic() - t0 < 30  # MLflow's own retry loop took 281 s
    errors = _errors(capsys)
    assert len(errors) == 1 and f"cannot reach the MLflow tracking server at {uri}" in errors[0], errors


@pytest.mark.parametrize("damage, message", [
    ("delete", "shard missing: "),
    ("truncate", "truncated or corrupt shard "),
])
def test_a_missing_or_truncated_shard_is_refused_before_ray_starts(damage, message, tiny_data, tmp_path,
                                                                    capsys, no_ray):
    data = _copy(tiny_data, tmp_path)
    shard = data / "train" / "shard-000001.tar"
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:1000])
    assert main(_args(str(data), tmp_path)) == 1
    errors = _errors(capsys)
    assert len(errors) == 1 and message + str(shard) in errors[0], errors
    assert not (tmp_path / "runs").exists() and not _runs(f"sqlite:///{tmp_path}/mlflow.db")


def _flip_inside(shard: Path) -> None:
    """Same size, other bytes: only the sha256 (or the loader) can tell."""
    raw = bytearray(shard.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(255 - b for b in raw[mid:mid + 64])
    shard.write_bytes(bytes(raw))


def test_verify_data_hashes_every_shard_before_ray_starts(tiny_data, tmp_path, capsys, no_ray):
    data = _copy(tiny_data, tmp_path)
    shard = data / "train" / "shard-000002.tar"
    _flip_inside(shard)
    assert main(_args(str(data), tmp_path, "--verify-data")) == 1
    errors = _errors(capsys)
    assert len(errors) == 1 and f"checksum mismatch in shard {shard}" in errors[0], errors


@pytest.mark.parametrize("raised, code, line", [
    (RuntimeError("The current node timed out during startup."), 1,
     "mvae-dist: error: cannot start or reach a local Ray instance: "
     "The current node timed out during startup."),
    (KeyboardInterrupt(), 130, "mvae-dist: interrupted"),
])
def test_no_mlflow_run_is_created_before_ray_answers(raised, code, line, tiny_data, tmp_path, capsys,
                                                     monkeypatch):
    import ray

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as on a fresh process
    monkeypatch.setattr(ray, "init", fail)
    assert main(_args(tiny_data, tmp_path)) == code
    assert _errors(capsys) == [line]
    assert _runs(f"sqlite:///{tmp_path}/mlflow.db") == []
    assert not list((tmp_path / "runs").glob("*/.mvae-dist-lock.json"))  # the name is free again


def test_evaluate_of_an_unknown_run_creates_no_tracking_store(tmp_path, capsys):
    db = tmp_path / "none.db"
    assert main(["evaluate", "--run", "0123abcd", "--tracking-uri", f"sqlite:///{db}"]) == 1
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert errors == [f"mvae-dist: error: no MLflow tracking database at {db}"], captured.err
    assert not db.exists()


@pytest.mark.slow
def test_a_data_error_in_a_worker_is_not_retried_and_the_name_stays_usable(ray_cluster, tiny_data, tmp_path,
                                                                            capsys):
    """A shard corrupted in place (same size) passes the pre-flight size check and fails in the
    workers: the run ends after ONE worker-group start (max_failures=2 would allow three) with
    the loader's line; after the data is repaired the same name can run again."""
    from mvae_dist.config import load_train_config

    data = _copy(tiny_data, tmp_path)
    good = tmp_path / "good.tar"
    shard = data / "train" / "shard-000000.tar"
    shutil.copy(shard, good)
    _flip_inside(shard)
    cfg = load_train_config(TINY, [f"data.url={data}", f"train.storage_path={tmp_path}/runs",
                                   f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                   "train.name=bad-shard", "train.max_failures=2", "train.eval_every=0"])
    with pytest.raises(driver.TrainingError, match=r"checksum mismatch in shard .*shard-000000\.tar"):
        driver.fit(cfg, debug_dir=str(tmp_path / "debug"))
    starts = (tmp_path / "debug" / "starts.log").read_text().splitlines()
    assert len(starts) == cfg.train.num_workers, starts  # one start per rank: no retry
    assert [r.info.status for r in _runs(f"sqlite:///{tmp_path}/mlflow.db")] == ["FAILED"]

    shutil.copy(good, shard)
    capsys.readouterr()
    # in this process (local mode): what is tested is the name's state, not Ray Train again
    assert main(_args(str(data), tmp_path, "train.name=bad-shard", "train.max_steps=2",
                      "train.eval_every=0", "train.num_workers=0")) == 0
    out = capsys.readouterr().out
    assert "has no checkpoint (an earlier attempt failed before its first): starting it afresh" in out
    assert "'step': 2" in out


def _tags_read_only(db, key: str) -> list[str]:
    """The values of tag ``key`` of the runs in a sqlite MLflow store, read without MLflow."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return [row[0] for row in con.execute("SELECT value FROM tags WHERE key = ?", (key,))]
    except sqlite3.Error:
        return []


def _run_statuses_read_only(db) -> list[str] | None:
    """The runs' statuses in a sqlite MLflow store, read without MLflow (None while the store is
    not there yet): an MlflowClient here would create or migrate the schema while the process
    under test does the same ("table _alembic_tmp_... already exists" in one of the two)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return [row[0] for row in con.execute("SELECT status FROM runs")]
    except sqlite3.Error:
        return None


def _cli(args: list[str], **kwargs):
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("mvae-dist")  # the real entry point, its signal handlers
    # RAY_ADDRESS=local: a Ray instance of its own, even where a `ray start` (another test) left
    # /tmp/ray/ray_current_cluster, which a bare ray.init() would join
    return subprocess.Popen([str(exe), *args], stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}, **kwargs)


def test_an_unreachable_address_is_one_line_within_its_bound_and_creates_no_run(tiny_data, tmp_path):
    """Ray's client retries an absent GCS for minutes; train.address_timeout_s bounds it."""
    t0 = time.monotonic()
    proc = _cli([*_args(tiny_data, tmp_path, "train.address_timeout_s=4", "--address",
                        f"127.0.0.1:{_dead_port()}")])
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1 and time.monotonic() - t0 < 45, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("mvae-dist: error: cannot reach the Ray cluster at 127.0.0.1:") or \
        last.startswith("mvae-dist: error: cannot start or reach the Ray cluster at 127.0.0.1:"), out
    assert not _run_statuses_read_only(tmp_path / "mlflow.db")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, said, where", [
    # SIGTERM with ray.init's handler and the local instance's teardown; SIGINT with fit's handler
    # on a cluster that must get its CPUs back; SIGTERM with --address: tests/train/test_multinode.py.
    # (SIGINT on a local instance, the fourth pair, adds no path of its own: 40 s of the suite.)
    ("SIGTERM", 143, "terminated (SIGTERM)", "local"),
    # the session's cluster, asked for inside the test: its group's worker must run it, or another
    # xdist worker starts a second session cluster for this one test
    pytest.param("SIGINT", 130, "interrupted", "address", marks=pytest.mark.xdist_group("ray")),
])
def test_a_signal_during_real_training_ends_the_run_killed_naming_its_checkpoint(
        sig, code, said, where, tiny_data, tmp_path, request):
    """The real entry point stopped mid-training, on a local Ray instance of its own or joined to
    a running one with --address (the session's): Ray's handlers (``ray.init`` installs one for
    SIGTERM, ``fit`` one for SIGINT) do not take over, and nothing crashes after the line (a
    thread is still blocked in Ray: ``ray.shutdown()`` under it once did, exit -11). A local
    instance ends with the driver; a cluster gets back what the run held."""
    import signal

    address = []
    if where == "address":
        ray = request.getfixturevalue("ray_cluster")
        address = ["--address", ray.get_runtime_context().gcs_address]
    proc = _cli([*_args(tiny_data, tmp_path, "train.num_workers=1", "train.max_steps=5000",
                        "train.checkpoint_every=10", "train.eval_every=0", "train.log_every=10"), *address])
    lines = []
    for line in proc.stdout:  # until training is under way and has checkpointed
        lines.append(line)
        if "step 20/" in line:
            break
    # a checkpoint reaches the MLflow run as Ray persists it, not when fit() returns
    db, deadline = tmp_path / "mlflow.db", time.monotonic() + 20
    while not (logged := _tags_read_only(db, "last_checkpoint")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and len(logged) == 1, (logged, "".join(lines)[-2000:])
    assert logged[0].startswith(f"{tmp_path}/runs/tiny/checkpoint_"), logged
    proc.send_signal(getattr(signal, sig))
    out, _ = proc.communicate(timeout=60)
    out = "".join(lines) + out
    assert proc.returncode == code, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"mvae-dist: {said}; run ended KILLED, last checkpoint: {tmp_path}/runs/tiny/"
                           "checkpoint_"), out[-3000:]
    assert Path(last.split("last checkpoint: ", 1)[1].split(" ")[0], "checkpoint.json").exists()
    assert _run_statuses_read_only(tmp_path / "mlflow.db") == ["KILLED"]
    if where == "address":  # the driver is gone: its controller and worker are ended, their CPUs free
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
            assert time.monotonic() < deadline, ray.available_resources()
            time.sleep(0.25)


def test_a_name_running_in_mlflow_without_a_lock_is_refused(tiny_data, tmp_path, capsys, no_ray):
    """A run of this name that MLflow says is RUNNING and that holds no lock (a driver from before
    the lock, or one whose lock was removed) is refused before Ray starts, saying how to end it."""
    from mvae_dist.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(uri, "mvae-dist-tests")
    run_id = t.start("tiny", tags={"ray_run_path": f"{tmp_path}/runs/tiny"})
    assert main(_args(tiny_data, tmp_path)) == 1
    [line] = _errors(capsys)
    assert line == (f"mvae-dist: error: run 'tiny' in {tmp_path}/runs is RUNNING in MLflow ({run_id}) "
                    "with no driver's lock; if no driver runs it, end that MLflow run (e.g. MlflowClient()"
                    f".set_terminated('{run_id}', 'FAILED')) and start again")


def test_the_lock_of_a_driver_that_is_gone_is_taken_over(tiny_data, tmp_path, capsys, monkeypatch):
    """A SIGKILLed driver leaves its lock and a RUNNING MLflow run: on the same host the next start
    sees its process is gone and goes on (here as far as Ray, stubbed)."""
    import json
    import subprocess
    import sys

    from mvae_dist.tracking import Tracker

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / ".mvae-dist-lock.json").write_text(json.dumps(
        {"token": "old", "host": socket.gethostname(), "pid": dead.pid, "since": 0}))
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "mvae-dist-tests").start(
        "tiny", tags={"ray_run_path": f"{tmp_path}/runs/tiny"})

    def stop(address, timeout_s=30.0):
        raise driver.TrainingError("stub: Ray reached")

    monkeypatch.setattr(driver, "_init_ray", stop)
    assert main(_args(tiny_data, tmp_path)) == 1
    out = capsys.readouterr()
    said = f"mvae-dist: run 'tiny': the driver that held it (pid {dead.pid}) is gone; taking it over"
    assert said in out.out
    assert out.err.strip().splitlines()[-1] == "mvae-dist: error: stub: Ray reached"
    assert not (tmp_path / "runs" / "tiny" / ".mvae-dist-lock.json").exists()  # released on the way out
