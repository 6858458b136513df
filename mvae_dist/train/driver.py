"""Launch one training run on Ray Train: TorchTrainer, ScalingConfig, RunConfig, FailureConfig.

The driver creates the MLflow run (params = the resolved config) so that every restarted
worker group logs into the same run; rank 0 logs metrics, images and the final model into it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import (
    RunConfig,
    TrainSection,
    absolute_local_paths,
    applicable,
    durable_output_paths,
    load_storage_options,
    ray_job_working_dir,
    relative_input_hint,
)
from ..data import open_manifest
from ..data.manifest import check_present, verify
from ..data.retry import call_with_retry, read_policy, storage_policy
from ..errors import ConfigError, DataError, MvaeDistError, one_line
from ..tracking import FAILURE_TAG, Tracker, default_tracking_uri, find_runs, get_run, serialized
from .checkpoint import read_manifest
from .run_store import (
    LOCK_FILE,
    FoundCheckpoint,
    RunStorage,
    checkpoint_names,
    checkpoint_url,
    clear_stopping,
    lock_is_stale,
    lock_record,
    mark_stopping,
    newest_good_checkpoint,
    prune_orphans,
    read_lock,
    release_lock,
    repair_ray_snapshot,
    run_storage,
    write_lock,
)


class TrainingError(MvaeDistError):
    """A run that ended without success (non-finite losses, worker failures past the limit)."""


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    checkpoint: str | None
    metrics: dict[str, Any]
    run_path: str


def failure_reason(exc: BaseException) -> str:
    """One line saying why a Ray Train run failed: the lowest rank's own error (its last line, e.g.
    ``DataError: manifest.json not found: ...``) rather than Ray's "Training failed due to worker
    errors:" header; the controller's error; else the exception's first line."""
    inner: Any = exc
    failures = getattr(exc, "worker_failures", None)
    if failures:
        inner = failures[min(failures)]
    elif getattr(exc, "controller_failure", None) is not None:
        inner = exc.controller_failure  # type: ignore[attr-defined]
    inner = getattr(inner, "cause", None) or inner  # a RayTaskError wraps the worker's exception
    if not str(inner).strip():
        return type(inner).__name__
    created = re.match(r"The actor died because of an error raised in its creation task, "
                       r"(?:\x1b\[[0-9;]*m)?ray::(\w+)\.__init__", str(inner))  # Ray may colour the name
    if created:  # e.g. Ray Train's controller refusing a run directory: the cause is the last line
        return f"{created.group(1)} could not start: {one_line(inner, last=True)}"
    line = one_line(inner, last=inner is not exc)
    return line if ":" in line or inner is exc else f"{type(inner).__name__}: {line}"


def build_trainer(cfg: RunConfig, *, run_id: str, tracking_uri: str, storage: RunStorage,
                  debug_dir: str | None = None, callbacks: list | None = None) -> Any:
    """The TorchTrainer of one run of ``cfg`` -> ``ray.train.torch.TorchTrainer`` (not yet fitted).

    run_id: the MLflow run the workers (rank 0) log into; storage: where Ray Train keeps the
    run (``run_storage(cfg.train.storage_path, cfg.train.name, ...)``); callbacks: Ray Train
    ``UserCallback``s, e.g. Tune's ``TuneReportCallback`` when a sweep trial runs the trainer.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from .worker import train_loop_per_worker

    if cfg.train.local_mode:  # Ray's INFO line about local mode: the driver says its own
        logging.getLogger("ray.train.v2.api.config").setLevel(logging.WARNING)
    start_timeout, controller_limit = node_wait(cfg.train.node_wait_s)
    t = cfg.train
    workers = (t.min_workers, t.num_workers) if t.elastic else t.num_workers  # Ray's elastic range
    if t.elastic and controller_limit >= 0:
        # after a loss Ray's elastic policy sizes the next group from a view of the cluster that
        # is stale for up to ELASTIC_VIEW_LAG_S: its tries in that time ask for the lost node's
        # workers too and time out; the tries after size the group to the nodes left
        controller_limit += math.ceil(ELASTIC_VIEW_LAG_S / start_timeout)
    # Ray Train reads its start-up timeout from the driver's environment and hands it on to the
    # controller (ray.train.v2._internal.constants.ENV_VARS_TO_PROPAGATE)
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{start_timeout:g}"
    return _trainer_class()(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri,
                           "debug_dir": debug_dir},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker},
                                     elastic_resize_monitor_interval_s=t.resize_check_s),
        run_config=RunConfig(
            name=cfg.train.name, storage_path=storage.ray_path,
            storage_filesystem=storage.ray_filesystem,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures,
                                         controller_failure_limit=controller_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=[_no_retry_on_data_error(), *(callbacks or []),
                       _checkpoints_to_mlflow(run_id, tracking_uri, cfg.tracking.experiment,
                                              storage.protocol)],
        ),
    )


def _trainer_class() -> type:
    """``TorchTrainer`` less one process per worker-group start: Ray Train 2.x starts a Ray Data
    ``DatasetManager`` actor for every worker group even when the trainer has no Ray Datasets
    (ours stream WebDataset shards themselves). That actor is a Python process importing Ray Data
    (~2 s of CPU, measured) on the start-up path of every run, restart and resize. Without
    datasets its callback is left out; the workers' ``get_dataset_shard`` is then unavailable,
    which this project never calls. Should a Ray version rename the hook, the trainer is plain."""
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            try:
                from ray.train.v2._internal.callbacks import DatasetsCallback
            except ImportError:  # another Ray layout: keep Ray's defaults
                return callbacks
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer


def _checkpoints_to_mlflow(run_id: str, tracking_uri: str, experiment: str, protocol: str | None) -> Any:
    """A Ray Train ``UserCallback`` (it runs in the controller) that logs each checkpoint to the
    MLflow run as Ray persists it: ``checkpoints.json`` and the ``last_checkpoint`` tags, so a run
    that dies or is stopped (``ray job stop``, a lost driver) still names its checkpoints. The
    driver logs the last one again after ``fit()`` (the entry is kept once). A tracking store that
    does not answer costs one warning line, never the run."""
    from ray.train import UserCallback

    class CheckpointsToMlflow(UserCallback):
        def __init__(self) -> None:
            self.tracker: Any = None
            self.warned = False

        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if checkpoint is None:
                return
            step = int((metrics[0] if metrics else {}).get("step", 0))
            url = checkpoint_url(protocol, checkpoint.path)
            try:
                if self.tracker is None:
                    from mvae_dist.tracking import Tracker  # absolute: this class is sent by value

                    self.tracker = Tracker(tracking_uri, experiment=experiment)
                    self.tracker.attach(run_id)
                self.tracker.log_checkpoint_uri(url, step, newer_only=True)
            except Exception as e:  # MLflow down: training goes on, the driver logs the last one
                if not self.warned:
                    self.warned = True
                    import sys

                    print(f"mvae-dist: warning: checkpoint {url} not logged to MLflow: {one_line(e)}",
                          file=sys.stderr, flush=True)

    return CheckpointsToMlflow()


def _no_retry_on_data_error() -> Any:
    """A Ray Train ``UserCallback`` that turns a worker's DataError into a non-retryable failure.

    A missing or corrupt shard is not transient: Ray Train's default policy would restart the
    worker group ``train.max_failures`` times on the same bad file. Raising a ``ControllerError``
    from ``after_exception`` (called on the controller before the failure policy decides) makes
    Ray Train 2.60's policy RAISE at once; ``fit()`` then raises it with the DataError inside.
    """
    from ray.train import ControllerError, UserCallback

    class NoRetryOnDataError(UserCallback):
        def after_exception(self, run_context: Any, worker_exceptions: dict) -> None:
            for rank in sorted(worker_exceptions):
                exc = worker_exceptions[rank]
                # Ray Train wraps the worker's exception (UserExceptionWithTraceback: the original
                # as ``_base_exc``, the traceback as its text); a RayTaskError has ``cause``
                inner = getattr(exc, "_base_exc", None) or getattr(exc, "cause", None) or exc
                last = (str(exc).strip().splitlines() or [""])[-1]
                named = last.startswith(("DataError:", "mvae_dist.errors.DataError:"))
                if isinstance(inner, DataError) or named:
                    message = str(inner) if isinstance(inner, DataError) else last.split(":", 1)[1].strip()
                    raise ControllerError(DataError(message))

    return NoRetryOnDataError()


def preflight_data(cfg: RunConfig, *, verify_sha256: bool = False) -> dict:
    """Before Ray starts: the manifest, and every shard the run reads (the training split and
    ``test`` when there is one) present with its manifest size; with ``verify_sha256`` every byte
    is read and hashed too. -> the manifest. A DataError names the first bad shard."""

    options = load_storage_options(cfg.data.storage_options_file, "data.storage_options_file")
    policy = read_policy(cfg.data)  # a throttled or briefly unreachable store is waited for
    m = call_with_retry(lambda: open_manifest(cfg.data.url, options),
                        f"reading the manifest of {cfg.data.url}", policy)
    splits = [cfg.data.train_split] + (["test"] if "test" in m["splits"] and cfg.data.train_split != "test"
                                        else [])
    shards, need = len(m["splits"].get(cfg.data.train_split, {}).get("shards", [])), cfg.train.virtual_ranks
    if need and shards < need:  # an elastic plan deals shards to lcm(min..max) virtual ranks
        raise ConfigError(f"train.num_workers [{cfg.train.min_workers}, {cfg.train.num_workers}] plans the "
                          f"data for {need} virtual ranks (their lcm), but split {cfg.data.train_split!r} of "
                          f"{cfg.data.url} has {shards} shards: rebuild it with a smaller shard_size or "
                          f"narrow the range")
    check = verify if verify_sha256 else check_present
    call_with_retry(lambda: check(cfg.data.url, options, splits=splits, manifest=m),
                    f"checking the shards of {cfg.data.url}", policy)
    return m


def fit(cfg: RunConfig, *, resume: bool = False, debug_dir: str | None = None,
        ray_address: str | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None, verify_data: bool = False) -> TrainResult:
    """Train ``cfg`` on Ray Train and return where its results are.

    resume: continue the run named ``cfg.train.name`` under ``cfg.train.storage_path`` from its
    newest good checkpoint (its MLflow run continues too); without it an existing run of that
    name with a checkpoint is an error, so nothing is overwritten. A run directory without a
    checkpoint (an attempt that failed before its first) is reused, with a line saying so. A name
    another driver is running (its lock in the run directory, or its MLflow run RUNNING) is refused.
    parent_run_id / tags: make the MLflow run a child of an experiment's run, with extra tags.
    verify_data: hash every shard before Ray starts (by default: presence and size only).

    The order is the contract of docs/failures.md: data and name checked, Ray reached (bounded by
    ``train.address_timeout_s``), and only then the MLflow run created. Every way out after that
    ends it: FAILED on an error, KILLED on Ctrl-C / SIGTERM (KeyboardInterrupt, carrying the last
    checkpoint's URL as ``last_checkpoint``), both tagged with the newest good checkpoint.
    """

    job_dir = ray_job_working_dir()
    given_url = cfg.data.url
    moved, notes = durable_output_paths(cfg.to_dict(), job_dir)
    for note in notes:
        say(note)
    cfg = RunConfig.from_dict(absolute_local_paths(moved))  # workers run elsewhere
    try:
        preflight_data(cfg, verify_sha256=verify_data)  # fail fast, here
    except DataError as e:
        raise DataError(f"{e}{relative_input_hint(given_url, job_dir)}") from None
    options = load_storage_options(cfg.train.storage_options_file, "train.storage_options_file")
    storage = run_storage(cfg.train.storage_path, cfg.train.name, options, storage_policy(cfg.train))
    uri = cfg.tracking.tracking_uri or default_tracking_uri()
    previous = _claim_name(cfg, storage, uri, resume=resume)
    token, taken = _lock(storage), time.monotonic()
    local = cfg.train.local_mode
    try:
        clear_stopping(storage)  # an earlier run of this name was stopped: this one checkpoints
        if local:  # Ray Train's local mode needs no cluster
            say(f"training {cfg.train.name!r} in this process (train.num_workers=0: Ray Train's local mode"
                f"{'; --address ' + ray_address + ' is not used' if ray_address else ''})")
        else:
            _init_ray(ray_address, cfg.train.address_timeout_s)
        _confirm_lock(cfg, storage, token, taken)
    except BaseException:
        release_lock(storage, token)
        raise
    tracker = Tracker(uri, cfg.tracking.experiment)
    started = time.time()
    try:  # from the run's creation on: a signal while its params are logged still ends it
        run_id = tracker.start(cfg.tracking.run_name or cfg.train.name, params=applicable(cfg.to_dict()),
                               tags={**(tags or {}), "ray_run_path": storage.url, "model": cfg.model.name,
                                     "objective": cfg.objective.name},
                               run_id=previous.run_id if previous else None,
                               parent_run_id=None if previous else parent_run_id)
        trainer = build_trainer(cfg, run_id=run_id, tracking_uri=uri, storage=storage, debug_dir=debug_dir)
        try:  # local mode trains in this thread: a signal interrupts it where it is
            result = trainer.fit() if local else _fit_keeping_signals(trainer)
        except Exception as e:
            raise TrainingError(f"training run {cfg.train.name!r} failed: "
                                f"{_why_failed(e, cfg)}") from e
        ckpt, metrics = finish_fit(cfg, result, tracker, storage)
    except KeyboardInterrupt as e:
        with contextlib.suppress(Exception):  # no new checkpoint may push the one named out
            mark_stopping(storage)
            _settle_checkpoints(storage)
        e.last_checkpoint = _end_with_checkpoint(tracker, storage, "KILLED")  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            release_lock(storage, token)
        raise
    except BaseException as e:
        last = _end_with_checkpoint(tracker, storage, "FAILED", previous=previous, since=started)
        with contextlib.suppress(Exception):  # never hides the error being raised
            release_lock(storage, token)
            if not local:  # local mode has no Ray index: it keeps its own count (persist_checkpoint)
                prune_orphans(storage, say)
        if isinstance(e, TrainingError) and "last good checkpoint" not in str(e):
            raise TrainingError(f"{e}; last checkpoint: {last or 'none'}") from e.__cause__
        raise
    release_lock(storage, token)
    if not local:
        prune_orphans(storage, say)
    return TrainResult(run_id, uri, ckpt, metrics, storage.url)


def say(line: str) -> None:
    """One ``mvae-dist:`` line to the console (stdout, flushed)."""
    print(f"mvae-dist: {line}", flush=True)


@dataclass(frozen=True)
class PreviousRun:
    """The run a ``--resume`` continues: its MLflow run (None when there is none), that run's status
    before this attempt, and the checkpoint it resumes from."""

    run_id: str | None
    status: str | None
    checkpoint: FoundCheckpoint | None


def _claim_name(cfg: RunConfig, storage: RunStorage, uri: str, *, resume: bool) -> PreviousRun | None:
    """Before Ray starts: refuse a name another driver holds, a name already used (without
    ``resume``); with ``resume``, choose the newest good checkpoint (naming each skipped one) and
    repair Ray's index to match. -> the run a resume continues, else None."""
    name, where = cfg.train.name, cfg.train.storage_path
    held = read_lock(storage)
    stale = held is not None and lock_is_stale(held)
    if held is not None and not stale:
        raise ConfigError(f"run {name!r} in {where} is being run by another driver "
                          f"({held.get('host')}, pid {held.get('pid')}); wait for it or stop it "
                          f"(its lock: {storage.child_url(LOCK_FILE)})")
    if stale:
        say(f"run {name!r}: the driver that held it (pid {held.get('pid')}) is gone; taking it over")
    runs = serialized(uri, lambda: find_runs(cfg.tracking.experiment, f"tags.ray_run_path = '{storage.url}'",
                                             tracking_uri=uri))
    running = [r.run_id for r in runs if r.status == "RUNNING"]
    if running and held is None:
        raise ConfigError(f"run {name!r} in {where} is RUNNING in MLflow ({running[0]}) with no driver's "
                          "lock; if no driver runs it, end that MLflow run (e.g. MlflowClient()"
                          f".set_terminated('{running[0]}', 'FAILED')) and start again")
    if storage.has_checkpoint():
        if not resume:
            raise ConfigError(f"a run named {name!r} already exists in {where}; "
                              "pass --resume to continue it or choose another train.name")
        found = newest_good_checkpoint(storage, say)
        if found is not None:
            _refuse_another_world(cfg, storage, found)
        repair_ray_snapshot(storage, found, say)
        prune_orphans(storage, say, ended=False)  # the skipped ones: nothing would ever resume them
        say(f"resuming run {name!r} from step {found.step} ({found.url})" if found else
            f"run {name!r} in {where} has no good checkpoint: resuming it from step 0")
    elif storage.exists():
        found = None
        say(f"run {name!r} in {where} has no checkpoint (an earlier attempt failed before its first): "
            f"{'resuming it from step 0' if resume else 'starting it afresh'}")
    elif resume:
        raise ConfigError(f"--resume: no run named {name!r} in {where}")
    else:
        return None
    if not resume:
        return None
    return PreviousRun(runs[0].run_id if runs else None, runs[0].status if runs else None, found)


def _train_section(train: dict) -> TrainSection:
    """A ``train`` mapping as saved with a checkpoint -> its TrainSection (keys today's schema no
    longer has are left out; missing ones take their defaults)."""
    return TrainSection.build({k: v for k, v in train.items() if k in TrainSection.model_fields})


def data_plan(train: dict, data: dict) -> tuple[str, int, int]:
    """What fixes a run's steps and data order, from its config's ``train`` and ``data`` mappings:
    ("fixed", ranks, per-rank batch) or ("elastic", virtual ranks, global batch). Pure."""
    t = _train_section(train)
    batch = int(data.get("batch_size", 128))
    if t.elastic:
        return "elastic", int(t.virtual_ranks or 0), batch * t.ranks
    return "fixed", t.ranks, batch


def _say_plan(plan: tuple[str, int, int], train: dict, data: dict) -> str:
    if plan[0] == "elastic":
        return (f"elastically on train.num_workers [{train.get('min_workers')}, {train.get('num_workers')}]"
                f" x data.batch_size {data.get('batch_size', 128)} (a global batch of {plan[2]})")
    return f"on {plan[1]} worker(s) x data.batch_size {plan[2]}"


def _refuse_another_world(cfg: RunConfig, storage: RunStorage, found: FoundCheckpoint) -> None:
    """A resume must keep the checkpoint's data plan: for a fixed-size run its number of ranks
    and per-rank batch, for an elastic one its virtual ranks and global batch (any worker count
    in its range then trains it). Otherwise the planned steps, the learning-rate schedule, the
    pool of negatives (the global batch) and the saved position in the epoch's shard plan would
    all silently mean something else."""
    import yaml

    from .checkpoint import CONFIG_FILE

    fs, root = storage.fs()
    saved = yaml.safe_load(fs.cat_file(f"{root}/{found.name}/{CONFIG_FILE}")) or {}
    mine = cfg.to_dict()
    was_t, was_d = saved.get("train", {}), saved.get("data", {})  # a key it lacks: the default
    was, now = data_plan(was_t, was_d), data_plan(mine["train"], mine["data"])
    if was != now:
        t = _train_section(was_t)
        workers = f"[{t.min_workers},{t.num_workers}]" if was[0] == "elastic" else t.num_workers
        raise ConfigError(
            f"--resume: run {cfg.train.name!r} trained {_say_plan(was, was_t, was_d)}; resuming it "
            f"{_say_plan(now, mine['train'], mine['data'])} would change its global batch, step count "
            f"and data order: resume with train.num_workers={workers} "
            f"data.batch_size={was_d.get('batch_size', 128)}")


def _lock(storage: RunStorage) -> str:
    """Take the run's lock -> its token (unique to this attempt)."""
    record = lock_record(uuid.uuid4().hex)
    write_lock(storage, record)
    return record["token"]


#: seconds between writing the lock and reading it back: two drivers that passed the check at
#: once both write it, the later write wins, and the earlier writer sees the other's token
LOCK_SETTLE_S = 1.0


def _confirm_lock(cfg: RunConfig, storage: RunStorage, token: str, taken: float) -> None:
    """The lock still ours ``LOCK_SETTLE_S`` after ``taken`` (time.monotonic()), else another
    driver started this name at the same moment: refused."""
    time.sleep(max(0.0, LOCK_SETTLE_S - (time.monotonic() - taken)))
    held = read_lock(storage)
    if held is None or held.get("token") != token:
        who = f"{held.get('host')}, pid {held.get('pid')}" if held else "unknown"
        raise ConfigError(f"run {cfg.train.name!r} in {cfg.train.storage_path} was started by another "
                          f"driver at the same time ({who}); this one stops")


#: True once a call into Ray was given up on while its thread still runs (``ray.init`` retrying an
#: absent cluster, ``fit`` when a signal came): the CLI then leaves the process at once, without
#: ``ray.shutdown()`` (which, under a thread blocked in Ray, can crash the process: exit -11) or the
#: interpreter's own exit (that thread would block it and print past the error line)
ABANDONED_RAY_THREAD = False

#: True once ``fit`` called ``ray.init`` in this process (the CLI then shuts Ray down before its
#: last error line; a Ray instance someone else started, e.g. a test session's, is left alone)
RAY_STARTED_HERE = False


def _init_ray(address: str | None, timeout_s: float = 30.0) -> None:
    """``ray.init`` unless Ray is up; a failure to start or reach it is one TrainingError line.

    Joining a cluster (an address given or in ``$RAY_ADDRESS``) is bounded by ``timeout_s``: Ray's
    own client retries an absent GCS for minutes, deaf to SIGTERM, so it runs in a thread this
    one waits for (signals still reach this one). Our SIGTERM handler is put back afterwards:
    ``ray.init`` replaces it with its own.
    """
    import ray

    if ray.is_initialized():
        return
    global RAY_STARTED_HERE
    target = address or os.environ.get("RAY_ADDRESS")
    target = None if target == "local" else target  # Ray's word for "start one here"
    where = f"the Ray cluster at {target}" if target else "a local Ray instance"
    handler = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    try:
        if target:
            logging.getLogger("ray._private.worker").addFilter(_no_sigterm_warning)
            _bounded(lambda: ray.init(address=address, log_to_driver=True), timeout_s,
                     f"cannot reach {where}: no answer within {timeout_s:g} s (train.address_timeout_s)")
        else:
            ray.init(address=address, log_to_driver=True)
        RAY_STARTED_HERE = True
    except TrainingError:
        raise
    except Exception as e:
        raise TrainingError(f"cannot start or reach {where}: {one_line(e)}") from e
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _no_sigterm_warning(record: logging.LogRecord) -> bool:
    """Drops Ray's "SIGTERM handler is not set because current thread is not the main thread"
    (``ray.init`` from ``_bounded``'s thread): keeping our handler is the point."""
    return not str(record.msg).startswith("SIGTERM handler is not set")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _bounded(fn: Callable[[], Any], timeout_s: float | None, timeout_message: str) -> Any:
    """``fn()`` in a daemon thread while this thread waits in short joins (so that its signal
    handlers run) -> fn's result, or its exception re-raised here; TrainingError
    (``timeout_message``) when ``timeout_s`` passes first (the thread is abandoned)."""
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.is_alive(): see below

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e
        finally:
            done.set()

    global ABANDONED_RAY_THREAD
    t = threading.Thread(target=run, name="mvae-dist-ray", daemon=True)
    t.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while not done.wait(0.25):
            if deadline is not None and time.monotonic() > deadline:
                raise TrainingError(timeout_message)
    except BaseException:  # the timeout, Ctrl-C or SIGTERM: the thread stays blocked inside Ray
        # (Python 3.11's Thread.join, interrupted by a signal's exception, marks a thread that still
        # runs as stopped: is_alive() then says False, and ray.shutdown() under it crashed, exit -11)
        ABANDONED_RAY_THREAD = not done.is_set()
        raise
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _fit_keeping_signals(trainer: Any) -> Any:
    """``trainer.fit()``, in a thread when this is the main thread: Ray Train then installs no
    SIGINT handler of its own, so Ctrl-C and SIGTERM reach ours (KeyboardInterrupt here)."""
    if not _main_thread():
        return trainer.fit()
    return _bounded(trainer.fit, None, "")


def _why_failed(exc: BaseException, cfg: RunConfig) -> str:
    """``failure_reason``, except for the cluster lacking room for the workers past
    ``train.node_wait_s`` (Ray's start-up timeouts), which is said as such."""
    controller = getattr(exc, "controller_failure", None)
    if type(controller).__name__ in ("WorkerGroupStartupTimeoutError", "WorkerGroupStartupFailedError"):
        t = cfg.train
        n = t.min_workers if t.elastic else t.num_workers
        return (f"the cluster had no room for {n} worker{'s' if n != 1 else ''} "
                f"({t.cpus_per_worker:g} CPU"
                f"{', 1 GPU' if t.use_gpu else ''} each) for {t.node_wait_s:g} s (train.node_wait_s): "
                "a node was lost and none came back")
    return failure_reason(exc)


#: how long Ray 2.60's view of the cluster, from which an elastic run's next worker group is sized,
#: may still count a lost node: its AutoscalingCoordinator refreshes every 20 s, after the GCS has
#: marked the node dead (~15 s of missed health checks)
ELASTIC_VIEW_LAG_S = 40.0


def node_wait(node_wait_s: float, start_timeout_s: float = 60.0) -> tuple[float, int]:
    """``train.node_wait_s`` -> (Ray Train's worker-group start-up timeout, its controller failure
    limit): after a node is lost Ray retries starting the group, each try bounded by the timeout,
    and gives up after limit + 1 tries; 0 keeps Ray's default (retry forever). Pure."""
    if node_wait_s <= 0:
        return start_timeout_s, -1
    timeout = min(start_timeout_s, node_wait_s)
    return timeout, max(0, math.ceil(node_wait_s / timeout) - 1)


#: how long a stopping driver waits for a checkpoint rank 0 was writing when the stop came (within
#: ``ray job stop``'s 3 s before SIGKILL)
SETTLE_S = 1.5


def _settle_checkpoints(storage: RunStorage, limit_s: float = SETTLE_S) -> None:
    """Wait (at most ``limit_s``) until no checkpoint directory is half-written: one rank 0 began
    before the stop either completes (and is named) or stays incomplete (and is not)."""
    deadline, (fs, root) = time.monotonic() + limit_s, storage.fs()
    while time.monotonic() < deadline:
        names = checkpoint_names(storage)  # lists afresh (no cached listing)
        if not names or read_manifest(f"{root}/{names[-1]}", fs) is not None:
            return
        time.sleep(0.1)


def _end_with_checkpoint(tracker: Tracker, storage: RunStorage, status: str, *,
                         previous: PreviousRun | None = None, since: float | None = None) -> str | None:
    """End the MLflow run ``status``, tagged with the newest complete checkpoint -> its URL.

    A resume that failed before it logged a step or wrote a checkpoint leaves the earlier run's
    status as it was (a FINISHED run stays FINISHED)."""
    try:  # on the way out of a failure: a store that is down too must not hide the first error
        last = newest_good_checkpoint(storage, verify=False)
    except Exception:
        last = None
    if tracker.run_id is None:
        return last.url if last else None
    if last is not None:
        tracker.log_checkpoint_uri(last.url, last.step)
    resumed_from = previous.checkpoint.name if previous and previous.checkpoint else None
    untouched = (previous is not None and previous.status not in (None, "RUNNING") and since is not None
                 and (last.name if last else None) == resumed_from
                 and not tracker.logged_since("loss", since))
    tracker.end(previous.status if untouched else status)  # type: ignore[union-attr,arg-type]
    return last.url if last else None


def finish_fit(cfg: RunConfig, result: Any, tracker: Any, storage: RunStorage) -> tuple[str | None, dict]:
    """After ``trainer.fit()`` returned: log the last checkpoint's URI to the run -> (checkpoint
    URI or None, last reported metrics); TrainingError (run ended FAILED) when the worker gave
    up on non-finite losses."""

    metrics = dict(result.metrics or {})
    ckpt = storage.checkpoint_url(result.checkpoint.path) if result.checkpoint is not None else None
    if ckpt:
        tracker.log_checkpoint_uri(ckpt, int(metrics.get("step", 0)))
    failure = get_run(tracker.run_id, tracker.tracking_uri).tags.get(FAILURE_TAG) if tracker.run_id else None
    if failure:  # the worker gave up (non-finite losses) and wrote no checkpoint of that state
        tracker.end("FAILED")
        raise TrainingError(f"{failure}; last good checkpoint: {ckpt or 'none (none was written before)'}")
    return ckpt, metrics
