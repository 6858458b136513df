"""Shard-level I/O for label propagation: read a pool's shard, batch it, write the pairs kept.

Pairs found related are copied byte for byte (their ``.npy`` payloads and ``.json`` metadata,
ground-truth ``related`` flag included) into new shards written with ``data.shards``, so the
output is an ordinary data set that ``make_loader`` and ``verify`` read. No Ray here: the Ray
workers in ``scale.py`` call these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from mvae_dist.data.manifest import check_shard_bytes, join, url_to_fs
from mvae_dist.data.shards import write_shard
from mvae_dist.data.stream import collate, decode_sample, tar_samples
from mvae_dist.errors import DataError


def event_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Tensor shape the loader gives for a manifest modality shape: [H, W] -> [1, H, W],
    [H, W, C] -> [C, H, W], [D] -> [D]."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return (shape[2], shape[0], shape[1])
    return shape


def read_shard_bytes(url: str, entry: dict, storage_options: dict | None = None) -> bytes:
    """A shard's bytes, checked against its manifest entry (size, sha256); DataError naming it."""
    fs, path = url_to_fs(url, storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise DataError(f"shard missing: {url}") from None
    except OSError as exc:
        raise DataError(f"cannot read shard {url}: {exc}") from exc
    check_shard_bytes(data, entry, url)
    return data


def read_shard(url: str, entry: dict, storage_options: dict | None = None) -> list[dict]:
    """The raw samples of one shard, in order: dicts of ``__key__`` and one bytes value per
    member (``m0.npy``, ..., ``json``)."""
    data = read_shard_bytes(url, entry, storage_options)
    try:
        samples = list(tar_samples(data))
    except Exception as exc:  # tarfile errors, truncated members
        raise DataError(f"corrupt shard {url}: {type(exc).__name__}: {exc}") from exc
    if len(samples) != entry["count"]:
        raise DataError(f"truncated or corrupt shard {url}: {len(samples)} samples, "
                        f"manifest says {entry['count']}")
    return samples


def batches(samples: Sequence[dict], batch_size: int, n_modalities: int) -> Iterator[dict]:
    """Raw samples -> loader-style batch dicts (``xs``, ``labels``, ``ids``, ``related``, ``key``)
    of at most ``batch_size`` pairs, in order."""
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        try:
            yield collate([decode_sample(s, n_modalities) for s in chunk])
        except (KeyError, ValueError) as exc:
            raise DataError(f"corrupt sample {chunk[0].get('__key__')!r}...: {type(exc).__name__}: {exc}") \
                from exc


def write_samples(out: str, rel: str, samples: Iterable[dict], storage_options: dict | None = None) -> dict:
    """Publish raw samples as one shard at ``out/rel`` (atomically) -> its manifest entry."""
    fs, root = url_to_fs(out, storage_options)
    return write_shard(fs, root, rel, samples).entry()


def class_counts(anchor_labels: np.ndarray) -> dict[str, int]:
    """{digit: pairs} by the anchor's (modality 0) label, as the manifest stores it."""
    values, counts = np.unique(np.asarray(anchor_labels, np.int64), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def shard_url(prefix: str, entry: dict) -> str:
    return join(prefix, entry["path"])
