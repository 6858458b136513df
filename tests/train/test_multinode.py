"""Faults at cluster scale, on several Ray nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``).

The test bed: a head with 0 CPUs and two 1-CPU worker nodes, so a 2-worker run has one worker on
each node; data and checkpoints on the suite's moto S3 behind a ``FaultyProxy`` (that can answer
503 SlowDown); the real ``mvae-dist train --address`` entry point in a subprocess. One cluster
serves the module; a test that removes a node puts one back before it ends.

Each case of docs/failures.md "At cluster scale" is exercised here, in two tests (a run start
costs ~20 s of process starts on 2 cores, so one run's life carries several cases):
- two workers on two nodes through a throttled store (shard reads and checkpoint writes
  answered 503 for a while: retried, one line each); a second driver on the running name
  refused; SIGTERM ends the run KILLED naming its last checkpoint; a resume that cannot start its
  workers fails after the bound and leaves it KILLED; a resume past a corrupt and a deleted
  newest checkpoint continues from the good one and FINISHES, no orphan left;
- a node lost and back within ``train.node_wait_s`` resumes from the newest complete checkpoint,
  lost for good fails after the bound in one line, FAILED, nothing RUNNING, no orphans.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ..faults import FaultyProxy

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multinode")]  # one bed, one xdist worker
TINY = str(Path(__file__).parents[2] / "configs" / "embedded" / "tiny.yaml")
BUCKET = "multinode"
#: the bed's own Ray temp dir (short: unix socket paths): its head's ray_current_cluster goes there,
#: not to /tmp/ray where a bare ray.init() in another test would find and join it
TEMP_DIR = "/tmp/ray-mn"


class Bed:
    """The cluster, its worker nodes, the proxy and the paths a run uses."""

    def __init__(self, cluster, proxy: FaultyProxy, root: Path, options_file: Path, db_template: Path):
        self.cluster, self.proxy, self.root = cluster, proxy, root
        self.options_file, self.db_template = options_file, db_template
        self.nodes: list = []
        self._port = 23000

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self):
        self._port += 100
        node = self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", min_worker_port=self._port,
                                     max_worker_port=self._port + 99, temp_dir=TEMP_DIR)
        self.nodes.append(node)
        self.cluster.wait_for_nodes()
        return node

    def remove_node(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)

    def ensure_nodes(self, n: int = 2) -> None:
        while len(self.nodes) < n:
            self.add_node()

    def raylet_pids(self) -> dict[int, object]:
        return {n.all_processes["raylet"][0].process.pid: n for n in self.nodes}

    def args(self, name: str, tmp: Path, *extra: str) -> list[str]:
        db = tmp / "mlflow.db"
        if not db.exists():
            shutil.copyfile(self.db_template, db)
        return ["--config", TINY, "--address", self.address,
                f"data.url=s3://{BUCKET}/embedded", f"data.storage_options_file={self.options_file}",
                f"train.storage_path=s3://{BUCKET}/runs", f"train.storage_options_file={self.options_file}",
                f"tracking.tracking_uri=sqlite:///{db}", f"train.name={name}", "train.eval_every=0",
                "train.num_workers=2", *extra]

    def start(self, args: list[str], tmp: Path) -> subprocess.Popen:
        log = open(tmp / f"train-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115 (closed by _finish)
        exe = Path(sys.executable).with_name("mvae-dist")  # the real entry point (signal handlers)
        proc = subprocess.Popen([str(exe), "train", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        proc.log = log  # type: ignore[attr-defined]
        return proc


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def _output(proc: subprocess.Popen) -> str:
    proc.log.flush()  # type: ignore[attr-defined]
    return Path(proc.log.name).read_text()  # type: ignore[attr-defined]


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        pytest.fail(f"mvae-dist train did not end within {timeout} s:\n{_output(proc)[-4000:]}")
    out = _output(proc)
    proc.log.close()  # type: ignore[attr-defined]
    return proc.returncode, out


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 120, since: int = 0) -> str:
    """The output so far, once ``text`` is in it after its first ``since`` characters (output
    printed before an event does not count as printed after it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _output(proc)
        if text in out[since:]:
            return out
        if proc.poll() is not None:
            pytest.fail(f"ended ({proc.returncode}) before {text!r}:\n{out[-4000:]}")
        time.sleep(0.25)
    pytest.fail(f"no {text!r} within {timeout} s:\n{_output(proc)[-4000:]}")


def _mvae_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("mvae-dist: ")]


def _statuses(tmp: Path) -> list[str]:
    with sqlite3.connect(f"file:{tmp / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as con:
        return [r[0] for r in con.execute("SELECT status FROM runs ORDER BY start_time")]


def _metric(tmp: Path, key: str) -> float | None:
    """The latest value of a metric of the (one) run."""
    with sqlite3.connect(f"file:{tmp / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as con:
        row = con.execute("SELECT value FROM metrics WHERE key = ? ORDER BY timestamp DESC, step DESC",
                          (key,)).fetchone()
    return row[0] if row else None


def _run_list(tmp: Path, artifact: str, key: str) -> list[dict]:
    """The list under ``key`` of the (one) run's JSON artifact ``artifact``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mvae-dist-tests").experiment_id])
    with tempfile.TemporaryDirectory() as d:
        got = Path(client.download_artifacts(run.info.run_id, artifact, d))
        return json.loads(got.read_text())[key]


def _logged_checkpoints(tmp: Path) -> list[dict]:
    """The (one) run's ``checkpoints.json`` entries: {"step", "uri"} in the order logged."""
    return _run_list(tmp, "checkpoints.json", "checkpoints")


def _tag(tmp: Path, key: str) -> str | None:
    with sqlite3.connect(f"file:{tmp / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as con:
        row = con.execute("SELECT value FROM tags WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


@pytest.fixture(scope="module")
def bed(moto_server, migrated_mlflow_db, tmp_path_factory):
    """The multi-node test bed (see the module's docstring), data prepared on S3 once."""
    ray_cluster_utils = pytest.importorskip("ray.cluster_utils")
    import s3fs

    from mvae_dist.data import prepare

    root = tmp_path_factory.mktemp("multinode")
    proxy = FaultyProxy(moto_server)
    # the workers' clients retry nothing themselves (botocore: one attempt), so what a test sees
    # is the project's retries; s3fs's own SlowDown retries (5 tries, ~1.5 s) stay, as for users
    options = {"client_kwargs": {"endpoint_url": proxy.endpoint}, "key": "testing", "secret": "testing",
               "config_kwargs": {"retries": {"total_max_attempts": 1}}}
    options_file = root / "s3.yaml"
    options_file.write_text(yaml.safe_dump(options))
    direct = {"client_kwargs": {"endpoint_url": moto_server}, "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem(**direct, skip_instance_cache=True).mkdir(BUCKET)
    prepare("embedded", f"s3://{BUCKET}/embedded", dm=1, shard_size=500, progress=False,
            storage_options=direct)

    saved = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every address on 127.0.0.1
    # Ray writes the head's address to /tmp/ray/ray_current_cluster whatever its temp_dir, and
    # fails if /tmp/ray does not exist yet (a fresh machine, this module run alone)
    Path("/tmp/ray").mkdir(exist_ok=True)
    cluster = ray_cluster_utils.Cluster(
        initialize_head=True, connect=False,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
                        "min_worker_port": 22900, "max_worker_port": 22999, "temp_dir": TEMP_DIR})
    b = Bed(cluster, proxy, root, options_file, migrated_mlflow_db)
    try:
        b.ensure_nodes(2)
        yield b
    finally:
        address = cluster.address
        cluster.shutdown()
        proxy.close()
        current = Path("/tmp/ray/ray_current_cluster")  # (the head writes it in its own temp dir;
        if current.exists() and current.read_text().strip() == address:  # should a Ray version not,
            current.unlink()                                                # a later ray.init() joins it)
        if saved is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved


def _s3(moto_server):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_server}, key="testing", secret="testing",
                             skip_instance_cache=True)


def _checkpoints(moto_server, name: str) -> dict[str, dict | None]:
    """The run's checkpoint directories on S3 -> their checkpoint.json (None: none)."""
    fs = _s3(moto_server)
    out = {}
    for p in fs.ls(f"{BUCKET}/runs/{name}", detail=True):
        if p["type"] == "directory" and p["name"].rsplit("/", 1)[-1].startswith("checkpoint_"):
            try:
                out[p["name"]] = json.loads(fs.cat_file(f"{p['name']}/checkpoint.json"))
            except FileNotFoundError:
                out[p["name"]] = None
    return out


def _train_workers(bed: Bed) -> list[tuple[int, int]]:
    """(pid, parent pid) of the bed's RayTrainWorker processes now alive (the parent is its raylet;
    workers of other tests' Ray clusters running beside, under other raylets, are left out)."""
    ours = set(bed.raylet_pids()) | {bed.cluster.head_node.all_processes["raylet"][0].process.pid}
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    return [(int(p), int(pp)) for p, pp, *rest in (ln.split(None, 2) for ln in out.splitlines()[1:])
            if rest and rest[0].startswith("ray::RayTrainWorker") and int(pp) in ours]


def _newest_sealed(moto_server, name: str) -> tuple[str, int]:
    sealed = {p: m["step"] for p, m in _checkpoints(moto_server, name).items() if m is not None}
    newest = max(sealed, key=lambda p: (sealed[p], p))
    return newest, sealed[newest]


def test_a_run_on_two_nodes_through_a_throttled_store_a_second_driver_a_signal_and_bad_checkpoints(
        bed, moto_server, tmp_path):
    """One run's life, each step a case of docs/failures.md:
    - one worker per node (their raylets differ); shard reads answered 503 SlowDown for a while
      are retried with one line each;
    - a second driver on the running name is refused in one line, before Ray;
    - SIGTERM (what `ray job stop` and a preempted node send) ends the run KILLED with its last
      checkpoint named, exit 143;
    - a resume whose workers never get room fails in one line after train.node_wait_s and leaves
      the run KILLED;
    - a resume past a corrupt and a deleted newest checkpoint continues from the good one before,
      its checkpoint writes answered 503 for a while are retried, and it FINISHES with no
      orphaned checkpoint directory."""
    bed.ensure_nodes(2)
    base = bed.args("chain", tmp_path, "train.checkpoint_every=10", "train.keep_checkpoints=3")
    bed.proxy.fail(12, method="GET", match="/embedded/train/shard-")  # > s3fs's own 5 tries, twice
    proc = bed.start([*base, "train.max_steps=5000"], tmp_path)
    _wait_for(proc, "step 40/")
    workers, raylets = _train_workers(bed), bed.raylet_pids()
    assert len(workers) == 2 and {ppid for _, ppid in workers} == set(raylets), (workers, raylets)

    t0 = time.monotonic()
    second = subprocess.run([str(Path(sys.executable).with_name("mvae-dist")), "train", *base,
                             "train.max_steps=5000"], capture_output=True, text=True, env=_env(), timeout=120)
    assert second.returncode == 1 and time.monotonic() - t0 < 60
    assert second.stderr.strip().splitlines()[-1].startswith(
        "mvae-dist: error: run 'chain' in s3://multinode/runs is being run by another driver"), second.stderr

    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc, 60)
    assert code == 143, out[-3000:]
    retries = [ln for ln in out.splitlines() if "mvae-dist: retry " in ln]  # the workers' lines too
    assert any("reading shard s3://multinode/embedded/train/shard-" in ln for ln in retries), out[-4000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("mvae-dist: terminated (SIGTERM); run ended KILLED, last checkpoint: "
                           "s3://multinode/runs/chain/checkpoint_"), out[-3000:]
    named = last.split("last checkpoint: ", 1)[1].split(" ", 1)[0]
    assert _statuses(tmp_path) == ["KILLED"] and _tag(tmp_path, "last_checkpoint") == named

    time.sleep(2)  # the stopped run's workers go with its driver
    code, out = _finish(bed.start(["--resume", *base, "train.max_steps=5000", "train.cpus_per_worker=2",
                                   "train.node_wait_s=5"], tmp_path), 120)
    assert code == 1 and "the cluster had no room for 2 workers (2 CPU each) for 5 s (train.node_wait_s)" \
        in out.strip().splitlines()[-1], out[-3000:]
    assert _statuses(tmp_path) == ["KILLED"]

    fs = _s3(moto_server)
    ckpts = sorted(p for p, m in _checkpoints(moto_server, "chain").items() if m is not None)
    assert len(ckpts) >= 3, ckpts
    corrupt, deleted, good = ckpts[-1], ckpts[-2], ckpts[-3]
    fs.pipe_file(f"{corrupt}/state.pt", fs.cat_file(f"{corrupt}/state.pt")[:1000])
    fs.rm(deleted, recursive=True)
    good_step = _checkpoints(moto_server, "chain")[good]["step"]
    # one checkpoint's state.pt (its files go up in parallel; s3fs absorbs 4 failures per request)
    bed.proxy.fail(12, method="PUT", match="/state.pt")
    code, out = _finish(bed.start(["--resume", *base, f"train.max_steps={good_step + 10}"], tmp_path), 240)
    assert code == 0, out[-4000:]
    lines = _mvae_lines(out)
    said = "\n".join(lines)
    assert f"mvae-dist: checkpoint s3://{corrupt} skipped (corrupt: state.pt has 1000 bytes," in said
    assert f"mvae-dist: resuming run 'chain' from step {good_step} (s3://{good})" in lines, lines
    assert any("Ray's checkpoint index" in ln and deleted.rsplit("/", 1)[-1] in ln for ln in lines), lines
    assert any("mvae-dist: retry " in ln and "writing s3://multinode/runs/chain/" in ln
               for ln in out.splitlines()), out[-4000:]
    assert _statuses(tmp_path) == ["FINISHED"] and bed.proxy.pending_failures == 0
    assert _metric(tmp_path, "resumed_from_step") == good_step  # its weights read back from S3, not step 0
    left = _checkpoints(moto_server, "chain")
    assert corrupt not in left and all(m is not None for m in left.values())  # nothing orphaned
    assert max(m["step"] for m in left.values()) == good_step + 10


def test_a_lost_node_resumes_when_it_returns_and_fails_in_one_line_when_it_does_not(bed, moto_server,
                                                                                   tmp_path):
    """Lost and back within train.node_wait_s: the run resumes from the newest complete checkpoint
    (committed by Ray or not). Lost for good: one line after the bound naming what is missing and
    the last checkpoint, the run FAILED, no orphaned checkpoint directory."""
    bed.ensure_nodes(2)
    proc = bed.start(bed.args("lost", tmp_path, "train.checkpoint_every=10", "train.max_steps=5000",
                              "train.node_wait_s=20", "train.max_failures=2"), tmp_path)
    try:
        _wait_for(proc, "step 30/")
        bed.remove_node(bed.nodes[-1])
        time.sleep(3)  # the survivor's gloo fails, Ray tears the group down
        _, step = _newest_sealed(moto_server, "lost")
        bed.add_node()
        out = _wait_for(proc, "[lost] restored step ", timeout=120)
        restored = int(out.split("[lost] restored step ", 1)[1].split()[0])
        # the newest sealed one, unless the loss cut its upload short (Ray uploads a checkpoint's
        # files in parallel, the seal can land before state.pt): then it is skipped as corrupt
        # and the one before is taken
        assert restored >= step or (restored == step - 10 and "skipped (corrupt: " in out), (restored, step)
        # training again, past a checkpoint of its own: a step line printed after the restore (the
        # first attempt printed the same step numbers before the loss); whether the first attempt
        # sealed its step-30 checkpoint before the loss is up to timing, this one is not
        _wait_for(proc, f"step {restored + 12}/", timeout=120, since=out.index("[lost] restored step "))

        bed.remove_node(bed.nodes[-1])
        t0 = time.monotonic()
        code, out = _finish(proc, 150)
        waited = time.monotonic() - t0
    finally:
        bed.ensure_nodes(2)
    assert code == 1, out[-4000:]
    assert 20 <= waited < 20 + 60, waited
    last = out.strip().splitlines()[-1]
    assert last.startswith("mvae-dist: error: training run 'lost' failed: the cluster had no room for 2 "
                           "workers (1 CPU each) for 20 s (train.node_wait_s)"), out[-3000:]
    newest, _ = _newest_sealed(moto_server, "lost")
    assert last.endswith(f"last checkpoint: s3://{newest}"), (last, newest)
    assert _statuses(tmp_path) == ["FAILED"] and _tag(tmp_path, "last_checkpoint") == f"s3://{newest}"
    assert all(m is not None for m in _checkpoints(moto_server, "lost").values())
    # the restored weights' step reached the run, and every checkpoint reached it as Ray persisted
    # it (the controller's callback; the one restored from, if Ray never committed it, from the
    # resumed rank 0; the newest, if Ray never committed it, from the driver at the end), each once
    assert _metric(tmp_path, "resumed_from_step") == restored
    logged = _logged_checkpoints(tmp_path)
    steps = [e["step"] for e in logged]
    assert steps == sorted(set(steps)) and all(s % 10 == 0 for s in steps) and len(steps) >= 3, logged
    assert restored + 10 in steps, logged  # written after the restart, logged as Ray persisted it
    assert logged[-1]["uri"] == f"s3://{newest}", (logged, newest)


def _history(tmp: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric of the (one) run, in the order logged."""
    with sqlite3.connect(f"file:{tmp / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as con:
        return [(int(s), v) for s, v in con.execute(
            "SELECT step, value FROM metrics WHERE key = ? ORDER BY timestamp, rowid", (key,))]


def _wait_for_trained_at(tmp: Path, *, workers: int, steps: int, timeout: float = 120) -> None:
    """Until the run's current attempt (its last ``world_size``) has ``workers`` workers and has
    logged a loss ``steps`` steps past its start. Ray sizes an elastic group by the room it sees,
    which at a run's start can be one node's worth (it grows at its next look)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{tmp / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as con:
            last = con.execute("SELECT step, value, timestamp FROM metrics WHERE key = 'world_size' "
                               "ORDER BY timestamp DESC, step DESC").fetchone()
            done = last is not None and last[1] == workers and con.execute(
                "SELECT 1 FROM metrics WHERE key = 'loss' AND step >= ? AND timestamp >= ?",
                (last[0] + steps, last[2])).fetchone() is not None
        if done:
            return
        time.sleep(0.5)
    pytest.fail(f"the run did not train {steps} steps on {workers} workers within {timeout} s")


def _planned_steps(moto_server, G: int, V: int, epochs: int) -> list[list[str]]:
    """The global batches of an uninterrupted run's epochs: the data plan of V virtual ranks read
    by one rank (data/stream.py; the same at every world size)."""
    from mvae_dist.data import make_loader

    direct = {"client_kwargs": {"endpoint_url": moto_server}, "key": "testing", "secret": "testing"}
    loader = make_loader(f"s3://{BUCKET}/embedded", "train", G, world_size=1, virtual_ranks=V,
                         storage_options=direct)
    steps = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        steps += [b["key"] for b in loader]
    return steps


def test_an_elastic_run_goes_on_with_fewer_workers_and_grows_back(bed, moto_server, tmp_path):
    """train.num_workers [1, 2]: a node lost -> the run goes on with 1 worker (global batch kept),
    a node back -> 2 workers again; it FINISHES with the configured steps, says each resize, logs
    them to MLflow, and every step's samples, at either size and replayed or not, are the plan's:
    each epoch read every sample once."""
    bed.ensure_nodes(2)
    keys_dir, epochs = tmp_path / "keys", 3
    proc = bed.start(bed.args("elastic", tmp_path, "train.num_workers=[1,2]", f"train.epochs={epochs}",
                              "train.max_steps=0", "train.checkpoint_every=10", "train.node_wait_s=10",
                              "train.resize_check_s=5", "train.max_failures=3",
                              f"train.record_keys={keys_dir}"), tmp_path)
    try:
        _wait_for(proc, "step 20/")
        _wait_for_trained_at(tmp_path, workers=2, steps=12)  # a checkpoint of 2 workers to shrink from
        bed.remove_node(bed.nodes[-1])
        out = _wait_for(proc, "[elastic] resized 2 -> 1 workers at step ", timeout=150)
        shrink = out.index("[elastic] resized 2 -> 1 workers at step ")
        at = int(out[shrink:].split("at step ", 1)[1].split()[0])
        _wait_for(proc, f"step {at + 10}/", timeout=120, since=shrink)  # training on one worker
        bed.add_node()
        _wait_for(proc, "[elastic] resized 1 -> 2 workers at step ", timeout=150, since=shrink)
        code, out = _finish(proc, 300)
    finally:
        bed.ensure_nodes(2)
    assert code == 0, out[-4000:]
    assert _statuses(tmp_path) == ["FINISHED"]
    lines = [json.loads(ln) for f in sorted(keys_dir.glob("keys-rank*.jsonl"))
             for ln in f.read_text().splitlines()]
    G, V = 32, 2  # tiny.yaml's data.batch_size 16 x 2 workers; lcm(1, 2)
    planned = _planned_steps(moto_server, G, V, epochs)
    total = len(planned)
    assert f"run elastic finished: {{'step': {total}," in out and _tag(tmp_path, "model_step") == str(total)
    # every step trained (the last attempt's of a replayed one), and each line, whatever its world
    # size, is its rank's slice of the step's planned global batch
    assert {ln["step"] for ln in lines} == set(range(1, total + 1))
    for ln in lines:
        part = G // ln["world"]
        assert ln["keys"] == planned[ln["step"] - 1][ln["rank"] * part:(ln["rank"] + 1) * part], ln
    assert {ln["world"] for ln in lines} == {1, 2}
    per_epoch = total // epochs
    for e in range(epochs):
        keys = [k for step in planned[e * per_epoch:(e + 1) * per_epoch] for k in step]
        assert len(keys) == len(set(keys))  # each sample once in the epoch
    # visible: the world size as a metric, each resize as an event in resizes.json
    sizes = [v for _, v in _history(tmp_path, "world_size")]
    down = sizes.index(1, sizes.index(2))  # 2 workers, then 1, then 2 again
    assert 2 in sizes[down:] and sizes[-1] == 2, sizes
    assert _tag(tmp_path, "resize_count") == str(len(_resizes(tmp_path)))
    moves = [(r["from"], r["to"]) for r in _resizes(tmp_path)]
    assert (2, 1) in moves and moves[-1] == (1, 2), moves


def _resizes(tmp: Path) -> list[dict]:
    """The (one) run's ``resizes.json`` entries: {"step", "from", "to", "checkpoint"}."""
    return _run_list(tmp, "resizes.json", "resizes")
