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

#: one xdist worker runs the module, so the ranks start once (the fixture is per worker)
pytestmark = pytest.mark.xdist_group("dist")

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


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict:
    """Every case on W gloo ranks, one interpreter per rank for all of them -> {case id: result}."""
    tmp = tmp_path_factory.mktemp("dist")
    out = tmp / "rank0.pt"
    store = tmp / "store"  # the ranks' FileStore (see dist_worker.py)
    logs = [tmp / f"rank{r}.log" for r in range(W)]
    cases = ";".join(worker.case_id(*c) for c in CASES)
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(r), str(W), str(store),
                               cases, str(out)], stdout=log.open("w"), stderr=subprocess.STDOUT)
             for r, log in enumerate(logs)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * W, "\n".join(log.read_text()[-3000:] for log in logs)
    return torch.load(out)


@pytest.mark.parametrize("name,specs,estimator", CASES)
def test_two_gloo_ranks_equal_one_process(name, specs, estimator, ranks):
    got = ranks[worker.case_id(name, specs, estimator)]

    loss, want = worker.reference(name, specs, estimator, W)
    torch.testing.assert_close(got["loss"], loss, rtol=1e-10, atol=1e-10)
    assert got["grads"].keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got["grads"][n], want[n], rtol=1e-8, atol=1e-10,
                                   msg=lambda m, n=n: f"{n}: {m}")
