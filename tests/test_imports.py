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
