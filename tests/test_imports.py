"""The core (config, models, objectives, eval.pmi) imports without Ray, MLflow or WebDataset."""

import subprocess
import sys

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'ray', 'mlflow', 'webdataset', 's3fs'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import mvae_dist.config, mvae_dist.models, mvae_dist.objectives, mvae_dist.eval.pmi
from mvae_dist.models import build_model, Modality
from mvae_dist.objectives import log_joint, log_marginal, contrastive_loss
from mvae_dist.eval import pmi
print('ok')
"""


def test_core_imports_without_distributed_stack():
    out = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


#: what deploy/device/bench.sh runs on a GPU machine that has PyTorch but neither Ray nor MLflow
#: (its benchmarks, data preparation, classifiers, learning curves)
DEVICE_BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'ray', 'mlflow', 's3fs', 'boto3', 'gensim'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from mvae_dist.launch.cli import main
from mvae_dist.launch import bench
from mvae_dist.launch.experiments import curve
from mvae_dist.data import prepare, bench_loader
from mvae_dist.eval.classifiers import train_classifiers
sys.exit(main(['bench', 'step', '--K', '1', '--N', '2', '--batch-size', '4', '--steps', '1', '--warmup', '0',
               '--objective', 'baseline', '--precision', 'bf16']))
"""


def test_the_device_benchmarks_need_neither_ray_nor_mlflow():
    out = subprocess.run([sys.executable, "-c", DEVICE_BLOCK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"precision": "bf16"' in out.stdout


#: the launchers (commands, sweeps, studies, benchmarks) all live in this package
LAUNCHERS = "mvae_dist.launch"


def _library_files(root):
    """Every module of the package outside ``launch/`` and ``__main__.py`` (``python -m mvae_dist``:
    the command line's other door, a launcher itself)."""
    return [p for p in sorted(root.rglob("*.py"))
            if "launch" not in p.relative_to(root).parts and p.relative_to(root).as_posix() != "__main__.py"]


def _imports(path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved), at any depth
    (imports inside functions count)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            mod = node.module or ""
            if node.level:
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            names |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return names


def test_the_library_never_imports_a_launcher():
    from pathlib import Path

    root = Path(__file__).parents[1] / "mvae_dist"
    files = _library_files(root)
    assert len(files) > 40
    bad = []
    for f in files:
        rel = f.relative_to(root.parent).with_suffix("")
        package = ".".join(rel.parts[:-1])  # the package a relative import starts from
        for name in _imports(f, package):
            if name == LAUNCHERS or name.startswith(LAUNCHERS + "."):
                bad.append(f"{rel}: {name}")
    assert not bad, bad
