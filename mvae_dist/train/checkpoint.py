"""Training state <-> a checkpoint directory (what Ray Train persists to the run's storage).

A checkpoint holds model, optimiser and scheduler state, the step / epoch / position in the
epoch, the RNG states and the resolved config, so a restarted worker continues exactly where
the checkpoint was taken. Files are written under a temporary name and renamed.

``checkpoint.json`` is written LAST: the step, epoch and the size and sha256 of every other file.
A directory without it was never finished (a write cut short, an upload that failed); one whose
files do not match it is corrupt. ``verify_checkpoint`` tells which, so a resume can skip either
and take the previous good checkpoint (``run_store.newest_good_checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
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
MANIFEST_FILE = "checkpoint.json"
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
    manifest = {"format_version": FORMAT_VERSION, "step": position.step, "epoch": position.epoch,
                "files": {name: _file_entry(d / name) for name in (STATE_FILE, CONFIG_FILE)}}
    _atomic_save(None, d / MANIFEST_FILE, text=json.dumps(manifest, indent=1))  # last: the seal
    return d


def _file_entry(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def read_manifest(directory: str | os.PathLike, fs: Any = None) -> dict[str, Any] | None:
    """The checkpoint's ``checkpoint.json``, or None when it has none (never finished) or it does
    not parse. fs: an fsspec filesystem the directory's path is on (default: the local disk)."""
    try:
        raw = fs.cat_file(f"{directory}/{MANIFEST_FILE}") if fs is not None else \
            (Path(directory) / MANIFEST_FILE).read_bytes()
        m = json.loads(raw)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def verify_checkpoint(directory: str | os.PathLike) -> str | None:
    """None when ``directory`` is a complete checkpoint whose files match its ``checkpoint.json``;
    else why not, in a few words (``"incomplete: no checkpoint.json"``,
    ``"corrupt: state.pt has 1000 bytes, checkpoint.json says 12345"``, ...)."""
    d = Path(directory)
    manifest = read_manifest(d)
    if manifest is None:
        return f"incomplete: no {MANIFEST_FILE} (its write never finished)"
    for name, want in manifest["files"].items():
        path = d / name
        if not path.is_file():
            return f"corrupt: {name} is missing"
        got = _file_entry(path)
        if got["size"] != want.get("size"):
            return f"corrupt: {name} has {got['size']} bytes, {MANIFEST_FILE} says {want.get('size')}"
        if got["sha256"] != want.get("sha256"):
            return f"corrupt: {name} does not match its sha256 in {MANIFEST_FILE}"
    return None


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
