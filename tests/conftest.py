"""Shared services for the test suite (session fixtures).

S3: a real S3 endpoint, moto's server on 127.0.0.1 at a free port, started once per session
(as s3fs's own tests do). Fake credentials and the endpoint are put in the environment BEFORE
any s3fs filesystem is created (s3fs caches instances), and ``s3_storage_options`` passes the
endpoint explicitly as well, for code that takes fsspec storage options.
"""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def moto_server():
    """Endpoint URL (``http://127.0.0.1:PORT``) of a moto S3 server running for the session."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    fake_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # else botocore probes the cloud metadata address
    }
    saved = {k: os.environ.get(k) for k in [*fake_env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]}
    os.environ.update(fake_env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_storage_options(moto_server) -> dict:
    """fsspec storage options that reach the moto server."""
    return {"client_kwargs": {"endpoint_url": moto_server}, "key": "testing", "secret": "testing"}


@pytest.fixture
def s3_bucket(s3_storage_options) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    fs.invalidate_cache()
    return name


@pytest.fixture
def flaky_s3(moto_server, monkeypatch):
    """(proxy, storage_options): a ``faults.FaultyProxy`` in front of the moto server, fresh for
    the test, and fsspec options that reach moto through it with the client's own retries off, so
    that what a test counts is the project's retries (``mvae_dist/data/retry.py``).

    Left alone, each request is retried below us twice over:
    - botocore 1.43 (legacy retry mode, its default): 5 attempts per request on HTTP 500/502/503/
      504, throttling codes and connection errors, random exponential backoff (up to 1, 2, 4, 8 s).
      ``retries={"max_attempts": N}`` counts RETRIES (N=1: 2 attempts); ``total_max_attempts``
      counts attempts, so 1 means a single try.
    - s3fs 2026.9: ``S3FileSystem.retries = 5`` tries of errors whose text says SlowDown and of
      botocore's HTTPClientError family (0.1·1.7^i s apart); a class attribute, not an option.
    Measured through this proxy with the defaults: a HEAD answered 503 for good costs 5 requests
    and 10 s before s3fs raises, a PUT answered SlowDown 25 requests and 41 s.
    """
    import s3fs

    from .faults import FaultyProxy

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    proxy = FaultyProxy(moto_server)
    options = {"client_kwargs": {"endpoint_url": proxy.endpoint}, "key": "testing", "secret": "testing",
               "config_kwargs": {"retries": {"total_max_attempts": 1}}}
    try:
        yield proxy, options
    finally:
        proxy.close()
        # s3fs caches a filesystem per options: none may outlive its proxy (a later proxy can get
        # the same port, and a cached instance would hold the old one's dead connections)
        s3fs.S3FileSystem.clear_instance_cache()


# ------------------------------------------------------------------------------ MLflow
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_sqlite_uri(tmp_path_factory) -> str:
    """A sqlite MLflow tracking URI (``sqlite:////abs/mlflow.db``) shared by the session.

    A fresh database runs its migrations on first use (several seconds), so tests share one
    store and keep apart by experiment name; artifacts go to ``<dir>/mlartifacts``.
    """
    d = tmp_path_factory.mktemp("mlflow-sqlite")
    return f"sqlite:///{d / 'mlflow.db'}"


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory):
    """An empty MLflow sqlite store with every migration applied, made once per session."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _premigrated_store(request):
    """A test whose own code names ``.../mlflow.db`` (e.g. ``f"sqlite:///{tmp_path}/mlflow.db"``)
    finds that store already created: a copy of ``migrated_mlflow_db`` at ``tmp_path/mlflow.db``.
    Creating a fresh sqlite store runs MLflow's ~50 migrations, 1.6 s a time on this machine;
    the code under test sees the same real store either way (the creation itself is exercised
    by the tests that build their URI elsewhere, e.g. ``mlflow_sqlite_uri``)."""
    fn = getattr(request, "function", None)
    if fn is None or "tmp_path" not in request.fixturenames:
        return
    if not any(isinstance(c, str) and c.endswith("/mlflow.db") for c in fn.__code__.co_consts):
        return
    import shutil

    shutil.copyfile(request.getfixturevalue("migrated_mlflow_db"),
                    request.getfixturevalue("tmp_path") / "mlflow.db")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """URL (``http://127.0.0.1:PORT``) of a real ``mlflow server`` process for the session.

    sqlite backend and file artifact root in a temporary directory, one worker; started in its
    own session so that the whole process group (gunicorn/uvicorn workers) stops with it.
    """
    import contextlib
    import signal
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
           "--default-artifact-root", (d / "artifacts").as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(d / "server.log", "wb")  # closed in finally
    # The job-execution runner (a huey consumer process) is not needed and slows start-up.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                                   f"{(d / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer /health within 60 s: "
                                   f"{(d / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


# --------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="session")
def embedded_text_data(tmp_path_factory) -> str:
    """The M = 3 embedded-text set (dm 1: 4 000 train / 1 000 test tuples), built once per session;
    tests read it, never write into it (CCA scorers go to copies)."""
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("embedded-text") / "embedded-text")
    prepare("embedded-text", out, dm=1, progress=False)
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance shared by the session's training and sweep tests (2 CPUs).

    One ``ray.init`` per session: tests/train and tests/tune both use this fixture. The dashboard
    runs (without it a stopped Tune trial's placement group is never freed).
    """
    ray = pytest.importorskip("ray")

    def ray_address_in_workers() -> None:  # nested: cloudpickle sends it by value, not by module
        """Ray worker set-up hook: ``$RAY_ADDRESS`` is this worker's own cluster.

        Ray Train's PlacementGroupCleaner asks the State API whether its controller lives; with no
        address that API takes /tmp/ray/ray_current_cluster, the latest ``ray start`` or
        ``cluster_utils.Cluster`` on the machine (the multi-node bed, the job-submit test), not the
        cluster it runs in. Its thread then dies on a timeout and a stopped Tune trial's placement
        group is never freed: the next sweep's trials wait for CPUs (seen with the bed beside)."""
        import os

        import ray

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")  # report round trips: ~1 s a fit
    # one node that is never preempted: no PreemptionWatcher actor (a process start) per fit
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not ray.is_initialized():
        # address="local": a new instance even where a `ray start` or the multi-node test bed
        # left /tmp/ray/ray_current_cluster behind (ray.init() would join that cluster)
        ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False,
                 configure_logging=False, runtime_env={"worker_process_setup_hook": ray_address_in_workers})
    yield ray
    ray.shutdown()


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers on the machine's two cores) each worker
    trains with one torch thread, and so do the processes it starts (Ray workers, CLI runs): two
    workers with two threads each on two cores slow each other down several-fold.

    xdist's workers ignore SIGINT (the terminal's Ctrl-C is the controller's), and processes they
    start would inherit that: the default handler is put back, so that a test can interrupt a
    ``mvae-dist`` process as a terminal does."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_itemcollected(item):
    """Every test that uses the session's Ray cluster is slow: ``-m "not slow"`` starts no Ray.

    They are also one xdist group ("ray"): one xdist worker runs them all on one Ray instance.
    (Spread over two workers, each worker's instance has the machine's 2 CPUs to itself on paper
    only.) With ``--dist loadgroup`` the largest group goes first: this one on one worker, the
    multi-node bed (its own group) and everything else on the other. Marked as each item is
    collected: xdist reads the groups in its own ``pytest_collection_modifyitems``."""
    if "ray_cluster" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` the "ray" group must really be one: xdist marks a group by
    suffixing the test's id, which pytest >= 9.2 ignores (pytest-xdist issue 1386), and then
    the group's tests silently spread over both workers. Stop in one line instead."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    loose = [i.nodeid for i in session.items
             if "ray_cluster" in getattr(i, "fixturenames", ()) and not i.nodeid.endswith("@ray")]
    if loose:
        pytest.exit(f"xdist --dist loadgroup did not group {loose[0]} (pytest {pytest.__version__}: "
                    "pytest-xdist needs pytest < 9.2, see pyproject's dev extra)", returncode=4)
