"""Digit classifiers: accuracy targets on the embedded set, determinism, the versioned store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mvae_dist.errors import ConfigError, DataError
from mvae_dist.eval.classifiers import (
    ClassifierRecord,
    ConvClassifier,
    MLPClassifier,
    accuracy,
    architecture_for,
    build_classifier,
    fit_classifier,
    list_classifier_versions,
    load_classifier_records,
    load_classifiers,
    load_unimodal,
    manifest_sha256,
    predict,
    random_affine,
    train_classifiers,
)

from .conftest import SMALL


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -------------------------------------------------------------------------- accuracy
@pytest.mark.slow
def test_classifiers_reach_targets_on_the_embedded_set(embedded_data, tmp_path):
    """Real MNIST >= 98%, synthetic street numbers >= 90% on the test images (~40 s)."""
    t0 = time.perf_counter()
    recs = train_classifiers(embedded_data, out=str(tmp_path))
    for name, r in recs.items():
        print(f"{name}: test accuracy {r.test_accuracy:.4f}, {r.seconds:.1f} s "
              f"({r.train_size} train / {r.test_size} test images, {r.epochs} epochs)")
    print(f"total {time.perf_counter() - t0:.1f} s")
    assert set(recs) == {"mnist", "svhn"}
    assert recs["mnist"].train_size == 4000 and recs["mnist"].test_size == 1000
    assert recs["mnist"].test_accuracy >= 0.98
    assert recs["svhn"].test_accuracy >= 0.90
    # The stored classifier is the trained one: the same accuracy on the test images.
    loaded = load_classifiers(str(tmp_path))
    x, y, _ = load_unimodal(embedded_data, "test", "mnist")
    assert accuracy(loaded["mnist"], x, y) == pytest.approx(recs["mnist"].test_accuracy)


# ------------------------------------------------------------------------- training
def test_load_unimodal_dedupes_pairs_by_id(small_data):
    from mvae_dist.data.sources import load_source

    src = load_source("embedded", None, 0, street_per_class=SMALL["street_per_class"])
    for m, split in [(0, "train"), (1, "test")]:
        x, y, ids = load_unimodal(small_data, split, m)
        assert len(ids) == len(set(ids.tolist())) == (200 if split == "train" else 100)
        assert torch.equal(ids, ids.sort().values)
        uni = src.splits[split][m]
        expect = torch.from_numpy(uni.images[ids.numpy()])
        expect = expect.unsqueeze(1) if expect.dim() == 3 else expect.permute(0, 3, 1, 2)
        assert x.dtype == torch.uint8 and torch.equal(x, expect)  # pixel-exact, in [C, H, W]
        assert torch.equal(y, torch.from_numpy(np.asarray(uni.labels)[ids.numpy()]))


def test_fit_is_deterministic_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 12, 12, generator=g), torch.randint(0, 10, (96,), generator=g)
    nets = []
    for _ in range(2):
        torch.manual_seed(3)
        net = ConvClassifier((1, 12, 12), widths=(4, 8))
        before = torch.random.get_rng_state()
        nets.append(fit_classifier(net, x, y, epochs=2, seed=5, batch_size=32))
        assert torch.equal(torch.random.get_rng_state(), before)
    assert states_equal(*nets)
    torch.manual_seed(3)
    other = fit_classifier(ConvClassifier((1, 12, 12), widths=(4, 8)), x, y, epochs=2, seed=6, batch_size=32)
    assert not states_equal(nets[0], other)
    assert not nets[0].training  # returned in eval mode


def test_mlp_classifier_learns_separable_vectors():
    g = torch.Generator().manual_seed(0)
    protos = 3 * torch.randn(10, 16, generator=g)
    y = torch.randint(0, 10, (600,), generator=g)
    x = protos[y] + torch.randn(600, 16, generator=g)
    assert architecture_for((16,)) == "mlp" and architecture_for((3, 32, 32)) == "conv"
    net = build_classifier("mlp", (16,))
    assert isinstance(net, MLPClassifier)
    fit_classifier(net, x[:400], y[:400], epochs=20, seed=0)
    assert accuracy(net, x[400:], y[400:]) >= 0.95
    assert predict(net, x[400:]).shape == (200,)


def test_random_affine_keeps_shape_and_is_seeded():
    x = torch.rand(4, 3, 32, 32)
    a = random_affine(x, torch.Generator().manual_seed(0))
    b = random_affine(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_bad_arguments_are_config_errors(small_data):
    with pytest.raises(ConfigError, match="unknown classifier architecture 'resnet'"):
        build_classifier("resnet", (1, 28, 28))
    with pytest.raises(ConfigError, match="no classifier architecture"):
        architecture_for((28, 28))
    with pytest.raises(ConfigError, match="modality 'audio' not in data set"):
        train_classifiers(small_data, modalities=["audio"])
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        fit_classifier(build_classifier("mlp", (4,)), torch.rand(8, 4), torch.zeros(8, dtype=torch.long),
                       epochs=0)


# ---------------------------------------------------------------------------- store
def test_versioned_store_round_trip(small_data, tmp_path):
    out = str(tmp_path / "store")
    v1 = train_classifiers(small_data, out=out, epochs=1, seed=0)
    v2 = train_classifiers(small_data, out=out, modalities=["svhn"], epochs=1, seed=1)
    assert {r.version for r in v1.values()} == {1}
    assert set(v2) == {"svhn"} and v2["svhn"].version == 2
    root = Path(out) / "classifiers"
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "v1", "v2"]
    assert sorted(p.name for p in (root / "v1").iterdir()) == ["mnist.pt", "svhn.pt"]
    assert not list(root.rglob("*.tmp*"))  # nothing half-written left behind

    versions = list_classifier_versions(out)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["manifest_sha256"] == manifest_sha256(small_data)
    assert json.loads((root / "index.json").read_text())["format_version"] == 1

    latest = load_classifier_records(out)  # latest: v2, which holds only svhn
    assert set(latest) == {"svhn"} and latest["svhn"].version == 2
    assert states_equal(latest["svhn"].model, v2["svhn"].model)
    first = load_classifiers(out, version=1)
    assert set(first) == {"mnist", "svhn"}
    for name, model in first.items():
        assert states_equal(model, v1[name].model) and not model.training
    rec = load_classifier_records(out, version=1)["mnist"]
    assert isinstance(rec, ClassifierRecord)
    assert rec.info() == {**v1["mnist"].info()}
    assert rec.input_shape == (1, 28, 28) and rec.architecture == "conv" and rec.train_size == 200
    x, _, _ = load_unimodal(small_data, "test", 0)
    assert torch.equal(predict(first["mnist"], x), predict(v1["mnist"].model, x))


def test_default_store_is_the_data_prefix(small_data, tmp_path):
    import shutil

    data = str(tmp_path / "ds")
    shutil.copytree(small_data, data)
    train_classifiers(data, epochs=1)
    assert (Path(data) / "classifiers" / "v1" / "mnist.pt").is_file()
    assert set(load_classifiers(data + "/manifest.json")) == {"mnist", "svhn"}


def test_loading_when_none_exist_is_a_one_line_error(tmp_path):
    url = str(tmp_path / "nothing")
    with pytest.raises(DataError) as err:
        load_classifiers(url)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"no classifiers at {url}/classifiers" in msg
    assert f"mvae-dist classifiers train --data {url}" in msg


def test_missing_version_and_corrupt_file_are_data_errors(small_data, tmp_path):
    out = str(tmp_path / "store")
    train_classifiers(small_data, out=out, modalities=[0], epochs=1)
    with pytest.raises(DataError, match=r"classifier version v7 not found at .*\(has v1\)"):
        load_classifiers(out, version=7)
    f = tmp_path / "store" / "classifiers" / "v1" / "mnist.pt"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="corrupt classifier file .*mnist.pt"):
        load_classifiers(out)
    f.unlink()
    with pytest.raises(DataError, match="classifier file missing: .*mnist.pt"):
        load_classifiers(out)


def test_s3_round_trip(small_data, s3_bucket, s3_storage_options):
    out = f"s3://{s3_bucket}/models"
    recs = train_classifiers(small_data, out=out, epochs=1, storage_options=s3_storage_options)
    assert recs["mnist"].url == f"{out}/classifiers/v1/mnist.pt"
    loaded = load_classifiers(out, storage_options=s3_storage_options)
    assert set(loaded) == {"mnist", "svhn"}
    for name, model in loaded.items():
        assert states_equal(model, recs[name].model)
    with pytest.raises(DataError, match="no classifiers at s3://"):
        load_classifiers(f"s3://{s3_bucket}/elsewhere", storage_options=s3_storage_options)
    with pytest.raises(DataError, match="bucket 'no-such-bucket-x' does not exist"):
        load_classifiers("s3://no-such-bucket-x/models", storage_options=s3_storage_options)
