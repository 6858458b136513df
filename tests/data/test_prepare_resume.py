"""``data prepare`` resumed after a crash: damaged shards are rebuilt, stale temporaries removed.

An unfinished build is made from a private copy of the small data set: its manifest.json is
removed and the build lock (``_building.json``, the config) put in its place, which is what a
build killed after its last shard looks like; then the copy is damaged the way a crash would.
"""

from __future__ import annotations

import json
import os

import fsspec
import pytest

from mvae_dist.data import open_manifest, prepare, verify
from mvae_dist.data.build import LOCK
from mvae_dist.errors import DataError

from .conftest import SMALL


def _unfinish(prefix: str) -> dict:
    """Turn a finished local data set into an unfinished build -> its reference manifest."""
    reference = open_manifest(prefix)
    os.remove(os.path.join(prefix, "manifest.json"))
    with open(os.path.join(prefix, LOCK), "w") as f:
        json.dump(reference["config"], f)
    return reference


def _lines_naming(text: str, what: str) -> list[str]:
    return [line for line in text.splitlines() if what in line]


def test_resume_rebuilds_a_truncated_shard(small_copy, capsys):
    reference = _unfinish(small_copy)
    shard = os.path.join(small_copy, "train", "shard-000002.tar")
    intact = os.path.join(small_copy, "train", "shard-000000.tar")
    good = open(shard, "rb").read()
    with open(shard, "r+b") as f:
        f.truncate(len(good) // 2)
    kept_mtime = os.stat(intact).st_mtime_ns
    capsys.readouterr()

    resumed = prepare("embedded", small_copy, **SMALL)

    assert resumed["splits"] == reference["splits"]  # the truncated file's checksum is not recorded
    assert open(shard, "rb").read() == good
    assert os.stat(intact).st_mtime_ns == kept_mtime  # intact shards are kept, not rewritten
    lines = _lines_naming(capsys.readouterr().err, "train/shard-000002.tar")
    assert len(lines) == 1 and "rebuilt" in lines[0]
    assert verify(small_copy)["shards"] == 11


def test_resume_rebuilds_a_complete_tar_with_the_wrong_samples(small_copy, capsys):
    """A readable tar with the right sample count but other samples is not kept either."""
    reference = _unfinish(small_copy)
    train = os.path.join(small_copy, "train")
    good = open(os.path.join(train, "shard-000001.tar"), "rb").read()
    with open(os.path.join(train, "shard-000000.tar"), "rb") as src, \
            open(os.path.join(train, "shard-000001.tar"), "wb") as dst:
        dst.write(src.read())
    capsys.readouterr()

    resumed = prepare("embedded", small_copy, **SMALL)

    assert resumed["splits"] == reference["splits"]
    assert open(os.path.join(train, "shard-000001.tar"), "rb").read() == good
    err = capsys.readouterr().err
    assert len(_lines_naming(err, "train/shard-000001.tar")) == 1
    assert not _lines_naming(err, "shard-000000.tar")


def test_resume_removes_stale_temporaries_only(small_copy):
    """Temporaries of a killed writer (``<name>.tmp-<8 hex>``) go; other files stay."""
    reference = _unfinish(small_copy)
    stale = ["train/shard-000003.tar.tmp-0a1b2c3d", "test/shard-000000.tar.tmp-deadbeef",
             "manifest.json.tmp-01234567", f"{LOCK}.tmp-89abcdef"]
    foreign = ["train/notes.tmp-0a1b2c3d", "train/shard-000003.tar.tmp-backup", "README.tmp-01234567"]
    for rel in stale + foreign:
        with open(os.path.join(small_copy, rel), "wb") as f:
            f.write(b"\x00partial")

    resumed = prepare("embedded", small_copy, **SMALL)

    assert resumed["splits"] == reference["splits"]
    assert [rel for rel in stale if os.path.exists(os.path.join(small_copy, rel))] == []
    assert all(os.path.exists(os.path.join(small_copy, rel)) for rel in foreign)
    assert not os.path.exists(os.path.join(small_copy, LOCK))
    assert verify(small_copy)["shards"] == 11


def test_build_killed_while_writing_its_lock_can_be_rerun(tmp_path, small_dataset):
    """Killed before the lock was published: only the lock's temporary is there; a re-run builds."""
    out = tmp_path / "ds"
    out.mkdir()
    (out / f"{LOCK}.tmp-0123abcd").write_bytes(b'{"data')
    m = prepare("embedded", str(out), **SMALL)
    assert m["splits"] == open_manifest(small_dataset)["splits"]
    assert sorted(os.listdir(out)) == ["manifest.json", "test", "train"]


def test_prefix_with_other_files_besides_a_temporary_is_still_refused(tmp_path):
    (tmp_path / f"{LOCK}.tmp-0123abcd").write_bytes(b"{")
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        prepare("embedded", str(tmp_path), **SMALL)
    assert (tmp_path / f"{LOCK}.tmp-0123abcd").exists()  # nothing is deleted from a foreign prefix


def test_resume_through_fsspec_memory_filesystem(small_dataset, capsys):
    """The same through a non-local fsspec filesystem (the s3:// code path)."""
    url = "memory://resume-test/ds"
    fs = fsspec.filesystem("memory")
    root = "/resume-test/ds"
    if fs.exists(root):
        fs.rm(root, recursive=True)
    reference = prepare("embedded", url, **SMALL)
    fs.rm_file(f"{root}/manifest.json")
    fs.pipe_file(f"{root}/{LOCK}", json.dumps(reference["config"]).encode())
    good = fs.cat_file(f"{root}/test/shard-000001.tar")
    fs.pipe_file(f"{root}/test/shard-000001.tar", good[:1000])
    fs.pipe_file(f"{root}/train/shard-000001.tar.tmp-0a1b2c3d", b"partial")
    capsys.readouterr()

    resumed = prepare("embedded", url, **SMALL)

    assert resumed["splits"] == reference["splits"] == open_manifest(small_dataset)["splits"]
    assert fs.cat_file(f"{root}/test/shard-000001.tar") == good
    assert not fs.exists(f"{root}/train/shard-000001.tar.tmp-0a1b2c3d")
    assert len(_lines_naming(capsys.readouterr().err, "test/shard-000001.tar")) == 1
    fs.rm(root, recursive=True)


def test_resume_on_s3(s3_bucket, s3_storage_options, small_dataset, capsys):
    """On an object store (moto's S3): a truncated shard is rebuilt, a planted temporary removed."""
    import s3fs

    url = f"s3://{s3_bucket}/ds"
    fs = s3fs.S3FileSystem(**s3_storage_options)
    reference = prepare("embedded", url, storage_options=s3_storage_options, **SMALL)
    root = f"{s3_bucket}/ds"
    fs.rm_file(f"{root}/manifest.json")
    fs.pipe_file(f"{root}/{LOCK}", json.dumps(reference["config"]).encode())
    good = fs.cat_file(f"{root}/train/shard-000004.tar")
    fs.pipe_file(f"{root}/train/shard-000004.tar", good[:-10240])
    fs.pipe_file(f"{root}/train/shard-000004.tar.tmp-0a1b2c3d", b"partial")
    fs.invalidate_cache()
    capsys.readouterr()

    resumed = prepare("embedded", url, storage_options=s3_storage_options, **SMALL)

    assert resumed["splits"] == reference["splits"] == open_manifest(small_dataset)["splits"]
    fs.invalidate_cache()
    assert fs.cat_file(f"{root}/train/shard-000004.tar") == good
    assert not fs.exists(f"{root}/train/shard-000004.tar.tmp-0a1b2c3d")
    lines = _lines_naming(capsys.readouterr().err, "train/shard-000004.tar")
    assert len(lines) == 1 and "truncated" in lines[0]
    assert verify(url, s3_storage_options)["shards"] == 11
