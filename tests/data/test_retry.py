"""Transient storage errors: the backoff, what counts as transient (on the exceptions s3fs really
raises), and shard reads through a proxy that throttles or refuses (``tests/faults.py``)."""

from __future__ import annotations

import errno
import time
import uuid

import pytest

from mvae_dist.config import DataConfig, RunConfig, TrainSection, load_train_config
from mvae_dist.data import make_loader, open_manifest, prepare
from mvae_dist.data.retry import (
    RetryPolicy,
    backoff_delays,
    call_with_retry,
    is_transient,
    read_policy,
    storage_policy,
)
from mvae_dist.data.stream import shard_bytes
from mvae_dist.errors import ConfigError, DataError, MvaeDistError, StorageUnavailable

from .conftest import SMALL

#: retries 0.01, 0.02, 0.04, 0.05, 0.05 s apart: the real code path, in a fraction of a second
TINY = RetryPolicy(retries=5, base_s=0.01, cap_s=0.05)


def retry_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("mvae-dist: retry")]


# ---- the policy -------------------------------------------------------------------------------


def test_backoff_delays_double_up_to_the_cap_and_stop_within_the_bound():
    assert backoff_delays(RetryPolicy()) == [0.5, 1.0, 2.0, 4.0, 8.0]  # 15.5 s in all
    assert backoff_delays(RetryPolicy(retries=8)) == [0.5, 1, 2, 4, 8, 8, 8, 8]
    assert backoff_delays(RetryPolicy(max_wait_s=10.0)) == [0.5, 1, 2, 4]  # +8 would make 15.5
    assert backoff_delays(RetryPolicy(retries=20, max_wait_s=30.0)) == [0.5, 1, 2, 4, 8, 8]
    assert backoff_delays(RetryPolicy(retries=0)) == []
    assert backoff_delays(RetryPolicy(max_wait_s=0.0)) == []
    for retries in (0, 1, 3, 7, 50):
        for max_wait in (0.0, 0.4, 1.5, 9.0, 60.0, 1e6):
            for base, cap in ((0.5, 8.0), (0.01, 0.05), (2.0, 1.0)):
                d = backoff_delays(RetryPolicy(retries, max_wait, base, cap))
                assert len(d) <= retries and sum(d) <= max_wait + 1e-12
                assert all(0 < x <= cap for x in d) and d == sorted(d)


def test_config_keys_and_their_policies():
    cfg = RunConfig()
    assert (cfg.data.read_retries, cfg.data.read_retry_s) == (5, 60.0)
    assert (cfg.train.storage_retries, cfg.train.storage_retry_s) == (5, 60.0)
    assert (cfg.train.node_wait_s, cfg.train.address_timeout_s) == (180.0, 30.0)
    assert read_policy(cfg.data) == RetryPolicy()
    cfg = load_train_config(None, ["data.read_retries=2", "data.read_retry_s=1.5", "train.storage_retries=0",
                                   "train.storage_retry_s=0", "train.node_wait_s=0"])
    assert read_policy(cfg.data) == RetryPolicy(retries=2, max_wait_s=1.5)
    assert backoff_delays(storage_policy(cfg.train)) == []
    with pytest.raises(ConfigError, match=r"^data\.read_retries must be >= 0, got -1$"):
        DataConfig(read_retries=-1)
    with pytest.raises(ConfigError, match=r"^train\.storage_retry_s must be >= 0, got -2"):
        TrainSection(storage_retry_s=-2)
    with pytest.raises(ConfigError, match=r"^train\.address_timeout_s must be > 0, got 0"):
        TrainSection(address_timeout_s=0)
    with pytest.raises(ConfigError, match=r"^data\.read_retries must be an integer, got True"):
        DataConfig(read_retries=True)


def test_call_with_retry_says_each_retry_and_gives_up_with_storage_unavailable():
    said, slept, calls = [], [], []

    def flaky(n_fail: int):
        def fn() -> str:
            calls.append(1)
            if len(calls) <= n_fail:
                raise OSError(errno.EBUSY, "Please reduce your request rate.")
            return "ok"
        return fn

    assert call_with_retry(flaky(2), "reading x", RetryPolicy(), say=said.append, sleep=slept.append) == "ok"
    error = "OSError: [Errno 16] Please reduce your request rate."
    assert said == [f"mvae-dist: retry 1/5 in 0.5 s: reading x: {error}",
                    f"mvae-dist: retry 2/5 in 1.0 s: reading x: {error}"]
    assert slept == [0.5, 1.0] and len(calls) == 3

    said.clear(), slept.clear(), calls.clear()
    with pytest.raises(StorageUnavailable) as info:
        call_with_retry(flaky(99), "reading x", RetryPolicy(), say=said.append, sleep=slept.append)
    assert str(info.value) == ("reading x failed after 5 retries over 15.5 s: "
                               "OSError: [Errno 16] Please reduce your request rate.")
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EBUSY
    assert isinstance(info.value, MvaeDistError) and not isinstance(info.value, DataError)
    assert len(calls) == 6 and slept == [0.5, 1, 2, 4, 8] and len(said) == 5
    assert said[-1].startswith("mvae-dist: retry 5/5 in 8.0 s: reading x: ")

    said.clear(), calls.clear()
    with pytest.raises(StorageUnavailable, match=r"^reading x failed after 0 retries over 0\.0 s: OSError"):
        call_with_retry(flaky(1), "reading x", RetryPolicy(retries=0), say=said.append, sleep=slept.append)
    assert len(calls) == 1 and said == []

    def corrupt() -> None:
        calls.append(1)
        raise DataError("checksum mismatch in shard s3://b/x.tar")

    calls.clear()
    with pytest.raises(DataError, match="checksum mismatch"):  # not transient: raised at once, as is
        call_with_retry(corrupt, "reading x", RetryPolicy(), say=said.append, sleep=slept.append)
    assert len(calls) == 1 and said == []


def test_is_transient_on_plain_exceptions():
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.ETIMEDOUT, "timed out"))
    assert not is_transient(OSError(errno.EIO, "bad thing"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "no such key"))
    assert not is_transient(PermissionError(errno.EACCES, "Access Denied"))
    assert not is_transient(IsADirectoryError(errno.EISDIR, "a directory"))
    assert not is_transient(ValueError("bad tar header"))
    assert not is_transient(DataError("corrupt shard s3://b/SlowDown.tar"))
    assert not is_transient(StorageUnavailable("reading x failed after 5 retries"))  # never nested
    assert not is_transient(KeyboardInterrupt())
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = OSError(errno.EBUSY, "Service Unavailable")
    assert is_transient(wrapped)  # judged by its cause


# ---- through the faulty proxy ---------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_shards(s3_storage_options) -> str:
    """URL of the small data set on moto (written directly, not through a proxy); read-only."""
    import s3fs

    bucket = f"retry-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3_storage_options).mkdir(bucket)
    url = f"s3://{bucket}/ds"
    prepare("embedded", url, storage_options=s3_storage_options, **SMALL)
    return url


def shard(url: str, options: dict, split: str = "train", i: int = 0) -> tuple[str, dict]:
    m = open_manifest(url, options)
    entry = m["splits"][split]["shards"][i]
    return f"{url}/{entry['path']}", entry


def _raised(fn) -> Exception:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_is_transient_on_what_s3fs_raises(s3_shards, flaky_s3):
    import botocore.exceptions
    import s3fs

    proxy, options = flaky_s3
    fs = s3fs.S3FileSystem(**options)
    key = f"{s3_shards[len('s3://'):]}/manifest.json"
    proxy.fail(1)  # a HEAD: no body, botocore's code is "503"
    head_503 = _raised(lambda: fs.info(key))
    proxy.fail(1)  # a PUT: the SlowDown body
    put_503 = _raised(lambda: fs.pipe_file(f"{key}.new", b"{}"))
    proxy.fail(1, 500, "InternalError", "We encountered an internal error. Please try again.")
    get_500 = _raised(lambda: fs.cat_file(key))
    missing = _raised(lambda: fs.cat_file(f"{key}.absent"))
    proxy.refuse()
    refused = _raised(lambda: fs.info(key))
    proxy.restore()
    assert fs.cat_file(key)  # the proxy answers again, on the same port

    assert type(head_503) is OSError and head_503.errno == errno.EBUSY
    assert "Service Unavailable" in str(head_503)
    assert type(put_503) is OSError and "reduce your request rate" in str(put_503)
    assert type(get_500) is OSError and get_500.errno == getattr(errno, "EREMOTEIO", errno.EIO)
    assert isinstance(refused, botocore.exceptions.EndpointConnectionError)
    assert isinstance(missing, FileNotFoundError)
    for exc in (head_503, put_503, get_500, refused):
        assert is_transient(exc), repr(exc)
    assert not is_transient(missing)
    try:  # what shard_bytes would have made of it: still corruption, never retried
        raise DataError("cannot read shard") from head_503
    except DataError as exc:
        assert not is_transient(exc)


def test_shard_read_retries_two_503s(s3_shards, flaky_s3, capsys):
    proxy, options = flaky_s3
    url, entry = shard(s3_shards, options)
    expected = shard_bytes(url, entry, options, retry=TINY)  # also makes the client: not counted
    n0 = proxy.requests
    assert shard_bytes(url, entry, options, retry=TINY) == expected
    clean = proxy.requests - n0
    capsys.readouterr()

    proxy.fail(2)
    n0 = proxy.requests
    assert shard_bytes(url, entry, options, retry=TINY) == expected
    assert proxy.requests - n0 == clean + 2 and proxy.pending_failures == 0
    assert retry_lines(capsys.readouterr().err) == [
        f"mvae-dist: retry 1/5 in 0.01 s: reading shard {url}: OSError: [Errno 16] Service Unavailable",
        f"mvae-dist: retry 2/5 in 0.02 s: reading shard {url}: OSError: [Errno 16] Service Unavailable",
    ]


def test_shard_read_gives_up_within_the_bound(s3_shards, flaky_s3, capsys):
    proxy, options = flaky_s3
    url, entry = shard(s3_shards, options)
    shard_bytes(url, entry, options)  # the client exists: what follows counts only the tries
    proxy.fail(50)
    n0, t0 = proxy.requests, time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        shard_bytes(url, entry, options, retry=RetryPolicy(retries=3, base_s=0.01))
    elapsed = time.monotonic() - t0
    assert str(info.value) == (f"reading shard {url} failed after 3 retries over 0.07 s: "
                               "OSError: [Errno 16] Service Unavailable")
    assert not isinstance(info.value, DataError)
    assert proxy.requests - n0 == 4  # the try and 3 retries, one HEAD each
    assert elapsed < 3.0
    assert len(retry_lines(capsys.readouterr().err)) == 3


def test_refused_connection_is_retried_until_the_store_is_back(s3_shards, flaky_s3, capsys):
    import s3fs

    proxy, options = flaky_s3
    url, entry = shard(s3_shards, options)
    fs = s3fs.S3FileSystem(**options)
    path = url[len("s3://"):]
    proxy.refuse()
    sleeps: list[float] = []

    def sleep(delay: float) -> None:  # the store comes back during the second wait
        sleeps.append(delay)
        if len(sleeps) == 2:
            proxy.restore()

    data = call_with_retry(lambda: fs.cat_file(path), f"reading {url}", TINY, sleep=sleep)
    assert len(data) == entry["bytes"] and sleeps == [0.01, 0.02]
    lines = retry_lines(capsys.readouterr().err)
    assert len(lines) == 2 and all("EndpointConnectionError: Could not connect" in ln for ln in lines)


def test_corrupt_and_missing_shards_are_data_errors_without_retry(s3_shards, flaky_s3, s3_storage_options,
                                                                  capsys):
    import s3fs

    proxy, options = flaky_s3
    url, entry = shard(s3_shards, options)
    shard_bytes(url, entry, options, retry=TINY)
    n0 = proxy.requests
    shard_bytes(url, entry, options, retry=TINY)
    clean = proxy.requests - n0

    direct = s3fs.S3FileSystem(**s3_storage_options)
    flipped = bytearray(direct.cat_file(url[len("s3://"):]))
    flipped[len(flipped) // 2] ^= 0xFF
    bad_url = f"{url}.flipped"
    direct.pipe_file(bad_url[len("s3://"):], bytes(flipped))
    capsys.readouterr()
    n0 = proxy.requests
    with pytest.raises(DataError, match=rf"^checksum mismatch in shard {bad_url}: sha256"):
        shard_bytes(bad_url, entry, options, retry=TINY)
    assert proxy.requests - n0 == clean  # read once: same bytes again would not help
    with pytest.raises(DataError, match=rf"^shard missing: {url}\.absent$"):
        shard_bytes(f"{url}.absent", entry, options, retry=TINY)
    assert retry_lines(capsys.readouterr().err) == []


def test_the_loader_retries_the_manifest_and_shards_and_never_skips_an_unavailable_store(
        s3_shards, flaky_s3, capsys):
    proxy, options = flaky_s3
    open_manifest(s3_shards, options)
    capsys.readouterr()
    proxy.fail(1)  # the manifest read
    loader = make_loader(s3_shards, "test", 50, shuffle=False, drop_last=False, storage_options=options,
                         retry=TINY)
    proxy.fail(1)  # the first shard
    assert sum(len(b["key"]) for b in loader) == 200
    lines = retry_lines(capsys.readouterr().err)
    assert [ln.split(": ")[2] for ln in lines] == [f"reading the manifest of {s3_shards}",
                                                   f"reading shard {s3_shards}/test/shard-000000.tar"]

    loader = make_loader(s3_shards, "test", 50, shuffle=False, drop_last=False, storage_options=options,
                         retry=RetryPolicy(retries=1, base_s=0.01), skip_corrupt=True)
    proxy.fail(1000)
    with pytest.raises(StorageUnavailable, match=r"test/shard-000000\.tar failed after 1 retries"):
        list(loader)
    assert loader.skipped == 0
