"""The Ray Train per-worker loop: stream this rank's shards, train, checkpoint, log (rank 0).

Only this module and driver.py import ray. Everything the loop does per step is in step.py,
checkpoint.py and dist.py, which take rank and world size as arguments.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig, load_storage_options
from ..models import build_model
from .checkpoint import Position, load_checkpoint, save_checkpoint
from .dist import TorchCrossRank
from .step import TrainStep, apply_step, make_optimizer, make_scheduler, step_generator


def _debug(cfg_debug_dir: str | None, rank: int, **info: Any) -> None:
    """Diagnostics for tests and operators: this worker's pid and progress, one small JSON file."""
    if not cfg_debug_dir:
        return
    d = Path(cfg_debug_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps({"rank": rank, "pid": os.getpid(), **info}))
    os.replace(tmp, d / f"rank{rank}.json")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. loop_config: {"config": TrainConfig dict, "run_id": MLflow run id,
    "tracking_uri": str, "debug_dir": optional str}."""
    from ..data import make_loader

    cfg = TrainConfig.from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.train.threads_per_worker:
        torch.set_num_threads(cfg.train.threads_per_worker)
    debug_dir = loop_config.get("debug_dir")

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model).to(device)
    step_module = TrainStep(model, cfg.objective)
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        module: torch.nn.Module = DistributedDataParallel(step_module, device_ids=ids)
        group = TorchCrossRank(rank, world)
    else:
        module, group = step_module, None
    opt = make_optimizer(model.parameters(), cfg.optim.lr, cfg.optim.weight_decay)

    storage_options = load_storage_options(cfg.data.storage_options_file, "data.storage_options_file")
    loader = make_loader(cfg.data.url, cfg.data.train_split, cfg.data.batch_size, rank=rank,
                         world_size=world, num_workers=cfg.data.loader_workers, seed=cfg.train.seed,
                         shuffle_buffer=cfg.data.shuffle_buffer, storage_options=storage_options)
    steps_per_epoch = len(loader)
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    sched = make_scheduler(opt, cfg.optim.schedule, total)

    pos = Position()
    nonfinite = 0
    resumed_from = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            meta = load_checkpoint(d, model=model, optimizer=opt, scheduler=sched, map_location=device)
        pos = meta["position"]
        nonfinite = int(meta["extra"].get("nonfinite_steps", 0))
        resumed_from = pos.step

    tracker = None
    if rank == 0:
        from ..tracking import Tracker

        tracker = Tracker(loop_config.get("tracking_uri"), cfg.tracking.experiment)
        tracker.start(cfg.tracking.run_name or cfg.train.name, run_id=loop_config.get("run_id"))
        if resumed_from is not None:
            tracker.log_metrics({"resumed_from_step": resumed_from}, step=pos.step)
    _debug(debug_dir, rank, step=pos.step, resumed_from=resumed_from)

    last_eval: dict[str, float] = {}  # every report carries the latest evaluation (Tune schedulers need it)

    def report(metrics: dict[str, float], with_checkpoint: bool) -> None:
        metrics = {**last_eval, **metrics, "step": pos.step, "epoch": pos.epoch, "nonfinite_steps": nonfinite}
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            ck = None
            if rank == 0:
                save_checkpoint(tmp, model=model, optimizer=opt, scheduler=sched, position=pos,
                                config=cfg.to_dict(), extra={"nonfinite_steps": nonfinite})
                ck = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ck)

    window: list[dict[str, float]] = []
    last_loss = float("nan")
    t_window = time.perf_counter()
    aborted = False
    done = cfg.train.max_steps and pos.step >= cfg.train.max_steps
    while pos.epoch < cfg.train.epochs and not done and not aborted:
        loader.set_epoch(pos.epoch)
        model.train()
        for i, batch in enumerate(loader):
            if i < pos.batch_in_epoch:  # resume: the epoch's order is fixed by (seed, epoch)
                continue
            xs = [x.to(device, non_blocking=True) for x in batch["xs"]]
            g = step_generator(cfg.train.seed, pos.step, device)
            stats, stepped = apply_step(module, opt, sched, xs, g, group, cfg.optim.grad_clip)
            pos.batch_in_epoch = i + 1
            if not stepped:
                nonfinite += 1
                if nonfinite > cfg.train.max_nonfinite:
                    aborted = True
                    break
                continue
            pos.step += 1
            window.append(stats)
            last_loss = float(stats["loss"])
            _debug(debug_dir, rank, step=pos.step, resumed_from=resumed_from)
            if tracker is not None and pos.step % cfg.train.log_every == 0:
                dt = time.perf_counter() - t_window
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                mean["pairs_per_s"] = len(window) * cfg.data.batch_size * world / max(dt, 1e-9)
                mean["nonfinite_steps"] = nonfinite
                tracker.log_metrics(mean, step=pos.step)
                print(f"[{cfg.train.name}] step {pos.step}/{total} epoch {pos.epoch + 1}/{cfg.train.epochs} "
                      f"loss {mean['loss']:.1f} {mean['pairs_per_s']:.0f} pairs/s", flush=True)
                window, t_window = [], time.perf_counter()
            if cfg.train.checkpoint_every and pos.step % cfg.train.checkpoint_every == 0:
                report({k: float(v) for k, v in stats.items()}, with_checkpoint=True)
            if cfg.train.max_steps and pos.step >= cfg.train.max_steps:
                done = True
                break
        if aborted:
            break
        if pos.batch_in_epoch >= steps_per_epoch or not done:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        metrics = {"epoch_loss": last_loss}
        if tracker is not None and cfg.train.eval_every and (
            pos.epoch % cfg.train.eval_every == 0 or done or pos.epoch >= cfg.train.epochs
        ):
            last_eval.update(_evaluate(model, cfg, device, tracker, pos.step, storage_options))
        report(metrics, with_checkpoint=True)

    if aborted:
        report({"aborted_nonfinite": 1.0}, with_checkpoint=True)
        if tracker is not None:
            tracker.end("FAILED")
        return
    if tracker is not None:
        tracker.log_model(model, cfg.to_dict())
        tracker.end("FINISHED")


@torch.no_grad()
def _evaluate(model, cfg: TrainConfig, device, tracker, step: int, storage_options) -> dict[str, float]:
    """Rank 0: test-set IWAE of log p(x_1..M) on a few batches and the image grids."""
    from ..data import make_loader
    from ..eval import images
    from ..objectives import log_joint

    model.eval()
    loader = make_loader(cfg.data.url, cfg.data.test_split, cfg.data.batch_size, shuffle=False,
                         drop_last=False, storage_options=storage_options)
    values, first = [], None
    for i, batch in enumerate(loader):
        if i >= cfg.train.eval_batches:
            break
        xs = [x.to(device) for x in batch["xs"]]
        first = first or xs
        values.append(log_joint(model, xs, cfg.train.eval_K, estimator="iwae").mean().item())
    out = {"test_log_joint": sum(values) / len(values)} if values else {}
    if out:
        tracker.log_metrics(out, step=step)
    if first is not None:
        grids = images.standard_grids(model, first, n=min(8, first[0].shape[0]), n_joint=32,
                                      seed=cfg.train.seed)
        for name, img in grids.items():
            tracker.log_image(img, f"images/{name}_{step:07d}.png")
    model.train()
    return out
