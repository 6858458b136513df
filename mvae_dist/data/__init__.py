"""Data layer: sources, pairing, WebDataset shards on any fsspec store, streaming to ranks.

Public API::

    prepare(dataset, out, *, fraction=1.0, source=None, seed=0, shard_size=2000, progress=True,
            storage_options=None, **options) -> manifest dict
    open_manifest(url, storage_options=None) -> manifest dict (validated)
    verify(url, storage_options=None, splits=None) -> summary dict (sha256 of every shard)
    make_loader(url, split, batch_size, *, rank=0, world_size=1, num_workers=0, epoch=0, seed=0,
                shuffle=True, unpaired=False, skip_corrupt=False, storage_options=None, ...) -> Loader
    bench_loader(url, *, batches=50, batch_size=128, storage_options=None, ...) -> JSON-able dict

Names are resolved lazily so that ``mvae_dist.data.pairing`` and the sources import without
webdataset or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare": ".build",
    "PrepareConfig": ".build",
    "open_manifest": ".manifest",
    "verify": ".manifest",
    "make_loader": ".stream",
    "Loader": ".stream",
    "bench_loader": ".bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
