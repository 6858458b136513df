"""Negatives from the global batch: W gloo processes == 1 process on the whole global batch.

Each rank computes the training loss (eq. 4 plus the model's own terms) for its own anchors,
with negatives drawn from all W*B items; the model is wrapped in DistributedDataParallel, so
the gradients after backward are DDP's average. Both must match one process on the
concatenated batch with the same negative indices and noise, to 1e-5 relative (float64
here, so the match is much tighter). The ranks run the production step (``TrainStep`` in DDP,
``apply_step``, ``step_generator``) in separate interpreters (dist_worker.py).

World sizes: one global batch of G = 12 items, every case on 2 ranks (6 items each) and three of
them on 3 ranks (4 each): the same loss and gradients on 1, 2 or 3 workers, the invariant a run
that changes its worker count (elastic training) relies on.
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


G = 12  # the global batch: W * 6 items, or 3 * 4
RESIZED = CASES[:3]  # also on 3 ranks


def _run_ranks(tmp: Path, world: int, cases: list[tuple], n: int) -> dict:
    """``cases`` on ``world`` gloo ranks with a global batch of ``n``, one interpreter per rank
    for all of them -> {case id: result}."""
    out = tmp / "rank0.pt"
    store = tmp / "store"  # the ranks' FileStore (see dist_worker.py)
    logs = [tmp / f"rank{r}.log" for r in range(world)]
    ids = ";".join(worker.case_id(*c) for c in cases)
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(r), str(world), str(store),
                               ids, str(out), str(n)], stdout=log.open("w"), stderr=subprocess.STDOUT)
             for r, log in enumerate(logs)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * world, "\n".join(log.read_text()[-3000:] for log in logs)
    return torch.load(out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict:
    """Every case on W ranks."""
    return _run_ranks(tmp_path_factory.mktemp("dist"), W, CASES, G)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> dict:
    """RESIZED on 3 ranks."""
    return _run_ranks(tmp_path_factory.mktemp("dist3"), 3, RESIZED, G)


def _assert_matches(got: dict, name: str, specs: list[str], estimator: str, n: int) -> None:
    loss, want = worker.reference(name, specs, estimator, n)
    torch.testing.assert_close(got["loss"], loss, rtol=1e-10, atol=1e-10)
    assert got["grads"].keys() == want.keys()
    for p in want:
        torch.testing.assert_close(got["grads"][p], want[p], rtol=1e-8, atol=1e-10,
                                   msg=lambda m, p=p: f"{p}: {m}")


@pytest.mark.parametrize("name,specs,estimator", CASES)
def test_two_gloo_ranks_equal_one_process(name, specs, estimator, ranks):
    _assert_matches(ranks[worker.case_id(name, specs, estimator)], name, specs, estimator, G)


@pytest.mark.parametrize("name,specs,estimator", RESIZED)
def test_three_gloo_ranks_on_the_same_global_batch_equal_one_process(name, specs, estimator, three):
    _assert_matches(three[worker.case_id(name, specs, estimator)], name, specs, estimator, G)
