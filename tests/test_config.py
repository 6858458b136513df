"""Config sections: defaults validate, bad values raise ConfigError naming the key."""

import pytest

from mvae_dist.config import ModelConfig, ObjectiveConfig, from_mapping
from mvae_dist.errors import ConfigError


def test_defaults_are_the_papers():
    o = from_mapping(ObjectiveConfig, {}, "objective")
    assert (o.gamma, o.N, o.K, o.estimator) == (2.0, 5, 30, "iwae")
    m = from_mapping(ModelConfig, {"modalities": "mnist,svhn"}, "model")
    assert m.modalities == ("mnist", "svhn") and m.posterior_family == "laplace"
    assert from_mapping(ModelConfig, {"name": "mvae"}, "model").posterior_family == "normal"


@pytest.mark.parametrize(
    "cls,section,data,message",
    [
        (ObjectiveConfig, "objective", {"gamma": 0.5}, "objective.gamma must be > 1, got 0.5"),
        (ObjectiveConfig, "objective", {"gamma": "x"}, "objective.gamma must be a number, got 'x'"),
        (ObjectiveConfig, "objective", {"N": "2.5"}, "objective.N must be an integer, got '2.5'"),
        (ObjectiveConfig, "objective", {"K": 0}, "objective.K must be >= 1, got 0"),
        (ObjectiveConfig, "objective", {"estimator": "iwea"}, "objective.estimator must be"),
        (ObjectiveConfig, "objective", {"gama": 2}, "unknown key objective.gama"),
        (ModelConfig, "model", {"name": "vae"}, "model.name must be one of mmvae, mvae, jmvae, got 'vae'"),
        (ModelConfig, "model", {"modalities": ["mnist", "audio"]}, "unknown modality 'audio'"),
        (ModelConfig, "model", {"name": "mvae", "family": "laplace"}, "model.family must be 'normal'"),
    ],
)
def test_bad_values_are_named(cls, section, data, message):
    with pytest.raises(ConfigError) as e:
        from_mapping(cls, data, section)
    assert message in str(e.value)


def test_absolute_local_paths_leaves_urls_and_keywords(tmp_path, monkeypatch):
    from mvae_dist.config import absolute_local_paths

    monkeypatch.chdir(tmp_path)
    cfg = {"data": {"url": "data/embedded", "storage_options_file": None},
           "train": {"storage_path": "s3://bucket/runs", "storage_options_file": "/etc/s3.yaml"},
           "eval": {"classifiers": "auto"}, "model": {"name": "mmvae"}}
    out = absolute_local_paths(cfg)
    assert out["data"]["url"] == str(tmp_path / "data" / "embedded")
    assert out["train"] == cfg["train"] and out["eval"]["classifiers"] == "auto"
    assert cfg["data"]["url"] == "data/embedded"  # the input is not modified
    store = absolute_local_paths({"eval": {"classifiers": "clf"}})["eval"]["classifiers"]
    assert store == str(tmp_path / "clf")
