"""``mvae-dist bench scale``: real gloo ranks; what it counts follows from the shapes."""

from __future__ import annotations


def test_bench_scale_counts_what_the_ranks_exchange(tiny_data):
    from mvae_dist.launch.bench_scale import bench_scale

    got = []
    recs = bench_scale(data=tiny_data, workers=[1, 2], steps=3, warmup=1, emit=got.append)
    assert got == recs and [r["workers"] for r in recs] == [1, 2]
    one, two = recs
    assert one["gather_bytes"] == 0 and one["s_gather"] == 0.0  # nothing to exchange alone
    assert one["global_batch"] == 16 and two["global_batch"] == 32  # weak scaling: 16 per worker
    # two ranks: each receives at least the other's 16 inputs (MNIST 28x28 + SVHN 3x32x32 floats)
    assert two["gather_bytes"] >= 16 * (28 * 28 + 3 * 32 * 32) * 4
    assert one["grad_bytes"] == two["grad_bytes"] == 4 * one["params"] > 0
    assert all(r["s_step"] > 0 and r["s_load_epoch"] > 0 for r in recs)
