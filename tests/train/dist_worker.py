"""One rank of the 2-process parity test (run as a script by tests/train/test_dist.py).

Usage: python dist_worker.py RANK WORLD PORT NAME SPECS ESTIMATOR OUT
A fresh interpreter per rank (not fork): forking a pytest process that runs server threads
(moto, MLflow fixtures) can deadlock.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from mvae_dist.models import build_model
from mvae_dist.objectives import training_loss
from mvae_dist.train.dist import TorchCrossRank, global_slice

B, N, K, GAMMA = 4, 3, 3, 2.0


def setup(name: str, specs: list[str], world: int):
    torch.manual_seed(0)
    model = build_model({"name": name, "modalities": specs, "latent_dim": 3, "hidden": 8}).double()
    g = torch.Generator().manual_seed(1)
    shapes = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}
    dims = [shapes[s] if s in shapes else (int(s.split(":")[1]),) for s in specs]
    xs = [torch.rand(world * B, *d, generator=g, dtype=torch.float64) for d in dims]
    return model, xs


def loss_fn(model, xs, estimator: str, g, group=None):
    objective = "baseline" if estimator == "baseline" else "contrastive"
    return training_loss(model, xs, objective=objective, K=K, N=N, gamma=GAMMA,
                         estimator="iwae" if estimator == "baseline" else estimator,
                         generator=g, group=group)


class Step(torch.nn.Module):
    """Model + objective as the one module DDP wraps (forward returns the loss)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, xs, estimator, group, seed):
        g = torch.Generator().manual_seed(seed)  # identical draws on every rank
        return loss_fn(self.model, xs, estimator, g, group)


def main(rank: int, world: int, port: int, name: str, specs: list[str], estimator: str, out: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, xs = setup(name, specs, world)
        step = DDP(Step(model))
        local = [x[global_slice(rank, B)] for x in xs]
        loss, _ = step(local, estimator, TorchCrossRank.from_process_group(), 7)
        loss.backward()
        logged = loss.detach().clone()
        dist.all_reduce(logged)  # the logged loss is the global mean; the trained one is local
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        if rank == 0:
            torch.save({"loss": logged / world, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    r, w, p, nm, sp, est, o = sys.argv[1:8]
    main(int(r), int(w), int(p), nm, sp.split(","), est, o)
