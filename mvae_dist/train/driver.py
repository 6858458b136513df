"""Launch one training run on Ray Train: TorchTrainer, ScalingConfig, RunConfig, FailureConfig.

The driver creates the MLflow run (params = the resolved config) so that every restarted
worker group logs into the same run; rank 0 logs metrics, images and the final model into it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec

from ..config import (
    RunConfig,
    absolute_local_paths,
    applicable,
    durable_output_paths,
    load_storage_options,
    ray_job_working_dir,
    relative_input_hint,
)
from ..data import open_manifest
from ..data.manifest import check_present, verify
from ..errors import ConfigError, DataError, MvaeDistError, one_line
from ..tracking import FAILURE_TAG, Tracker, default_tracking_uri, find_runs, get_run


class TrainingError(MvaeDistError):
    """A run that ended without success (non-finite losses, worker failures past the limit)."""


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    checkpoint: str | None
    metrics: dict[str, Any]
    run_path: str


@dataclass(frozen=True)
class RunStorage:
    """Where Ray Train keeps a run: ``url`` is the run directory (an absolute local path or a URL).

    ``ray_path`` / ``ray_filesystem`` go to ``RunConfig(storage_path=, storage_filesystem=)``:
    with storage options (a remote URL and an options file) the filesystem is the fsspec one
    wrapped for pyarrow, so Ray's workers reach the same endpoint with the same credentials
    as the driver; without, Ray resolves the URL from the standard environment.
    """

    url: str
    ray_path: str
    ray_filesystem: Any
    protocol: str | None
    options: dict | None

    def exists(self) -> bool:
        """True when the run directory exists and is not empty."""
        fs, root = fsspec.core.url_to_fs(self.url, **(self.options or {}))
        return fs.exists(root) and bool(fs.ls(root))

    def has_checkpoint(self) -> bool:
        """True when the run directory holds a Ray Train checkpoint (``checkpoint_*``); a run that
        failed before its first checkpoint leaves only Ray's own files."""
        fs, root = fsspec.core.url_to_fs(self.url, **(self.options or {}))
        if not fs.exists(root):
            return False
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
        return any(n.startswith("checkpoint_") for n in names)

    def checkpoint_url(self, path: str) -> str:
        """A Ray checkpoint's path on the storage filesystem -> a URL others can open."""
        return f"{self.protocol}://{path.lstrip('/')}" if self.protocol and "://" not in path else path


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
    line = one_line(inner, last=inner is not exc)
    return line if ":" in line or inner is exc else f"{type(inner).__name__}: {line}"


def run_storage(storage_path: str, name: str, options: dict | None = None) -> RunStorage:
    """Resolve ``train.storage_path`` (+ its fsspec options) for the run called ``name``."""
    if "://" not in storage_path or storage_path.startswith("file://"):
        root = os.path.abspath(storage_path.removeprefix("file://"))
        return RunStorage(f"{root}/{name}", root, None, None, None)
    protocol = storage_path.split("://", 1)[0]
    url = f"{storage_path.rstrip('/')}/{name}"
    if not options:
        return RunStorage(url, storage_path, None, protocol, None)
    import pyarrow.fs

    fs = fsspec.filesystem(protocol, **options)
    wrapped = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
    return RunStorage(url, fs._strip_protocol(storage_path), wrapped, protocol, options)


def build_trainer(cfg: RunConfig, *, run_id: str, tracking_uri: str, storage: RunStorage,
                  debug_dir: str | None = None, callbacks: list | None = None) -> Any:
    """The TorchTrainer of one run of ``cfg`` -> ``ray.train.torch.TorchTrainer`` (not yet fitted).

    run_id: the MLflow run the workers (rank 0) log into; storage: where Ray Train keeps the
    run (``run_storage(cfg.train.storage_path, cfg.train.name, ...)``); callbacks: Ray Train
    ``UserCallback``s, e.g. Tune's ``TuneReportCallback`` when a sweep trial runs the trainer.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .worker import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri,
                           "debug_dir": debug_dir},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.train.name, storage_path=storage.ray_path,
            storage_filesystem=storage.ray_filesystem,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=[_no_retry_on_data_error(), *(callbacks or [])],
        ),
    )


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
    m = open_manifest(cfg.data.url, options)
    splits = [cfg.data.train_split] + (["test"] if "test" in m["splits"] and cfg.data.train_split != "test"
                                        else [])
    (verify if verify_sha256 else check_present)(cfg.data.url, options, splits=splits, manifest=m)
    return m


def fit(cfg: RunConfig, *, resume: bool = False, debug_dir: str | None = None,
        ray_address: str | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None, verify_data: bool = False) -> TrainResult:
    """Train ``cfg`` on Ray Train and return where its results are.

    resume: continue the run named ``cfg.train.name`` under ``cfg.train.storage_path`` from its
    latest checkpoint (its MLflow run continues too); without it an existing run of that name
    with a checkpoint is an error, so nothing is overwritten. A run directory without a
    checkpoint (an attempt that failed before its first) is reused, with a line saying so.
    parent_run_id / tags: make the MLflow run a child of an experiment's run, with extra tags.
    verify_data: hash every shard before Ray starts (by default: presence and size only).

    Every way out after the MLflow run is created ends it: FAILED on an error, KILLED on
    Ctrl-C / SIGTERM (KeyboardInterrupt).
    """

    job_dir = ray_job_working_dir()
    given_url = cfg.data.url
    moved, notes = durable_output_paths(cfg.to_dict(), job_dir)
    for note in notes:
        print(f"mvae-dist: {note}", flush=True)
    cfg = RunConfig.from_dict(absolute_local_paths(moved))  # workers run elsewhere
    try:
        preflight_data(cfg, verify_sha256=verify_data)  # fail fast, here
    except DataError as e:
        raise DataError(f"{e}{relative_input_hint(given_url, job_dir)}") from None
    options = load_storage_options(cfg.train.storage_options_file, "train.storage_options_file")
    storage = run_storage(cfg.train.storage_path, cfg.train.name, options)
    run_path = storage.url
    where = cfg.train.storage_path
    if storage.has_checkpoint():
        if not resume:
            raise ConfigError(f"a run named {cfg.train.name!r} already exists in {where}; "
                              "pass --resume to continue it or choose another train.name")
    elif storage.exists():
        print(f"mvae-dist: run {cfg.train.name!r} in {where} has no checkpoint (an earlier attempt "
              f"failed before its first): {'resuming it from step 0' if resume else 'starting it afresh'}",
              flush=True)
    elif resume:
        raise ConfigError(f"--resume: no run named {cfg.train.name!r} in {where}")

    uri = cfg.tracking.tracking_uri or default_tracking_uri()
    tracker = Tracker(uri, cfg.tracking.experiment)
    run_id = None
    if resume:
        runs = find_runs(cfg.tracking.experiment, f"tags.ray_run_path = '{run_path}'", tracking_uri=uri)
        run_id = runs[0].run_id if runs else None
    try:  # from the run's creation on: a signal while its params are logged still ends it
        run_id = tracker.start(cfg.tracking.run_name or cfg.train.name, params=applicable(cfg.to_dict()),
                               tags={**(tags or {}), "ray_run_path": run_path, "model": cfg.model.name,
                                     "objective": cfg.objective.name}, run_id=run_id,
                               parent_run_id=None if run_id else parent_run_id)
        _init_ray(ray_address)
        trainer = build_trainer(cfg, run_id=run_id, tracking_uri=uri, storage=storage, debug_dir=debug_dir)
        try:
            result = trainer.fit()
        except Exception as e:
            raise TrainingError(f"training run {cfg.train.name!r} failed: {failure_reason(e)}") from e
        ckpt, metrics = finish_fit(cfg, result, tracker, storage)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    return TrainResult(run_id, uri, ckpt, metrics, run_path)


#: True once ``fit`` called ``ray.init`` in this process (the CLI then shuts Ray down before its
#: last error line; a Ray instance someone else started, e.g. a test session's, is left alone)
RAY_STARTED_HERE = False


def _init_ray(address: str | None) -> None:
    """``ray.init`` unless Ray is up; a failure to start or reach it is one TrainingError line."""
    import ray

    if ray.is_initialized():
        return
    global RAY_STARTED_HERE
    try:
        ray.init(address=address, log_to_driver=True)
        RAY_STARTED_HERE = True
    except Exception as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise TrainingError(f"cannot start or reach {where}: {one_line(e)}") from e


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
