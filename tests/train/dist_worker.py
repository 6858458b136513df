"""One rank of the multi-process parity test (run as a script by tests/train/test_dist.py).

Usage: python dist_worker.py RANK WORLD STORE CASES OUT GLOBAL
CASES: ``name/spec,spec/estimator`` cases joined by ``;``, run one after the other in one process
group (two interpreters importing torch cost ~7 s a case under load; one set runs them all).
GLOBAL: the global batch, GLOBAL / WORLD items per rank.
A fresh interpreter per rank (not fork): forking a pytest process that runs server threads
(moto, MLflow fixtures) can deadlock. The ranks meet through a FileStore (STORE: a path that
does not exist yet), not a TCPStore: a TCPStore lives in rank 0, and when rank 0 exited first
rank 1's teardown sometimes lost its store mid-call and aborted in C++ ("terminate called
without an active exception"; about 1 run in 8-30). A file outlives both ranks.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from mvae_dist.config import ObjectiveConfig
from mvae_dist.models import build_model
from mvae_dist.train.dist import TorchCrossRank, global_slice
from mvae_dist.train.step import TrainStep, apply_step, make_scheduler, step_generator

N, K, GAMMA = 3, 3, 2.0
SEED, STEP = 3, 7  # the run's seed and the step number: step_generator(SEED, STEP) draws everything


def setup(name: str, specs: list[str], n: int):
    """The model and a global batch of ``n`` items (the same for every world size)."""
    torch.manual_seed(0)
    model = build_model({"name": name, "modalities": specs, "latent_dim": 3, "hidden": 8}).double()
    g = torch.Generator().manual_seed(1)
    shapes = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}
    dims = [shapes[s] if s in shapes else (int(s.split(":")[1]),) for s in specs]
    xs = [torch.rand(n, *d, generator=g, dtype=torch.float64) for d in dims]
    return model, xs


def objective(estimator: str) -> ObjectiveConfig:
    """The ObjectiveConfig of a case: "baseline", or the contrastive objective with ``estimator``,
    optionally with the negatives' sampling after a "+": "iwae+reuse" (neg_samples reuse),
    "iwae+K1" (neg_K 1)."""
    if estimator == "baseline":
        return ObjectiveConfig(name="baseline", K=K, baseline_estimator="iwae")
    estimator, _, negatives = estimator.partition("+")
    extra = ({"neg_samples": "reuse"} if negatives == "reuse"
             else {"neg_K": int(negatives[1:])} if negatives else {})
    return ObjectiveConfig(name="contrastive", estimator=estimator, K=K, N=N, gamma=GAMMA, **extra)


def reference(name: str, specs: list[str], estimator: str, n: int):
    """One process on the whole global batch of ``n`` items, the production TrainStep -> (loss, grads)."""
    model, xs = setup(name, specs, n)
    loss, _ = TrainStep(model, objective(estimator))(xs, step_generator(SEED, STEP))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def case_id(name: str, specs: list[str], estimator: str) -> str:
    return f"{name}/{','.join(specs)}/{estimator}"


def one_case(rank: int, world: int, name: str, specs: list[str], estimator: str, n: int) -> dict:
    """One rank of the production step: TrainStep wrapped in DDP, driven by apply_step with the
    step's generator, as the Ray Train worker does (SGD with lr 0 keeps the gradients to compare
    and the parameters unchanged) -> {"loss": the logged global mean, "grads": {name: [..]}}."""
    model, xs = setup(name, specs, n)
    module = DDP(TrainStep(model, objective(estimator)))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    local = [x[global_slice(rank, n // world)] for x in xs]
    stats, stepped = apply_step(module, opt, make_scheduler(opt, "constant", 1), local,
                                step_generator(SEED, STEP), TorchCrossRank.from_process_group())
    assert stepped
    logged = torch.tensor(stats["loss"], dtype=torch.float64)
    dist.all_reduce(logged)  # the logged loss is the global mean; the trained one is local
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    dist.barrier()  # both ranks done with this case's collectives
    del module  # DDP's reducer holds the process group: free it before the next case
    return {"loss": logged / world, "grads": grads}


def main(rank: int, world: int, store: str, cases: list[str], out: str, n: int) -> None:
    """Every case in one process group; rank 0 saves {case_id: result} to ``out``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for case in cases:
            name, specs, estimator = case.split("/")
            results[case] = one_case(rank, world, name, specs.split(","), estimator, n)
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # every rank done with every collective before the teardown
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    r, w, p, cs, o, g = sys.argv[1:7]
    main(int(r), int(w), p, cs.split(";"), o, int(g))
