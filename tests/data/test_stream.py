"""mvae_dist/data/stream.py: batches, rank/worker splitting, uneven shards, seeding, bad shards."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch

from mvae_dist.data import make_loader, open_manifest
from mvae_dist.data.stream import assign_shards, batch_quotas
from mvae_dist.errors import ConfigError, DataError


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def test_batch_layout(small_dataset):
    loader = make_loader(small_dataset, "train", 32)
    batch = next(iter(loader))
    x0, x1 = batch["xs"]
    assert x0.shape == (32, 1, 28, 28) and x1.shape == (32, 3, 32, 32)
    assert x0.dtype == torch.float32 and 0 <= x0.min() and x1.max() <= 1 and x0.max() > 0.9
    assert (
        batch["label"].shape == (32,) and batch["labels"].shape == (32, 2) and batch["ids"].shape == (32, 2)
    )
    assert torch.equal(batch["labels"][:, 0], batch["label"]) and torch.equal(
        batch["labels"][:, 1], batch["label"]
    )
    assert batch["related"].dtype == torch.bool and batch["related"].all()
    assert len(batch["key"]) == 32


def test_exact_round_trip(small_dataset, small_source):
    loader = make_loader(small_dataset, "test", 50, shuffle=False, drop_last=False)
    n = 0
    for batch in loader:
        for m in range(2):
            src = small_source.splits["test"][m]
            ids = batch["ids"][:, m].numpy()
            expected = torch.from_numpy(src.images[ids])
            got = (batch["xs"][m] * 255).round().to(torch.uint8)
            got = got[:, 0] if m == 0 else got.permute(0, 2, 3, 1)
            assert torch.equal(got, expected)
            assert np.array_equal(batch["labels"][:, m].numpy(), src.labels[ids])
        n += len(batch["key"])
    assert n == 200


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_disjoint_and_complete(small_dataset, num_workers):
    """Every sample exactly once across ranks (drop_last=False), also with DataLoader workers."""
    keys = [
        _keys(
            make_loader(
                small_dataset, "train", 16, rank=r, world_size=2, num_workers=num_workers, drop_last=False
            )
        )
        for r in range(2)
    ]
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) + len(keys[1]) == 400 and len(set(keys[0]) | set(keys[1])) == 400


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "world_size,num_workers,batch_size", [(2, 0, 16), (3, 0, 10), (2, 2, 16), (3, 2, 24)]
)
def test_uneven_shards_equal_batches_no_duplicates(small_dataset, world_size, num_workers, batch_size):
    """7 train shards (last one short) over 2 or 3 ranks: every rank yields len(loader) batches."""
    counts, seen = [], []
    for r in range(world_size):
        loader = make_loader(
            small_dataset,
            "train",
            batch_size,
            rank=r,
            world_size=world_size,
            num_workers=num_workers,
            epoch=1,
        )
        batches = list(loader)
        assert all(len(b["key"]) == batch_size for b in batches)
        counts.append((len(batches), len(loader)))
        seen += [k for b in batches for k in b["key"]]
    assert len({c for pair in counts for c in pair}) == 1 and counts[0][0] > 0
    assert len(seen) == len(set(seen))  # no sample twice in the epoch, across all ranks


def test_plan_is_a_partition_and_quotas_are_equal():
    plan = assign_shards(11, 3, 2, seed=0, epoch=4, shuffle=True)
    flat = [i for rank in plan for worker in rank for i in worker]
    assert sorted(flat) == list(range(11))
    assert plan == assign_shards(11, 3, 2, seed=0, epoch=4, shuffle=True)
    assert plan != assign_shards(11, 3, 2, seed=0, epoch=5, shuffle=True)
    quotas = batch_quotas([[100, 30], [64, 0], [200, 200]], 32)
    assert [sum(q) for q in quotas] == [2, 2, 2]
    assert all(
        q <= n // 32 for qs, ns in zip(quotas, [[100, 30], [64, 0], [200, 200]]) for q, n in zip(qs, ns)
    )


def test_epoch_seeding_is_deterministic(small_dataset):
    a = make_loader(small_dataset, "train", 16, seed=3, epoch=0)
    b = make_loader(small_dataset, "train", 16, seed=3, epoch=0)
    first = _keys(a)
    assert first == _keys(b)
    a.set_epoch(1)
    second = _keys(a)
    assert second != first
    b.set_epoch(1)
    assert _keys(b) == second
    assert _keys(make_loader(small_dataset, "train", 16, seed=3, epoch=1, num_workers=2)) == _keys(
        make_loader(small_dataset, "train", 16, seed=3, epoch=1, num_workers=2)
    )
    ordered = _keys(make_loader(small_dataset, "train", 16, shuffle=False))
    assert ordered == sorted(ordered)


def test_unpaired_stream_draws_modalities_independently(small_dataset):
    paired = [b for b in make_loader(small_dataset, "train", 20, drop_last=False, shuffle=False)]
    unpaired = [b for b in make_loader(small_dataset, "train", 20, drop_last=False, unpaired=True)]
    ids_p = torch.cat([b["ids"] for b in paired])
    ids_u = torch.cat([b["ids"] for b in unpaired])
    # same items of each modality over the epoch ...
    for m in range(2):
        assert Counter(ids_p[:, m].tolist()) == Counter(ids_u[:, m].tolist())
    # ... but re-matched: about 1 in 10 share a digit (10 balanced classes), not all
    rel = torch.cat([b["related"] for b in unpaired]).float().mean().item()
    assert 0.0 < rel < 0.35
    labels = torch.cat([b["labels"] for b in unpaired])
    assert torch.equal(torch.cat([b["related"] for b in unpaired]), labels[:, 0] == labels[:, 1])
    lens = [len(make_loader(small_dataset, "train", 20, unpaired=u)) for u in (False, True)]
    assert lens[0] == lens[1]


def test_truncated_shard_is_named(small_copy):
    path = os.path.join(small_copy, "train", "shard-000002.tar")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated or corrupt shard .*train/shard-000002\.tar"):
        list(make_loader(small_copy, "train", 16, shuffle=False))
    # without the checksum check, the tar parser itself reports it
    with pytest.raises(DataError, match=r"corrupt shard .*train/shard-000002\.tar"):
        list(make_loader(small_copy, "train", 16, shuffle=False, verify=False))


def test_garbage_shard_without_checksums_is_named(small_copy):
    path = os.path.join(small_copy, "train", "shard-000001.tar")
    size = os.path.getsize(path)
    open(path, "wb").write(os.urandom(size))
    with pytest.raises(DataError, match=r"corrupt shard .*train/shard-000001\.tar"):
        list(make_loader(small_copy, "train", 16, verify=False))


def test_flipped_byte_is_a_checksum_error(small_copy):
    path = os.path.join(small_copy, "test", "shard-000000.tar")
    data = bytearray(open(path, "rb").read())
    data[5000] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(DataError, match=r"checksum mismatch in shard .*test/shard-000000\.tar"):
        list(make_loader(small_copy, "test", 16))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_corrupt_counts_and_keeps_ranks_in_step(small_copy, num_workers):
    os.remove(os.path.join(small_copy, "train", "shard-000003.tar"))
    path = os.path.join(small_copy, "train", "shard-000005.tar")
    open(path, "wb").write(open(path, "rb").read()[:1000])
    for r in range(2):
        loader = make_loader(
            small_copy, "train", 16, rank=r, world_size=2, num_workers=num_workers, skip_corrupt=True
        )
        batches = list(loader)
        assert len(batches) == len(loader)  # refilled from the good shards: no rank falls behind
        bad = {s for s in loader.skipped_shards}
        assert all(s.endswith(("shard-000003.tar", "shard-000005.tar")) for s in bad)
        assert loader.skipped == len(bad)
    skipped = set()
    for r in range(2):
        loader = make_loader(small_copy, "train", 16, rank=r, world_size=2, skip_corrupt=True)
        list(loader)
        skipped |= loader.skipped_shards
    assert len(skipped) == 2


def test_missing_shard_and_bad_arguments(small_copy):
    os.remove(os.path.join(small_copy, "test", "shard-000003.tar"))
    with pytest.raises(DataError, match=r"shard missing: .*test/shard-000003\.tar"):
        list(make_loader(small_copy, "test", 8, drop_last=False))
    with pytest.raises(ConfigError, match="split 'val' not in"):
        make_loader(small_copy, "val", 8)
    with pytest.raises(ConfigError, match="fewer than world_size=8"):
        make_loader(small_copy, "test", 8, rank=0, world_size=8)
    with pytest.raises(ConfigError, match="rank must be in"):
        make_loader(small_copy, "test", 8, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="leaves no full batch"):
        make_loader(small_copy, "test", 500)
    with pytest.raises(DataError, match="manifest.json not found"):
        make_loader(small_copy + "-nope", "test", 8)


def test_manifest_prefix_recorded(small_dataset):
    assert open_manifest(small_dataset)["prefix"] == small_dataset


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_loader_yields_exactly_the_next_batches(small_dataset, num_workers):
    """What a training worker does after a restart mid-epoch: a fresh loader (another process),
    set to the checkpoint's epoch, skipping the batches already trained, yields exactly the
    batches the interrupted one would have yielded next, on every rank."""
    world, stop = 2, 3
    for rank in range(world):
        def loader(rank=rank):
            return make_loader(small_dataset, "train", 8, seed=5, rank=rank, world_size=world,
                               num_workers=num_workers, shuffle_buffer=50)

        first = loader()
        first.set_epoch(2)
        whole = [b["key"] for b in first]
        assert len(whole) > stop + 1
        resumed = loader()
        resumed.set_epoch(2)
        rest = [b["key"] for i, b in enumerate(resumed) if i >= stop]
        assert rest == whole[stop:], rank
        other = loader()
        other.set_epoch(3)
        assert [b["key"] for b in other][stop:] != whole[stop:]  # the epoch, not chance, fixes it


def _global_steps(url: str, world: int, V: int, G: int, *, epoch: int = 1, num_workers: int = 0,
                  **kw) -> list[list[str]]:
    """Each step's global batch (the ranks' batches in rank order) of an elastic plan at ``world``."""
    per_rank = [[b["key"] for b in _elastic(url, r, world, V, G, epoch=epoch, num_workers=num_workers, **kw)]
                for r in range(world)]
    assert len({len(steps) for steps in per_rank}) == 1, "ranks yield different numbers of steps"
    return [[k for r in range(world) for k in per_rank[r][i]] for i in range(len(per_rank[0]))]


def _elastic(url, rank, world, V, G, *, epoch, num_workers=0, **kw):
    loader = make_loader(url, "train", G // world, seed=3, rank=rank, world_size=world, virtual_ranks=V,
                         num_workers=num_workers, shuffle_buffer=40, **kw)
    loader.set_epoch(epoch)
    return loader


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_elastic_plan_gives_the_same_global_batches_at_every_world_size(small_dataset, num_workers):
    """V = 4 virtual ranks, global batch 24: at 1, 2 and 4 ranks every step's global batch is the
    same list of keys, each sample of the epoch at most once, and the whole epoch's plan."""
    V, G = 4, 24
    one = _global_steps(small_dataset, 1, V, G, num_workers=num_workers)
    assert len(one) >= 10 and all(len(step) == G for step in one)
    keys = [k for step in one for k in step]
    assert len(keys) == len(set(keys))  # no sample twice
    for world in (2, 4):
        assert _global_steps(small_dataset, world, V, G, num_workers=num_workers) == one, world
    # the epoch, not the world size, fixes it
    assert _global_steps(small_dataset, 2, V, G, epoch=2, num_workers=num_workers) != one


def test_an_elastic_run_resized_mid_epoch_reads_every_sample_once(small_dataset):
    """2 ranks to step 4, a checkpoint at step 3, 1 rank from there (skipping its 3 steps), back to
    2 ranks at step 7: the keys read after the replayed step are those of an unresized epoch."""
    V, G = 2, 16
    whole = _global_steps(small_dataset, 2, V, G)
    a = _global_steps(small_dataset, 2, V, G)[:4]
    b = _global_steps(small_dataset, 1, V, G)[3:7]
    c = _global_steps(small_dataset, 2, V, G)[7:]
    assert a[:3] + b + c == whole
    read = [k for step in a[:3] + b + c for k in step]
    assert len(read) == len(set(read)) == len(whole) * G


def test_an_elastic_plan_refuses_what_it_cannot_split(small_dataset):
    with pytest.raises(ConfigError, match="needs world_size dividing it"):
        make_loader(small_dataset, "train", 8, rank=0, world_size=3, virtual_ranks=4)
    with pytest.raises(ConfigError, match="needs world_size dividing it"):
        make_loader(small_dataset, "train", 5, rank=0, world_size=2, virtual_ranks=4)  # G 10, V 4
    with pytest.raises(ConfigError, match="fewer than the 12 virtual ranks of an elastic run"):
        make_loader(small_dataset, "train", 24, rank=0, world_size=1, virtual_ranks=12)


def test_lane_quotas_are_equal_across_virtual_ranks():
    from mvae_dist.data.stream import lane_quotas

    assert lane_quotas([[40, 17], [33, 25], [64, 16]], 8) == [[4, 2]] * 3
