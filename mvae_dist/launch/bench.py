"""Throughput benchmarks, one JSON object per line.

``bench step`` times one optimiser step (forward, backward, Adam) of a model under the baseline
or the contrastive objective on random data of the MNIST-SVHN shapes. Configurations are timed
in interleaved rounds and summarised by their median, so that ratios measured in one run share
the machine's state; compare ratios, not absolute times.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..models import build_model
from ..models.compute import configure_compute
from ..objectives import training_loss


@dataclass(frozen=True)
class Compute:
    """How the networks compute (models.compute.configure_compute): one axis value each."""

    precision: str = "fp32"  # "fp32" | "bf16"
    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        parts = [p for p, on in ((self.precision, self.precision != "fp32"),
                                 ("channels_last", self.channels_last), ("compile", self.compile)) if on]
        return "+".join(parts)


def compute_cases(precisions: Iterable[str] = ("fp32",), memory_formats: Iterable[str] = ("contiguous",),
                  compiles: Iterable[str] = ("off",)) -> list[Compute]:
    """Every combination of the three axes (the CLI's --precision, --memory-format, --compile)."""
    return [Compute(p, m == "channels_last", c == "on")
            for p, m, c in itertools.product(precisions, memory_formats, compiles)]


@dataclass(frozen=True)
class StepCase:
    model: str
    objective: str  # "baseline" | "contrastive"
    estimator: str
    impl: str  # "fused" | "loop" (contrastive only)
    negatives: str = "fresh"  # "fresh" | "reuse" | "K<n>" (n fresh samples): MVAE / JMVAE only
    compute: Compute = Compute()

    @property
    def label(self) -> str:
        on = f" [{self.compute.label}]" if self.compute.label else ""
        if self.objective == "baseline":
            return f"{self.model}/baseline{on}"
        prefix = {"iwae": "cI", "cubo": "cC"}.get(self.estimator, "c" + self.estimator)
        suffix = "" if self.negatives == "fresh" else f"+{self.negatives}"
        return f"{prefix}-{self.model}/{self.impl}{suffix}{on}"

    def negative_options(self) -> dict[str, Any]:
        """The training_loss keywords of ``negatives``."""
        if self.negatives == "reuse":
            return {"neg_samples": "reuse"}
        if self.negatives.startswith("K"):
            return {"neg_K": int(self.negatives[1:])}
        return {}


def step_cases(models: Iterable[str], objectives: Iterable[str], estimators: Iterable[str],
               impls: Iterable[str], negatives: Iterable[str] = ("fresh",),
               computes: Sequence[Compute] = (Compute(),)) -> list[StepCase]:
    """Every combination; the baseline once per model and compute (estimator, impl and negatives
    do not apply), MMVAE's negatives only "fresh" (it always reuses its experts' samples), the
    loop reference only with fresh negatives."""
    cases: list[StepCase] = []
    for m, o, c in itertools.product(models, objectives, computes):
        if o == "baseline":
            cases.append(StepCase(m, "baseline", "iwae", "-", compute=c))
            continue
        for e, i, n in itertools.product(estimators, impls, negatives):
            if n == "fresh" or (m != "mmvae" and i == "fused"):
                cases.append(StepCase(m, o, e, i, n, compute=c))
    return cases


def _make_step(case: StepCase, K: int, N: int, B: int, gamma: float, device: str,
               modalities: tuple[str, ...], seed: int) -> Callable[[], None]:
    torch.manual_seed(seed)
    c = case.compute
    model = configure_compute(build_model({"name": case.model, "modalities": list(modalities)}).to(device),
                              precision=c.precision, channels_last=c.channels_last, compile=c.compile)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    shapes = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}
    xs = [torch.rand(B, *shapes[s], device=device) for s in modalities]

    def step() -> None:
        loss, _ = training_loss(model, xs, objective=case.objective, K=K, N=N, gamma=gamma,
                                estimator=case.estimator,
                                impl=case.impl if case.objective == "contrastive" else "fused",
                                **(case.negative_options() if case.objective == "contrastive" else {}))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def bench_step(*, models: list[str], objectives: list[str], estimators: list[str], impls: list[str],
               negatives: Sequence[str] = ("fresh",), K: int = 30, N: int = 5, batch_size: int = 128,
               gamma: float = 2.0, steps: int = 3,
               warmup: int = 1, device: str = "cpu", threads: int | None = None,
               modalities: tuple[str, ...] = ("mnist", "svhn"), seed: int = 0,
               computes: Sequence[Compute] = (Compute(),),
               emit: Callable[[dict], None] | None = None) -> list[dict]:
    """Time each case; return (and emit) one record per case with its ratio to its model's
    baseline under the same compute (``ratio_to_baseline``) and, for a case under other compute
    options than the default, its ratio to the same case in plain fp32 (``ratio_to_fp32``, when
    that was timed too). Warm-up steps absorb torch.compile's compilation."""
    if threads:
        torch.set_num_threads(threads)
    cases = step_cases(models, objectives, estimators, impls, negatives, computes)
    fns = {c: _make_step(c, K, N, batch_size, gamma, device, modalities, seed) for c in cases}
    for c in cases:
        for _ in range(warmup):
            fns[c]()
    times: dict[StepCase, list[float]] = {c: [] for c in cases}
    from tqdm import tqdm

    for _ in tqdm(range(steps), desc="bench step rounds", leave=False):
        for c in cases:  # interleaved: every case sees the same machine conditions
            t0 = time.perf_counter()
            fns[c]()
            times[c].append(time.perf_counter() - t0)
    median = {c: statistics.median(times[c]) for c in cases}
    base = {(c.model, c.compute): median[c] for c in cases if c.objective == "baseline"}
    records = []
    for c in cases:
        s = median[c]
        rec = {
            "bench": "step", "model": c.model, "objective": c.objective,
            "estimator": c.estimator if c.objective != "baseline" else "iwae",
            "impl": c.impl, "negatives": c.negatives, "label": c.label, "K": K, "N": N,
            "batch_size": batch_size,
            "device": device, "threads": torch.get_num_threads(), "steps": steps,
            "precision": c.compute.precision, "channels_last": c.compute.channels_last,
            "compile": c.compute.compile,
            "s_per_step": round(s, 5), "pairs_per_s": round(batch_size / s, 2),
        }
        if (c.model, c.compute) in base:
            rec["ratio_to_baseline"] = round(s / base[(c.model, c.compute)], 3)
        plain = replace(c, compute=Compute())
        if c.compute != Compute() and plain in median:
            rec["ratio_to_fp32"] = round(s / median[plain], 3)
        records.append(rec)
        if emit:
            emit(rec)
    return records


def print_json(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def bench_train(*, data: str, workers: list[int], steps: int = 20, config: str | None = None,
                overrides: list[str] | None = None, threads: int | None = None,
                emit: Callable[[dict], None] | None = None) -> list[dict]:
    """Ray Train throughput with W workers each: global pairs/s of steady-state steps.

    Each W runs ``steps`` optimiser steps of ``config`` (default: cI-MMVAE on the embedded set)
    with the per-worker batch fixed (weak scaling), torch threads = ``threads`` or cores // W,
    no evaluation and no checkpoints; pairs/s is rank 0's figure over the second half of the
    steps (the first half includes start-up), as logged to a throwaway MLflow store.
    """
    import os
    import tempfile

    from ..config import load_train_config, shipped_config
    from ..tracking import find_runs
    from ..train.driver import fit

    default = shipped_config("embedded/mmvae-ci.yaml")
    records = []
    with tempfile.TemporaryDirectory(prefix="mvae-bench-train-") as tmp:
        for W in workers:
            t = threads or max(1, (os.cpu_count() or 2) // W)
            half = max(1, steps // 2)
            cfg = load_train_config(config or str(default), [
                f"data.url={data}", f"train.num_workers={W}", f"train.max_steps={steps}",
                f"train.log_every={half}", "train.eval_every=0", "train.checkpoint_every=0",
                f"train.threads_per_worker={t}", f"train.name=bench-w{W}", f"train.storage_path={tmp}/runs",
                f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=bench",
                *(overrides or []),
            ])
            res = fit(cfg)
            # a metric's latest value is the one of its last step: the steady-state window
            run, = find_runs("bench", f"attributes.run_id = '{res.run_id}'", tracking_uri=res.tracking_uri)
            pps = run.metrics["pairs_per_s"]
            o = cfg.objective
            rec = {"bench": "train", "workers": W, "threads_per_worker": t, "model": cfg.model.name,
                   "objective": o.name, "estimator": o.estimator, "K": o.K, "N": o.N,
                   "batch_size_per_worker": cfg.data.batch_size, "steps": steps,
                   "pairs_per_s": round(pps, 2),
                   "s_per_step": round(cfg.data.batch_size * W / pps, 4)}
            records.append(rec)
            if emit:
                emit(rec)
    return records


def bench_bound(*, Ks: Sequence[int] = (1, 5, 30), reps: int = 60, items: int = 12, seed: int = 0,
                emit: Callable[[dict], None] | None = None) -> list[dict]:
    """How loose each way of scoring the negatives is, on a linear-Gaussian MVAE whose log p is
    exact: for every K and option, the gap exact log p(x_i, y_b) - E[IWAE] averaged over the
    items*(items-1) negative pairs (x_i, y_b), E over ``reps`` draws. Options: "fresh" (K samples
    of the pair's own product of experts: the exact path; neg_K sets K there) and "reuse" (the
    members' positive samples under the mixture of their joint posteriors, M*K samples). Experts:
    "exact" (the product is the exact posterior) or "random" (an imperfect proposal)."""
    from ..models import MVAE
    from ..models.distributions import standard_noise
    from ..models.linear_gaussian import exact_experts, linear_modalities, random_params
    from ..objectives.estimators import iwae

    L = 2
    params = random_params([3, 4], L, generator=torch.Generator().manual_seed(seed))
    xs, _ = params.sample(items, torch.Generator().manual_seed(seed + 1))
    tuples = torch.tensor([[i, b] for b in range(items) for i in range(items) if i != b])
    exact = params.log_joint([xs[0][tuples[:, 0]], xs[1][tuples[:, 1]]])
    records = []
    for experts in ("exact", "random"):
        torch.manual_seed(seed + 2)
        mods = linear_modalities(params)
        if experts == "exact":
            exact_experts(mods, params)
        model = MVAE(mods, L, family="normal").double()
        for K in Ks:
            for option in ("fresh", "reuse"):
                torch.manual_seed(seed + 5)
                est = []
                with torch.no_grad():
                    for _ in range(reps):
                        state = model.prepare(xs, K)
                        if option == "reuse":
                            lw = model.reused_tuple_log_weights(state, tuples)
                        else:
                            eps = standard_noise("normal", (K, tuples.shape[0], L), dtype=torch.float64)
                            lw = model.tuple_log_weights(state, tuples, eps)
                        est.append(iwae(lw))
                gap = exact - torch.stack(est).mean(0)
                rec = {"bench": "bound", "model": "linear-gaussian mvae", "experts": experts, "K": K,
                       "negatives": option, "samples": K * (2 if option == "reuse" else 1),
                       "pairs": int(tuples.shape[0]), "reps": reps,
                       "mean_gap": round(float(gap.mean()), 4), "min_gap": round(float(gap.min()), 4),
                       "mean_exact_log_p": round(float(exact.mean()), 3)}
                records.append(rec)
                if emit:
                    emit(rec)
    return records
