"""The Ray Train per-worker loop: stream this rank's shards, train, checkpoint, log (rank 0).

Only this module and driver.py import ray. Everything the loop does per step is in step.py,
checkpoint.py and dist.py, which take rank and world size as arguments.
"""

from __future__ import annotations

import json
import os
import sys
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


def _say(line: str) -> None:
    """One progress line to the driver's console. Ray Train patches ``print`` into its logger,
    which reaches the driver twice; writing to stdout reaches it once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


#: Ray Train's per-report worker loggers: execution/context.py names its logger by its file path
#: ("Reporting training result ..."), execution/storage.py by its module ("Checkpoint successfully
#: created ..."); matched by suffix so that an install prefix does not matter.
_RAY_REPORT_LOGGERS = ("ray/train/v2/_internal/execution/context.py",
                       "ray.train.v2._internal.execution.storage", "ray.train._internal.storage")


def quiet_ray_train_logs(level: str) -> None:
    """Set Ray Train's per-report worker loggers to ``level`` (e.g. WARNING hides their lines)."""
    import logging

    for name in list(logging.Logger.manager.loggerDict):
        if name.replace("\\", "/").endswith(_RAY_REPORT_LOGGERS):
            logging.getLogger(name).setLevel(level)
    for name in _RAY_REPORT_LOGGERS[1:]:  # not imported yet: set the level it will find
        logging.getLogger(name).setLevel(level)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. loop_config: {"config": TrainConfig dict, "run_id": MLflow run id,
    "tracking_uri": str, "debug_dir": optional str}."""
    from ..data import make_loader

    cfg = TrainConfig.from_dict(loop_config["config"])
    quiet_ray_train_logs(cfg.train.ray_log_level)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.train.threads_per_worker:
        torch.set_num_threads(cfg.train.threads_per_worker)
    debug_dir = loop_config.get("debug_dir")
    if debug_dir:  # one line per worker start: a retried worker group shows up as more lines
        Path(debug_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(debug_dir) / "starts.log", "a") as f:
            f.write(f"{rank} {os.getpid()}\n")

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model).to(device)
    step_module = TrainStep(model, cfg.objective)
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        module: torch.nn.Module = DistributedDataParallel(step_module, device_ids=ids)
        group = TorchCrossRank(rank, world)
    else:
        module, group = step_module, None
    opt = make_optimizer(model.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.amsgrad)

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
        tracker.continue_run(loop_config["run_id"])  # the driver's run; only the driver counts resumes
        if resumed_from is not None:
            tracker.log_metrics({"resumed_from_step": resumed_from}, step=pos.step)
    _debug(debug_dir, rank, step=pos.step, resumed_from=resumed_from)
    classifiers = None
    if tracker is not None and cfg.train.eval_every:
        from ..evaluate import load_eval_classifiers

        classifiers = load_eval_classifiers(cfg, storage_options, required=False, device=device)
        if classifiers is None and cfg.eval.classifiers != "none":
            _say(f"[{cfg.train.name}] no digit classifiers for {cfg.data.url}: evaluation logs the "
                 f"likelihood only (train them: mvae-dist classifiers train --data {cfg.data.url})")

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
                _say(f"[{cfg.train.name}] step {pos.step}/{total} epoch {pos.epoch + 1}/{cfg.train.epochs} "
                     f"loss {mean['loss']:.1f} {mean['pairs_per_s']:.0f} pairs/s")
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
            last_eval.update(_evaluate(model, cfg, tracker, pos.step, storage_options, classifiers))
        report(metrics, with_checkpoint=True)

    if aborted:  # no checkpoint of the diverged state: the last one reported stays the run's latest
        if tracker is not None:
            from ..tracking import FAILURE_TAG

            tracker.set_tags({FAILURE_TAG: f"stopped after {nonfinite} non-finite losses "
                                           f"(train.max_nonfinite = {cfg.train.max_nonfinite})"})
            tracker.end("FAILED")
        report({"aborted_nonfinite": 1.0}, with_checkpoint=False)
        return
    if tracker is not None:
        tracker.set_tags({"model_step": pos.step})  # the logged model's step (load_run_model)
        tracker.log_model(model, cfg.to_dict())
        tracker.end("FINISHED")


def _evaluate(model, cfg: TrainConfig, tracker, step: int, storage_options,
              classifiers) -> dict[str, float]:
    """Rank 0: the paper's metrics (``evaluate.evaluate_and_log``: one seed; log p(x_1..M) with
    train.eval_K samples on train.eval_batches batches) and the image grids, logged to MLflow.
    -> what the next Ray Train reports carry (Tune's metrics), incl. ``test_log_joint``."""
    from ..evaluate import evaluate_and_log

    n_ll = cfg.train.eval_batches * cfg.data.batch_size
    flat, _ = evaluate_and_log(model, cfg, tracker=tracker, step=step, classifiers=classifiers, seeds=1,
                               ll_K=cfg.train.eval_K, ll_n=n_ll, storage_options=storage_options)
    out = {k: float(v) for k, v in flat.items() if not k.endswith("_std")}
    out["test_log_joint"] = out["log_joint"]  # Tune's name (sweep specs); MLflow has eval/log_joint
    model.train()
    return out
