"""Streaming pairs from WebDataset shards to training ranks and DataLoader workers.

Distribution policy (per epoch, deterministic in (seed, epoch)):
1. The split's shards are permuted with ``seed + epoch`` (in order when ``shuffle=False``)
   and dealt round-robin to the ranks, then, within a rank, round-robin to its DataLoader
   workers. Every shard goes to exactly one (rank, worker): no sample is read twice in an
   epoch. There must be at least ``world_size`` shards.
2. Each worker shuffles its samples in a buffer (``shuffle_buffer``) seeded by
   (seed, epoch, rank, worker) and batches them itself.
3. ``drop_last=True`` (training): each worker's batch quota is computed from the manifest's
   shard counts, and quotas are trimmed so that EVERY rank yields the same number of full
   batches, ``len(loader)`` = min over ranks of its full batches. A rank never waits for
   another that has run dry (no hang in collectives); the samples beyond the quota are
   dropped for this epoch only (they differ from epoch to epoch as the shards are dealt
   differently). Like open_clip's ``with_epoch``, but exact and without repeats.
   ``drop_last=False`` (evaluation): every sample once, last batch partial; ranks may then
   yield different numbers of batches.

Elastic runs (``virtual_ranks=V``): the plan above is made for V virtual ranks whatever the
number W of processes that train (W divides V); rank r takes the virtual ranks
r*V/W .. (r+1)*V/W - 1 and its batch at step i is their step-i batches concatenated in order.
Quotas are equal per DataLoader worker across the virtual ranks (the minimum of their full
batches), so every virtual rank's step i comes from the same DataLoader worker at every W. The
global batch of step i (the ranks' batches in rank order) is then the same at every W, and a run
resized at step i reads from step i on what it would have read unresized: every sample of the
epoch's plan once, apart from the steps replayed since the checkpoint.

Unpaired stream (``unpaired=True``): each modality is drawn independently: the worker's
samples are split into their modalities, each shuffled by its own buffer and rng, and
re-zipped, so the i-th item of modality 0 and of modality 1 come from unrelated pairs
(random matches; ``related`` says which happen to share a digit).

Batches are dicts: ``xs`` list of M tensors: floats in [0, 1] (a 2-D modality [H, W] becomes
[B, 1, H, W]; an HWC image [B, C, H, W]; a vector [B, D]) or a sentence's token ids int64
[B, T]; ``label`` int64 [B] (modality 0's digit), ``labels`` int64 [B, M], ``ids`` int64
[B, M] (indices into the unimodal sources), ``related`` bool [B], ``key`` list of B sample keys.

Bad shards: every shard is read whole and checked against the manifest (size, sha256, sample
count); a missing, truncated or corrupt shard raises a DataError naming it, or, with
``skip_corrupt=True``, is skipped and recorded in ``loader.skipped_shards``. Under that
policy a worker that ends short of its quota re-reads its good shards to fill it, so ranks
stay in step (the only case where a sample can repeat in an epoch).

Unavailable storage: a read that fails with a transient error (throttling, HTTP 5xx, a refused
or dropped connection; ``retry.is_transient``) is tried again under the loader's ``retry``
policy, one line on stderr per retry; when the retries are spent it raises StorageUnavailable
(not a DataError: it is never skipped as corrupt, and Ray Train restarts the worker group).
"""

from __future__ import annotations

import io
import itertools
import json
import random
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import torch
import webdataset as wds
from webdataset.gopen import gopen_schemes

from mvae_dist.errors import ConfigError, DataError

from .manifest import check_shard_bytes, join, open_manifest
from .retry import RetryPolicy, call_with_retry

# ---- webdataset <- fsspec -------------------------------------------------------------------

FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory", "hf", "oss", "r2")


def fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """webdataset gopen handler that opens any fsspec URL (kw: fsspec storage options)."""
    return fsspec.open(url, mode, **kw).open()


def register_gopen(schemes: tuple[str, ...] = FSSPEC_SCHEMES) -> None:
    """Let ``webdataset.gopen`` open s3:// (and the other fsspec schemes) through fsspec."""
    for scheme in schemes:
        gopen_schemes[scheme] = fsspec_gopen


register_gopen()


def _open_bytes(url: str, storage_options: dict | None) -> bytes:
    kw = storage_options if "://" in url and not url.startswith("file://") else {}
    with wds.gopen(url, "rb", **(kw or {})) as f:
        return f.read()


# ---- planning: which shards and how many batches, per rank and worker -----------------------


def assign_shards(
    n_shards: int, world_size: int, num_workers: int, *, seed: int, epoch: int, shuffle: bool
) -> list[list[list[int]]]:
    """Shard indices per [rank][worker] for one epoch; a partition of range(n_shards)."""
    order = (
        np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n_shards) if shuffle else np.arange(n_shards)
    )
    w = max(1, num_workers)
    return [[order[r::world_size][k::w].tolist() for k in range(w)] for r in range(world_size)]


def batch_quotas(samples: list[list[int]], batch_size: int) -> list[list[int]]:
    """Full batches per [rank][worker] such that every rank has the same total.

    samples: sample count per [rank][worker]. Each worker can make floor(n / B) full batches;
    the common total is the minimum over ranks, reached by trimming the largest quotas first.
    """
    quotas = [[n // batch_size for n in row] for row in samples]
    target = min(sum(row) for row in quotas)
    for row in quotas:
        while sum(row) > target:
            row[int(np.argmax(row))] -= 1
    return quotas


# ---- decoding -------------------------------------------------------------------------------


def lane_quotas(samples: list[list[int]], batch_size: int) -> list[list[int]]:
    """Full batches per [virtual rank][worker] for an elastic plan: per DataLoader worker the
    minimum over virtual ranks of its full batches, so the virtual ranks step in lockstep.

    samples: sample count per [virtual rank][worker]."""
    lanes = [min(row[k] // batch_size for row in samples) for k in range(len(samples[0]))]
    return [list(lanes) for _ in samples]


def concat_batches(parts: list[dict]) -> dict:
    """Batch dicts (``collate``'s form) -> one, their rows in order."""
    out: dict[str, Any] = {"xs": [torch.cat([p["xs"][m] for p in parts]) for m in range(len(parts[0]["xs"]))]}
    for k in ("label", "labels", "ids", "related"):
        out[k] = torch.cat([p[k] for p in parts])
    out["key"] = [key for p in parts for key in p["key"]]
    return out


def decode_sample(sample: dict, n_modalities: int) -> dict:
    """A raw WebDataset sample (``json``, ``m{m}.npy``, ``__key__``) -> the form ``collate`` batches."""
    meta = json.loads(sample["json"])
    return {
        "xs": [decode_npy(sample[f"m{m}.npy"]) for m in range(n_modalities)],
        "labels": np.asarray(meta["labels"], np.int64),
        "ids": np.asarray(meta["ids"], np.int64),
        "related": bool(meta["related"]),
        "key": sample["__key__"],
    }


def _tar_members_fast(data: bytes) -> Iterator[tuple[str, bytes]] | None:
    """(name, payload) of plain-file ustar members, or None if the archive needs tarfile.

    Our writer emits only regular files with short names; parsing those 512-byte headers
    directly is ~10x faster than ``tarfile``. Anything else (PAX, GNU long names, links)
    returns None and the caller falls back to ``tarfile``.
    """
    out = []
    pos, n = 0, len(data)
    while pos + 512 <= n:
        header = data[pos : pos + 512]
        if header.count(0) == 512:  # end-of-archive block
            return iter(out)
        if header[156:157] not in (b"0", b"\0") or header[257:262] != b"ustar":
            return None
        chksum = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        if chksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.HeaderError(f"bad header checksum at byte {pos}")
        name = header[:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        start = pos + 512
        if start + size > n:
            raise tarfile.ReadError(f"unexpected end of data in member {name!r}")
        out.append((f"{prefix}/{name}" if prefix else name, data[start : start + size]))
        pos = start + (size + 511) // 512 * 512
    raise tarfile.ReadError("unexpected end of data (no end-of-archive marker)")


def _tar_members_slow(data: bytes) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read()


def tar_samples(data: bytes) -> Iterator[dict]:
    """Group a tar archive's members by key (the name up to the first dot) -> sample dicts.

    Members of one sample are adjacent, as WebDataset writes them (and ``group_by_keys``
    expects); the dict holds ``__key__`` and one bytes value per extension.
    """
    members = _tar_members_fast(data)
    if members is None:
        members = _tar_members_slow(data)
    current: dict | None = None
    for name, payload in members:
        key, _, ext = name.partition(".")
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext] = payload
    if current is not None:
        yield current


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def decode_npy(buf: bytes) -> np.ndarray:
    """Array from ``.npy`` bytes; headers are parsed once per distinct header (np.load is slow)."""
    if buf[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy payload")
    hlen_end = 10 if buf[6] == 1 else 12
    start = hlen_end + int.from_bytes(buf[8:hlen_end], "little")
    head = buf[:start]
    parsed = _NPY_HEADERS.get(head)
    if parsed is None:
        arr = np.load(io.BytesIO(buf), allow_pickle=False)  # validates the header fully
        if arr.dtype.hasobject or np.isfortran(arr) and arr.ndim > 1:
            return arr
        parsed = _NPY_HEADERS[head] = (arr.dtype, arr.shape, start)
        return arr
    dtype, shape, offset = parsed
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(buf) - offset != expected:
        raise ValueError(f".npy payload has {len(buf) - offset} data bytes, header says {expected}")
    return np.frombuffer(buf, dtype, offset=offset).reshape(shape)


def shard_bytes(url: str, entry: dict, storage_options: dict | None = None, verify: bool = True,
                retry: RetryPolicy | None = None) -> bytes:
    """A shard's bytes, checked against its manifest entry (size, sha256) unless not ``verify``;
    DataError naming the shard if it is missing, unreadable or not what the manifest says.

    Transient storage errors are retried under ``retry`` (None: ``RetryPolicy()``); when they
    last through every retry, StorageUnavailable. Only the read is retried: bytes that arrived
    and differ from the manifest are corrupt, not unlucky."""
    try:
        data = call_with_retry(lambda: _open_bytes(url, storage_options), f"reading shard {url}",
                               retry or RetryPolicy())
    except FileNotFoundError:
        raise DataError(f"shard missing: {url}") from None
    except OSError as exc:
        raise DataError(f"cannot read shard {url}: {exc}") from exc
    if verify:
        check_shard_bytes(data, entry, url)
    return data


def raw_shard_samples(url: str, entry: dict, storage_options: dict | None = None,
                      verify: bool = True, retry: RetryPolicy | None = None) -> list[dict]:
    """The undecoded samples of one shard, in order: dicts of ``__key__`` and one bytes value per
    member (``m0.npy``, ..., ``json``); DataError naming the shard if it is missing or bad
    (``retry``: see ``shard_bytes``)."""
    data = shard_bytes(url, entry, storage_options, verify, retry)
    try:
        samples = list(tar_samples(data))
    except (tarfile.TarError, KeyError, ValueError, EOFError, OSError) as exc:
        raise DataError(f"corrupt shard {url}: {type(exc).__name__}: {exc}") from exc
    if len(samples) != entry["count"]:
        raise DataError(
            f"truncated or corrupt shard {url}: {len(samples)} samples, manifest says {entry['count']}"
        )
    return samples


def shard_samples(
    url: str, entry: dict, n_modalities: int, storage_options: dict | None = None, verify: bool = True,
    retry: RetryPolicy | None = None,
) -> list[dict]:
    """All decoded samples of one shard; DataError naming the shard if it is missing or bad
    (``retry``: see ``shard_bytes``)."""
    raw = raw_shard_samples(url, entry, storage_options, verify, retry)
    try:
        return [decode_sample(s, n_modalities) for s in raw]
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"corrupt shard {url}: {type(exc).__name__}: {exc}") from exc


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 arrays -> float [B, ...] in [0, 1]: [H, W] -> [B, 1, H, W]; HWC -> [B, C, H, W].
    Other integer arrays are token ids (a sentence [T]) -> int64 [B, T]; float arrays (feature
    vectors) -> float32 as stored."""
    if arrays[0].dtype.kind == "f":  # feature vectors, as stored
        return torch.from_numpy(np.stack(arrays).astype(np.float32))
    if arrays[0].dtype != np.uint8:
        return torch.from_numpy(np.stack(arrays).astype(np.int64))
    x = torch.from_numpy(np.stack(arrays))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4:
        x = x.permute(0, 3, 1, 2).contiguous()  # on uint8: a quarter of the bytes to move
    return x.float().mul_(1.0 / 255.0)


def collate(samples: list[dict]) -> dict:
    """Decoded samples -> one batch dict (see the module docstring)."""
    n_mod = len(samples[0]["xs"])
    labels = torch.from_numpy(np.stack([s["labels"] for s in samples]))
    return {
        "xs": [_to_tensor([s["xs"][m] for s in samples]) for m in range(n_mod)],
        "label": labels[:, 0].clone(),
        "labels": labels,
        "ids": torch.from_numpy(np.stack([s["ids"] for s in samples])),
        "related": torch.tensor([s["related"] for s in samples], dtype=torch.bool),
        "key": [s["key"] for s in samples],
    }


def unpair(samples: Iterator[dict], rng: random.Random, bufsize: int) -> Iterator[dict]:
    """Re-zip modalities drawn independently: one shuffle buffer per modality -> samples."""
    bufs: list[list[tuple]] | None = None

    def pop() -> dict:
        parts = []
        for buf in bufs:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            parts.append(buf.pop())
        labels = np.array([p[1] for p in parts], np.int64)
        return {
            "xs": [p[0] for p in parts],
            "labels": labels,
            "ids": np.array([p[2] for p in parts], np.int64),
            "related": bool(np.all(labels == labels[0])),
            "key": "+".join(p[3] for p in parts),
        }

    for s in samples:
        if bufs is None:
            bufs = [[] for _ in s["xs"]]
        for m, buf in enumerate(bufs):
            buf.append((s["xs"][m], int(s["labels"][m]), int(s["ids"][m]), s["key"]))
        if len(bufs[0]) >= bufsize:
            yield pop()
    while bufs and bufs[0]:
        yield pop()


# ---- the per-epoch dataset ------------------------------------------------------------------


class _SkipRecord:
    """Shards a worker skipped (``skip_corrupt=True``), attached to the batches it yields."""

    def __init__(self) -> None:
        self.urls: list[str] = []


class EpochStream(torch.utils.data.IterableDataset):
    """One rank's batches for one epoch; splits its shards further across DataLoader workers.

    ranks: the (virtual) ranks this stream serves, assignment / quotas: per [rank][worker];
    with several ranks a batch is their batches of the step concatenated in order."""

    def __init__(
        self,
        *,
        urls: list[str],
        entries: list[dict],
        assignment: list[list[list[int]]],
        quotas: list[list[int]] | None,
        n_modalities: int,
        batch_size: int,
        ranks: list[int],
        seed: int,
        epoch: int,
        shuffle: bool,
        shuffle_buffer: int,
        unpaired: bool,
        skip_corrupt: bool,
        verify: bool,
        storage_options: dict | None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.urls, self.entries, self.assignment, self.quotas = urls, entries, assignment, quotas
        self.n_modalities, self.batch_size, self.ranks = n_modalities, batch_size, ranks
        self.seed, self.epoch, self.shuffle, self.shuffle_buffer = seed, epoch, shuffle, shuffle_buffer
        self.unpaired, self.skip_corrupt, self.verify = unpaired, skip_corrupt, verify
        self.storage_options, self.retry = storage_options, retry

    def _samples(self, shards: list[int], skipped: _SkipRecord) -> Iterator[dict]:
        for i in shards:
            try:
                yield from shard_samples(
                    self.urls[i], self.entries[i], self.n_modalities, self.storage_options, self.verify,
                    self.retry,
                )
            except DataError:
                if not self.skip_corrupt:
                    raise
                if self.urls[i] not in skipped.urls:
                    skipped.urls.append(self.urls[i])

    def _rng(self, rank: int, worker: int, what: int) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}/{self.epoch}/{rank}/{worker}/{what}".encode()))

    def _one_pass(self, rank: int, shards: list[int], worker: int, skipped: _SkipRecord, attempt: int):
        stages: list[Any] = [lambda: self._samples(shards, skipped)]
        if self.shuffle:
            stages.append(
                wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                            rng=self._rng(rank, worker, attempt))
            )
        if self.unpaired:
            rng = self._rng(rank, worker, 1000 + attempt)
            stages.append(lambda src: unpair(src, rng, self.shuffle_buffer))
        stages.append(wds.batched(self.batch_size, collation_fn=collate, partial=self.quotas is None))
        return wds.DataPipeline(*stages)

    def _batches(self, j: int, worker: int, skipped: _SkipRecord) -> Iterator[dict]:
        """The batches of the j-th rank served, from this DataLoader worker's shards."""
        shards = self.assignment[j][worker]
        quota = None if self.quotas is None else self.quotas[j][worker]
        produced, attempt = 0, 0
        while quota is None or produced < quota:
            yielded_any = False
            for batch in self._one_pass(self.ranks[j], shards, worker, skipped, attempt):
                if quota is not None and produced >= quota:
                    break
                yield batch
                produced += 1
                yielded_any = True
            if quota is None or not yielded_any:
                return
            attempt += 1  # only with skipped shards: refill the quota from the good ones

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        skipped = _SkipRecord()
        streams = [self._batches(j, worker, skipped) for j in range(len(self.ranks))]
        steps = streams[0] if len(streams) == 1 else (
            concat_batches([p for p in parts if p is not None]) for parts in itertools.zip_longest(*streams))
        for batch in steps:
            batch["_skipped"] = list(skipped.urls)
            yield batch


class Loader:
    """Iterable of batch dicts for one rank; ``len()`` batches per epoch, equal on all ranks."""

    def __init__(
        self,
        manifest: dict,
        split: str,
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        epoch: int,
        seed: int,
        shuffle: bool,
        unpaired: bool,
        skip_corrupt: bool,
        storage_options: dict | None,
        drop_last: bool,
        shuffle_buffer: int,
        verify: bool,
        retry: RetryPolicy | None = None,
        virtual_ranks: int | None = None,
    ) -> None:
        if split not in manifest["splits"]:
            raise ConfigError(
                f"split {split!r} not in data set {manifest['prefix']} (has {sorted(manifest['splits'])})"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.manifest, self.split, self.batch_size = manifest, split, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.epoch, self.seed, self.shuffle, self.unpaired = epoch, seed, shuffle, unpaired
        self.skip_corrupt, self.storage_options, self.drop_last = skip_corrupt, storage_options, drop_last
        self.shuffle_buffer, self.verify = max(1, shuffle_buffer), verify
        self.retry = retry or RetryPolicy()
        self.entries = manifest["splits"][split]["shards"]
        self.urls = [join(manifest["prefix"], e["path"]) for e in self.entries]
        self.virtual_ranks = virtual_ranks
        V = virtual_ranks or world_size
        if virtual_ranks is not None and (V % world_size or batch_size * world_size % V):
            raise ConfigError(f"an elastic plan of {V} virtual ranks needs world_size dividing it and a "
                              f"global batch it divides, got world_size={world_size}, "
                              f"batch_size={batch_size}")
        if len(self.entries) < V:
            what = (f"world_size={world_size}" if virtual_ranks is None
                    else f"the {V} virtual ranks of an elastic run")
            raise ConfigError(
                f"split {split!r} has {len(self.entries)} shards, fewer than {what}; "
                "rebuild with a smaller shard_size"
            )
        self.skipped_shards: set[str] = set()
        if drop_last and len(self) == 0:
            raise ConfigError(
                f"batch_size {batch_size} leaves no full batch per rank for split {split!r} "
                f"({manifest['splits'][split]['count']} samples, world_size={world_size})"
            )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shard order and shuffles the next iteration uses."""
        self.epoch = int(epoch)

    @property
    def skipped(self) -> int:
        """Number of distinct shards skipped as corrupt so far (``skip_corrupt=True``)."""
        return len(self.skipped_shards)

    @property
    def served(self) -> list[int]:
        """The (virtual) ranks whose batches this rank's batches are: [rank] unless elastic."""
        if self.virtual_ranks is None:
            return [self.rank]
        per = self.virtual_ranks // self.world_size
        return list(range(self.rank * per, (self.rank + 1) * per))

    @property
    def part_batch(self) -> int:
        """Rows each served (virtual) rank adds to a batch."""
        return self.batch_size // len(self.served)

    def _plan(self) -> tuple[list[list[list[int]]], list[list[int]] | None]:
        assignment = assign_shards(
            len(self.entries),
            self.virtual_ranks or self.world_size,
            self.num_workers,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
        )
        if not self.drop_last:
            return assignment, None
        counts = [[sum(self.entries[i]["count"] for i in w) for w in r] for r in assignment]
        if self.virtual_ranks is not None:
            return assignment, lane_quotas(counts, self.part_batch)
        return assignment, batch_quotas(counts, self.batch_size)

    def __len__(self) -> int:
        assignment, quotas = self._plan()
        first = self.served[0]
        if quotas is not None:
            return sum(quotas[first])
        n = max(sum(self.entries[i]["count"] for w in assignment[v] for i in w) for v in self.served)
        return -(-n // self.part_batch)  # upper bound: workers' partial batches may add more

    def dataset(self) -> EpochStream:
        """The IterableDataset of this rank for the current epoch (for a custom DataLoader)."""
        assignment, quotas = self._plan()
        return EpochStream(
            urls=self.urls,
            entries=self.entries,
            assignment=[assignment[v] for v in self.served],
            quotas=None if quotas is None else [quotas[v] for v in self.served],
            n_modalities=len(self.manifest["modalities"]),
            batch_size=self.part_batch,
            ranks=self.served,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
            shuffle_buffer=self.shuffle_buffer,
            unpaired=self.unpaired,
            skip_corrupt=self.skip_corrupt,
            verify=self.verify,
            storage_options=self.storage_options,
            retry=self.retry,
        )

    def __iter__(self) -> Iterator[dict]:
        ds = self.dataset()
        if self.num_workers == 0:
            source = iter(ds)
        else:
            source = iter(
                torch.utils.data.DataLoader(
                    ds, batch_size=None, num_workers=self.num_workers, persistent_workers=False
                )
            )
        for batch in source:
            self.skipped_shards.update(batch.pop("_skipped"))
            yield batch


def make_loader(
    url: str,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    unpaired: bool = False,
    skip_corrupt: bool = False,
    storage_options: dict | None = None,
    drop_last: bool = True,
    shuffle_buffer: int = 2000,
    verify: bool = True,
    retry: RetryPolicy | None = None,
    virtual_ranks: int | None = None,
) -> Loader:
    """Batches of ``split`` of the data set at ``url`` for one rank (see the module docstring).

    rank / world_size are arguments (never read from the environment). ``len(loader)`` is the
    number of batches this rank yields per epoch (equal on all ranks with drop_last=True);
    call ``loader.set_epoch(e)`` before each epoch for a new, reproducible order. retry: how
    transient storage errors of the manifest and shard reads are retried (None: ``RetryPolicy()``;
    from a run config, ``retry.read_policy(cfg.data)``). virtual_ranks: the elastic plan (the
    module docstring), batch_size still this rank's batch; None: the plan of world_size ranks.
    """
    retry = retry or RetryPolicy()
    manifest = call_with_retry(lambda: open_manifest(url, storage_options), f"reading the manifest of {url}",
                               retry)
    return Loader(
        manifest,
        split,
        batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        epoch=epoch,
        seed=seed,
        shuffle=shuffle,
        unpaired=unpaired,
        skip_corrupt=skip_corrupt,
        storage_options=storage_options,
        drop_last=drop_last,
        shuffle_buffer=shuffle_buffer,
        verify=verify,
        retry=retry,
        virtual_ranks=virtual_ranks,
    )
