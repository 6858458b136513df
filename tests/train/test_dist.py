"""Negatives from the global batch: 2 gloo processes == 1 process on the concatenated batch.

Each rank computes the training loss (eq. 4 plus the model's own terms) for its own anchors,
with negatives drawn from all W*B items; the model is wrapped in DistributedDataParallel, so
the gradients after backward are DDP's average. Both must match one process on the
concatenated batch with the same negative indices and noise, to 1e-5 relative (float64
here, so the match is much tighter).
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mvae_dist.models import build_model
from mvae_dist.objectives import training_loss

W, B, N, K, GAMMA = 2, 4, 3, 3, 2.0
CASES = [
    ("mmvae", ["mnist", "svhn"], "iwae"),
    ("mvae", ["vector:5", "vector:3"], "cubo"),
    ("jmvae", ["vector:5", "vector:3"], "iwae"),
    ("mmvae", ["vector:5", "vector:3", "vector:4"], "iwae"),
    ("mvae", ["vector:5", "vector:3"], "baseline"),  # the baseline objective, same draws
]


def _setup(name, specs):
    torch.manual_seed(0)
    model = build_model({"name": name, "modalities": specs, "latent_dim": 3, "hidden": 8}).double()
    g = torch.Generator().manual_seed(1)
    shapes = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}
    dims = [shapes[s] if s in shapes else (int(s.split(":")[1]),) for s in specs]
    xs = [torch.rand(W * B, *d, generator=g, dtype=torch.float64) for d in dims]
    return model, xs


class _Step(torch.nn.Module):
    """Model + objective as the one module DDP wraps (forward returns the loss)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, xs, estimator, group, seed):
        g = torch.Generator().manual_seed(seed)  # identical draws on every rank
        return _loss(self.model, xs, estimator, g, group)


def _loss(model, xs, estimator, g, group=None):
    objective = "baseline" if estimator == "baseline" else "contrastive"
    return training_loss(model, xs, objective=objective, K=K, N=N, gamma=GAMMA,
                         estimator="iwae" if estimator == "baseline" else estimator,
                         generator=g, group=group)


def _worker(rank, port, name, specs, estimator, out_path):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from mvae_dist.train.dist import TorchCrossRank, global_slice

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=W)
    try:
        model, xs = _setup(name, specs)
        step = DDP(_Step(model))
        local = [x[global_slice(rank, B)] for x in xs]
        loss, stats = step(local, estimator, TorchCrossRank.from_process_group(), 7)
        loss.backward()
        logged = loss.detach().clone()
        dist.all_reduce(logged)  # the logged loss is the global mean; the trained one is local
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        if rank == 0:
            torch.save({"loss": logged / W, "grads": grads}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name,specs,estimator", CASES)
def test_two_gloo_ranks_equal_one_process(name, specs, estimator, tmp_path):
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(_free_port(), name, specs, estimator, str(out)), nprocs=W,
                       join=True, start_method="fork")
    got = torch.load(out)

    model, xs = _setup(name, specs)
    g = torch.Generator().manual_seed(7)
    loss, _ = _loss(model, xs, estimator, g)
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-10, atol=1e-10)
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got["grads"].keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got["grads"][n], want[n], rtol=1e-8, atol=1e-10,
                                   msg=lambda m, n=n: f"{n}: {m}")
