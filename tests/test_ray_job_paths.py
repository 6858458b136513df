"""Paths inside a Ray job: `ray job submit --working-dir .` runs the entrypoint in a temporary
per-job copy of the code, so relative outputs would vanish with it and relative local data is
not there (fast: the job is simulated by its environment; no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mvae_dist.train.driver as driver
from mvae_dist.config import durable_output_paths, ray_job_working_dir, relative_input_hint
from mvae_dist.launch.cli import main

TINY = str(Path(__file__).parents[1] / "configs" / "embedded" / "tiny.yaml")
JOB_ENV = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(
    {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"}, "metadata": {"job_submission_id": "x"}})}


def test_a_ray_job_working_dir_is_recognised():
    assert ray_job_working_dir(JOB_ENV, "/tmp/ray/x") == "/tmp/ray/x"
    pkg = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_0123abcd"
    assert ray_job_working_dir({}, pkg) == pkg
    assert ray_job_working_dir({}, "/home/me/mvae_dist") is None
    no_dir = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}})}  # a job without --working-dir
    assert ray_job_working_dir(no_dir, "/home/me/mvae_dist") is None
    assert ray_job_working_dir({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"}, "/home/me") is None


def test_relative_outputs_move_to_the_home_directory_in_a_job(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = {"train": {"storage_path": "runs"}, "data": {"url": "data/x"}}
    moved, notes = durable_output_paths(cfg, "/tmp/job")
    assert moved["train"]["storage_path"] == str(tmp_path / "mvae-dist" / "runs")
    assert cfg["train"]["storage_path"] == "runs"  # the input is not changed
    assert len(notes) == 1 and "Ray job's temporary working directory" in notes[0]
    assert moved["data"]["url"] == "data/x"  # inputs cannot be moved
    for kept in ("/abs/runs", "s3://bucket/runs", "~/runs"):
        same, notes = durable_output_paths({"train": {"storage_path": kept}}, "/tmp/job")
        assert same["train"]["storage_path"] == kept and notes == []
    assert durable_output_paths(cfg, None) == (cfg, [])  # not a job: as is


def test_relative_input_hint():
    assert "not uploaded" in relative_input_hint("data/embedded", "/tmp/job")
    assert relative_input_hint("data/embedded", None) == ""
    assert relative_input_hint("/abs/data", "/tmp/job") == ""
    assert relative_input_hint("s3://b/data", "/tmp/job") == ""


def test_train_in_a_job_says_local_data_is_not_uploaded(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(driver, "_init_ray", lambda address: pytest.fail("Ray must not start"))
    for k, v in JOB_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", TINY, "data.url=data/embedded"]) == 1
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("mvae-dist: error: manifest.json not found: "), err
    assert "local data is not uploaded with it" in err[0] and "s3://" in err[0]
    assert "checkpoints go to " + str(tmp_path / "home" / "mvae-dist" / "runs") in captured.out


def test_the_default_tracking_store_of_a_job_is_in_the_home_directory(monkeypatch, tmp_path):
    from mvae_dist.tracking import default_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    for k, v in JOB_ENV.items():
        monkeypatch.setenv(k, v)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mvae-dist/mlflow.db"
