"""The package carries what it needs: the shipped run configs are package data, found through
the package, so a wheel install (as deploy/Dockerfile builds) runs the demo and the studies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from mvae_dist.config import load_train_config, resolve_config_path, shipped_config

ROOT = Path(__file__).parents[1]
PKG = ROOT / "mvae_dist"
SHIPPED = sorted(p.relative_to(PKG).as_posix() for p in (PKG / "configs").rglob("*.yaml"))


def test_every_shipped_config_is_in_the_wheel(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (whl,) = tmp_path.glob("mvae_dist-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert len(SHIPPED) >= 20 and "configs/embedded/demo.yaml" in SHIPPED
    missing = [f"mvae_dist/{p}" for p in SHIPPED if f"mvae_dist/{p}" not in names]
    assert not missing, missing


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
