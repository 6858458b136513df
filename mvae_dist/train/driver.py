"""Launch one training run on Ray Train: TorchTrainer, ScalingConfig, RunConfig, FailureConfig.

The driver creates the MLflow run (params = the resolved config) so that every restarted
worker group logs into the same run; rank 0 logs metrics, images and the final model into it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec

from ..config import TrainConfig
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


def _abs_storage(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _run_exists(run_path: str) -> bool:
    fs, root = fsspec.core.url_to_fs(run_path)
    return fs.exists(root) and bool(fs.ls(root))


def fit(cfg: TrainConfig, *, resume: bool = False, debug_dir: str | None = None,
        ray_address: str | None = None) -> TrainResult:
    """Train ``cfg`` on Ray Train and return where its results are.

    resume: continue the run named ``cfg.train.name`` under ``cfg.train.storage_path`` from its
    latest checkpoint (its MLflow run continues too); without it an existing run of that name
    is an error, so nothing is overwritten.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..tracking import Tracker, default_tracking_uri, find_runs
    from .worker import train_loop_per_worker

    storage = _abs_storage(cfg.train.storage_path)
    run_path = f"{storage.rstrip('/')}/{cfg.train.name}"
    exists = _run_exists(run_path)
    if exists and not resume:
        raise ConfigError(f"a run named {cfg.train.name!r} already exists in {storage}; "
                          "pass --resume to continue it or choose another train.name")
    if resume and not exists:
        raise ConfigError(f"--resume: no run named {cfg.train.name!r} in {storage}")

    uri = cfg.tracking.tracking_uri or default_tracking_uri()
    tracker = Tracker(uri, cfg.tracking.experiment)
    run_id = None
    if resume:
        runs = find_runs(cfg.tracking.experiment, f"tags.ray_run_path = '{run_path}'", tracking_uri=uri)
        run_id = runs[0].run_id if runs else None
    run_id = tracker.start(cfg.tracking.run_name or cfg.train.name, params=cfg.to_dict(),
                           tags={"ray_run_path": run_path, "model": cfg.model.name,
                                 "objective": cfg.objective.name}, run_id=run_id)

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri,
                           "debug_dir": debug_dir},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.train.name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:
        tracker.end("FAILED")
        raise TrainingError(f"training run {cfg.train.name!r} failed: {str(e).splitlines()[0]}") from e
    metrics = dict(result.metrics or {})
    ckpt = result.checkpoint.path if result.checkpoint is not None else None
    if ckpt:
        tracker.log_checkpoint_uri(ckpt, int(metrics.get("step", 0)))
    if metrics.get("aborted_nonfinite"):
        tracker.end("FAILED")
        raise TrainingError(
            f"stopped after {int(metrics.get('nonfinite_steps', 0))} non-finite losses "
            f"(train.max_nonfinite = {cfg.train.max_nonfinite}); last checkpoint: {ckpt}"
        )
    return TrainResult(run_id, uri, ckpt, metrics, run_path)


