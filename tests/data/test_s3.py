"""The data layer against a real S3 endpoint (moto server on 127.0.0.1), through s3fs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvae_dist.data import bench_loader, make_loader, open_manifest, prepare, verify
from mvae_dist.errors import ConfigError, DataError

from .conftest import SMALL


@pytest.fixture
def s3_dataset(s3_bucket, s3_storage_options) -> str:
    url = f"s3://{s3_bucket}/datasets/small"
    prepare("embedded", url, storage_options=s3_storage_options, **SMALL)
    return url


def test_prepare_to_s3_and_exact_round_trip(s3_dataset, s3_storage_options, small_dataset, small_source):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    bucket_path = s3_dataset[len("s3://") :]
    assert fs.exists(f"{bucket_path}/manifest.json")
    assert sorted(fs.ls(f"{bucket_path}/test", detail=False))[0].endswith("test/shard-000000.tar")
    assert not [p for p in fs.find(bucket_path) if ".tmp" in p or "_building" in p]
    m = open_manifest(s3_dataset, s3_storage_options)
    # same bytes as the local build: checksums are content-only
    assert m["splits"] == open_manifest(small_dataset)["splits"]
    assert verify(s3_dataset, s3_storage_options)["shards"] == 11
    n = 0
    for batch in make_loader(
        s3_dataset, "test", 64, shuffle=False, drop_last=False, storage_options=s3_storage_options
    ):
        for mod in range(2):
            ids = batch["ids"][:, mod].numpy()
            got = (batch["xs"][mod] * 255).round().to(torch.uint8)
            got = got[:, 0] if mod == 0 else got.permute(0, 2, 3, 1)
            assert np.array_equal(got.numpy(), small_source.splits["test"][mod].images[ids])
        n += len(batch["key"])
    assert n == 200


def test_s3_through_environment_only(s3_dataset):
    """The endpoint from AWS_ENDPOINT_URL_S3 (set by the fixture), no storage options."""
    assert open_manifest(s3_dataset)["splits"]["train"]["count"] == 400


def test_webdataset_gopen_reads_s3(s3_dataset, s3_storage_options):
    import webdataset as wds

    m = open_manifest(s3_dataset, s3_storage_options)
    url = f"{s3_dataset}/{m['splits']['test']['shards'][0]['path']}"
    with wds.gopen(url, "rb", **s3_storage_options) as f:
        assert len(f.read()) == m["splits"]["test"]["shards"][0]["bytes"]


def test_two_ranks_from_s3_disjoint_equal(s3_dataset, s3_storage_options):
    keys, lens = [], []
    for r in range(2):
        loader = make_loader(
            s3_dataset, "train", 16, rank=r, world_size=2, storage_options=s3_storage_options
        )
        batches = list(loader)
        lens.append((len(batches), len(loader)))
        keys.append({k for b in batches for k in b["key"]})
    assert lens[0] == lens[1] and lens[0][0] == lens[0][1]
    assert not keys[0] & keys[1]


def test_rerun_and_conflict_on_s3(s3_dataset, s3_storage_options):
    m = prepare("embedded", s3_dataset, storage_options=s3_storage_options, **SMALL)
    assert m["splits"]["train"]["count"] == 400
    with pytest.raises(ConfigError, match="built differently"):
        prepare("embedded", s3_dataset, storage_options=s3_storage_options, **{**SMALL, "seed": 7})


def test_missing_bucket_prefix_and_manifest(s3_bucket, s3_storage_options):
    with pytest.raises(DataError, match=r"bucket 'no-such-bucket-x' does not exist"):
        open_manifest("s3://no-such-bucket-x/data", s3_storage_options)
    with pytest.raises(DataError, match=r"bucket 'no-such-bucket-x' does not exist"):
        prepare("embedded", "s3://no-such-bucket-x/data", storage_options=s3_storage_options, **SMALL)
    with pytest.raises(
        DataError, match=rf"manifest\.json not found: s3://{s3_bucket}/missing/manifest\.json"
    ):
        make_loader(f"s3://{s3_bucket}/missing", "train", 8, storage_options=s3_storage_options)


def test_corrupt_and_missing_shards_on_s3(s3_dataset, s3_storage_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    key = f"{s3_dataset[len('s3://') :]}/train/shard-000004.tar"
    fs.pipe_file(key, fs.cat_file(key)[:777])
    with pytest.raises(DataError, match=rf"truncated or corrupt shard {s3_dataset}/train/shard-000004\.tar"):
        list(make_loader(s3_dataset, "train", 16, shuffle=False, storage_options=s3_storage_options))
    with pytest.raises(DataError, match=r"truncated or corrupt shard .*shard-000004"):
        verify(s3_dataset, s3_storage_options)
    loader = make_loader(s3_dataset, "train", 16, skip_corrupt=True, storage_options=s3_storage_options)
    assert len(list(loader)) == len(loader) and loader.skipped == 1
    fs.rm(f"{s3_dataset[len('s3://') :]}/test/shard-000002.tar")
    with pytest.raises(DataError, match=rf"shard missing: {s3_dataset}/test/shard-000002\.tar"):
        list(
            make_loader(
                s3_dataset, "test", 8, shuffle=False, drop_last=False, storage_options=s3_storage_options
            )
        )


def test_bench_loader_s3_and_local(s3_dataset, s3_storage_options, small_dataset):
    r = bench_loader(s3_dataset, batches=8, batch_size=32, storage_options=s3_storage_options)
    assert r["bench"] == "loader" and r["source"] == "s3" and r["pairs_per_s"] > 0 and r["batches"] == 8
    r = bench_loader(small_dataset, batches=8, batch_size=32)
    assert r["source"] == "local" and r["pairs_per_s"] > 0
