"""The run directory: sealed checkpoints, the newest good one, Ray's index repaired, orphans, the lock.

No Ray here: checkpoints are written by ``save_checkpoint`` into directories named as Ray names
them, Ray's index is a snapshot of the format Ray 2.60 writes (checked field by field against
Ray's own loader where it imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvae_dist.train.checkpoint import MANIFEST_FILE, Position, save_checkpoint, verify_checkpoint
from mvae_dist.train.driver import node_wait
from mvae_dist.train.run_store import (
    RAY_SNAPSHOT,
    keep_in_snapshot,
    lock_is_stale,
    lock_record,
    newest_good_checkpoint,
    prune_orphans,
    read_lock,
    read_ray_snapshot,
    release_lock,
    repair_ray_snapshot,
    run_storage,
    write_lock,
)


def _save(run: Path, name: str, step: int) -> Path:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    return save_checkpoint(run / name, model=model, optimizer=opt, scheduler=None,
                           position=Position(step=step), config={"train": {"name": "r"}})


def _entry(name: str, step: int) -> dict:
    return {"version": 0, "checkpoint_dir_name": name, "metrics": {"step": step}}


def _snapshot(names_steps: list[tuple[str, int]]) -> dict:
    """Ray 2.60's checkpoint_manager_snapshot.json for these committed checkpoints."""
    return {"ray_version": "2.60.0",
            "checkpoint_results": [_entry(n, s) for n, s in names_steps],
            "checkpoint_report_indices": list(range(1, len(names_steps) + 1)),
            "latest_checkpoint_result": _entry(*names_steps[-1]) if names_steps else None,
            "pending_training_results": [], "pending_validation_specs": [],
            "current_report_index": len(names_steps) + 1, "validated_checkpoint_dir_names": [],
            "timed_out_validation_checkpoint_dir_names": [], "failed_validation_checkpoint_dir_names": []}


NAMES = [f"checkpoint_2026-12-07_10-00-0{i}.000000" for i in range(5)]


@pytest.fixture
def run(tmp_path) -> Path:
    """A run directory with sealed checkpoints at steps 10, 20, 30 (the first three names)."""
    d = tmp_path / "runs" / "r"
    for i, step in enumerate((10, 20, 30)):
        _save(d, NAMES[i], step)
    return d


def test_verify_names_what_is_wrong(run):
    d = run / NAMES[2]
    assert verify_checkpoint(d) is None
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    assert manifest["step"] == 30 and set(manifest["files"]) == {"state.pt", "config.yaml"}
    raw = (d / "state.pt").read_bytes()
    (d / "state.pt").write_bytes(raw[:100])
    assert verify_checkpoint(d) == f"corrupt: state.pt has 100 bytes, {MANIFEST_FILE} says {len(raw)}"
    (d / "state.pt").write_bytes(bytes([raw[0] ^ 1]) + raw[1:])
    assert verify_checkpoint(d) == f"corrupt: state.pt does not match its sha256 in {MANIFEST_FILE}"
    (d / "state.pt").write_bytes(raw)
    (d / "config.yaml").unlink()
    assert verify_checkpoint(d) == "corrupt: config.yaml is missing"
    (d / MANIFEST_FILE).unlink()
    assert verify_checkpoint(d).startswith("incomplete: no checkpoint.json")


def test_the_newest_good_checkpoint_skips_corrupt_and_unfinished_ones_with_a_line(run):
    store = run_storage(str(run.parent), "r")
    (run / NAMES[3]).mkdir()  # an upload cut short: state.pt, no seal
    (run / NAMES[3] / "state.pt").write_bytes(b"partial")
    state = run / NAMES[2] / "state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    lines: list[str] = []
    found = newest_good_checkpoint(store, lines.append)
    assert (found.name, found.step, found.url) == (NAMES[1], 20, str(run / NAMES[1]))
    assert lines == [f"checkpoint {run / NAMES[3]} skipped (incomplete: no checkpoint.json, its write never "
                     "finished)",
                     f"checkpoint {run / NAMES[2]} skipped (corrupt: state.pt has {state.stat().st_size} "
                     f"bytes, checkpoint.json says {state.stat().st_size + 10})"]
    # sizes only (the driver's quick look on the way out): a same-size corruption passes
    assert newest_good_checkpoint(store, verify=False).name == NAMES[1]


def test_a_checkpoint_whose_bytes_the_store_refuses_is_skipped_as_corrupt(run, monkeypatch):
    """S3 refusing an object's bytes (its stored checksum does not match them: an upload cut off
    by a lost node, seen on the multi-node bed) twice is corruption: the previous checkpoint is
    taken. Any other read error propagates (a denied or unreachable store is not corruption)."""
    from botocore.exceptions import FlexibleChecksumError

    from mvae_dist.train import run_store

    store = run_storage(str(run.parent), "r")
    real, reads = run_store.local_checkpoint, []
    refused = FlexibleChecksumError(error_msg="Expected checksum a did not match")

    def refusing(store, name, error=refused):
        reads.append(name)
        if name == NAMES[2]:
            raise error
        return real(store, name)

    monkeypatch.setattr(run_store, "local_checkpoint", refusing)
    lines: list[str] = []
    found = newest_good_checkpoint(store, lines.append)
    assert found.name == NAMES[1] and reads == [NAMES[2], NAMES[2], NAMES[1]]
    assert lines == [f"checkpoint {run / NAMES[2]} skipped (corrupt: the store's checksum of a file does not "
                     "match its bytes (Expected checksum a did not match))"]
    monkeypatch.setattr(run_store, "local_checkpoint",
                        lambda store, name: refusing(store, name, PermissionError(13, "denied")))
    with pytest.raises(PermissionError):
        newest_good_checkpoint(store)


def test_the_step_orders_checkpoints_not_the_name(run):
    _save(run, NAMES[3], 5)  # newer by time, fewer steps (a run restarted from scratch would)
    assert newest_good_checkpoint(run_storage(str(run.parent), "r")).step == 30


def test_ray_index_keeps_only_what_exists_and_is_not_newer_than_the_resume_point(run):
    store = run_storage(str(run.parent), "r")
    snap = _snapshot([(NAMES[1], 20), (NAMES[2], 30)])
    (run / RAY_SNAPSHOT).write_text(json.dumps(snap))
    import shutil

    shutil.rmtree(run / NAMES[1])  # deleted by hand: Ray would refuse the run
    state = run / NAMES[2] / "state.pt"
    state.write_bytes(state.read_bytes()[:50])  # corrupt newest
    lines: list[str] = []
    found = newest_good_checkpoint(store, lines.append)
    assert found.name == NAMES[0]
    repair_ray_snapshot(store, found, lines.append)
    fixed = read_ray_snapshot(store)
    assert [r["checkpoint_dir_name"] for r in fixed["checkpoint_results"]] == []
    assert fixed["latest_checkpoint_result"] is None
    assert lines[-1] == f"Ray's checkpoint index of {run} no longer lists {NAMES[1]}, {NAMES[2]}"
    assert prune_orphans(store, lines.append) == [NAMES[2]]  # the corrupt one; the good one stays
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == [NAMES[0]]


def test_keep_in_snapshot_is_what_rays_own_loader_accepts():
    snap = _snapshot([(NAMES[0], 10), (NAMES[1], 20), (NAMES[2], 30)])
    kept = keep_in_snapshot(snap, {NAMES[0], NAMES[1]})
    assert [r["checkpoint_dir_name"] for r in kept["checkpoint_results"]] == NAMES[:2]
    assert kept["checkpoint_report_indices"] == [1, 2]
    assert kept["latest_checkpoint_result"]["checkpoint_dir_name"] == NAMES[1]
    assert snap["latest_checkpoint_result"]["checkpoint_dir_name"] == NAMES[2]  # not changed in place
    try:
        from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState
    except ImportError:  # Ray moved its private class: the field-by-field checks above still hold
        return
    state = _CheckpointManagerState.model_validate(kept)
    assert [r.checkpoint_dir_name for r in state.checkpoint_results] == NAMES[:2]


def test_prune_keeps_the_newest_good_checkpoint_even_when_ray_never_committed_it(run):
    """A node lost after rank 0 wrote step 30 but before every rank reported: Ray's index stops
    at 20, the complete step-30 checkpoint is what a restart resumes and what prune keeps."""
    store = run_storage(str(run.parent), "r")
    (run / RAY_SNAPSHOT).write_text(json.dumps(_snapshot([(NAMES[1], 20)])))
    assert newest_good_checkpoint(store).name == NAMES[2]
    assert prune_orphans(store) == [NAMES[0]]
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == NAMES[1:3]


def test_the_lock_is_stale_only_when_its_process_is_gone(tmp_path):
    store = run_storage(str(tmp_path), "r")
    rec = lock_record("tok")
    write_lock(store, rec)
    assert read_lock(store) == rec and not lock_is_stale(rec)  # this process holds it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert lock_is_stale({**rec, "pid": dead.pid})
    assert not lock_is_stale({**rec, "pid": dead.pid, "host": "another-host"})  # cannot tell
    release_lock(store, "other")
    assert read_lock(store) == rec  # not ours: kept
    release_lock(store, "tok")
    assert read_lock(store) is None
    assert os.listdir(tmp_path / "r") == []  # no temporary left either


@pytest.mark.parametrize("wait, expected", [(0, (60.0, -1)), (180, (60.0, 2)), (30, (30.0, 0)),
                                            (150, (60.0, 2)), (5, (5.0, 0))])
def test_node_wait_becomes_rays_start_timeout_and_controller_limit(wait, expected):
    """Ray gives up after limit + 1 start-up timeouts: the bound is met within one timeout."""
    timeout, limit = node_wait(wait)
    assert (timeout, limit) == expected
    if wait:
        assert wait <= timeout * (limit + 1) < wait + timeout


def test_prune_keeps_unsealed_directories_newer_than_every_good_checkpoint_until_the_run_ends(run):
    """At a resume, an unsealed directory newer than the newest good checkpoint may be a write in
    progress: kept. Older unsealed ones (writes that never finished) and sealed corrupt ones go;
    when the run has ended, the newer unsealed one goes too."""
    store = run_storage(str(run.parent), "r")
    (run / NAMES[3]).mkdir()
    (run / NAMES[3] / "state.pt").write_bytes(b"legacy or in flight")
    import shutil

    shutil.copytree(run / NAMES[3], run / "checkpoint_2026-12-07_09-00-00.000000")  # older than all
    state = run / NAMES[2] / "state.pt"
    state.write_bytes(state.read_bytes()[:50])  # the newest sealed one, corrupt
    (run / RAY_SNAPSHOT).write_text(json.dumps(_snapshot([(NAMES[1], 20)])))
    assert prune_orphans(store, ended=False) == ["checkpoint_2026-12-07_09-00-00.000000", NAMES[0], NAMES[2]]
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == [NAMES[1], NAMES[3]]
    # once the run has ended nothing is writing: the newer unsealed one was a write cut short
    assert prune_orphans(store) == [NAMES[3]]


def test_of_two_drivers_starting_one_name_at_once_the_later_lock_writer_runs(tmp_path, monkeypatch):
    """Both passed the check (no lock yet) and both wrote the lock: after LOCK_SETTLE_S the one that
    reads back another's token stops; the one that reads its own goes on."""
    import time

    import mvae_dist.train.driver as driver
    from mvae_dist.config import load_train_config
    from mvae_dist.errors import ConfigError

    monkeypatch.setattr(driver, "LOCK_SETTLE_S", 0.05)
    cfg = load_train_config(None, ["train.name=r", f"train.storage_path={tmp_path}"])
    store = run_storage(str(tmp_path), "r")
    first = driver._lock(store)
    taken = time.monotonic()
    second = driver._lock(store)  # another driver, a moment later
    with pytest.raises(ConfigError, match=r"run 'r' in .* was started by another driver at the same time"):
        driver._confirm_lock(cfg, store, first, taken)
    driver._confirm_lock(cfg, store, second, taken)
    assert read_lock(store)["token"] == second
