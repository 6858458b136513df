"""Negatives from the global batch: 2 gloo processes == 1 process on the concatenated batch.

Each rank computes the training loss (eq. 4 plus the model's own terms) for its own anchors,
with negatives drawn from all W*B items; the model is wrapped in DistributedDataParallel, so
the gradients after backward are DDP's average. Both must match one process on the
concatenated batch with the same negative indices and noise, to 1e-5 relative (float64
here, so the match is much tighter). The ranks run the production step (``TrainStep`` in DDP,
``apply_step``, ``step_generator``) in separate interpreters (dist_worker.py).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("dist_worker", HERE / "dist_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

W = 2
CASES = [
    ("mmvae", ["mnist", "svhn"], "iwae"),
    ("mvae", ["vector:5", "vector:3"], "cubo"),
    ("jmvae", ["vector:5", "vector:3"], "iwae"),
    ("mmvae", ["vector:5", "vector:3", "vector:4"], "iwae"),
    ("mvae", ["vector:5", "vector:3"], "baseline"),  # the baseline objective, same draws
    ("mvae", ["vector:5", "vector:3"], "iwae+reuse"),  # negatives reuse the positives' samples
    ("jmvae", ["vector:5", "vector:3", "vector:4"], "cubo+reuse"),
    ("jmvae", ["vector:5", "vector:3"], "iwae+K1"),  # fewer fresh samples for the negatives
]


@pytest.mark.parametrize("name,specs,estimator", CASES)
def test_two_gloo_ranks_equal_one_process(name, specs, estimator, tmp_path):
    out = tmp_path / "rank0.pt"
    store = tmp_path / "store"  # the ranks' FileStore (see dist_worker.py)
    logs = [tmp_path / f"rank{r}.log" for r in range(W)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(r), str(W), str(store),
                               name, ",".join(specs), estimator, str(out)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
             for r, log in enumerate(logs)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * W, "\n".join(log.read_text()[-3000:] for log in logs)
    got = torch.load(out)

    loss, want = worker.reference(name, specs, estimator, W)
    torch.testing.assert_close(got["loss"], loss, rtol=1e-10, atol=1e-10)
    assert got["grads"].keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got["grads"][n], want[n], rtol=1e-8, atol=1e-10,
                                   msg=lambda m, n=n: f"{n}: {m}")
