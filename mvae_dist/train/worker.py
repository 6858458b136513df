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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import RunConfig, load_storage_options
from ..data import make_loader
from ..data.retry import read_policy, storage_policy
from ..eval.evaluation import evaluate_and_log, load_eval_classifiers
from ..models import build_model
from ..models.compute import configure_compute
from .checkpoint import Position, load_checkpoint, save_checkpoint
from .dist import TorchCrossRank
from .run_store import (
    is_stopping,
    local_checkpoint,
    newest_good_checkpoint,
    persist_checkpoint,
    run_storage,
)
from .step import TrainStep, apply_step, make_optimizer, make_scheduler, step_generator


def _stopping(store: Any) -> bool:
    try:
        return is_stopping(store)
    except Exception:  # a store that does not answer: the checkpoint write will say so itself
        return False


def _debug(cfg_debug_dir: str | None, rank: int, **info: Any) -> None:
    """Diagnostics for tests and operators: this worker's pid and progress, one small JSON file."""
    if not cfg_debug_dir:
        return
    d = Path(cfg_debug_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps({"rank": rank, "pid": os.getpid(), **info}))
    os.replace(tmp, d / f"rank{rank}.json")


def _quiet(line: str) -> None:
    pass


def _say(line: str) -> None:
    """One progress line to the driver's console. Ray Train patches ``print`` into its logger,
    which reaches the driver twice; writing to stdout reaches it once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


#: Ray Train's per-report worker loggers: execution/context.py names its logger by its file path
#: ("Reporting training result ..."), execution/storage.py by its module ("Checkpoint successfully
#: created ..."); matched by suffix so that an install prefix does not matter.
_RAY_REPORT_LOGGERS = ("ray/train/v2/_internal/execution/context.py",
                       "ray.train.v2._internal.execution.storage", "ray.train._internal.storage",
                       "ray.train.v2._internal.execution.train_fn_utils")  # local mode's "Reported metrics"


def quiet_ray_train_logs(level: str) -> None:
    """Set Ray Train's per-report worker loggers to ``level`` (e.g. WARNING hides their lines)."""
    import logging

    for name in list(logging.Logger.manager.loggerDict):
        if name.replace("\\", "/").endswith(_RAY_REPORT_LOGGERS):
            logging.getLogger(name).setLevel(level)
    for name in _RAY_REPORT_LOGGERS[1:]:  # not imported yet: set the level it will find
        logging.getLogger(name).setLevel(level)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. loop_config: {"config": RunConfig dict, "run_id": MLflow run id,
    "tracking_uri": str, "debug_dir": optional str}.

    Every rank runs the same sequence; what only rank 0 does (MLflow, evaluation, console lines)
    goes through ``w.log``, which does nothing on the other ranks."""
    w = _Worker.start(loop_config)             # model, DDP, optimiser, loader, restored position
    while w.epochs_left() and not w.done:
        if not w.train_epoch():                # steps to the epoch's end or train.max_steps
            w.give_up()                        # too many non-finite losses: no checkpoint of it
            return
        w.end_epoch()                          # evaluation (rank 0), report + checkpoint
    w.finish()                                 # rank 0: the final model into the MLflow run


class _OffRank:
    """The tracker of ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@dataclass
class _Worker:
    """One rank's training state (see ``train_loop_per_worker`` for the sequence)."""

    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    module: torch.nn.Module                    # what steps: TrainStep, DDP-wrapped when world > 1
    group: TorchCrossRank | None
    opt: torch.optim.Optimizer
    sched: Any
    loader: Any
    total: int                                 # steps this run will take
    storage_options: dict | None
    debug_dir: str | None
    log: Any                                   # a Tracker on rank 0, _OffRank elsewhere
    pos: Position = field(default_factory=Position)
    nonfinite: int = 0
    resumed_from: int | None = None
    restored_url: str | None = None
    resized_from: int | None = None             # the world size of the checkpoint restored, if other
    classifiers: Any = None
    last_eval: dict[str, float] = field(default_factory=dict)  # every report carries it (Tune's metrics)
    window: list[dict[str, float]] = field(default_factory=list)
    t_window: float = field(default_factory=time.perf_counter)
    last_loss: float = float("nan")
    done: bool = False
    store: Any = None                          # the run's RunStorage (restore sets it)

    # ------------------------------------------------------------------ the sequence
    @classmethod
    def start(cls, loop_config: dict[str, Any]) -> _Worker:

        cfg = RunConfig.from_dict(loop_config["config"])
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
        model = configure_compute(build_model(cfg.model).to(device), precision=cfg.train.precision,
                                  channels_last=cfg.train.channels_last, compile=cfg.train.compile)
        module: torch.nn.Module = TrainStep(model, cfg.objective)
        group = None
        if world > 1:
            module = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
            group = TorchCrossRank(rank, world)
        opt = make_optimizer(model.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.amsgrad)
        options = load_storage_options(cfg.data.storage_options_file, "data.storage_options_file")
        loader = make_loader(cfg.data.url, cfg.data.train_split, rank_batch(cfg, world), rank=rank,
                             world_size=world, num_workers=cfg.data.loader_workers, seed=cfg.train.seed,
                             shuffle_buffer=cfg.data.shuffle_buffer, storage_options=options,
                             retry=read_policy(cfg.data), virtual_ranks=cfg.train.virtual_ranks)
        total = cfg.train.epochs * len(loader)
        if cfg.train.max_steps:
            total = min(total, cfg.train.max_steps)
        sched = make_scheduler(opt, cfg.optim.schedule, total)
        w = cls(cfg, rank, world, device, model, module, group, opt, sched, loader, total, options,
                debug_dir, _OffRank())
        w.restore()
        if rank == 0:
            w.open_tracking(loop_config)
        _debug(debug_dir, rank, step=w.pos.step, resumed_from=w.resumed_from)
        w.done = bool(cfg.train.max_steps and w.pos.step >= cfg.train.max_steps)
        w.t_window = time.perf_counter()  # pairs/s counts training, not the set-up above
        return w

    def restore(self) -> None:
        """Model, optimiser, scheduler and position from the run's newest good checkpoint, if any.

        Not Ray's ``get_checkpoint()``: Ray hands back only checkpoints it committed, and commits
        one only when every rank's report for it arrived, so a node lost just after rank 0 wrote
        a complete checkpoint would cost everything since the one before (run_store.py)."""
        cfg = self.cfg
        options = load_storage_options(cfg.train.storage_options_file, "train.storage_options_file")
        store = self.store = run_storage(cfg.train.storage_path, cfg.train.name, options)
        found = newest_good_checkpoint(store, _say if self.rank == 0 else _quiet)
        if found is None:
            return
        with local_checkpoint(store, found.name) as d:
            meta = load_checkpoint(d, model=self.model, optimizer=self.opt, scheduler=self.sched,
                                   map_location=self.device)
        self.pos = meta["position"]
        was = int(meta["extra"].get("world_size", self.world))
        if self.rank == 0:
            _say(f"[{cfg.train.name}] restored step {found.step} from {found.url}")
            if was != self.world:
                _say(f"[{cfg.train.name}] resized {was} -> {self.world} workers at step {self.pos.step} "
                     f"({found.url})")
        self.resized_from = was if was != self.world else None
        self.nonfinite = int(meta["extra"].get("nonfinite_steps", 0))
        self.resumed_from = self.pos.step
        self.restored_url = found.url

    def open_tracking(self, loop_config: dict[str, Any]) -> None:
        """Rank 0: continue the driver's MLflow run (only the driver counts resumes) and load the
        digit classifiers its evaluations use."""

        from ..tracking import Tracker  # here: mlflow (~1 s of imports) only where rank 0 logs

        cfg = self.cfg
        self.log = Tracker(loop_config.get("tracking_uri"), cfg.tracking.experiment)
        self.log.continue_run(loop_config["run_id"])
        if self.resumed_from is not None:
            self.log.log_metrics({"resumed_from_step": self.resumed_from}, step=self.pos.step)
            # the checkpoint restored from reaches the run even when Ray never committed it (a
            # node lost after it was sealed but before Ray processed every rank's report; the
            # controller's callback then never saw it); a logged one is kept once
            if self.restored_url is not None:
                self.log.log_checkpoint_uri(self.restored_url, self.resumed_from)
        self.log.log_metrics({"world_size": self.world}, step=self.pos.step)
        if self.resized_from is not None:
            self.log.log_resize(self.resized_from, self.world, self.pos.step, self.restored_url or "")
        if cfg.train.eval_every:

            self.classifiers = load_eval_classifiers(cfg, self.storage_options, required=False,
                                                     device=self.device)
            if self.classifiers is None and cfg.eval.classifiers != "none":
                _say(f"[{cfg.train.name}] no digit classifiers for {cfg.data.url}: evaluation logs the "
                     f"likelihood only (train them: mvae-dist classifiers train --data {cfg.data.url})")

    def epochs_left(self) -> bool:
        return self.pos.epoch < self.cfg.train.epochs

    def train_epoch(self) -> bool:
        """Steps from the current position to the epoch's end (or train.max_steps: ``done``).
        -> False when the non-finite losses passed train.max_nonfinite."""
        cfg, pos = self.cfg, self.pos
        self.loader.set_epoch(pos.epoch)
        n_batches = len(self.loader)  # fixed for the epoch (its shard plan): not recomputed per step
        self.model.train()
        for i, batch in enumerate(self.loader):
            if i < pos.batch_in_epoch:  # resume: the epoch's order is fixed by (seed, epoch)
                continue
            xs = [x.to(self.device, non_blocking=True) for x in batch["xs"]]
            g = step_generator(cfg.train.seed, pos.step, self.device)
            stats, stepped = apply_step(self.module, self.opt, self.sched, xs, g, self.group,
                                        cfg.optim.grad_clip)
            pos.batch_in_epoch = i + 1
            if not stepped:
                self.nonfinite += 1
                if self.nonfinite > cfg.train.max_nonfinite:
                    return False
                continue
            pos.step += 1
            if cfg.train.record_keys:
                self.record_keys(pos.step, i, batch["key"])
            self.window.append(stats)
            self.last_loss = float(stats["loss"])
            _debug(self.debug_dir, self.rank, step=pos.step, resumed_from=self.resumed_from)
            if self.rank == 0 and pos.step % cfg.train.log_every == 0:
                self.log_window()
            done = bool(cfg.train.max_steps and pos.step >= cfg.train.max_steps)
            # the epoch's last step and the run's last are checkpointed by end_epoch right after:
            # a second checkpoint of the same step would push a good one out of keep_checkpoints
            due = cfg.train.checkpoint_every and pos.step % cfg.train.checkpoint_every == 0
            if due and not (done or pos.batch_in_epoch >= n_batches):
                self.report({k: float(v) for k, v in stats.items()}, with_checkpoint=True)
            if done:
                self.done = True
                break
        return True

    def record_keys(self, step: int, batch_in_epoch: int, keys: list[str]) -> None:
        """train.record_keys: this rank's sample keys of ``step``, one JSON line appended to
        ``{record_keys}/keys-rank{R}-{pid}.jsonl`` (a step replayed after a restart appears again)."""
        d = Path(self.cfg.train.record_keys)
        d.mkdir(parents=True, exist_ok=True)
        line = {"step": step, "epoch": self.pos.epoch, "batch": batch_in_epoch, "world": self.world,
                "rank": self.rank, "time": time.time(), "keys": list(keys)}
        with open(d / f"keys-rank{self.rank}-{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def log_window(self) -> None:
        """Rank 0: the mean of the steps since the last log line, to MLflow and the console."""
        cfg, window = self.cfg, self.window
        dt = time.perf_counter() - self.t_window
        mean = {k: sum(s[k] for s in window) / len(window) for k in window[0]}
        mean["pairs_per_s"] = len(window) * self.loader.batch_size * self.world / max(dt, 1e-9)
        mean["nonfinite_steps"] = self.nonfinite
        self.log.log_metrics(mean, step=self.pos.step)
        _say(f"[{cfg.train.name}] step {self.pos.step}/{self.total} "
             f"epoch {self.pos.epoch + 1}/{cfg.train.epochs} "
             f"loss {mean['loss']:.1f} {mean['pairs_per_s']:.0f} pairs/s")
        self.window, self.t_window = [], time.perf_counter()

    def end_epoch(self) -> None:
        """Advance the position past a finished epoch, evaluate when due (rank 0), report with a
        checkpoint (every rank: a report is a barrier)."""
        cfg, pos = self.cfg, self.pos
        if pos.batch_in_epoch >= len(self.loader) or not self.done:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        due = cfg.train.eval_every and (pos.epoch % cfg.train.eval_every == 0 or self.done
                                        or pos.epoch >= cfg.train.epochs)
        if self.rank == 0 and due:
            self.last_eval.update(_evaluate(self.model, cfg, self.log, pos.step, self.storage_options,
                                            self.classifiers))
        self.report({"epoch_loss": self.last_loss}, with_checkpoint=True)

    def report(self, metrics: dict[str, float], with_checkpoint: bool) -> None:
        """``ray.train.report`` on every rank; rank 0 adds the checkpoint (model, optimiser,
        scheduler, position, config)."""
        metrics = {**self.last_eval, **metrics, "step": self.pos.step, "epoch": self.pos.epoch,
                   "nonfinite_steps": self.nonfinite}
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            ck = None
            # not once the driver is stopping: it has named the run's last checkpoint, which a new
            # one would push out of train.keep_checkpoints (run_store.STOP_FILE)
            if self.rank == 0 and not _stopping(self.store):
                save_checkpoint(tmp, model=self.model, optimizer=self.opt, scheduler=self.sched,
                                position=self.pos, config=self.cfg.to_dict(),
                                extra={"nonfinite_steps": self.nonfinite, "world_size": self.world})
                # asked again after the write (a second or more under load): only a stop that
                # came during the upload itself finds the checkpoint half-written, and waits for it
                if not _stopping(self.store):
                    ck = (self.persist(tmp) if self.cfg.train.local_mode
                          else ray.train.Checkpoint.from_directory(tmp))
            ray.train.report(metrics, checkpoint=ck)

    def persist(self, directory: str) -> ray.train.Checkpoint:
        """Local mode (train.num_workers 0): no Ray Train controller persists a report's
        checkpoint, so this process puts it into the run directory itself, as Ray names them,
        keeps the newest train.keep_checkpoints, and logs it to the MLflow run (the controller
        callback's work in driver.py) -> the stored checkpoint, which the report then carries."""
        found = persist_checkpoint(self.store, directory, keep=self.cfg.train.keep_checkpoints,
                                   policy=storage_policy(self.cfg.train))
        self.log.log_checkpoint_uri(found.url, found.step)
        _, root = self.store.fs()
        return ray.train.Checkpoint(path=f"{root}/{found.name}", filesystem=self.store.ray_filesystem)

    def give_up(self) -> None:
        """Too many non-finite losses: the run's reason as an MLflow tag, the run FAILED, and a last
        report WITHOUT a checkpoint (the last one reported stays the run's latest, a good state)."""
        if self.rank == 0:
            from ..tracking import FAILURE_TAG

            self.log.set_tags({FAILURE_TAG: f"stopped after {self.nonfinite} non-finite losses "
                                            f"(train.max_nonfinite = {self.cfg.train.max_nonfinite})"})
            self.log.end("FAILED")
        self.report({"aborted_nonfinite": 1.0}, with_checkpoint=False)

    def finish(self) -> None:
        """Rank 0: the final model (and its step) into the MLflow run, which ends FINISHED."""
        self.log.set_tags({"model_step": self.pos.step})  # the logged model's step (load_run_model)
        self.log.log_model(self.model, self.cfg.to_dict(), step=self.pos.step,
                           registered_model_name=self.cfg.tracking.register_model)
        self.log.end("FINISHED")


def rank_batch(cfg: RunConfig, world: int) -> int:
    """Each of ``world`` ranks' batch: the global batch (data.batch_size x train.num_workers) /
    world for an elastic run, else data.batch_size."""
    return cfg.global_batch // world if cfg.train.elastic else cfg.data.batch_size


def _evaluate(model, cfg: RunConfig, tracker, step: int, storage_options,
              classifiers) -> dict[str, float]:
    """Rank 0: the paper's metrics (``evaluate.evaluate_and_log``: one seed; log p(x_1..M) with
    train.eval_K samples on train.eval_batches batches) and the image grids, logged to MLflow.
    -> what the next Ray Train reports carry (Tune's metrics), incl. ``test_log_joint``."""

    n_ll = cfg.train.eval_batches * cfg.data.batch_size
    flat, _ = evaluate_and_log(model, cfg, tracker=tracker, step=step, classifiers=classifiers, seeds=1,
                               ll_K=cfg.train.eval_K, ll_n=n_ll, storage_options=storage_options)
    out = {k: float(v) for k, v in flat.items() if not k.endswith("_std")}
    out["test_log_joint"] = out["log_joint"]  # Tune's name (sweep specs); MLflow has eval/log_joint
    model.train()
    return out
