"""SVHN (cropped digits, format 2) from its standard ``{split}_32x32.mat`` files."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from mvae_dist.errors import DataError


def load_svhn(directory: str | Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] (HWC) and labels int64 [N] in 0..9.

    The .mat files store X as [32, 32, 3, N] and label the digit 0 as 10.
    """
    path = Path(directory) / f"{split}_32x32.mat"
    if not path.is_file():
        raise DataError(f"SVHN file {path.name} not found in {directory}")
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise DataError(f"reading {path} needs scipy (pip install scipy); it is not installed") from exc
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DataError(f"cannot read SVHN file {path}: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the 'X' and 'y' arrays of SVHN format 2")
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2))).astype(np.uint8)
    labels = mat["y"].reshape(-1).astype(np.int64) % 10  # 10 -> 0
    if images.shape[1:] != (32, 32, 3) or images.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: unexpected shapes X {mat['X'].shape}, y {mat['y'].shape}")
    return images, labels
