"""MNIST from its standard IDX files (plain or gzip-compressed).

The IDX format (LeCun et al.): a big-endian magic number whose third byte is the element
type (0x08 = unsigned byte) and whose fourth byte is the number of dimensions, then one
big-endian uint32 per dimension, then the raw row-major data.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np

from mvae_dist.errors import DataError

# Both spellings occur in the wild: the original site uses "-idx3-ubyte", some mirrors ".idx3-ubyte".
_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed) -> array with the file's shape and dtype."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or padded: header says {shape} ({expected} bytes), "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"MNIST file {stem}[.gz] not found in {directory}")


def load_mnist(directory: str | Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] from the standard MNIST files in a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"MNIST source directory {directory} does not exist")
    img_stem, lbl_stem = _STEMS[split]
    images = read_idx(_find(directory, img_stem))
    labels = read_idx(_find(directory, lbl_stem)).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"MNIST {split} files in {directory} disagree: images {images.shape}, labels {labels.shape}"
        )
    return images.astype(np.uint8), labels
