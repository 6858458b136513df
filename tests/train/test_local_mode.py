"""train.num_workers=0: Ray Train's local mode, the run trained in the calling process.

Ray Train persists no checkpoint in local mode (its LocalController keeps the last reported one
in memory); the worker puts each into the run directory itself. These tests hold it to what a run
with workers gives: checkpoints sealed and kept to train.keep_checkpoints, each logged to the
MLflow run, the model logged, --resume from the newest, and no Ray cluster started.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from mvae_dist.config import load_train_config
from mvae_dist.errors import ConfigError

TINY = str(Path(__file__).parents[2] / "configs" / "embedded" / "tiny.yaml")


def _cfg(tmp_path, tiny_data, *extra):
    return load_train_config(TINY, [f"data.url={tiny_data}", f"train.storage_path={tmp_path}/runs",
                                    f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                    "train.num_workers=0", "train.name=local", *extra])


@pytest.mark.slow
def test_local_mode_checkpoints_logs_and_resumes_without_a_cluster(tiny_data, tmp_path, monkeypatch, capsys):
    import mlflow

    from mvae_dist.train import driver
    from mvae_dist.train.run_store import checkpoint_names, newest_good_checkpoint, run_storage

    def no_ray(*args, **kwargs):
        raise AssertionError("local mode reached for a Ray cluster")

    monkeypatch.setattr(driver, "_init_ray", no_ray)
    res = driver.fit(_cfg(tmp_path, tiny_data, "train.checkpoint_every=2", "train.keep_checkpoints=2"))
    assert "mvae-dist: training 'local' in this process (train.num_workers=0" in capsys.readouterr().out
    assert res.metrics["step"] == 6 and res.checkpoint is not None
    store = run_storage(f"{tmp_path}/runs", "local")
    names = checkpoint_names(store)
    assert len(names) == 2  # steps 4 and 6 of 2, 4, 6: train.keep_checkpoints
    newest = newest_good_checkpoint(store)  # every file's sha256 against its seal
    assert newest is not None and newest.step == 6
    assert newest.url == res.checkpoint == store.child_url(names[-1])

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.num_workers"] == "0"
    with tempfile.TemporaryDirectory() as d:
        logged = json.loads(Path(client.download_artifacts(res.run_id, "checkpoints.json", d)).read_text())
    assert [e["step"] for e in logged["checkpoints"]] == [2, 4, 6]  # each as it was written
    assert run.data.tags["last_checkpoint"] == res.checkpoint and run.data.tags["model_step"] == "6"
    assert [m.step for m in client.get_metric_history(res.run_id, "loss")] == [2, 4, 6]
    assert "eval/log_joint" in run.data.metrics

    # another number of ranks or per-rank batch: refused before anything starts, nothing changed
    for other in (["train.num_workers=2"], ["data.batch_size=8"]):
        with pytest.raises(ConfigError, match=r"--resume: run 'local' trained on 1 worker\(s\) x "
                                              r"data.batch_size 16; resuming it on (2 worker\(s\) x "
                                              r"data.batch_size 16|1 worker\(s\) x data.batch_size 8) would"):
            driver.fit(_cfg(tmp_path, tiny_data, "train.checkpoint_every=2", *other), resume=True)
    assert client.get_run(res.run_id).info.status == "FINISHED" and checkpoint_names(store) == names

    # the run forgets step 6, as when a node is lost after the checkpoint was sealed but before
    # Ray's controller took every rank's report (its callback never saw it): the resume logs it
    client.log_dict(res.run_id, {"checkpoints": logged["checkpoints"][:2]}, "checkpoints.json")
    again = driver.fit(_cfg(tmp_path, tiny_data, "train.checkpoint_every=2", "train.keep_checkpoints=2",
                            "train.max_steps=8"), resume=True)
    assert again.run_id == res.run_id and again.metrics["step"] == 8
    assert client.get_run(res.run_id).data.metrics["resumed_from_step"] == 6
    with tempfile.TemporaryDirectory() as d:
        logged = json.loads(Path(client.download_artifacts(res.run_id, "checkpoints.json", d)).read_text())
    assert [e["step"] for e in logged["checkpoints"]] == [2, 4, 6, 8], logged
    assert logged["checkpoints"][2]["uri"] == res.checkpoint  # the one restored from
    assert len(checkpoint_names(store)) == 2 and newest_good_checkpoint(store).step == 8


def test_a_checkpoint_write_that_fails_leaves_nothing(tmp_path, monkeypatch):
    """persist_checkpoint (local mode's write): the seal goes last, and a write that fails removes
    what it wrote; an unsealed directory is refused."""
    import torch

    from mvae_dist.train import storage
    from mvae_dist.train.checkpoint import MANIFEST_FILE, Position, save_checkpoint
    from mvae_dist.train.run_store import checkpoint_names, persist_checkpoint, run_storage

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    local = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, scheduler=None,
                            position=Position(step=3), config={})
    store = run_storage(str(tmp_path / "runs"), "r")
    written, real = [], storage.put_whole

    def failing_seal(fs, path, data):
        written.append(path.rsplit("/", 1)[-1])
        if path.endswith(MANIFEST_FILE):
            raise PermissionError(13, "denied", path)  # not transient: no retry
        real(fs, path, data)

    monkeypatch.setattr(storage, "put_whole", failing_seal)
    with pytest.raises(PermissionError):
        persist_checkpoint(store, local, keep=2)
    assert written[-1] == MANIFEST_FILE and len(written) == 3  # state.pt and config.yaml went first
    assert checkpoint_names(store) == []
    monkeypatch.setattr(storage, "put_whole", real)
    assert persist_checkpoint(store, local, keep=2).step == 3
    (local / MANIFEST_FILE).unlink()
    with pytest.raises(ValueError, match="not a sealed checkpoint"):
        persist_checkpoint(store, local, keep=2)
    assert len(checkpoint_names(store)) == 1
