"""Loader throughput: pairs per second through ``make_loader`` (one JSON-able dict)."""

from __future__ import annotations

import time

from .manifest import protocol, url_to_fs
from .stream import make_loader


def bench_loader(
    url: str,
    *,
    batches: int = 50,
    batch_size: int = 128,
    storage_options: dict | None = None,
    split: str = "train",
    num_workers: int = 0,
    unpaired: bool = False,
) -> dict:
    """Time ``batches`` batches (after one warm-up batch) of ``split`` on one rank.

    Returns {"bench": "loader", "source": "local" | "s3" | <fsspec protocol>, "split",
    "batch_size", "batches", "num_workers", "unpaired", "seconds", "pairs_per_s",
    "first_batch_s"}. Decoding to float tensors is included; training is not.
    """
    fs, _ = url_to_fs(url, storage_options)
    proto = protocol(fs)
    loader = make_loader(
        url, split, batch_size, num_workers=num_workers, unpaired=unpaired, storage_options=storage_options
    )
    t0 = time.perf_counter()
    it = iter(loader)
    n_done = pairs = 0
    first = None
    t_start = t0
    for epoch in range(10**9):  # cycle epochs until enough batches were timed
        if epoch:
            loader.set_epoch(epoch)
            it = iter(loader)
        for batch in it:
            if first is None:
                first = time.perf_counter() - t0  # shard fetch + decode + shuffle-buffer fill
                t_start = time.perf_counter()
                continue
            pairs += len(batch["label"])
            n_done += 1
            if n_done >= batches:
                break
        if n_done >= batches:
            break
    seconds = time.perf_counter() - t_start
    return {
        "bench": "loader",
        "source": "local" if proto in ("file", "local") else proto,
        "split": split,
        "batch_size": batch_size,
        "batches": n_done,
        "num_workers": num_workers,
        "unpaired": unpaired,
        "seconds": round(seconds, 4),
        "pairs_per_s": pairs / seconds if seconds > 0 else float("nan"),
        "first_batch_s": round(first or 0.0, 4),
    }
