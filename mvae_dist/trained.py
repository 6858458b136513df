"""Where a trained model comes from: a checkpoint URI or an MLflow run.

``load_trained(checkpoint=URI)`` reads a Ray Train checkpoint directory (a local path or any
fsspec URL, e.g. ``s3://bucket/runs/name/checkpoint_...``) written by train/checkpoint.py;
``load_trained(run_id=ID)`` takes the final model an MLflow run logged (``Tracker.log_model``: an
MLflow model, ``runs:/ID/model``; runs of project 0.x logged ``model/state_dict.pt``) or, when
the run has none (it failed or is still running), its last checkpoint (the tag
``last_checkpoint``). Either way the result carries the resolved training config, so evaluation
and label propagation know the data set, the model and the seed the model was trained with.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig
from .errors import ConfigError
from .models.base import MultimodalVAE


@dataclass
class Trained:
    """A model in eval mode with its resolved config; ``step`` is -1 where unknown."""

    model: MultimodalVAE
    config: RunConfig
    step: int
    source: str
    run_id: str | None = None


def load_checkpoint_model(uri: str, storage_options: dict | None = None,
                          device: str | torch.device = "cpu") -> Trained:
    """The model of the checkpoint directory at ``uri`` (local path or fsspec URL)."""
    import fsspec

    from .models import build_model
    from .train.checkpoint import STATE_FILE, load_checkpoint

    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    state = f"{root.rstrip('/')}/{STATE_FILE}"
    if not fs.exists(state):
        raise ConfigError(f"--checkpoint {uri!r} is not a checkpoint directory (no {STATE_FILE})")
    with tempfile.TemporaryDirectory() as tmp:
        fs.get(state, str(Path(tmp) / STATE_FILE))
        blob = torch.load(Path(tmp) / STATE_FILE, map_location="cpu", weights_only=False)
        cfg = RunConfig.from_dict(blob["config"])
        model = build_model(cfg.model)
        meta = load_checkpoint(tmp, model=model, map_location="cpu", restore_rng=False)
    return Trained(model.to(device).eval(), cfg, int(meta["position"].step), uri)


def load_run_model(run_id: str, tracking_uri: str | None = None, storage_options: dict | None = None,
                   device: str | torch.device = "cpu") -> Trained:
    """The final model MLflow run ``run_id`` logged, else the run's last checkpoint."""
    from .tracking import (
        get_run,
        has_logged_model,
        load_logged_model,
        load_run_mlflow_model,
        run_has_artifact,
    )

    record = get_run(run_id, tracking_uri)
    step = int(record.tags.get("model_step", -1))  # tagged by the worker that logged the model
    if has_logged_model(run_id, tracking_uri):
        model, config = load_run_mlflow_model(run_id, tracking_uri)
        cfg = RunConfig.from_dict(config)
        return Trained(model.to(device).eval(), cfg, step, f"runs:/{run_id}/model", run_id)
    if run_has_artifact(run_id, "model/state_dict.pt", tracking_uri):
        model, config = load_logged_model(run_id, tracking_uri)
        cfg = RunConfig.from_dict(config)
        return Trained(model.to(device).eval(), cfg, step, f"runs:/{run_id}/model", run_id)
    ckpt = record.tags.get("last_checkpoint")
    if not ckpt:
        raise ConfigError(f"MLflow run {run_id} has neither a logged model nor a checkpoint")
    trained = load_checkpoint_model(ckpt, storage_options, device)
    trained.run_id = run_id
    return trained


def load_trained(*, checkpoint: str | None = None, run_id: str | None = None,
                 tracking_uri: str | None = None, storage_options: dict | None = None,
                 device: str | torch.device = "cpu") -> Trained:
    """Exactly one of ``checkpoint`` (URI) or ``run_id`` (MLflow) -> the trained model."""
    if (checkpoint is None) == (run_id is None):
        raise ConfigError("give exactly one of --checkpoint URI or --run RUN_ID")
    if checkpoint is not None:
        return load_checkpoint_model(checkpoint, storage_options, device)
    return load_run_model(run_id, tracking_uri, storage_options, device)
