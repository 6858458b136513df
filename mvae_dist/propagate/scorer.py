"""``ShardScorer``: PMI of whole shards with one trained model, and the selection and copies of
label propagation (what each Ray task of ``mvae-dist propagate`` runs; a plain class, used and
tested without Ray)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from mvae_dist.data.manifest import url_to_fs
from mvae_dist.data.shards import atomic_write

from .pools import batches, read_shard, read_shard_bytes, write_samples
from .relatedness import pair_noise, pmi_with_noise


class ShardScorer:
    """Scores whole shards by PMI with one model (what each Ray task runs).

    model: (ModelConfig, state dict), as one ``ray.put`` object hands them to every task; K
    importance samples; pairs are scored ``batch_size`` at a time; ``threads``: torch intra-op
    threads; storage_options: fsspec options for reading shards, out_storage_options for writing
    (default: the same).
    """

    def __init__(self, model: tuple[Any, dict], *, K: int, batch_size: int, seed: int,
                 storage_options: dict | None = None, out_storage_options: dict | None = None,
                 threads: int = 1, device: str = "cpu") -> None:
        from mvae_dist.models import build_model

        if threads > 0:
            torch.set_num_threads(threads)
        model_config, state_dict = model
        self.device = torch.device(device)
        self.model = build_model(model_config)
        self.model.load_state_dict(state_dict)
        self.model.to(self.device).eval()
        self.K, self.batch_size, self.seed = K, batch_size, seed
        self.storage_options = storage_options
        self.out_storage_options = out_storage_options if out_storage_options is not None else storage_options

    def _score(self, samples: list[dict], n_modalities: int) -> dict:
        scores, related, ids, labels, keys = [], [], [], [], []
        for batch in batches(samples, self.batch_size, n_modalities):
            xs = [x.to(self.device) for x in batch["xs"]]
            eps, eps_m = pair_noise(self.model, self.K, batch["key"], self.seed)
            value = pmi_with_noise(self.model, xs, self.K, eps.to(self.device),
                                   [e.to(self.device) for e in eps_m])
            scores.append(value.double().cpu().numpy())
            related.append(batch["related"].numpy())
            ids.append(batch["ids"].numpy())
            labels.append(batch["labels"].numpy())
            keys.extend(batch["key"])
        if not scores:
            empty = np.zeros((0, n_modalities), np.int64)
            return {"scores": np.zeros(0), "related": np.zeros(0, bool), "ids": empty, "labels": empty,
                    "keys": []}
        return {"scores": np.concatenate(scores), "related": np.concatenate(related),
                "ids": np.concatenate(ids), "labels": np.concatenate(labels), "keys": keys}

    def score(self, url: str, entry: dict, n_modalities: int) -> dict:
        """PMI of every pair of one shard -> {scores [P], related [P], ids, labels [P, M], keys,
        seconds}."""
        t0 = time.perf_counter()
        out = self._score(read_shard(url, entry, self.storage_options), n_modalities)
        out["seconds"] = time.perf_counter() - t0
        return out

    def select(self, url: str, entry: dict, n_modalities: int, threshold: float, out: str,
               rel: str) -> dict:
        """Score one shard and publish its pairs with PMI >= threshold at ``out/rel`` (nothing
        when none is) -> score()'s dict plus ``found`` (bool [P]) and ``entry`` (or None)."""
        t0 = time.perf_counter()
        samples = read_shard(url, entry, self.storage_options)
        res = self._score(samples, n_modalities)
        found = res["scores"] >= threshold
        res["found"] = found
        res["entry"] = None
        if found.any():
            kept = [s for s, keep in zip(samples, found) if keep]
            res["entry"] = write_samples(out, rel, kept, self.out_storage_options)
        res["seconds"] = time.perf_counter() - t0
        return res

    def copy(self, url: str, entry: dict, out: str, rel: str) -> dict:
        """Copy one shard unchanged to ``out/rel`` -> its new manifest entry."""
        data = read_shard_bytes(url, entry, self.storage_options)
        fs, root = url_to_fs(out, self.out_storage_options)
        atomic_write(fs, f"{root.rstrip('/')}/{rel}", data)
        return {**entry, "path": rel}
