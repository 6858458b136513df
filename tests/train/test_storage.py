"""Checkpoint storage with transient errors retried (``mvae_dist/train/storage.py``), on moto through
a proxy that throttles or refuses (``tests/faults.py``), with the calls Ray Train 2.60 makes:
``pyarrow.fs.copy_files`` up and down (its chunk size), ``open_output_stream`` /
``open_input_stream``, ``get_file_info``, ``delete_dir``."""

from __future__ import annotations

import errno
import gc
import pickle
import random
import time

import pyarrow.fs
import pytest
from fsspec.implementations.local import LocalFileSystem

from mvae_dist.data.retry import RetryPolicy
from mvae_dist.errors import StorageUnavailable
from mvae_dist.train.storage import put_whole, retrying_pyarrow_fs

#: retries 0.01, 0.02, 0.04, 0.05, 0.05 s apart
TINY = RetryPolicy(retries=5, base_s=0.01, cap_s=0.05)
#: what Ray Train's ``_pyarrow_fs_copy_files`` passes to ``pyarrow.fs.copy_files``
RAY_CHUNK = 64 * 1024 * 1024


def retry_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("mvae-dist: retry")]


@pytest.fixture
def checkpoint_dir(tmp_path):
    """A checkpoint-like directory: a 1 MiB file and a small one in a subdirectory."""
    src = tmp_path / "checkpoint_000001"
    (src / "extra").mkdir(parents=True)
    (src / "model.pt").write_bytes(random.Random(0).randbytes(1 << 20))
    (src / "extra" / "state.json").write_bytes(b'{"step": 7}')
    return src


def retrying(options: dict, policy: RetryPolicy = TINY) -> pyarrow.fs.PyFileSystem:
    import s3fs

    return retrying_pyarrow_fs(s3fs.S3FileSystem(**options), policy)


def direct(s3_storage_options: dict):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.invalidate_cache()
    return fs


def test_copy_files_through_503s(flaky_s3, s3_bucket, s3_storage_options, checkpoint_dir, capsys):
    proxy, options = flaky_s3
    fs = retrying(options)
    dest = f"{s3_bucket}/runs/r1/checkpoint_000001"
    fs.create_dir(dest)
    proxy.fail(3, after=1)  # the first request passes, the next three are throttled
    n0 = proxy.requests
    pyarrow.fs.copy_files(str(checkpoint_dir), dest, destination_filesystem=fs, chunk_size=RAY_CHUNK)
    assert proxy.pending_failures == 0 and proxy.requests - n0 >= 3 + 2  # 3 failed, 2 PUTs at least
    store = direct(s3_storage_options)
    assert store.cat_file(f"{dest}/model.pt") == (checkpoint_dir / "model.pt").read_bytes()
    assert store.cat_file(f"{dest}/extra/state.json") == b'{"step": 7}'
    assert not [p for p in store.find(dest) if ".tmp" in p]
    lines = retry_lines(capsys.readouterr().err)
    assert len(lines) == 3 and all("OSError: [Errno 16]" in ln for ln in lines), lines

    # and back down, as Ray Train restores a checkpoint, with a throttled request again
    back = checkpoint_dir.parent / "restored"
    proxy.fail(1, after=1)
    pyarrow.fs.copy_files(dest, str(back), source_filesystem=fs, chunk_size=RAY_CHUNK)
    assert proxy.pending_failures == 0
    assert (back / "model.pt").read_bytes() == (checkpoint_dir / "model.pt").read_bytes()
    assert (back / "extra" / "state.json").read_bytes() == b'{"step": 7}'


def test_copy_files_to_a_refusing_store_fails_within_the_bound(flaky_s3, s3_bucket, s3_storage_options,
                                                               checkpoint_dir, capsys):
    proxy, options = flaky_s3
    fs = retrying(options)
    dest = f"{s3_bucket}/runs/r2/checkpoint_000001"
    proxy.refuse()
    t0 = time.monotonic()
    spent = r"failed after 5 retries over 0\.2 s: EndpointConnectionError"
    with pytest.raises(StorageUnavailable, match=spent):
        pyarrow.fs.copy_files(str(checkpoint_dir), dest, destination_filesystem=fs, chunk_size=RAY_CHUNK)
    assert time.monotonic() - t0 < 10
    assert proxy.requests == 0
    proxy.restore()
    assert not direct(s3_storage_options).exists(f"{dest}/model.pt")
    assert len(retry_lines(capsys.readouterr().err)) >= 5


def test_a_write_that_finally_fails_leaves_no_object(flaky_s3, s3_bucket, s3_storage_options, capsys):
    proxy, options = flaky_s3
    fs = retrying(options)
    path = f"{s3_bucket}/runs/r3/checkpoint_manager_snapshot.json"
    fs.create_dir(f"{s3_bucket}/runs/r3")
    stream = fs.open_output_stream(path)
    stream.write(b'{"checkpoints": []}')
    proxy.refuse()  # the upload happens on close: refused on every try
    with pytest.raises(StorageUnavailable, match=rf"^writing s3://{path} failed after 5 retries"):
        stream.close()
    proxy.restore()
    assert not direct(s3_storage_options).exists(path)

    with fs.open_output_stream(path) as stream:  # a second writer, throttled twice, gets through
        stream.write(b'{"checkpoints": [1]}')
        proxy.fail(2)
    assert direct(s3_storage_options).cat_file(path) == b'{"checkpoints": [1]}'
    assert proxy.pending_failures == 0


def test_reads_and_lookups_resume_after_503s(flaky_s3, s3_bucket, s3_storage_options, capsys):
    proxy, options = flaky_s3
    fs = retrying(options)
    data = random.Random(1).randbytes(300_000)
    path = f"{s3_bucket}/runs/r4/checkpoint_000001/model.pt"
    direct(s3_storage_options).pipe_file(path, data)

    proxy.log.clear()
    with fs.open_input_stream(path) as f:
        assert f.read() == data
    first_get = [method for method, _ in proxy.log].index("GET")
    capsys.readouterr()
    proxy.fail(1, after=first_get)  # the request that fetches the bytes: the file is reopened
    with fs.open_input_stream(path) as f:
        assert f.read(1000) == data[:1000]
        assert f.read() == data[1000:]
    assert proxy.pending_failures == 0
    assert [ln.split(": ")[2] for ln in retry_lines(capsys.readouterr().err)] == [f"reading s3://{path}"]

    with fs.open_input_file(path) as f:  # random access, as pyarrow readers use it
        assert f.size() == len(data)
        f.seek(123_456)
        assert f.read(10) == data[123_456:123_466]

    proxy.fail(2)
    info = fs.get_file_info(path)
    assert info.type == pyarrow.fs.FileType.File and info.size == len(data)
    proxy.fail(1)
    assert fs.get_file_info(f"{path}.absent").type == pyarrow.fs.FileType.NotFound
    proxy.fail(1)
    fs.delete_dir(f"{s3_bucket}/runs/r4")
    assert not direct(s3_storage_options).exists(path)
    assert proxy.pending_failures == 0
    with pytest.raises(FileNotFoundError):  # not transient: at once
        fs.open_input_stream(path)


def test_the_filesystem_pickles_for_ray_workers(flaky_s3):
    _, options = flaky_s3
    fs = retrying(options, RetryPolicy(retries=2))
    again = pickle.loads(pickle.dumps(fs))
    assert again == fs and again.handler.policy == RetryPolicy(retries=2)
    assert again.type_name.startswith("py::fsspec+")


class _FlakyLocal(LocalFileSystem):
    """A local disk whose next ``fails`` writes write part of the bytes and then fail (EAGAIN)."""

    def __init__(self, fails: int) -> None:
        super().__init__(skip_instance_cache=True)
        self.fails = fails

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if self.fails:
            self.fails -= 1
            super().pipe_file(path, value[: len(value) // 2], mode=mode, **kwargs)
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        super().pipe_file(path, value, mode=mode, **kwargs)


def test_local_writes_go_whole_or_not_at_all(tmp_path, capsys):
    data = b"x" * 10_000
    put_whole(LocalFileSystem(), str(tmp_path / "plain.bin"), data)
    assert (tmp_path / "plain.bin").read_bytes() == data

    fs = retrying_pyarrow_fs(_FlakyLocal(fails=2), TINY)
    with fs.open_output_stream(str(tmp_path / "ok.bin")) as f:
        f.write(data)
    assert (tmp_path / "ok.bin").read_bytes() == data
    assert len(retry_lines(capsys.readouterr().err)) == 2

    fs = retrying_pyarrow_fs(_FlakyLocal(fails=99), TINY)
    f = fs.open_output_stream(str(tmp_path / "never.bin"))
    f.write(data)
    with pytest.raises(StorageUnavailable, match=r"never\.bin failed after 5 retries"):
        f.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.bin", "plain.bin"]  # no temporaries

    f = retrying_pyarrow_fs(LocalFileSystem(), TINY).open_output_stream(str(tmp_path / "abandoned.bin"))
    f.write(data)
    del f  # dropped unclosed, as when a copy fails half-way: nothing is written
    gc.collect()
    assert not (tmp_path / "abandoned.bin").exists()
