"""The cost of drawing negatives from the global batch: W gloo processes, one step each way.

Run by ``mvae-dist bench step --world W``: every rank times, in interleaved rounds, a training
step whose negatives come from the global batch (gathers across ranks) and the same step with
negatives from its own batch only (no cross-rank traffic but DDP's all-reduce). Rank 0 writes
the medians to a JSON file. Each rank is a fresh interpreter (``python -m mvae_dist.bench_dist``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def run_rank(rank: int, world: int, port: int, args: dict) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..config import ObjectiveConfig
    from ..models import build_model
    from ..train.dist import TorchCrossRank
    from ..train.step import TrainStep, make_optimizer, step_generator

    torch.set_num_threads(args["threads"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model({"name": args["model"], "modalities": ["mnist", "svhn"]})
        obj = ObjectiveConfig(name="contrastive", estimator=args["estimator"], K=args["K"], N=args["N"])
        module = DDP(TrainStep(model, obj))
        opt = make_optimizer(model.parameters(), 1e-4, 0.0)
        B = args["batch_size"]
        xs = [torch.rand(B, 1, 28, 28), torch.rand(B, 3, 32, 32)]
        group = TorchCrossRank(rank, world)
        times: dict[str, list[float]] = {"global": [], "local": []}
        for r in range(args["warmup"] + args["steps"]):
            for mode in ("global", "local"):
                dist.barrier()
                t0 = time.perf_counter()
                loss, _ = module(xs, step_generator(0, r), group if mode == "global" else None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                dist.barrier()
                if r >= args["warmup"]:
                    times[mode].append(time.perf_counter() - t0)
        if rank == 0:
            g, loc = statistics.median(times["global"]), statistics.median(times["local"])
            rec = {"bench": "step", "world": world, "model": args["model"], "objective": "contrastive",
                   "estimator": args["estimator"], "K": args["K"], "N": args["N"],
                   "batch_size_per_rank": B, "threads_per_rank": args["threads"],
                   "s_per_step_global_negatives": round(g, 4), "s_per_step_local_negatives": round(loc, 4),
                   "gather_overhead": round(g / loc, 3),
                   "pairs_per_s": round(world * B / g, 2)}
            with open(args["out"], "w") as f:
                json.dump(rec, f)
    finally:
        dist.destroy_process_group()


def bench_gather(*, world: int, model: str, estimator: str, K: int, N: int, batch_size: int,
                 steps: int, warmup: int, threads: int) -> dict:
    """Launch ``world`` ranks on this machine; return rank 0's record."""
    import os
    import socket
    import subprocess
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        args = {"model": model, "estimator": estimator, "K": K, "N": N, "batch_size": batch_size,
                "steps": steps, "warmup": warmup, "threads": threads, "out": out}
        procs = [subprocess.Popen([sys.executable, "-m", "mvae_dist.launch.bench_dist", str(r), str(world),
                                   str(port), json.dumps(args)]) for r in range(world)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"bench ranks exited with {codes}")
        with open(out) as f:
            return json.load(f)


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
