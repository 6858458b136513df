"""Writing WebDataset tar shards to any fsspec URL, atomically and reproducibly.

A sample is one pair (or M-tuple): members ``{key}.m{m}.npy`` (the uint8 array of modality m,
as stored in the unimodal source) and ``{key}.json`` ({"labels": [...], "ids": [...],
"related": bool, "index": row}). Images are looked up by index while a shard is being
written, so memory holds one shard (``shard_size`` samples, a few MB), never the data set.

Atomicity: a shard is assembled in memory and then published in one step: on a local disk
written to a temporary name and ``os.replace``-d; on an object store put as one object, which
becomes visible only once complete. Tar headers carry a fixed mtime, owner and mode, so a
shard's bytes, and its sha256, depend only on its content.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import webdataset as wds

from mvae_dist.errors import DataError

from .manifest import protocol, sha256_bytes

SHARD_PATTERN = "{split}/shard-{index:06d}.tar"
#: the suffix of the temporary name ``atomic_write`` gives a file before renaming it (local disks)
_TEMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{8}$")


@dataclass(frozen=True)
class ShardInfo:
    """A written shard: path relative to the prefix, samples, bytes and sha256."""

    path: str
    count: int
    bytes: int
    sha256: str

    def entry(self) -> dict:
        return {"path": self.path, "count": self.count, "bytes": self.bytes, "sha256": self.sha256}


def shard_path(split: str, index: int) -> str:
    return SHARD_PATTERN.format(split=split, index=index)


@functools.lru_cache(maxsize=64)
def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    """``.npy`` (format 1.0) bytes of an array, no pickle; the header is cached per shape."""
    array = np.ascontiguousarray(array)
    return _npy_header(array.shape, np.lib.format.dtype_to_descr(array.dtype)) + array.tobytes()


def encode_pair(
    key: str,
    arrays: Sequence[np.ndarray],
    labels: Sequence[int],
    ids: Sequence[int],
    related: bool,
    index: int,
) -> dict[str, bytes | str]:
    """One WebDataset sample dict: ``__key__``, ``m{m}.npy`` per modality and ``json``."""
    sample: dict[str, bytes | str] = {"__key__": key}
    for m, a in enumerate(arrays):
        sample[f"m{m}.npy"] = encode_npy(a)
    meta = {
        "labels": [int(v) for v in labels],
        "ids": [int(v) for v in ids],
        "related": bool(related),
        "index": int(index),
    }
    sample["json"] = json.dumps(meta, separators=(",", ":")).encode()
    return sample


def tar_bytes(samples: Iterable[dict]) -> tuple[bytes, int]:
    """Serialise samples into one tar archive in memory -> (bytes, sample count)."""
    buf = io.BytesIO()
    n = 0
    # encoder=False: payloads are bytes already. mtime/user/group fixed for reproducible bytes;
    # an integer mtime keeps tarfile from adding a 1 KB PAX header to every member.
    with wds.TarWriter(buf, encoder=False, mtime=0, user="mvae", group="mvae", mode=0o444) as w:
        for s in samples:
            w.write(s)
            n += 1
    return buf.getvalue(), n


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return protocol(fs) in ("file", "local")


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Publish ``data`` at ``path`` so that readers see nothing or all of it."""
    try:
        if is_local(fs):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # see _TEMP_SUFFIX
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            # One PUT: object stores expose an object only once the upload has completed.
            fs.pipe_file(path, data)
    except OSError as exc:
        raise DataError(f"cannot write {protocol(fs)}://{path}: {exc}") from exc


def temp_target(path: str) -> str | None:
    """The path an ``atomic_write`` temporary was going to become (None: not such a temporary)."""
    m = _TEMP_SUFFIX.search(path)
    return path[: m.start()] if m else None


def write_shard(fs: fsspec.AbstractFileSystem, root: str, rel: str, samples: Iterable[dict]) -> ShardInfo:
    """Build one shard from ``samples`` and publish it at ``root/rel`` -> its ShardInfo."""
    data, n = tar_bytes(samples)
    atomic_write(fs, f"{root.rstrip('/')}/{rel}", data)
    return ShardInfo(rel, n, len(data), sha256_bytes(data))
