"""Training state <-> a checkpoint directory (what Ray Train persists to the run's storage).

A checkpoint holds model, optimiser and scheduler state, the step / epoch / position in the
epoch, the RNG states and the resolved config, so a restarted worker continues exactly where
the checkpoint was taken. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
FORMAT_VERSION = 1


@dataclass
class Position:
    """Where training stands: optimiser steps taken, current epoch, batches done in it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path, *, text: str | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if text is not None:
        tmp.write_text(text)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: str | os.PathLike, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, position: Position,
                    config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write ``state.pt`` and ``config.yaml`` into ``directory`` (created); returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "position": vars(position).copy(),
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
    }
    _atomic_save(state, d / STATE_FILE)
    _atomic_save(None, d / CONFIG_FILE, text=yaml.safe_dump(config, sort_keys=False))
    return d


def load_checkpoint(directory: str | os.PathLike, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    map_location: str | torch.device = "cpu", restore_rng: bool = True) -> dict[str, Any]:
    """Load state into the given objects; returns {"position": Position, "config", "extra"}."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {directory}")
    state = torch.load(path, map_location=map_location, weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {"position": Position(**state["position"]), "config": state["config"], "extra": state["extra"]}


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The resolved config stored in a checkpoint."""
    return yaml.safe_load((Path(directory) / CONFIG_FILE).read_text())
