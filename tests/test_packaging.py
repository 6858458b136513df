"""The package carries what it needs: the shipped run configs are package data, found through
the package, so a wheel install (as deploy/Dockerfile builds) runs the demo and the studies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mvae_dist.config import load_train_config, resolve_config_path, shipped_config

ROOT = Path(__file__).parents[1]
PKG = ROOT / "mvae_dist"
SHIPPED = sorted(p.relative_to(PKG).as_posix() for p in (PKG / "configs").rglob("*.yaml"))
SPECS = sorted(p.relative_to(PKG).as_posix() for p in (PKG / "tune").glob("*.yaml"))


def test_every_shipped_config_is_in_the_wheel(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (whl,) = tmp_path.glob("mvae_dist-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert len(SHIPPED) >= 20 and "configs/embedded/demo.yaml" in SHIPPED
    assert {"tune/tiny.yaml", "tune/gamma_n_k.yaml"} <= set(SPECS)
    missing = [f"mvae_dist/{p}" for p in [*SHIPPED, *SPECS] if f"mvae_dist/{p}" not in names]
    assert not missing, missing
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = zipfile.ZipFile(whl).read(meta).decode()
    assert "License-Expression: MIT" in metadata, metadata[:800]  # SPDX, not the deprecated table


def test_defaults_are_found_through_the_package():
    import mvae_dist
    from mvae_dist.launch.experiments.studies import DEFAULT_CONFIG

    pkg = Path(mvae_dist.__file__).parent
    assert Path(DEFAULT_CONFIG) == pkg / "configs" / "embedded" / "demo.yaml"
    assert Path(DEFAULT_CONFIG).is_file()
    assert Path(shipped_config("embedded/mmvae-ci.yaml")).is_file()


def test_a_shipped_config_name_works_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("configs/embedded/tiny.yaml", "embedded/tiny.yaml"):
        assert Path(resolve_config_path(name)).is_file()
        expected = load_train_config(str(PKG / "configs/embedded/tiny.yaml")).train.name
        assert load_train_config(name).train.name == expected
    (tmp_path / "configs" / "embedded").mkdir(parents=True)
    own = tmp_path / "configs" / "embedded" / "tiny.yaml"
    own.write_text("train: {name: mine}\n")
    assert load_train_config("configs/embedded/tiny.yaml").train.name == "mine"  # a file that exists wins
    assert resolve_config_path("configs/embedded/nope.yaml") == "configs/embedded/nope.yaml"


def test_a_shipped_sweep_spec_name_works_from_any_directory(tmp_path, monkeypatch):
    from mvae_dist.config import resolve_spec_path
    from mvae_dist.launch.sweep.spec import load_sweep_spec

    monkeypatch.chdir(tmp_path)  # no tune/ here
    for name in ("tune/tiny.yaml", "tiny.yaml"):
        assert Path(resolve_spec_path(name)) == PKG / "tune" / "tiny.yaml"
        assert load_sweep_spec(name).experiment == load_sweep_spec(str(PKG / "tune" / "tiny.yaml")).experiment
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "tiny.yaml").write_text("num_samples: 1\n")
    assert resolve_spec_path("tune/tiny.yaml") == "tune/tiny.yaml"  # a file that exists wins
    assert resolve_spec_path("tune/nope.yaml") == "tune/nope.yaml"


@pytest.mark.parametrize("module", ["mvae_dist", "mvae_dist.launch.cli"])
def test_python_dash_m_runs_the_command_line(module, tmp_path):
    out = subprocess.run([sys.executable, "-m", module, "train", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "usage: mvae-dist train" in out.stdout, (out.stdout[-500:], out.stderr)
    bad = subprocess.run([sys.executable, "-m", module, "tune", "tune/nope.yaml"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode != 0 and last.startswith("mvae-dist: error:") and "nope.yaml" in last, bad.stderr
