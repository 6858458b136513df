"""Launch one training run on Ray Train: TorchTrainer, ScalingConfig, RunConfig, FailureConfig.

The driver creates the MLflow run (params = the resolved config) so that every restarted
worker group logs into the same run; rank 0 logs metrics, images and the final model into it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec

from ..config import TrainConfig, absolute_local_paths, load_storage_options
from ..errors import ConfigError, MvaeDistError


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
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    if not lines:
        return type(inner).__name__
    line = lines[-1] if inner is not exc else lines[0]
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


def build_trainer(cfg: TrainConfig, *, run_id: str, tracking_uri: str, storage: RunStorage,
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
            callbacks=list(callbacks) if callbacks else None,
        ),
    )


def fit(cfg: TrainConfig, *, resume: bool = False, debug_dir: str | None = None,
        ray_address: str | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None) -> TrainResult:
    """Train ``cfg`` on Ray Train and return where its results are.

    resume: continue the run named ``cfg.train.name`` under ``cfg.train.storage_path`` from its
    latest checkpoint (its MLflow run continues too); without it an existing run of that name
    is an error, so nothing is overwritten. parent_run_id / tags: make the MLflow run a child
    of an experiment's run, with extra tags.
    """
    import ray

    from ..tracking import Tracker, default_tracking_uri, find_runs

    cfg = TrainConfig.from_dict(absolute_local_paths(cfg.to_dict()))  # workers run elsewhere
    from ..data import open_manifest

    open_manifest(cfg.data.url, load_storage_options(cfg.data.storage_options_file,
                                                     "data.storage_options_file"))  # fail fast, here
    options = load_storage_options(cfg.train.storage_options_file, "train.storage_options_file")
    storage = run_storage(cfg.train.storage_path, cfg.train.name, options)
    run_path = storage.url
    exists = storage.exists()
    where = cfg.train.storage_path
    if exists and not resume:
        raise ConfigError(f"a run named {cfg.train.name!r} already exists in {where}; "
                          "pass --resume to continue it or choose another train.name")
    if resume and not exists:
        raise ConfigError(f"--resume: no run named {cfg.train.name!r} in {where}")

    uri = cfg.tracking.tracking_uri or default_tracking_uri()
    tracker = Tracker(uri, cfg.tracking.experiment)
    run_id = None
    if resume:
        runs = find_runs(cfg.tracking.experiment, f"tags.ray_run_path = '{run_path}'", tracking_uri=uri)
        run_id = runs[0].run_id if runs else None
    run_id = tracker.start(cfg.tracking.run_name or cfg.train.name, params=cfg.to_dict(),
                           tags={**(tags or {}), "ray_run_path": run_path, "model": cfg.model.name,
                                 "objective": cfg.objective.name}, run_id=run_id,
                           parent_run_id=None if run_id else parent_run_id)

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=True)
    trainer = build_trainer(cfg, run_id=run_id, tracking_uri=uri, storage=storage, debug_dir=debug_dir)
    try:
        result = trainer.fit()
    except Exception as e:
        tracker.end("FAILED")
        raise TrainingError(f"training run {cfg.train.name!r} failed: {failure_reason(e)}") from e
    ckpt, metrics = finish_fit(cfg, result, tracker, storage)
    return TrainResult(run_id, uri, ckpt, metrics, run_path)


def finish_fit(cfg: TrainConfig, result: Any, tracker: Any, storage: RunStorage) -> tuple[str | None, dict]:
    """After ``trainer.fit()`` returned: log the last checkpoint's URI to the run -> (checkpoint
    URI or None, last reported metrics); TrainingError (run ended FAILED) when the worker gave
    up on non-finite losses."""
    metrics = dict(result.metrics or {})
    ckpt = storage.checkpoint_url(result.checkpoint.path) if result.checkpoint is not None else None
    if ckpt:
        tracker.log_checkpoint_uri(ckpt, int(metrics.get("step", 0)))
    if metrics.get("aborted_nonfinite"):
        tracker.end("FAILED")
        raise TrainingError(
            f"stopped after {int(metrics.get('nonfinite_steps', 0))} non-finite losses "
            f"(train.max_nonfinite = {cfg.train.max_nonfinite}); last checkpoint: {ckpt}"
        )
    return ckpt, metrics
