"""failure_reason: the one line a failed Ray Train run is reported with."""

from __future__ import annotations

from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from mvae_dist.errors import DataError
from mvae_dist.train.driver import failure_reason


def test_the_lowest_ranks_own_error_not_rays_header():
    failures = {1: ValueError("rank 1 broke"), 0: DataError("manifest.json not found: /d/manifest.json")}
    e = WorkerGroupError("Training failed due to worker errors:", failures)
    assert failure_reason(e) == "manifest.json not found: /d/manifest.json"


def test_a_traceback_text_gives_its_last_line_and_a_bare_message_its_type():
    tb = "Traceback (most recent call last):\n  File \"w.py\", line 1, in f\nKeyError: 'xs'\n"
    assert failure_reason(WorkerGroupError("header", {0: RuntimeError(tb)})) == "KeyError: 'xs'"
    assert failure_reason(WorkerGroupError("header", {0: ValueError("bad shape")})) == "ValueError: bad shape"
    assert failure_reason(WorkerGroupError("header", {0: ValueError()})) == "ValueError"


def test_controller_and_other_errors():
    e = ControllerError(RuntimeError("placement failed"))
    assert failure_reason(e) == "RuntimeError: placement failed"
    assert failure_reason(OSError("disk full\nmore")) == "disk full"


def test_an_actor_that_fails_in_its_creation_is_reported_with_the_cause(ray_cluster):
    """What Ray raises when Ray Train's controller refuses a run in its ``__init__`` (e.g. "The run
    snapshot contains a reference to a checkpoint that does not exist anymore"): a real
    ActorDiedError from an actor whose creation task raised, not Ray's "The actor died ..." line."""
    import pytest

    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class TrainController:
        def __init__(self):
            raise RuntimeError("The run snapshot contains a reference to a checkpoint that does not exist")

        def run(self):
            return 1

    actor = TrainController.remote()
    with pytest.raises(ray.exceptions.ActorDiedError) as info:
        ray.get(actor.run.remote())
    assert failure_reason(info.value) == ("TrainController could not start: RuntimeError: The run snapshot "
                                          "contains a reference to a checkpoint that does not exist")
