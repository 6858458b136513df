"""A run's directory in storage (local or any fsspec URL): its checkpoints, Ray's index of them,
and the lock that keeps one name to one run.

Ray Train commits a checkpoint only when every rank's report for it arrives, and remembers the
committed ones in ``checkpoint_manager_snapshot.json``. A node lost between rank 0's upload and
the commit leaves a complete checkpoint that Ray never hands back; a checkpoint deleted by hand
makes Ray refuse the whole run. So the project finds its own checkpoints: every directory
``checkpoint_*`` sealed by a ``checkpoint.json`` that its files match (``checkpoint.py``) is a
candidate, the newest good one is resumed, and Ray's index is repaired to list only checkpoints
that exist and verify. Directories that are neither indexed nor the newest good checkpoint are
orphans, removed when a run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from ..data.retry import RetryPolicy, call_with_retry
from .checkpoint import MANIFEST_FILE, read_manifest, verify_checkpoint

#: Ray Train 2.60's index of committed checkpoints in the run directory
#: (ray/train/v2/_internal/constants.py CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
#: the project's lock in the run directory: who runs this name now
LOCK_FILE = ".mvae-dist-lock.json"
#: written by a driver that is stopping (Ctrl-C, SIGTERM, ``ray job stop``) before it names the run's
#: last checkpoint: rank 0 writes no checkpoint while it exists, so Ray's ``keep_checkpoints``
#: cannot delete the one named while the workers outlive the driver by a moment
STOP_FILE = ".mvae-dist-stopping"
CHECKPOINT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class RunStorage:
    """Where Ray Train keeps a run: ``url`` is the run directory (an absolute local path or a URL).

    ``ray_path`` / ``ray_filesystem`` go to ``RunConfig(storage_path=, storage_filesystem=)``:
    for a remote URL the filesystem is the fsspec one wrapped for pyarrow with every operation
    retried on transient errors (``train/storage.py``), so Ray's workers reach the same endpoint
    with the same credentials as the driver and a throttled store does not kill a checkpoint
    write; for a local path Ray uses the local filesystem.
    """

    url: str
    ray_path: str
    ray_filesystem: Any
    protocol: str | None
    options: dict | None

    def fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """(fsspec filesystem, the run directory's path on it), with no listing cached: Ray's
        workers write the run directory through other clients."""
        fs, root = fsspec.core.url_to_fs(self.url, **(self.options or {}))
        fs.invalidate_cache()
        return fs, root

    def exists(self) -> bool:
        """True when the run directory exists and is not empty."""
        fs, root = self.fs()
        return fs.exists(root) and bool(fs.ls(root))

    def has_checkpoint(self) -> bool:
        """True when the run directory holds a Ray Train checkpoint (``checkpoint_*``); a run that
        failed before its first checkpoint leaves only Ray's own files."""
        return bool(checkpoint_names(self))

    def checkpoint_url(self, path: str) -> str:
        """A checkpoint's path on the storage filesystem -> a URL others can open."""
        return checkpoint_url(self.protocol, path)

    def child_url(self, name: str) -> str:
        """The URL of ``name`` inside the run directory."""
        return f"{self.url.rstrip('/')}/{name}"


def checkpoint_url(protocol: str | None, path: str) -> str:
    """A checkpoint's path on a filesystem of ``protocol`` (None: local) -> a URL others can open."""
    return f"{protocol}://{path.lstrip('/')}" if protocol and "://" not in path else path


def run_storage(storage_path: str, name: str, options: dict | None = None,
                policy: RetryPolicy | None = None) -> RunStorage:
    """Resolve ``train.storage_path`` (+ its fsspec options) for the run called ``name``; remote
    storage gets Ray a filesystem that retries transient errors under ``policy``."""
    if "://" not in storage_path or storage_path.startswith("file://"):
        root = os.path.abspath(storage_path.removeprefix("file://"))
        return RunStorage(f"{root}/{name}", root, None, None, None)
    from .storage import retrying_pyarrow_fs

    protocol = storage_path.split("://", 1)[0]
    fs = fsspec.filesystem(protocol, **(options or {}))
    return RunStorage(f"{storage_path.rstrip('/')}/{name}", fs._strip_protocol(storage_path),
                      retrying_pyarrow_fs(fs, policy or RetryPolicy()), protocol, options)


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_names(store: RunStorage) -> list[str]:
    """Names of the ``checkpoint_*`` directories in the run directory, sorted (Ray names them by
    time, so this is oldest first)."""
    fs, root = store.fs()
    if not fs.exists(root):
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(root, detail=True)
             if e.get("type") == "directory"]  # Ray's checkpoint_manager_snapshot.json is a file
    return sorted(n for n in names if n.startswith(CHECKPOINT_PREFIX))


@contextlib.contextmanager
def local_checkpoint(store: RunStorage, name: str) -> Iterator[Path]:
    """The checkpoint ``name`` as a local directory: itself on a local disk, else a temporary
    download removed on exit."""
    fs, root = store.fs()
    if store.protocol is None:
        yield Path(root) / name
        return
    with tempfile.TemporaryDirectory(prefix="mvae-ckpt-") as tmp:
        for remote in fs.ls(f"{root}/{name}", detail=False):
            fs.get_file(remote, os.path.join(tmp, remote.rstrip("/").rsplit("/", 1)[-1]))
        yield Path(tmp)


@dataclass(frozen=True)
class FoundCheckpoint:
    name: str          # checkpoint_<time>
    url: str           # where it is
    step: int          # optimiser steps it holds


def _say_nothing(line: str) -> None:
    pass


def newest_good_checkpoint(store: RunStorage, say: Callable[[str], None] = _say_nothing,
                           *, verify: bool = True) -> FoundCheckpoint | None:
    """The checkpoint with the highest step that is complete and (``verify``: every file's sha256
    checked; else sizes only) matches its ``checkpoint.json``; None when there is none. Each newer
    directory passed over gets one line through ``say``: ``checkpoint URL skipped (corrupt: ...)``."""
    fs, root = store.fs()
    names = checkpoint_names(store)
    manifests = {n: read_manifest(f"{root}/{n}", fs) for n in names}
    sealed = sorted((n for n in names if manifests[n] is not None),
                    key=lambda n: (int(manifests[n].get("step", -1)), n), reverse=True)
    newest_sealed = sealed[0] if sealed else ""
    for n in names:  # unfinished writes newer than any sealed checkpoint: said, never taken
        if manifests[n] is None and n > newest_sealed:
            say(f"checkpoint {store.child_url(n)} skipped (incomplete: no {MANIFEST_FILE}, "
                "its write never finished)")
    for n in sealed:
        reason = _check(store, fs, root, n, manifests[n], verify)
        if reason is None:
            return FoundCheckpoint(n, store.child_url(n), int(manifests[n]["step"]))
        say(f"checkpoint {store.child_url(n)} skipped ({reason})")
    return None


def _check(store: RunStorage, fs: fsspec.AbstractFileSystem, root: str, name: str, manifest: dict,
           verify: bool) -> str | None:
    if verify:
        for attempt in range(2):
            try:
                with local_checkpoint(store, name) as d:
                    return verify_checkpoint(d)
            except Exception as e:
                if not _store_says_corrupt(e):
                    raise
                if attempt:  # twice: the object, not one transfer, is bad
                    return f"corrupt: the store's checksum of a file does not match its bytes ({e})"
    for file, want in manifest["files"].items():
        try:
            size = fs.size(f"{root}/{name}/{file}")
        except FileNotFoundError:
            return f"corrupt: {file} is missing"
        if size != want.get("size"):
            return f"corrupt: {file} has {size} bytes, {MANIFEST_FILE} says {want.get('size')}"
    return None


def _store_says_corrupt(exc: BaseException) -> bool:
    """Whether the object store itself refused an object's bytes: S3 checks the checksum it
    stored with the object against what it sends (botocore's FlexibleChecksumError), as for a
    file whose upload a lost node cut short. Seen on the multi-node bed with moto."""
    try:
        from botocore.exceptions import FlexibleChecksumError
    except ImportError:  # no S3 stack installed: no such error
        return False
    return isinstance(exc, FlexibleChecksumError) or isinstance(exc.__cause__, FlexibleChecksumError)


def persist_checkpoint(store: RunStorage, directory: str | os.PathLike, *, keep: int,
                       policy: RetryPolicy | None = None) -> FoundCheckpoint:
    """Put a sealed local checkpoint ``directory`` into the run directory as Ray Train names its
    checkpoints (``checkpoint_<local time>``), ``checkpoint.json`` (the seal) last, every file
    retried under ``policy``; then remove the oldest checkpoints past the newest ``keep``.
    -> the stored checkpoint (its URL as ``newest_good_checkpoint`` gives it).

    For local mode (``train.num_workers`` 0), where no Ray Train controller persists a report's
    checkpoint. A write that finally fails removes what it wrote and raises: nothing half-written
    is left for a resume to take."""
    from datetime import datetime

    from .storage import put_whole

    local = Path(directory)
    manifest = read_manifest(local)
    if manifest is None:
        raise ValueError(f"{local} is not a sealed checkpoint (no {MANIFEST_FILE})")
    fs, root = store.fs()
    name = f"{CHECKPOINT_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S.%f}"
    dest = f"{root}/{name}"
    files = sorted((p.name for p in local.iterdir() if p.is_file()), key=lambda f: f == MANIFEST_FILE)
    try:
        fs.makedirs(dest, exist_ok=True)
        for f in files:
            data = (local / f).read_bytes()
            call_with_retry(lambda f=f, data=data: put_whole(fs, f"{dest}/{f}", data),
                            f"writing {store.child_url(name)}/{f}", policy or RetryPolicy())
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(dest, recursive=True)
        raise
    for old in checkpoint_names(store)[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{root}/{old}", recursive=True)
    return FoundCheckpoint(name, store.child_url(name), int(manifest["step"]))


# ---------------------------------------------------------------------- Ray's checkpoint index
def read_ray_snapshot(store: RunStorage) -> dict | None:
    """Ray Train's index of the run's committed checkpoints, or None when there is none."""
    fs, root = store.fs()
    try:
        return json.loads(fs.cat_file(f"{root}/{RAY_SNAPSHOT}"))
    except FileNotFoundError:
        return None


def indexed_names(snapshot: dict | None) -> set[str]:
    """The checkpoint directory names Ray's index refers to."""
    if not snapshot:
        return set()
    results = [*snapshot.get("checkpoint_results", []), *snapshot.get("pending_training_results", []),
               snapshot.get("latest_checkpoint_result") or {}]
    return {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}


def keep_in_snapshot(snapshot: dict, keep: set[str]) -> dict:
    """Ray's index without the checkpoints not in ``keep`` (missing or bad): the committed list, its
    report indices and the latest (then the newest kept one) filtered alike. Pure."""
    out = dict(snapshot)
    pairs = [(r, i) for r, i in zip(snapshot.get("checkpoint_results", []),
                                    snapshot.get("checkpoint_report_indices", []))
             if r.get("checkpoint_dir_name") in keep]
    out["checkpoint_results"] = [r for r, _ in pairs]
    out["checkpoint_report_indices"] = [i for _, i in pairs]
    latest = snapshot.get("latest_checkpoint_result")
    if latest is not None and latest.get("checkpoint_dir_name") not in keep:
        out["latest_checkpoint_result"] = pairs[-1][0] if pairs else None
    pending = [(r, v) for r, v in zip(snapshot.get("pending_training_results", []),
                                      snapshot.get("pending_validation_specs", []))
               if r.get("checkpoint_dir_name") in keep]
    out["pending_training_results"] = [r for r, _ in pending]
    out["pending_validation_specs"] = [v for _, v in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        out[key] = [n for n in snapshot.get(key, []) if n in keep]
    return out


def repair_ray_snapshot(store: RunStorage, good: FoundCheckpoint | None,
                        say: Callable[[str], None] = _say_nothing) -> None:
    """Make Ray's index list only checkpoints that exist and are no newer than ``good`` (the one the
    run resumes from): Ray refuses a run whose index names a missing directory, and would hand
    back a corrupt newest one. Rewritten whole (write then rename / one PUT); Ray has no public
    API for its index."""
    snapshot = read_ray_snapshot(store)
    if snapshot is None:
        return
    fs, root = store.fs()
    present = set(checkpoint_names(store))
    keep = {n for n in present if good is not None and n <= good.name} | ({good.name} if good else set())
    dropped = sorted(indexed_names(snapshot) - keep)
    if not dropped:
        return
    from .storage import put_whole

    put_whole(fs, f"{root}/{RAY_SNAPSHOT}", json.dumps(keep_in_snapshot(snapshot, keep)).encode())
    say(f"Ray's checkpoint index of {store.url} no longer lists {', '.join(dropped)}")


def prune_orphans(store: RunStorage, say: Callable[[str], None] = _say_nothing, *,
                  ended: bool = True) -> list[str]:
    """Remove the checkpoint directories that Ray's index does not list and nothing will resume:
    sealed ones other than the newest good checkpoint (corrupt, or superseded uncommitted ones),
    and unsealed ones (writes that never finished) once a good one exists: all of them when the
    run has ``ended`` (no worker writes any more), else only those older than the newest good one.
    Kept: Ray's, the newest good one (a complete checkpoint whose commit a lost node prevented),
    and unsealed directories while no good checkpoint exists (they may be checkpoints from before
    sealing). -> the names removed."""
    fs, root = store.fs()
    names = checkpoint_names(store)
    indexed = indexed_names(read_ray_snapshot(store))
    newest = newest_good_checkpoint(store, verify=False)
    orphans = []
    for n in names:
        if n in indexed or (newest is not None and n == newest.name):
            continue
        sealed = read_manifest(f"{root}/{n}", fs) is not None
        if sealed or (newest is not None and (ended or n < newest.name)):
            orphans.append(n)
    for n in orphans:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{root}/{n}", recursive=True)
    if orphans:
        say(f"removed {len(orphans)} orphaned checkpoint director{'y' if len(orphans) == 1 else 'ies'} "
            f"of {store.url}: {', '.join(orphans)}")
    return orphans


# ------------------------------------------------------------------------------- the lock
def mark_stopping(store: RunStorage) -> None:
    """Tell the run's workers to write no more checkpoints (``STOP_FILE``)."""
    fs, root = store.fs()
    fs.pipe_file(f"{root}/{STOP_FILE}", b"stopping\n")


def clear_stopping(store: RunStorage) -> None:
    """A new start of the run (fresh or ``--resume``) forgets an earlier stop."""
    fs, root = store.fs()
    if fs.exists(f"{root}/{STOP_FILE}"):
        fs.rm_file(f"{root}/{STOP_FILE}")


def is_stopping(store: RunStorage) -> bool:
    """True while the run's driver is stopping (``mark_stopping``)."""
    fs, root = store.fs()
    return fs.exists(f"{root}/{STOP_FILE}")


def lock_record(token: str) -> dict[str, Any]:
    """What the lock says: a token unique to the attempt, and the process holding the name."""
    return {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def read_lock(store: RunStorage) -> dict | None:
    fs, root = store.fs()
    try:
        return json.loads(fs.cat_file(f"{root}/{LOCK_FILE}"))
    except (FileNotFoundError, ValueError):
        return None


def write_lock(store: RunStorage, record: dict) -> None:
    """Put the lock (whole: write then rename / one PUT)."""
    from .storage import put_whole

    fs, root = store.fs()
    fs.makedirs(root, exist_ok=True)
    put_whole(fs, f"{root}/{LOCK_FILE}", json.dumps(record).encode())


def release_lock(store: RunStorage, token: str) -> None:
    """Remove the lock if it is still the one with ``token``."""
    held = read_lock(store)
    if held is not None and held.get("token") == token:
        fs, root = store.fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{root}/{LOCK_FILE}")


def lock_is_stale(record: dict) -> bool:
    """True when the lock was taken on this host by a process that no longer exists (a driver that
    was SIGKILLed); a lock from another host cannot be judged from here."""
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return int(record.get("pid", 0)) <= 0
