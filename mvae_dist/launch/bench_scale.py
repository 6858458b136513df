"""``mvae-dist bench scale``: what one training step costs against the number of workers.

For each world size W, W fresh processes (gloo on 127.0.0.1, one torch thread each, meeting
through a FileStore) train ``steps`` steps of a config (default: configs/embedded/tiny.yaml's
small networks and contrastive objective) on real shards, the per-worker batch fixed (weak
scaling: the global batch, and the pool of negatives, grow with W). Per step, after a barrier,
each rank times:

- ``s_load``: taking its next batch from the loader (data/stream.py); as a rank reads a shard
  whole when its shuffle buffer needs one, most steps cost nothing, so after the steps each rank
  also reads its whole share of an epoch alone: ``s_load_epoch``, seconds per batch;
- ``s_step``: forward, backward and the optimiser step, all collectives included;
- ``s_gather``: the forward collectives of the global-batch negatives (models.base.CrossRank:
  ``all_gather`` / ``all_reduce_sum``), waiting for the other ranks included;

and counts the bytes it receives in those gathers (``gather_bytes``: (W-1)/W of each gathered
tensor) and the bytes of the gathered tensors whose gradients go back through an all-reduce in
the backward pass (``gather_grad_bytes``). DDP's gradient all-reduce (``grad_bytes`` = 4 x the
parameters) overlaps the backward pass; ``s_allreduce`` times one such all-reduce alone. Figures
are medians over the steps after ``warmup``, the maximum over ranks (a step waits for the
slowest). One JSON line per W. On a machine with fewer cores than W the processes share cores:
the times then measure contention; the bytes do not depend on the machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class _Counting:
    """A CrossRank that times its forward collectives and counts the bytes they move."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.rank, self.world_size = inner, inner.rank, inner.world_size
        self.seconds = 0.0
        self.bytes_in = 0
        self.grad_bytes = 0

    def _timed(self, fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor,
               gathered: bool) -> torch.Tensor:
        t0 = time.perf_counter()
        out = fn(t)
        self.seconds += time.perf_counter() - t0
        size = t.numel() * t.element_size()
        w = self.world_size
        # all_gather: every other rank's part arrives; all_reduce (ring): 2 (W-1)/W of the tensor
        self.bytes_in += size * (w - 1) if gathered else int(2 * size * (w - 1) / w)
        if t.requires_grad:  # the backward all-reduce of the (gathered) output's gradient
            self.grad_bytes += int(2 * out.numel() * out.element_size() * (w - 1) / w)
        return out

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return self._timed(self.inner.all_gather, t, True)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._timed(self.inner.all_reduce_sum, t, False)


def _rank_main(rank: int, world: int, store_path: str, spec: dict, out: str) -> None:
    """One rank: train ``spec["steps"]`` steps and write its per-step figures to ``out``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ..config import load_train_config
    from ..data import make_loader
    from ..models import build_model
    from ..train.dist import TorchCrossRank
    from ..train.step import TrainStep, make_optimizer, make_scheduler, step_generator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    cfg = load_train_config(spec["config"], spec["overrides"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    module: torch.nn.Module = TrainStep(model, cfg.objective)
    group = None
    if world > 1:
        module = DistributedDataParallel(module)
        group = _Counting(TorchCrossRank(rank, world))
    opt = make_optimizer(model.parameters(), cfg.optim.lr, 0.0)
    sched = make_scheduler(opt, "constant", 1)
    loader = make_loader(cfg.data.url, cfg.data.train_split, cfg.data.batch_size, rank=rank, world_size=world,
                         seed=0, shuffle_buffer=cfg.data.shuffle_buffer)
    it = iter(loader)
    rows = []
    for step in range(spec["steps"]):
        dist.barrier()
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        if group is not None:
            group.seconds, group.bytes_in, group.grad_bytes = 0.0, 0, 0
        loss, _ = module(batch["xs"], step_generator(0, step), group)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        t2 = time.perf_counter()
        rows.append({"s_load": t1 - t0, "s_step": t2 - t1, "s_gather": group.seconds if group else 0.0,
                     "gather_bytes": group.bytes_in if group else 0,
                     "gather_grad_bytes": group.grad_bytes if group else 0})
    dist.barrier()  # the loader alone: this rank's whole share of an epoch, per batch
    loader.set_epoch(1)
    t0, n = time.perf_counter(), 0
    for _ in loader:
        n += 1
    load_epoch = (time.perf_counter() - t0) / max(1, n)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flat = torch.zeros(params)
    reduce_s = []
    for _ in range(5):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        reduce_s.append(time.perf_counter() - t0)
    Path(out).write_text(json.dumps({"rows": rows, "params": params, "s_allreduce": reduce_s,
                                     "s_load_epoch": load_epoch,
                                     "global_batch": cfg.data.batch_size * world}))
    dist.barrier()
    dist.destroy_process_group()


def _one_size(world: int, spec: dict, timeout_s: float) -> dict:
    """Run ``world`` ranks as fresh interpreters -> the JSON record of this world size."""
    with tempfile.TemporaryDirectory(prefix="mvae-bench-scale-") as tmp:
        store, outs = f"{tmp}/store", [f"{tmp}/rank{r}.json" for r in range(world)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "mvae_dist.launch.bench_scale", str(r), str(world),
                                   store, json.dumps(spec), outs[r]], env=env) for r in range(world)]
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise RuntimeError(f"bench scale: {world} workers did not finish within "
                                   f"{timeout_s:g} s") from None
        if any(p.returncode for p in procs):
            codes = [p.returncode for p in procs]
            raise RuntimeError(f"bench scale: a rank of {world} failed (exit codes {codes})")
        results = [json.loads(Path(o).read_text()) for o in outs]
    warm = spec["warmup"]

    def med(key: str) -> float:
        per_step = [max(r["rows"][i][key] for r in results) for i in range(warm, spec["steps"])]
        return statistics.median(per_step)

    r0, measured = results[0], range(warm, spec["steps"])
    return {"bench": "scale", "workers": world, "threads_per_worker": 1,
            "batch_per_worker": r0["global_batch"] // world, "global_batch": r0["global_batch"],
            "steps": spec["steps"] - warm, "s_step": round(med("s_step"), 5),
            "s_load": round(med("s_load"), 5),
            "s_load_epoch": round(max(r["s_load_epoch"] for r in results), 5),
            "s_gather": round(med("s_gather"), 5),
            "gather_bytes": int(statistics.median(r0["rows"][i]["gather_bytes"] for i in measured)),
            "gather_grad_bytes": int(statistics.median(r0["rows"][i]["gather_grad_bytes"] for i in measured)),
            "grad_bytes": 4 * r0["params"], "params": r0["params"],
            "s_allreduce": round(statistics.median(max(r["s_allreduce"][i] for r in results)
                                                   for i in range(5)), 5)}


def bench_scale(*, data: str, workers: list[int], steps: int = 12, warmup: int = 2,
                config: str | None = None, overrides: list[str] | None = None, timeout_s: float = 600.0,
                emit: Callable[[dict], None] | None = None) -> list[dict]:
    """Time ``steps`` steps at each world size in ``workers`` (module docstring) -> the records."""
    from ..config import shipped_config

    if steps <= warmup:
        raise ValueError(f"--steps must be > --warmup ({warmup}), got {steps}")
    spec = {"config": config or str(shipped_config("embedded/tiny.yaml")),
            "overrides": [f"data.url={data}", *(overrides or [])], "steps": steps, "warmup": warmup}
    records = []
    for w in workers:
        rec = _one_size(w, spec, timeout_s)
        records.append(rec)
        if emit:
            emit(rec)
    return records


if __name__ == "__main__":  # one rank, started by _one_size
    _rank_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5])
