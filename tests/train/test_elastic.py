"""Elastic runs (train.num_workers: [min, max]) without a cluster: the config's range and global
batch, each worker's batch, the data plan a resume must keep, the shard count the plan needs, and
the resize record in MLflow. The run itself, 2 -> 1 -> 2 workers on several Ray nodes, is the
elastic test of test_multinode.py; the data plan's exactness is tests/data/test_stream.py's."""

from __future__ import annotations

import pytest
import yaml

from mvae_dist.config import RunConfig
from mvae_dist.errors import ConfigError


def _cfg(workers, batch: int = 16, **train) -> RunConfig:
    return RunConfig.from_dict({"train": {"num_workers": workers, **train}, "data": {"batch_size": batch}})


def test_a_range_of_workers_is_an_elastic_run_with_a_global_batch_every_size_divides():
    c = _cfg([1, 2])
    t = c.train
    assert (t.min_workers, t.num_workers, t.ranks, t.elastic, t.virtual_ranks) == (1, 2, 2, True, 2)
    assert RunConfig.from_dict(c.to_dict()) == c  # what checkpoints and MLflow record reads back
    assert _cfg([2, 4], batch=18).train.virtual_ranks == 12  # lcm(2, 3, 4)
    assert not _cfg(2).train.elastic and _cfg(2).train.virtual_ranks is None
    assert not _cfg([3, 3]).train.elastic  # min = max: a fixed size
    with pytest.raises(ConfigError, match=r"^train.num_workers \[2, 4\]: the global batch 64 "
                                          r"\(data.batch_size x 4\) must divide by every worker count "
                                          r"from 2 to 4 \(their lcm 12\); e.g. data.batch_size=18$"):
        _cfg([2, 4])
    for bad in ([0, 2], [3, 2], [1, 2, 3], [1.5, 2], [True, 2]):
        with pytest.raises(ConfigError, match=r"^train.num_workers must be a count or \[min, max\]"):
            _cfg(bad)
    with pytest.raises(ConfigError, match="disagree"):
        _cfg([1, 2], min_workers=2)
    with pytest.raises(ConfigError, match=r"train.min_workers must be <= train.num_workers \(2\), got 3"):
        _cfg(2, min_workers=3)


def test_each_worker_takes_the_global_batch_over_the_world_size():
    from mvae_dist.train.worker import rank_batch

    elastic = _cfg([1, 4], batch=12)  # global 48
    assert [rank_batch(elastic, w) for w in (1, 2, 3, 4)] == [48, 24, 16, 12]
    assert rank_batch(_cfg(2), 2) == 16  # fixed size: data.batch_size per worker, as always


def test_a_resume_keeps_the_data_plan_and_is_refused_otherwise(tmp_path):
    from mvae_dist.train.checkpoint import CONFIG_FILE
    from mvae_dist.train.driver import _refuse_another_world, data_plan
    from mvae_dist.train.run_store import FoundCheckpoint, run_storage

    def plan(c: RunConfig):
        d = c.to_dict()
        return data_plan(d["train"], d["data"])

    assert plan(_cfg([1, 2])) == ("elastic", 2, 32) and plan(_cfg(2)) == ("fixed", 2, 16)
    # [2, 4] and [1, 4] plan for the same 12 virtual ranks and global batch: interchangeable
    assert plan(_cfg([2, 4], batch=18)) == plan(_cfg([1, 4], batch=18)) == ("elastic", 12, 72)

    store = run_storage(str(tmp_path / "runs"), "el")
    (tmp_path / "runs" / "el" / "checkpoint_1").mkdir(parents=True)
    found = FoundCheckpoint("checkpoint_1", store.child_url("checkpoint_1"), 10)

    def trained(c: RunConfig) -> None:
        (tmp_path / "runs" / "el" / "checkpoint_1" / CONFIG_FILE).write_text(yaml.safe_dump(c.to_dict()))

    trained(_cfg([2, 4], batch=18))
    _refuse_another_world(_cfg([1, 4], batch=18), store, found)  # the same plan: any size in range
    with pytest.raises(ConfigError, match=r"^--resume: run 'mvae-run' trained elastically on "
                                          r"train.num_workers \[2, 4\] x data.batch_size 18 \(a global "
                                          r"batch of 72\); resuming it on 4 worker\(s\) x data.batch_size "
                                          r"18 would change .* resume with train.num_workers=\[2,4\] "
                                          r"data.batch_size=18$"):
        _refuse_another_world(_cfg(4, batch=18), store, found)
    trained(_cfg(2))
    with pytest.raises(ConfigError, match=r"trained on 2 worker\(s\) x data.batch_size 16; resuming it "
                                          r"elastically on train.num_workers \[1, 2\]"):
        _refuse_another_world(_cfg([1, 2]), store, found)


def test_an_elastic_plan_needs_a_shard_per_virtual_rank(tiny_data):
    from mvae_dist.train.driver import preflight_data

    base = {"data": {"url": tiny_data, "batch_size": 12}}  # the tiny set: 8 training shards
    preflight_data(RunConfig.from_dict({**base, "train": {"num_workers": [1, 2]}}))
    with pytest.raises(ConfigError, match=r"^train.num_workers \[1, 4\] plans the data for 12 virtual ranks "
                                          r"\(their lcm\), but split 'train' of .* has 8 shards"):
        preflight_data(RunConfig.from_dict({**base, "train": {"num_workers": [1, 4]}}))


def test_resizes_are_recorded_in_the_run(tmp_path):
    from mvae_dist.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", experiment="elastic")
    tracker.start("el")
    assert tracker.resizes() == []
    tracker.log_resize(2, 1, 20, "s3://b/runs/el/checkpoint_a")
    tracker.log_resize(1, 2, 60, "s3://b/runs/el/checkpoint_b")
    got = tracker.resizes()
    assert [(r["step"], r["from"], r["to"], r["checkpoint"]) for r in got] == [
        (20, 2, 1, "s3://b/runs/el/checkpoint_a"), (60, 1, 2, "s3://b/runs/el/checkpoint_b")]
    assert tracker.client.get_run(tracker.run_id).data.tags["resize_count"] == "2"


def test_an_elastic_run_that_cannot_start_names_its_minimum():
    from mvae_dist.train.driver import _why_failed

    class WorkerGroupStartupTimeoutError(Exception):  # Ray's, by name (driver._why_failed)
        pass

    lost = RuntimeError("fit failed")
    lost.controller_failure = WorkerGroupStartupTimeoutError()  # type: ignore[attr-defined]
    assert _why_failed(lost, _cfg([1, 2], node_wait_s=20)).startswith(
        "the cluster had no room for 1 worker (1 CPU each) for 20 s (train.node_wait_s)")
    assert _why_failed(lost, _cfg(2, node_wait_s=20)).startswith("the cluster had no room for 2 workers ")
