"""run_propagate on Ray workers, end to end on the tiny embedded pools, against in-process PMI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch

from mvae_dist.data import make_loader, open_manifest, verify
from mvae_dist.errors import ConfigError, DataError
from mvae_dist.launch.cli import main
from mvae_dist.launch.propagate import run_propagate
from mvae_dist.propagate.relatedness import (
    average_precision,
    choose_threshold,
    relatedness_scores,
    roc_auc,
    score_pmi,
)
from mvae_dist.trained import load_trained

K = 2


@pytest.fixture(scope="module")
def reference(tiny_pools, untrained_checkpoint):
    """PMI of every sm and fm pair scored in this process (one thread), as run_propagate does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same kernels, same rounding
    try:
        model = load_trained(checkpoint=untrained_checkpoint).model
        return {split: score_pmi(model, make_loader(tiny_pools, split, 64, shuffle=False, drop_last=False),
                                 K, seed=0) for split in ("sm", "fm")}
    finally:
        torch.set_num_threads(before)


def read_all(url: str, split: str = "train", storage_options: dict | None = None) -> dict:
    keys, related, labels = [], [], []
    for b in make_loader(url, split, 64, shuffle=False, drop_last=False, storage_options=storage_options):
        keys += b["key"]
        related.append(b["related"].numpy())
        labels.append(b["labels"].numpy())
    return {"keys": keys, "related": np.concatenate(related), "labels": np.concatenate(labels)}


def test_end_to_end_on_two_workers_matches_in_process_pmi(ray_cluster, tiny_pools, untrained_checkpoint,
                                                           reference, tmp_path):
    out = str(tmp_path / "found")
    r = run_propagate(checkpoint=untrained_checkpoint, out=out, workers=2, K=K, batch_size=16, progress=False)
    # the threshold: max F1 on sm, as chosen in-process
    sm, fm = reference["sm"], reference["fm"]
    assert r.threshold == pytest.approx(choose_threshold(sm.scores, sm.related), abs=1e-6)
    assert r.calibrated_on == "sm" and r.calibration["n"] == 50 and r.data == tiny_pools
    # the pool: every pair scored once, the found ones are those with PMI >= threshold
    assert r.workers == 2 and r.n_scored == 450 and sorted(r.pool_scores.keys) == sorted(fm.keys)
    # PMI = log p(x,y) - log p(x) - log p(y), a difference of float32 estimates of size ~1e3
    # (one float32 ulp at 1e3 is 6e-5, and batches of another size sum in another order): equal
    # to 2e-3, not to the last bit
    ref = dict(zip(fm.keys, fm.scores))
    np.testing.assert_allclose([ref[k] for k in r.pool_scores.keys], r.pool_scores.scores, atol=2e-3)
    # the found pairs are exactly those whose (workers') PMI reaches the threshold
    expected = {k for k, s in zip(r.pool_scores.keys, r.pool_scores.scores) if s >= r.threshold}
    assert r.n_found == len(expected) > 0
    related = dict(zip(fm.keys, fm.related))
    predicted = np.asarray(r.pool_scores.scores) >= r.threshold
    truth = np.asarray([related[k] for k in r.pool_scores.keys])
    for name, value in relatedness_scores(predicted, truth).items():
        assert r.scores[name] == pytest.approx(value)

    # a valid data set whose train split holds exactly the found pairs
    manifest = open_manifest(out)
    assert list(manifest["splits"]) == ["train"] and verify(out)["shards"] == r.n_shards > 0
    got = read_all(out)
    assert sorted(got["keys"]) == sorted(expected) and len(got["keys"]) == r.n_found
    train = manifest["splits"]["train"]
    assert train["count"] == r.n_found and train["related"] == int(got["related"].sum())
    assert sum(train["class_counts"].values()) == r.n_found
    src = open_manifest(tiny_pools)
    assert manifest["modalities"] == src["modalities"] and manifest["synthetic"] == ["svhn"]
    assert manifest["config"]["propagated_from"] == tiny_pools
    prov = manifest["propagation"]
    assert prov["data"] == tiny_pools and prov["pool"] == "fm" and prov["calibrated_on"] == "sm"
    assert prov["threshold"] == r.threshold and prov["n_found"] == r.n_found and prov["K"] == K
    assert prov["model"]["source"] == untrained_checkpoint and prov["model"]["step"] == 7
    assert prov["scores"]["f1"] == pytest.approx(r.scores["f1"])
    assert not os.path.exists(os.path.join(out, "_propagating.json"))

    # ranking apart from calibration: AUC / AP of the same PMI on sm and fm, fm's best-threshold F1
    # (the workers' PMI equals the in-process one to 2e-3: a near tie may swap, 1/625 of AUC each)
    assert r.ranking["cal_auc"] == pytest.approx(roc_auc(sm.scores, sm.related), abs=0.01)
    assert r.ranking["auc"] == pytest.approx(roc_auc(r.pool_scores.scores, truth), abs=1e-12)
    assert r.ranking["ap"] == pytest.approx(average_precision(r.pool_scores.scores, truth), abs=1e-12)
    best = choose_threshold(r.pool_scores.scores, truth)
    assert r.ranking["best_threshold"] == best and r.ranking["best_f1"] >= r.scores["f1"]
    at_best = relatedness_scores(r.pool_scores.scores >= best, truth)
    assert r.ranking["best_f1"] == pytest.approx(at_best["f1"])
    assert prov["ranking"] == r.ranking
    from PIL import Image

    assert Image.open(os.path.join(out, "pmi_distributions.png")).size[0] > 500  # two panels

    lines = r.lines()
    assert lines[0].startswith(f"threshold {r.threshold:.4f} (chosen on sm")
    assert "scored 450 pairs of fm on 2 Ray worker(s)" in lines[1]
    assert lines[2].startswith(f"found {r.n_found} related pairs") and "F1" in lines[2]
    assert lines[3].startswith(f"ranking by PMI: ROC-AUC {r.ranking['auc']:.3f} on fm "
                               f"({r.ranking['cal_auc']:.3f} on sm)") and "upper bound" in lines[3]
    assert lines[4].endswith(f"-> {out}/manifest.json")
    assert r.pairs_per_s > 0
    print("\n".join(lines))


def test_given_threshold_one_worker_extra_splits_and_no_overwrite(ray_cluster, tiny_pools,
                                                                  untrained_checkpoint, reference, tmp_path):
    fm = reference["fm"]
    t = float(np.median(fm.scores))
    out = str(tmp_path / "given")
    r = run_propagate(checkpoint=untrained_checkpoint, data=tiny_pools, threshold=t, out=out, workers=1, K=K,
                      batch_size=64, progress=False, extra_train=("sr",), copy_splits=("test",))
    assert r.threshold == t and r.calibrated_on is None and r.calibration is None
    assert r.ranking is None and not os.path.exists(os.path.join(out, "pmi_distributions.png"))
    assert r.n_found == int((fm.scores >= t).sum()) and r.workers == 1
    assert r.n_train == r.n_found + 50 and r.extra_train == {"sr": 50} and r.copied == {"test": 100}
    assert "(given)" in r.lines()[0] and "+ sr 50" in r.lines()[3]
    verify(out)
    train, test = read_all(out), read_all(out, "test")
    assert len(train["keys"]) == r.n_found + 50
    assert sum(k.startswith("sr-") for k in train["keys"]) == 50
    assert len(test["keys"]) == 100 and test["related"].all()
    m = open_manifest(out)
    assert m["splits"]["test"]["count"] == 100 and m["propagation"]["calibrated_on"] is None
    assert m["splits"]["train"]["related"] == int(train["related"].sum())

    before = open(os.path.join(out, "manifest.json"), "rb").read()
    with pytest.raises(ConfigError, match="already holds a data set"):
        run_propagate(checkpoint=untrained_checkpoint, threshold=t, out=out, workers=1, K=K, progress=False)
    assert open(os.path.join(out, "manifest.json"), "rb").read() == before


def test_bad_input_is_a_one_line_error(ray_cluster, tiny_pools, untrained_checkpoint, tmp_path):
    out = str(tmp_path / "out")
    kw = dict(checkpoint=untrained_checkpoint, out=out, K=1, progress=False)
    cases = [
        (dict(pool="nope"), ConfigError, "--pool 'nope' is not a split of"),
        (dict(calibrate="sr"), ConfigError, "--calibrate 'sr' has no mix of related and unrelated pairs"),
        (dict(threshold=float("nan")), ConfigError, "--threshold must be a finite number"),
        (dict(workers=0), ConfigError, "--workers must be >= 1, got 0"),
        (dict(batch_size=2.5), ConfigError, "--batch-size must be an integer, got 2.5"),
        (dict(copy_splits=("train",)), ConfigError, "copy_splits cannot hold 'train'"),
        (dict(workers=64), ConfigError, "--workers 64 need 64 CPUs"),
        (dict(data=str(tmp_path / "missing")), DataError, "manifest.json not found"),
        (dict(run_id="abc"), ConfigError, "exactly one of --checkpoint"),
        (dict(data=tiny_pools, out=tiny_pools), ConfigError, "already holds a data set"),
    ]
    for extra, err, message in cases:
        with pytest.raises(err, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
            run_propagate(**{**kw, **extra})
        assert "\n" not in str(info.value)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        run_propagate(**{**kw, "out": str(tmp_path / "full")})
    assert not os.path.exists(out)


def test_a_corrupt_shard_fails_cleanly_leaving_nothing(ray_cluster, tiny_pools, untrained_checkpoint,
                                                       tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(tiny_pools, data)
    bad = os.path.join(data, "fm", "shard-000011.tar")
    with open(bad, "r+b") as f:
        f.truncate(1000)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"truncated or corrupt shard .*fm/shard-000011.tar") as info:
        run_propagate(checkpoint=untrained_checkpoint, data=data, threshold=0.0, out=str(out), workers=2,
                      K=1, progress=False)
    assert "\n" not in str(info.value)
    assert not out.exists() or list(out.rglob("*")) == [p for p in out.rglob("*") if p.is_dir()]


def test_cli_propagate(ray_cluster, tiny_pools, untrained_checkpoint, tmp_path, capsys):
    """From an MLflow run: the lines, and the run gets the PMI's relatedness and its figure."""
    from mvae_dist.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with Tracker(uri, "propagate-test") as t:
        run_id = t.start("model", tags={"last_checkpoint": untrained_checkpoint})
    out = str(tmp_path / "cli")
    assert main(["propagate", "--run", run_id, "--tracking-uri", uri, "--pool", "fm", "--out", out,
                 "--workers", "2", "--K", "1", "--batch-size", "16", "--compare-calibrations", "sm"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and lines[0].startswith("threshold ") and "pairs of fm" in lines[1]
    assert lines[3].startswith("ranking by PMI: ROC-AUC ")
    prov = json.load(open(os.path.join(out, "manifest.json")))["propagation"]
    # compared with the split the threshold came from: the same threshold, the same F1
    assert prov["compared"]["sm"]["threshold"] == pytest.approx(prov["threshold"])
    assert prov["compared"]["sm"]["f1"] == pytest.approx(prov["scores"]["f1"])
    assert lines[4].startswith(f"with the threshold chosen on sm instead ({prov['threshold']:.4f})")
    client = mlflow.MlflowClient(tracking_uri=uri)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["pmi/fm/auc"] == pytest.approx(prov["ranking"]["auc"])
    assert metrics["pmi/sm/auc"] == pytest.approx(prov["ranking"]["cal_auc"])
    assert metrics["pmi/fm/f1"] == pytest.approx(prov["scores"]["f1"])
    assert metrics["pmi/fm/best_f1"] == pytest.approx(prov["ranking"]["best_f1"])
    assert metrics["pmi/threshold"] == pytest.approx(prov["threshold"])
    assert "pmi/sm_fm_distributions.png" in {a.path for a in client.list_artifacts(run_id, "pmi")}

    args = ["propagate", "--checkpoint", untrained_checkpoint, "--pool", "sm", "--out", out,
            "--workers", "2", "--K", "1", "--batch-size", "16"]
    fresh = [*args[:6], str(tmp_path / "other"), *args[7:]]
    for bad, message in [
        (args, f"mvae-dist: error: {out} already holds a data set"),
        ([*fresh[:4], "nope", *fresh[5:]], "mvae-dist: error: --pool 'nope' is not a split of"),
        ([*fresh, "--threshold", "inf"], "mvae-dist: error: --threshold must be a finite number, got inf"),
        ([*fresh, "--compare-calibrations", "nope"],
         "mvae-dist: error: --compare-calibrations 'nope' is not a split"),
        ([*fresh, "--compare-calibrations", "sr"],
         "mvae-dist: error: --compare-calibrations 'sr' has no mix of related and unrelated pairs"),
        ([*fresh[:2], str(tmp_path), *fresh[3:]], "mvae-dist: error: --checkpoint"),
    ]:
        assert main(bad) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "other").exists()


def test_output_to_s3(ray_cluster, tiny_pools, untrained_checkpoint, s3_bucket, s3_storage_options):
    out = f"s3://{s3_bucket}/found"
    r = run_propagate(checkpoint=untrained_checkpoint, pool="sm", threshold=-1e9, out=out, workers=2, K=1,
                      storage_options=s3_storage_options, progress=False)
    assert r.n_found == r.n_scored == 50  # a threshold below every PMI keeps the whole pool
    assert verify(out, s3_storage_options)["shards"] == 2
    got = read_all(out, storage_options=s3_storage_options)
    assert len(got["keys"]) == 50 and got["related"].sum() == 25
    with pytest.raises(ConfigError, match="already holds a data set"):
        run_propagate(checkpoint=untrained_checkpoint, pool="sm", threshold=0.0, out=out, K=1,
                      storage_options=s3_storage_options, progress=False)


def test_propagate_package_imports_without_ray():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'ray', 'mlflow'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import mvae_dist.propagate.relatedness, mvae_dist.propagate.siamese, mvae_dist.launch.propagate
from mvae_dist.launch.propagate import run_propagate
from mvae_dist.propagate import choose_threshold, train_siamese
print('ok')
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
