"""``{prefix}/manifest.json``: what a data set holds, and checks that it is whole.

A manifest (format version 1) is a JSON object::

    {"format_version": 1, "dataset": "embedded", "config": {...builder arguments...},
     "synthetic": ["svhn"],                            # modality names that are synthetic
     "modalities": [{"name": "mnist", "key": "m0.npy", "shape": [28, 28], "dtype": "uint8",
                     "synthetic": false}, ...],
     "splits": {"train": {"count": P, "related": R, "mixed": false,
                          "class_counts": {"0": ..., ...},   # by the anchor's (modality 0) digit
                          "shards": [{"path": "train/shard-000000.tar", "count": 2000,
                                      "bytes": ..., "sha256": "..."}, ...]}, ...},
     "sources": {...}}

Shard paths are relative to the prefix, so a data set can be copied between stores.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec

from mvae_dist.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2"}


def join(prefix: str, rel: str) -> str:
    """``prefix/rel`` for any URL or path (no normalisation of the scheme part)."""
    return prefix.rstrip("/") + "/" + rel.lstrip("/")


def url_to_fs(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path or any fsspec URL."""
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise DataError(f"cannot open storage {url}: {exc}") from exc


def protocol(fs: fsspec.AbstractFileSystem) -> str:
    """The filesystem's main protocol name ("file", "s3", "memory", ...)."""
    p = fs.protocol
    return p if isinstance(p, str) else p[0]


def check_bucket(fs: fsspec.AbstractFileSystem, path: str, url: str) -> None:
    """DataError when ``url`` lives in an object-store bucket that does not exist."""
    if protocol(fs) not in _BUCKET_PROTOCOLS:
        return
    bucket = path.split("/", 1)[0]
    try:
        exists = fs.exists(bucket)
    except Exception as exc:  # credentials, endpoint unreachable, ...: say which URL
        raise DataError(f"cannot reach storage for {url}: {type(exc).__name__}: {exc}") from exc
    if not exists:
        raise DataError(f"bucket {bucket!r} does not exist (from {url})")


def missing(fs: fsspec.AbstractFileSystem, path: str, url: str, what: str) -> DataError:
    """The clearest one-line error for a path that could not be opened."""
    check_bucket(fs, path, url)  # raises the bucket error when that is the cause
    return DataError(f"{what} not found: {url}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_location(url: str) -> tuple[str, str]:
    """(prefix URL, manifest URL) for a prefix or a ``.../manifest.json`` URL."""
    if url.rstrip("/").endswith("/" + MANIFEST) or url == MANIFEST:
        prefix = url.rstrip("/")[: -len(MANIFEST)].rstrip("/")
        return prefix, url
    return url.rstrip("/"), join(url, MANIFEST)


def validate_manifest(m: Any, where: str) -> dict:
    """Structural checks; DataError naming the first problem. Returns ``m``."""
    if not isinstance(m, dict):
        raise DataError(f"{where}: manifest is not a JSON object")
    version = m.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{where}: unsupported format_version {version!r} (this code reads {FORMAT_VERSION})")
    for key in ("dataset", "config", "modalities", "splits", "synthetic"):
        if key not in m:
            raise DataError(f"{where}: manifest lacks {key!r}")
    if not isinstance(m["modalities"], list) or len(m["modalities"]) < 2:
        raise DataError(f"{where}: 'modalities' must list at least 2 modalities")
    for mod in m["modalities"]:
        if not {"name", "key", "shape", "dtype"} <= set(mod):
            raise DataError(f"{where}: modality entry {mod!r} lacks name/key/shape/dtype")
    for name, split in m["splits"].items():
        shards = split.get("shards")
        if not isinstance(shards, list):
            raise DataError(f"{where}: split {name!r} lacks a shard list")
        for s in shards:
            if not {"path", "count", "sha256", "bytes"} <= set(s):
                raise DataError(f"{where}: split {name!r} has a shard entry without path/count/sha256/bytes")
        if sum(s["count"] for s in shards) != split.get("count"):
            raise DataError(f"{where}: split {name!r} count {split.get('count')} != sum of its shard counts")
    return m


def read_json(url: str, storage_options: dict | None = None, what: str = "file") -> Any:
    """Parse one JSON file at a URL; DataError when missing or not JSON."""
    fs, path = url_to_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise missing(fs, path, url, what) from None
    except PermissionError as exc:
        raise DataError(f"permission denied reading {url}: {exc}") from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{url} is not valid JSON: {exc}") from exc


def open_manifest(url: str, storage_options: dict | None = None) -> dict:
    """Read and validate the manifest of a data set -> dict (with ``"prefix"`` set to its prefix).

    ``url`` is the data set's prefix or its manifest.json. A missing bucket, prefix or
    manifest is a DataError with a one-line message.
    """
    prefix, murl = manifest_location(url)
    m = validate_manifest(read_json(murl, storage_options, what="manifest.json"), murl)
    m["prefix"] = prefix
    return m


def verify(url: str, storage_options: dict | None = None, splits: list[str] | None = None,
           manifest: dict | None = None) -> dict:
    """Check every shard's presence, size and sha256 against the manifest.

    Returns {"shards": n, "bytes": total, "splits": [...]}; the first mismatch is a DataError
    naming the shard. Reads every byte of the data set. manifest: the one ``open_manifest``
    returned, if the caller has it (else it is read).
    """
    def check(fs: fsspec.AbstractFileSystem, path: str, entry: dict, shard_url: str) -> int:
        data = fs.cat_file(path)
        check_shard_bytes(data, entry, shard_url)
        return len(data)

    return _each_shard(url, storage_options, splits, check, manifest)


def check_present(url: str, storage_options: dict | None = None, splits: list[str] | None = None,
                  manifest: dict | None = None) -> dict:
    """Check every shard's presence and size against the manifest, reading no shard bytes (one
    metadata request per shard). -> {"shards": n, "bytes": total, "splits": [...]}; the first
    missing or wrong-sized shard is a DataError naming it. ``verify`` also checks sha256."""
    def check(fs: fsspec.AbstractFileSystem, path: str, entry: dict, shard_url: str) -> int:
        size = fs.size(path)
        if size != entry["bytes"]:
            raise DataError(
                f"truncated or corrupt shard {shard_url}: {size} bytes, manifest says {entry['bytes']}"
            )
        return size

    return _each_shard(url, storage_options, splits, check, manifest)


def _each_shard(url: str, storage_options: dict | None, splits: list[str] | None, check: Any,
                manifest: dict | None = None) -> dict:
    """Run ``check(fs, path, entry, shard_url) -> bytes`` on every shard of ``splits`` (all by
    default); a missing shard or split is a DataError naming it. -> the totals."""
    m = manifest or open_manifest(url, storage_options)
    fs, _ = url_to_fs(m["prefix"], storage_options)
    names = splits or list(m["splits"])
    n = total = 0
    for name in names:
        if name not in m["splits"]:
            raise DataError(f"split {name!r} not in {url} (has {sorted(m['splits'])})")
        for entry in m["splits"][name]["shards"]:
            shard_url = join(m["prefix"], entry["path"])
            _, path = url_to_fs(shard_url, storage_options)
            try:
                total += check(fs, path, entry, shard_url)
            except FileNotFoundError:
                raise DataError(f"shard missing: {shard_url}") from None
            n += 1
    return {"shards": n, "bytes": total, "splits": names}


def check_shard_bytes(data: bytes, entry: dict, shard_url: str) -> None:
    """DataError when a shard's bytes differ from its manifest entry (size, then sha256)."""
    if len(data) != entry["bytes"]:
        raise DataError(
            f"truncated or corrupt shard {shard_url}: {len(data)} bytes, manifest says {entry['bytes']}"
        )
    digest = sha256_bytes(data)
    if digest != entry["sha256"]:
        raise DataError(
            f"checksum mismatch in shard {shard_url}: sha256 {digest[:16]}..., "
            f"manifest says {entry['sha256'][:16]}..."
        )
