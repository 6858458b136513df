"""Config failure paths: binary files and non-finite numbers are one-line ConfigErrors naming the
file or the key, from the API and from the command line (before anything starts)."""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

import pytest

from mvae_dist.config import SECTIONS, RunConfig, load_storage_options, load_train_config
from mvae_dist.errors import ConfigError
from mvae_dist.launch.cli import main

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "embedded" / "tiny.yaml")
BINARY = b"\x80\xff\x00\x13model:\n\xfe"


@pytest.fixture
def binary_file(tmp_path) -> str:
    path = tmp_path / "weights.bin"
    path.write_bytes(BINARY)
    return str(path)


@pytest.fixture
def no_training(monkeypatch):
    """Training must not start: any call to fit (which starts Ray) fails the test."""
    def fit(*args, **kwargs):
        raise AssertionError("fit was called")

    stub = types.SimpleNamespace(fit=fit, RAY_STARTED_HERE=False)
    monkeypatch.setitem(sys.modules, "mvae_dist.train.driver", stub)


def test_binary_config_file_names_the_file(binary_file):
    with pytest.raises(ConfigError) as e:
        load_train_config(binary_file)
    message = str(e.value)
    assert binary_file in message and "not UTF-8" in message and "\n" not in message


def test_binary_storage_options_file_names_the_file(binary_file):
    with pytest.raises(ConfigError) as e:
        load_storage_options(binary_file, "data.storage_options_file")
    message = str(e.value)
    assert message.startswith(f"data.storage_options_file {binary_file!r} is not UTF-8")
    assert "\n" not in message


def test_storage_options_file_that_is_not_yaml_names_the_file(tmp_path):
    path = tmp_path / "s3.yaml"
    path.write_text("key: [unclosed\n")
    with pytest.raises(ConfigError, match=r"s3\.yaml' is not valid YAML"):
        load_storage_options(str(path))


def test_cli_binary_config_is_one_line(binary_file, capsys, no_training):
    assert main(["train", "--config", binary_file]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mvae-dist: error: config file") and binary_file in err[0]


def _float_keys() -> list[str]:
    """Every float-valued key of the training config (float and float | None fields)."""
    keys = []
    for section, cls in SECTIONS.items():
        for name, field in cls.model_fields.items():
            if field.annotation is float or float in typing.get_args(field.annotation):
                keys.append(f"{section}.{name}")
    return keys


def test_the_config_has_float_keys():
    assert {"objective.gamma", "optim.lr", "model.likelihood_scale"} <= set(_float_keys())


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan"])
def test_non_finite_floats_are_refused_for_every_float_key(key, value):
    with pytest.raises(ConfigError) as e:
        load_train_config(None, [f"{key}={value}"])
    message = str(e.value)
    assert message.startswith(f"{key} must be a finite number, got ") and "\n" not in message


def test_non_finite_floats_in_a_config_file_and_in_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: .NaN\n")
    with pytest.raises(ConfigError, match=r"^optim\.lr must be a finite number, got nan$"):
        load_train_config(str(path))
    with pytest.raises(ConfigError, match=r"^model\.llik_scaling must be a finite number, got inf$"):
        load_train_config(None, ["model.llik_scaling=[1.0, .inf]"])
    with pytest.raises(ConfigError, match="finite"):
        RunConfig.from_dict({"objective": {"gamma": float("inf")}})


def test_finite_values_still_pass():
    cfg = load_train_config(TINY, ["objective.gamma=1e300", "optim.lr=5e-4", "model.llik_scaling=[1, 2.5]"])
    assert cfg.objective.gamma == 1e300 and cfg.optim.lr == 5e-4 and cfg.model.llik_scaling == [1, 2.5]


@pytest.mark.parametrize("override", ["objective.gamma=.inf", "optim.lr=.inf", "optim.lr=.nan"])
def test_cli_train_refuses_non_finite_before_ray(override, capsys, no_training):
    assert main(["train", "--config", TINY, override]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    key = override.partition("=")[0]
    assert len(err) == 1 and err[0].startswith(f"mvae-dist: error: {key} must be a finite number")
