"""mvae_dist/data/build.py, shards.py, manifest.py: writing, manifest, resume, atomicity."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile

import numpy as np
import pytest

from mvae_dist.data import build as build_mod
from mvae_dist.data import open_manifest, prepare, verify
from mvae_dist.data.sources import street
from mvae_dist.errors import ConfigError, DataError

from .conftest import SMALL


def test_manifest_contents(small_dataset):
    m = open_manifest(small_dataset)
    assert m["format_version"] == 1 and m["dataset"] == "embedded"
    assert m["synthetic"] == ["svhn"]
    assert [(x["name"], x["shape"], x["dtype"], x["key"]) for x in m["modalities"]] == [
        ("mnist", [28, 28], "uint8", "m0.npy"),
        ("svhn", [32, 32, 3], "uint8", "m1.npy"),
    ]
    assert m["config"]["dm"] == 2 and m["config"]["street_per_class"] == [20, 10]
    train, test = m["splits"]["train"], m["splits"]["test"]
    assert train["count"] == 400 and test["count"] == 200
    assert train["class_counts"] == {str(d): 40 for d in range(10)}
    assert [s["count"] for s in train["shards"]] == [64] * 6 + [16]
    for split in ("train", "test"):
        for k, s in enumerate(m["splits"][split]["shards"]):
            assert s["path"] == f"{split}/shard-{k:06d}.tar"
            data = open(os.path.join(small_dataset, s["path"]), "rb").read()
            assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    assert verify(small_dataset)["shards"] == 11
    # manifest.json URL works as well as the prefix
    assert open_manifest(os.path.join(small_dataset, "manifest.json"))["splits"] == m["splits"]


def test_shard_members_and_exact_payloads(small_dataset, small_source):
    m = open_manifest(small_dataset)
    path = os.path.join(small_dataset, m["splits"]["train"]["shards"][0]["path"])
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names[:3] == ["train-000000000.json", "train-000000000.m0.npy", "train-000000000.m1.npy"]
        meta = json.loads(tar.extractfile(names[0]).read())
        m0 = np.load(io.BytesIO(tar.extractfile(names[1]).read()))
        m1 = np.load(io.BytesIO(tar.extractfile(names[2]).read()))
    i0, i1 = meta["ids"]
    train = small_source.splits["train"]
    assert np.array_equal(m0, train[0].images[i0]) and np.array_equal(m1, train[1].images[i1])
    assert meta["labels"] == [int(train[0].labels[i0]), int(train[1].labels[i1])] and meta["related"] is True


def test_rerun_same_config_is_a_noop(small_dataset):
    before = {
        p: os.stat(os.path.join(small_dataset, "train", p)).st_mtime_ns
        for p in os.listdir(os.path.join(small_dataset, "train"))
    }
    m = prepare("embedded", small_dataset, **SMALL)
    after = {
        p: os.stat(os.path.join(small_dataset, "train", p)).st_mtime_ns
        for p in os.listdir(os.path.join(small_dataset, "train"))
    }
    assert before == after and m["splits"] == open_manifest(small_dataset)["splits"]


def test_other_config_into_same_prefix_is_an_error(small_dataset):
    with pytest.raises(ConfigError, match=r"built differently \(dm: 3 requested, 2 there"):
        prepare("embedded", small_dataset, **{**SMALL, "dm": 3})


def test_shards_of_another_street_renderer_are_refused(small_copy):
    """A data set written by the previous street renderer (its manifest names another, or none)
    is never extended or reused by this one: the mismatch is named."""
    path = os.path.join(small_copy, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    assert manifest["config"]["renderer"] == street.RENDERER
    del manifest["config"]["renderer"]  # what every manifest of the first renderer looks like
    with open(path, "w") as f:
        json.dump(manifest, f)
    want = rf"built differently \(renderer: '{street.RENDERER}' requested, None"
    with pytest.raises(ConfigError, match=want):
        prepare("embedded", small_copy, **SMALL)


def test_resume_after_interruption(small_copy, monkeypatch):
    """A build that dies mid-way leaves only complete shards; re-running completes it identically."""
    reference = open_manifest(small_copy)
    out = small_copy + "-2"
    calls = {"n": 0}
    real = build_mod.encode_pair

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 150:  # inside the third shard of train
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(build_mod, "encode_pair", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare("embedded", out, **SMALL)
    assert sorted(os.listdir(os.path.join(out, "train"))) == ["shard-000000.tar", "shard-000001.tar"]
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    # a different config must not mix into the unfinished build
    with pytest.raises(ConfigError, match="unfinished build"):
        prepare("embedded", out, **{**SMALL, "seed": 1})
    monkeypatch.setattr(build_mod, "encode_pair", real)
    resumed = prepare("embedded", out, **SMALL)
    assert resumed["splits"] == reference["splits"]  # same bytes, same checksums
    assert not any(".tmp" in f or f.startswith("_") for f in os.listdir(out))


def test_refuses_unrelated_non_empty_prefix(tmp_path):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        prepare("embedded", str(tmp_path), **SMALL)


def test_memory_url_and_propagation_pools():
    m = prepare("embedded", "memory://pools-test/ds", **SMALL, sr_fraction=0.1, unrelated_fraction=0.5)
    s = m["splits"]
    assert set(s) == {"train", "test", "sr", "fm", "sm"}
    assert s["sr"]["count"] == 40 and s["sr"]["related"] == 40 and not s["sr"]["mixed"]
    assert s["fm"]["count"] == 360 and s["fm"]["related"] == 180 and s["fm"]["mixed"]
    assert s["sm"]["count"] == 40 and s["sm"]["related"] == 20
    assert verify("memory://pools-test/ds")["shards"] == sum(len(v["shards"]) for v in s.values())
    held = prepare("embedded", "memory://pools-test/held", **SMALL, sr_fraction=0.1,
                   calibration_fraction=0.25)
    h = held["splits"]
    assert set(h) == {"train", "test", "sr", "fm", "sm", "sc"}
    assert held["config"]["calibration_fraction"] == 0.25
    assert h["sc"]["count"] == 10 and h["sc"]["related"] == 5 and h["sc"]["mixed"]
    assert h["sr"]["count"] == h["sm"]["count"] == 30 and h["fm"]["count"] == 360
    with pytest.raises(ConfigError, match="give sr_fraction too"):
        prepare("embedded", "memory://pools-test/bad", **SMALL, calibration_fraction=0.25)


def test_fraction_reduces_each_unimodal_set(tmp_path):
    m = prepare("embedded", str(tmp_path / "f"), fraction=0.5, **SMALL)
    # 50% of 400 MNIST and of 20 street images per digit -> min(200, 10) = 10 per digit, dm=2
    assert m["splits"]["train"]["count"] == 10 * 10 * 2
    assert m["splits"]["test"]["count"] == 200  # the test split is never reduced


def test_verify_detects_checksum_mismatch(small_copy):
    shard = os.path.join(small_copy, "test", "shard-000001.tar")
    data = bytearray(open(shard, "rb").read())
    data[3000] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    with pytest.raises(DataError, match=r"checksum mismatch in shard .*test/shard-000001\.tar"):
        verify(small_copy)


def test_missing_manifest_and_prefix(tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json not found: .*nowhere/manifest\.json"):
        open_manifest(str(tmp_path / "nowhere"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        open_manifest(str(tmp_path / "bad"))
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DataError, match="unsupported format_version 99"):
        open_manifest(str(tmp_path / "bad"))


def test_bad_prepare_arguments(tmp_path):
    with pytest.raises(ConfigError, match="dataset must be one of"):
        prepare("cifar", str(tmp_path / "x"))
    with pytest.raises(ConfigError, match=re.escape("fraction must be in (0, 1]")):
        prepare("embedded", str(tmp_path / "x"), fraction=1.5)
    with pytest.raises(ConfigError, match="unknown prepare option"):
        prepare("embedded", str(tmp_path / "x"), colour=True)
    with pytest.raises(ConfigError, match="needs --source"):
        prepare("mnist-svhn", str(tmp_path / "x"))


def test_mnist_svhn_from_standard_files(tmp_path):
    """The mnist-svhn builder reads IDX (.gz) and .mat files from --source."""
    import gzip

    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for stem, split, n in (("train", "train", 40), ("t10k", "test", 20)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.tile(np.arange(10, dtype=np.uint8), n // 10)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            with gzip.open(src / f"{stem}-{kind}-ubyte.gz", "wb") as f:
                f.write(head + arr.tobytes())
        sx = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        sy = (np.tile(np.arange(10), n // 10) + 9) % 10 + 1  # labels 1..10, 10 meaning digit 0
        sio.savemat(src / f"{split}_32x32.mat", {"X": sx, "y": sy.reshape(-1, 1).astype(np.uint8)})
    m = prepare("mnist-svhn", str(tmp_path / "out"), source=str(src), dm=3, shard_size=50, progress=False)
    assert m["synthetic"] == [] and [x["name"] for x in m["modalities"]] == ["mnist", "svhn"]
    assert m["splits"]["train"]["count"] == 3 * 40 and m["splits"]["test"]["count"] == 3 * 20
    from mvae_dist.data import make_loader

    for batch in make_loader(str(tmp_path / "out"), "train", 20, drop_last=False):
        assert bool((batch["labels"][:, 0] == batch["labels"][:, 1]).all())


def test_mixed_pool_flags_reach_the_stream(tmp_path):
    from mvae_dist.data import make_loader

    out = str(tmp_path / "lp")
    m = prepare("embedded", out, **SMALL, sr_fraction=0.25)
    related = labels_equal = 0
    for batch in make_loader(out, "fm", 25, drop_last=False, shuffle=False):
        related += int(batch["related"].sum())
        labels_equal += int((batch["labels"][:, 0] == batch["labels"][:, 1]).sum())
    assert related == labels_equal == m["splits"]["fm"]["related"] == 150
