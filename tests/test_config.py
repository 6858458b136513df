"""Config sections: defaults validate, bad values raise ConfigError naming the key."""

import pytest

from mvae_dist.config import ModelConfig, ObjectiveConfig, RunConfig
from mvae_dist.errors import ConfigError


def test_defaults_are_the_papers():
    o = ObjectiveConfig.build({})
    assert (o.gamma, o.N, o.K, o.estimator) == (2.0, 5, 30, "iwae")
    m = ModelConfig.build({"modalities": "mnist,svhn"})
    assert m.modalities == ("mnist", "svhn") and m.posterior_family == "laplace"
    assert ModelConfig.build({"name": "mvae"}).posterior_family == "normal"


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
        (ModelConfig, "model", {"modalities": ["mnist", "text:3"]}, "text:V (V >= 4)"),
        (ModelConfig, "model", {"name": "mvae", "family": "laplace"}, "model.family must be 'normal'"),
    ],
)
def test_bad_values_are_named(cls, section, data, message):
    with pytest.raises(ConfigError) as e:
        cls.build(data)
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


@pytest.mark.parametrize("build,message", [
    (lambda: ObjectiveConfig(gamma=1.0), "objective.gamma must be > 1, got 1.0"),  # the constructor
    (lambda: ObjectiveConfig().replace(K=0), "objective.K must be >= 1, got 0"),  # a validated copy
    (lambda: ModelConfig.build({"latent_dim": True}), "model.latent_dim must be an integer, got True"),
    (lambda: ModelConfig.build({"learn_prior": "maybe"}), "model.learn_prior must be true or false"),
    (lambda: RunConfig.from_dict({"optimizer": {}}), "unknown config section 'optimizer'; known: model,"),
    (lambda: RunConfig.from_dict({"optim": 3}), "config section 'optim' must be a mapping, got 3"),
    (lambda: RunConfig.from_dict({"train": {"num_workers": "two"}}), "train.num_workers must be an integer"),
    (lambda: RunConfig.from_dict({"data": {"batch_size": 2}, "train": {"num_workers": 1}}),
     "objective.N must be < the global batch 2, got 5"),
    (lambda: ObjectiveConfig(neg_samples="both"), "objective.neg_samples must be one of fresh, reuse"),
    (lambda: ObjectiveConfig(neg_samples="reuse", neg_K=3), "objective.neg_K applies to fresh negative"),
    (lambda: RunConfig.from_dict({"objective": {"neg_K": 3}}), "objective.neg_K applies to mvae and jmvae"),
])
def test_every_way_of_building_a_config_validates(build, message):
    with pytest.raises(ConfigError) as e:
        build()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_overrides_read_text_as_the_yaml_type():
    from mvae_dist.config import load_train_config

    cfg = load_train_config(None, ["model.modalities=mnist,svhn", "train.use_gpu=false", "objective.K=7",
                                   "optim.lr=2e-4"])
    assert cfg.model.modalities == ("mnist", "svhn") and cfg.train.use_gpu is False
    assert cfg.objective.K == 7 and cfg.optim.lr == 2e-4
    assert RunConfig.from_dict({"eval": None}).eval == RunConfig().eval  # an empty YAML section
