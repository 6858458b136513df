"""Shard-level I/O for label propagation: read a pool's shard, batch it, write the pairs kept.

Pairs found related are copied byte for byte (their ``.npy`` payloads and ``.json`` metadata,
ground-truth ``related`` flag included) into new shards written with ``data.shards``, so the
output is an ordinary data set that ``make_loader`` and ``verify`` read. No Ray here: the Ray
workers in ``scale.py`` call these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from mvae_dist.data.manifest import join, url_to_fs
from mvae_dist.data.shards import write_shard
from mvae_dist.data.stream import collate, decode_sample, raw_shard_samples, shard_bytes
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


#: a shard's checked bytes / undecoded samples (the loader's own readers)
read_shard_bytes = shard_bytes
read_shard = raw_shard_samples


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
