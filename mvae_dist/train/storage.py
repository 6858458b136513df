"""Ray Train's storage filesystem with transient errors retried.

Ray Train reads and writes a run's checkpoints through a ``pyarrow.fs.FileSystem``: uploads by
``pyarrow.fs.copy_files`` (``create_dir`` + ``open_output_stream`` per file), its checkpoint
index by ``open_output_stream`` / ``open_input_stream``, lookups by ``get_file_info``.
``retrying_pyarrow_fs`` wraps an fsspec filesystem so that each of those operations is retried
under a ``RetryPolicy`` (``mvae_dist.data.retry``) when the store is throttled or briefly
unreachable; when the retries are spent the operation raises StorageUnavailable.

Writes are retried whole: an output stream keeps the file's bytes in memory and uploads them
when it is closed, in one ``fs.pipe_file`` (on S3 one PUT, or one multipart upload completed at
the end: the object appears whole or not at all). On a local filesystem the bytes go to a
temporary name that is renamed into place. So a write that finally fails leaves no object at
its path. Reads reopen the file at the position they had reached and go on.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow
import pyarrow.fs

from mvae_dist.data.retry import RetryPolicy, call_with_retry

T = TypeVar("T")

#: fsspec protocols whose pipe_file writes the target in place (not all or nothing)
_LOCAL_PROTOCOLS = {"file", "local"}


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool(_LOCAL_PROTOCOLS & set(protocols))


def put_whole(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``:
    one ``pipe_file`` on an object store, a temporary name renamed into place on a local disk."""
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise


class _UploadOnClose(io.RawIOBase):
    """A writable stream that keeps its bytes in memory and, on close, puts them at ``path`` whole
    (``put_whole``) under the retry policy; close raises when the upload finally fails."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, policy: RetryPolicy) -> None:
        super().__init__()
        self._fs, self._path, self._policy = fs, path, policy
        self._buf: io.BytesIO | None = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self._buf is None:
            raise ValueError("write to a closed stream")
        return self._buf.write(b)

    def __del__(self) -> None:
        """Dropped unclosed (e.g. ``copy_files`` failed half-way through the file): nothing is
        uploaded (``IOBase.__del__`` would close, i.e. upload the part written so far)."""
        self._buf = None

    def close(self) -> None:
        if self._buf is None:
            return
        data, self._buf = self._buf.getvalue(), None  # closed from here on, even if the upload fails
        try:
            call_with_retry(lambda: put_whole(self._fs, self._path, data),
                            f"writing {self._fs.unstrip_protocol(self._path)}", self._policy)
        finally:
            super().close()


class _ResumingReader(io.RawIOBase):
    """A readable, seekable stream over ``path`` whose reads are retried: after a transient error
    the file is opened again at the position reached."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, policy: RetryPolicy) -> None:
        super().__init__()
        self._fs, self._path, self._policy = fs, path, policy
        self._file: Any = None
        self._pos = 0
        self._size: int = self._retry(self._stat, f"opening {path}")

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return call_with_retry(fn, what, self._policy)

    def _stat(self) -> int:
        info = self._fs.info(self._path)
        if info["type"] != "file":  # as FSSpecHandler: a directory is not found as a file
            raise FileNotFoundError(self._path)
        return int(info["size"])

    def _read_at(self, n: int) -> bytes:
        try:
            if self._file is None:
                self._file = self._fs.open(self._path, "rb")
                self._file.seek(self._pos)
            return self._file.read(n)
        except Exception:
            self._drop_file()
            raise

    def _drop_file(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except Exception:  # a broken connection may fail to close too; the retry reopens
                pass

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        n = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        if n <= 0:
            return b""
        data = self._retry(lambda: self._read_at(n), f"reading {self._fs.unstrip_protocol(self._path)}")
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        if pos != self._pos and self._file is not None:
            try:
                self._file.seek(pos)  # a buffered file seeks within its buffer, without a request
            except Exception:
                self._drop_file()  # the next read reopens it at ``pos``
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self._drop_file()
        super().close()


class RetryingFSSpecHandler(pyarrow.fs.FSSpecHandler):
    """``pyarrow.fs.FSSpecHandler`` whose every operation is retried under ``policy`` (see the
    module docstring); picklable, as Ray Train ships the filesystem to its workers."""

    def __init__(self, fs: fsspec.AbstractFileSystem, policy: RetryPolicy) -> None:
        super().__init__(fs)
        self.policy = policy

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RetryingFSSpecHandler):
            return self.fs == other.fs and self.policy == other.policy
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return call_with_retry(fn, what, self.policy)

    def _retry_delete(self, fn: Callable[[], None], what: str) -> None:
        """A delete retried; a retry that finds the path gone counts as done (the try before it
        deleted it and lost the answer)."""
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            try:
                fn()
            except FileNotFoundError:
                if tries == 1:
                    raise

        self._retry(once, what)

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        op = super().get_file_info
        return self._retry(lambda: op(paths), f"looking up {', '.join(paths[:3])}")

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        op = super().get_file_info_selector
        return self._retry(lambda: op(selector), f"listing {selector.base_dir}")

    def create_dir(self, path: str, recursive: bool) -> None:
        op = super().create_dir
        self._retry(lambda: op(path, recursive), f"creating directory {path}")

    def delete_dir(self, path: str) -> None:
        op = super().delete_dir
        self._retry_delete(lambda: op(path), f"deleting directory {path}")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        op = super().delete_dir_contents
        self._retry(lambda: op(path, missing_dir_ok), f"deleting the contents of {path}")

    def delete_root_dir_contents(self) -> None:
        op = super().delete_root_dir_contents
        self._retry(op, "deleting the contents of the root directory")

    def delete_file(self, path: str) -> None:
        op = super().delete_file
        self._retry_delete(lambda: op(path), f"deleting {path}")

    def move(self, src: str, dest: str) -> None:
        op = super().move
        self._retry(lambda: op(src, dest), f"moving {src} to {dest}")

    def copy_file(self, src: str, dest: str) -> None:
        op = super().copy_file
        self._retry(lambda: op(src, dest), f"copying {src} to {dest}")

    def open_input_stream(self, path: str) -> pyarrow.PythonFile:
        return pyarrow.PythonFile(_ResumingReader(self.fs, path, self.policy), mode="r")

    def open_input_file(self, path: str) -> pyarrow.PythonFile:
        return pyarrow.PythonFile(_ResumingReader(self.fs, path, self.policy), mode="r")

    def open_output_stream(self, path: str, metadata: Any) -> pyarrow.PythonFile:
        return pyarrow.PythonFile(_UploadOnClose(self.fs, path, self.policy), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pyarrow.PythonFile:
        # opened under retry; the appended bytes go as the filesystem writes them (object stores
        # have no append: Ray Train never appends)
        op = super().open_append_stream
        return self._retry(lambda: op(path, metadata), f"opening {path} to append")


def retrying_pyarrow_fs(fs: fsspec.AbstractFileSystem, policy: RetryPolicy) -> pyarrow.fs.PyFileSystem:
    """``fs`` as a pyarrow filesystem (for ``RunConfig(storage_filesystem=...)``) whose operations
    retry transient errors under ``policy`` (``retry.storage_policy(cfg.train)``)."""
    return pyarrow.fs.PyFileSystem(RetryingFSSpecHandler(fs, policy))
