"""``run_propagate``: PMI label propagation over a mixed pool on Ray workers (paper §4.5).

1. Load the trained model (checkpoint URI or MLflow run) and the data set's manifest.
2. Threshold: the given one, or the F1-maximising PMI threshold on the calibration split
   (S_m, ground truth known), scored by the workers.
3. The pool's shards (F_m) are dealt to ``workers`` Ray worker slots by index (shard i ->
   slot i mod W: disjoint sets); a slot runs one Ray task per shard, one after the other, so at
   most W tasks run at once. A task scores its shard's pairs by PMI in batches under no_grad
   and writes the pairs with PMI >= threshold, byte for byte, to ``{out}/train/shard-i``.
4. The driver writes ``{out}/manifest.json`` LAST (a valid data set: ``make_loader(out,
   "train")`` and ``verify(out)`` read it), with provenance: source data URL, pool, threshold,
   model source, and precision / recall / F1 of the found pairs against the ground truth.

Nothing is half-written: ``{out}`` must be empty or absent; a marker ``_propagating.json`` is
published first and removed last; on failure the files written so far are removed again. Each
pair's PMI noise is seeded by (seed, key) (see ``relatedness.pair_noise``), so the result does
not depend on the number of workers or the batch size.

Tasks rather than actors: Ray keeps its worker processes (torch already imported) between
tasks and between runs, so a second propagation starts in well under a second. The model goes
into the object store once; each process builds it once per run (``_call`` caches it).
Ray is imported inside ``run_propagate`` only; ``propagate.scorer.ShardScorer`` is a plain class,
usable and
tested without Ray.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import model_validator

from mvae_dist.config import (
    Float,
    Int,
    Names,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Section,
    load_storage_options,
)
from mvae_dist.data.manifest import MANIFEST, check_bucket, open_manifest, url_to_fs
from mvae_dist.data.shards import atomic_write, shard_path
from mvae_dist.errors import ConfigError, DataError
from mvae_dist.models.builders import event_shape as model_shape

from ..plots import score_distributions
from ..propagate.pools import (
    class_counts,
    event_shape,
    shard_url,
)
from ..propagate.relatedness import (
    Scored,
    choose_threshold,
    ranking_report,
    relatedness_report,
    relatedness_scores,
)
from ..propagate.scorer import ShardScorer

MARKER = "_propagating.json"  # the run's parameters while shards are being written
FIGURE = "pmi_distributions.png"  # PMI of related / unrelated pairs on the calibration split and pool


# ------------------------------------------------------------------------------ the result
@dataclass
class PropagateResult:
    """What a propagation found and where it went.

    threshold: the PMI threshold used; calibrated_on: the split it was chosen on (None when
    given); calibration: relatedness_scores on that split at the threshold; scores:
    relatedness_scores of the found pairs on the pool against its ground truth (precision,
    recall, f1, accuracy, n, n_pred_related, n_related); pool_scores: every pool pair's PMI;
    ranking (None without ground truth on both splits): ROC-AUC and average precision of the PMI
    on the calibration split (cal_auc, cal_ap) and on the pool (auc, ap), and the pool's F1 at
    its own best threshold (best_f1, best_threshold: an upper bound, never used to predict);
    compared: {split: relatedness_report on the pool with the threshold chosen on that split}
    for each of ``compare_calibrations``.
    """

    out: str
    data: str
    pool: str
    threshold: float
    calibrated_on: str | None
    calibration: dict | None
    scores: dict
    n_scored: int
    n_found: int
    n_shards: int
    workers: int
    K: int
    model_source: str
    run_id: str | None
    seconds: dict
    extra_train: dict = field(default_factory=dict)
    copied: dict = field(default_factory=dict)
    pool_scores: Scored | None = field(default=None, repr=False)
    ranking: dict | None = None
    compared: dict = field(default_factory=dict)

    @property
    def manifest_url(self) -> str:
        return f"{self.out}/manifest.json"

    @property
    def pairs_per_s(self) -> float:
        """Pool pairs scored per second (wall clock of the pool phase, all workers together)."""
        s = self.seconds.get("pool", 0.0)
        return self.n_scored / s if s > 0 else float("nan")

    def ranking_line(self) -> str:
        r = self.ranking or {}
        return (f"ranking by PMI: ROC-AUC {r['auc']:.3f} on {self.pool} ({r['cal_auc']:.3f} on "
                f"{self.calibrated_on}), average precision {r['ap']:.3f} ({r['cal_ap']:.3f}); F1 at the "
                f"best threshold for {self.pool} {r['best_f1']:.3f} (an upper bound: it looks at "
                f"{self.pool}'s ground truth) -> {self.out}/{FIGURE}")

    @property
    def n_train(self) -> int:
        return self.n_found + sum(self.extra_train.values())

    def lines(self) -> list[str]:
        if self.calibrated_on is None:
            head = f"threshold {self.threshold:.4f} (given)"
        else:
            c = self.calibration or {}
            head = (f"threshold {self.threshold:.4f} (chosen on {self.calibrated_on}: "
                    f"F1 {c.get('f1', 0):.3f} over {c.get('n', 0)} pairs)")
        s = self.scores
        extra = "".join(f" + {k} {v}" for k, v in self.extra_train.items())
        copied = "".join(f", {k} {v}" for k, v in self.copied.items())
        return [
            head,
            f"scored {self.n_scored} pairs of {self.pool} on {self.workers} Ray worker(s) in "
            f"{self.seconds.get('pool', 0):.1f} s ({self.pairs_per_s:.0f} pairs/s, K={self.K})",
            f"found {self.n_found} related pairs; against the ground truth: precision {s['precision']:.3f} "
            f"recall {s['recall']:.3f} F1 {s['f1']:.3f}",
            *([self.ranking_line()] if self.ranking else []),
            *(f"with the threshold chosen on {k} instead ({c['threshold']:.4f}): precision "
              f"{c['precision']:.3f} recall {c['recall']:.3f} F1 {c['f1']:.3f}"
              for k, c in self.compared.items()),
            f"wrote train: {self.n_found} pairs{extra} in {self.n_shards} shards{copied} "
            f"-> {self.manifest_url}",
        ]


# ------------------------------------------------------------------------------ checks
def _check_out(out: str, data: str | None, storage_options: dict | None) -> None:
    """ConfigError unless ``out`` is absent or an empty directory / prefix."""

    fs, root = url_to_fs(out, storage_options)
    check_bucket(fs, root, out)
    if fs.exists(f"{root}/{MANIFEST}"):
        raise ConfigError(f"{out} already holds a data set (manifest.json); "
                          "choose another --out or delete it")
    if fs.exists(f"{root}/{MARKER}"):
        raise ConfigError(f"{out} holds an unfinished propagation ({MARKER}); "
                          "delete it or choose another --out")
    if fs.exists(root) and fs.isdir(root) and fs.ls(root, detail=False):
        raise ConfigError(f"{out} is not empty; refusing to write into it")
    if data is not None and out.rstrip("/") == data.rstrip("/"):
        raise ConfigError("--out must differ from --data")


def _check_split(manifest: dict, split: str, what: str, data: str) -> dict:
    if split not in manifest["splits"]:
        raise ConfigError(f"--{what} {split!r} is not a split of {data} (has {sorted(manifest['splits'])})")
    info = manifest["splits"][split]
    if info["count"] == 0:
        raise ConfigError(f"--{what} {split!r} of {data} holds no pairs")
    return info


def _check_modalities(manifest: dict, model_config: Any, data: str) -> None:

    want = [tuple(model_shape(s)) for s in model_config.modalities]
    have = [event_shape(m["shape"]) for m in manifest["modalities"]]
    if want != have:
        raise ConfigError(f"the model's modalities {list(model_config.modalities)} expect inputs {want}, "
                          f"but {data} holds {have}")


# ------------------------------------------------------------------------------ Ray plumbing
_SCORERS: dict[str, ShardScorer] = {}  # per Ray worker process: the current run's scorer


def _call(run: str, model_ref: list, init: dict, method: str, *args: Any) -> Any:
    """A Ray task: ``ShardScorer(...).method(*args)``, building the scorer once per run and process.

    ``model_ref`` is a one-element list holding the ObjectRef, so that Ray does not fetch and
    unpickle the state dict for every task, only when this process first needs it.
    """
    scorer = _SCORERS.get(run)
    if scorer is None:
        import ray

        _SCORERS.clear()  # one model per process: the previous run's is dropped
        scorer = _SCORERS[run] = ShardScorer(ray.get(model_ref[0]), **init)
    return getattr(scorer, method)(*args)


def _run_slots(ray: Any, task: Any, jobs: list[tuple], slots: int, *, desc: str, progress: bool,
               weights: list[int] | None = None) -> list:
    """Run ``task.remote(*job)`` for every job; job i belongs to slot i mod ``slots`` and each
    slot runs its jobs one after the other (at most ``slots`` in flight) -> results in job order.

    The progress bar advances by ``weights[i]`` (pairs) as job i ends.
    """
    from tqdm.auto import tqdm

    weights = weights or [1] * len(jobs)
    queues = [list(range(w, len(jobs), slots)) for w in range(slots)]
    results: list[Any] = [None] * len(jobs)
    running: dict[Any, tuple[int, int]] = {}

    def submit(w: int) -> None:
        if queues[w]:
            i = queues[w].pop(0)
            running[task.remote(*jobs[i])] = (w, i)

    for w in range(slots):
        submit(w)
    try:
        with tqdm(total=sum(weights), unit="pair", desc=desc, disable=not progress) as bar:
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    w, i = running.pop(ref)
                    results[i] = ray.get(ref)
                    bar.update(weights[i])
                    submit(w)
    except BaseException:
        # Stop the tasks still running before the caller cleans up, or they could publish a
        # shard after the clean-up (each write is atomic, so an interrupted one leaves nothing).
        for ref in running:
            ray.cancel(ref)
        ray.wait(list(running), num_returns=len(running), timeout=60)
        raise
    return results


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error (a DataError reading a shard, ...)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class PropagateConfig(Section):
    """What ``mvae-dist propagate`` does (errors name its flags, e.g. ``--workers``).

    checkpoint | run_id: the model (exactly one). data: the data set holding ``pool`` and
    ``calibrate`` (default: the model's ``data.url``). threshold: a PMI threshold, or None to
    choose it on ``calibrate`` by max F1. out: where the found pairs go, as split ``train`` of
    a new data set. workers: Ray worker slots scoring disjoint sets of shards, one task at a
    time each (``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs per task; with GPUs the
    tasks score on "cuda"). K: importance samples per PMI estimate. seed: of each pair's PMI
    noise. extra_train: source splits appended unchanged to the output's ``train`` (e.g.
    ("sr",): S_r plus the found pairs, the paper's retraining set); copy_splits: source splits
    copied unchanged (e.g. ("test",)). compare_calibrations: more splits with ground truth, each
    choosing its own max-F1 threshold whose F1 on the pool is reported beside the one used (e.g.
    ("sm",), the paper's protocol, when calibrating on the held-out "sc"); they select nothing.
    """

    flag_keys: ClassVar[bool] = True

    checkpoint: str | None = None
    run_id: str | None = None
    data: str | None = None
    pool: str = "fm"
    calibrate: str | None = "sm"
    threshold: Float | None = None
    out: str
    workers: PositiveInt = 2
    K: PositiveInt = 30
    batch_size: PositiveInt = 256
    seed: Int = 0
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: NonNegativeFloat = 0.0
    extra_train: Names = ()
    copy_splits: Names = ()
    compare_calibrations: Names = ()

    @model_validator(mode="after")
    def _across_keys(self) -> PropagateConfig:
        if (self.checkpoint is None) == (self.run_id is None):
            raise ConfigError("give exactly one of --checkpoint URI or --run RUN_ID")
        if self.threshold is None and not self.calibrate:
            raise ConfigError("give --threshold or a --calibrate split to choose it on")
        if "train" in self.copy_splits:
            raise ConfigError("copy_splits cannot hold 'train': the output's train split is the found pairs")
        return self


def run_propagate(cfg: PropagateConfig | None = None, *, tracking_uri: str | None = None,
                  storage_options: dict | None = None, ray_address: str | None = None, progress: bool = True,
                  **options: Any) -> PropagateResult:
    """Label propagation (paper §4.5) with a trained model -> PropagateResult; see the module doc.

    cfg: a PropagateConfig, or its keys as keyword ``options`` (``run_propagate(checkpoint=...,
    out=..., workers=2)``). storage_options: fsspec options for the checkpoint, data and output
    (never logged). A task whose worker process dies is retried by Ray (tasks are idempotent: a
    shard is published whole or not at all); an error in a task is not.
    """
    if cfg is None:
        cfg = PropagateConfig.build(options)
    elif options:
        raise ConfigError(f"give a PropagateConfig or its keys, not both (got {sorted(options)})")
    t_start = time.perf_counter()
    out = cfg.out.rstrip("/")
    _check_out(out, cfg.data, storage_options)
    src = _open_inputs(cfg, out, tracking_uri, storage_options)
    t_loaded = time.perf_counter()
    pool = _Workers.start(cfg, src, ray_address, storage_options)
    fs, root = url_to_fs(out, storage_options)
    written: list[str] = []  # relative paths that may exist under out (for clean-up on failure)
    try:
        threshold, calibration, cal_scored = _threshold(cfg, src, pool, progress)
        t_cal = time.perf_counter()
        marker = {"data": src.data, "pool": cfg.pool, "threshold": threshold, "model": src.trained.source}
        atomic_write(fs, f"{root}/{MARKER}", json.dumps(marker).encode())
        written.append(MARKER)
        scored, found, train = _select(cfg, src, pool, threshold, out, written, progress)
        t_pool = time.perf_counter()
        splits, extra_counts = _copy_splits(cfg, src, pool, out, train, written)
        scores = relatedness_scores(found, scored.related)
        ranking = None if cal_scored is None else ranking_report(cal_scored, (scored.scores, scored.related))
        compared = _compare(cfg, src, pool, scored, progress)
        figure = None if ranking is None else _figure(cfg, cal_scored, scored)
        if figure is not None:  # beside the found pairs: what a user judges the threshold by
            written.append(FIGURE)
            _write_png(fs, f"{root}/{FIGURE}", figure)
        propagation = {
            "data": src.data, "pool": cfg.pool, "pool_count": int(src.pool_info["count"]),
            "threshold": threshold, "calibrated_on": cfg.calibrate if calibration is not None else None,
            "calibration": calibration, "scores": scores, "n_scored": int(len(found)),
            "n_found": int(found.sum()), "ranking": ranking, "compared": compared, "K": cfg.K,
            "seed": cfg.seed,
            "model": src.model_summary(),
            "extra_train": extra_counts, "copied": list(cfg.copy_splits),
        }
        m = src.manifest
        manifest = {"format_version": m["format_version"], "dataset": m["dataset"],
                    "config": {**m["config"], "propagated_from": src.data}, "synthetic": m["synthetic"],
                    "modalities": m["modalities"], "splits": splits, "sources": m.get("sources", {}),
                    "propagation": propagation}
        atomic_write(fs, f"{root}/{MANIFEST}", json.dumps(manifest, indent=1).encode())  # last
        fs.rm_file(f"{root}/{MARKER}")
    except BaseException as exc:
        _clean(fs, root, written)
        inner = _unwrap(exc)
        if inner is not exc and isinstance(inner, (ConfigError, DataError)):
            raise inner from None
        raise
    t_end = time.perf_counter()
    if src.trained.run_id and figure is not None:
        _log_to_run(src.trained.run_id, tracking_uri, cfg, threshold, calibration, scores, ranking, figure)
    return PropagateResult(
        out=out, data=src.data, pool=cfg.pool, threshold=threshold,
        calibrated_on=cfg.calibrate if calibration is not None else None, calibration=calibration,
        scores=scores, n_scored=int(len(found)), n_found=int(found.sum()), n_shards=len(train["shards"]),
        workers=pool.slots, K=cfg.K, model_source=src.trained.source, run_id=src.trained.run_id,
        seconds={"load": t_loaded - t_start, "calibrate": t_cal - t_loaded, "pool": t_pool - t_cal,
                 "total": t_end - t_start},
        extra_train=extra_counts,
        copied={s: int(src.manifest["splits"][s]["count"]) for s in cfg.copy_splits},
        pool_scores=scored, ranking=ranking, compared=compared,
    )


@dataclass
class _Inputs:
    """The trained model and the data set it scores (checked against each other)."""

    trained: Any  # trained.Trained
    data: str
    data_options: dict | None
    manifest: dict
    pool_info: dict
    cal_info: dict | None

    @property
    def n_modalities(self) -> int:
        return len(self.manifest["modalities"])

    def model_summary(self) -> dict[str, Any]:
        t = self.trained
        return {"source": t.source, "run_id": t.run_id, "step": t.step, "name": t.config.model.name,
                "objective": t.config.objective.name, "estimator": t.config.objective.estimator}


def _open_inputs(cfg: PropagateConfig, out: str, tracking_uri: str | None,
                 storage_options: dict | None) -> _Inputs:
    """Load the model and the data set's manifest; ConfigError for a split or modality mismatch."""
    from mvae_dist.trained import load_trained

    trained = load_trained(checkpoint=cfg.checkpoint, run_id=cfg.run_id, tracking_uri=tracking_uri,
                           storage_options=storage_options)
    data, data_options = cfg.data, storage_options
    if data is None:
        data = trained.config.data.url
        if data_options is None:
            data_options = load_storage_options(trained.config.data.storage_options_file)
    data = data.rstrip("/")
    if out == data:
        raise ConfigError("--out must differ from --data")
    manifest = open_manifest(data, data_options)
    _check_modalities(manifest, trained.config.model, data)
    pool_info = _check_split(manifest, cfg.pool, "pool", data)
    cal_info = None
    if cfg.threshold is None:
        cal_info = _check_split(manifest, cfg.calibrate, "calibrate", data)
        if cal_info.get("related") in (0, cal_info["count"]):
            raise ConfigError(f"--calibrate {cfg.calibrate!r} has no mix of related and unrelated pairs "
                              f"({cal_info.get('related')} of {cal_info['count']} related); "
                              "choose a mixed split such as sm, or give --threshold")
    for split in (*cfg.extra_train, *cfg.copy_splits):
        _check_split(manifest, split, "extra split", data)
    for split in cfg.compare_calibrations:
        info = _check_split(manifest, split, "compare-calibrations", data)
        if info.get("related") in (0, info["count"]):
            raise ConfigError(f"--compare-calibrations {split!r} has no mix of related and unrelated pairs")
    return _Inputs(trained, data, data_options, manifest, pool_info, cal_info)


@dataclass
class _Workers:
    """Ray worker slots running ShardScorer tasks with one model (``run`` -> results in job order)."""

    ray: Any
    task: Any
    slots: int
    head: tuple  # (run key, [model ObjectRef], scorer arguments): the first arguments of every task

    @classmethod
    def start(cls, cfg: PropagateConfig, src: _Inputs, ray_address: str | None,
              storage_options: dict | None) -> _Workers:
        import ray

        if not ray.is_initialized():
            ray.init(address=ray_address, log_to_driver=False, configure_logging=False)
        for kind, per_worker in (("CPU", cfg.cpus_per_worker), ("GPU", cfg.gpus_per_worker)):
            have = ray.cluster_resources().get(kind, 0)
            if cfg.workers * per_worker > have:
                raise ConfigError(f"--workers {cfg.workers} need {cfg.workers * per_worker:g} {kind}s; "
                                  f"the Ray cluster has {have:g}")
        shards = max(len(src.pool_info["shards"]), len(src.cal_info["shards"]) if src.cal_info else 0)
        state = {k: v.detach().cpu() for k, v in src.trained.model.state_dict().items()}
        model_ref = [ray.put((src.trained.config.model, state))]
        init = {"K": cfg.K, "batch_size": cfg.batch_size, "seed": cfg.seed,
                "storage_options": src.data_options, "out_storage_options": storage_options or {},
                "threads": max(1, int(cfg.cpus_per_worker)),
                "device": "cuda" if cfg.gpus_per_worker > 0 else "cpu"}
        task = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)(_call)
        return cls(ray, task, min(cfg.workers, shards), (uuid.uuid4().hex, model_ref, init))

    def run(self, method: str, args: list[tuple], *, desc: str, progress: bool,
            weights: list[int] | None = None) -> list:
        jobs = [(*self.head, method, *a) for a in args]
        return _run_slots(self.ray, self.task, jobs, self.slots, desc=desc, progress=progress,
                          weights=weights)


def _threshold(cfg: PropagateConfig, src: _Inputs, pool: _Workers,
               progress: bool) -> tuple[float, dict | None, tuple[np.ndarray, np.ndarray] | None]:
    """The given threshold, or the F1-maximising one on the calibration split -> (threshold,
    relatedness scores there or None, (PMI float [C], related bool [C]) of the split or None)."""
    if cfg.threshold is not None:
        return float(cfg.threshold), None, None
    scores, related = _score_split(src, pool, src.cal_info, cfg.calibrate, progress)
    threshold = float(choose_threshold(scores, related))
    return threshold, relatedness_scores(scores >= threshold, related), (scores, related)


def _score_split(src: _Inputs, pool: _Workers, info: dict, split: str,
                 progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """PMI of every pair of a split with ground truth, on the workers -> (float [C], bool [C])."""
    entries = info["shards"]
    res = pool.run("score", [(shard_url(src.data, e), e, src.n_modalities) for e in entries],
                   desc=f"PMI {split}", progress=progress, weights=[e["count"] for e in entries])
    return np.concatenate([r["scores"] for r in res]), np.concatenate([r["related"] for r in res])


def _compare(cfg: PropagateConfig, src: _Inputs, pool: _Workers, scored: Scored,
             progress: bool) -> dict[str, dict]:
    """{split: relatedness_report of the pool at the threshold chosen on split} for each of
    ``cfg.compare_calibrations`` (the pool needs ground truth)."""
    if scored.related is None:
        return {}
    out = {}
    for split in cfg.compare_calibrations:
        cal = _score_split(src, pool, src.manifest["splits"][split], split, progress)
        rep = relatedness_report(cal, (scored.scores, scored.related))
        out[split] = {k: float(v) for k, v in rep.items()}
    return out


def _figure(cfg: PropagateConfig, cal: tuple[np.ndarray, np.ndarray], scored: Scored) -> np.ndarray:
    return score_distributions([(f"{cfg.calibrate} (threshold chosen here)", *cal),
                                (f"{cfg.pool} (predicted)", scored.scores, scored.related)],
                               xlabel=f"PMI (IWAE, K={cfg.K})")


def _log_to_run(run_id: str, tracking_uri: str | None, cfg: PropagateConfig, threshold: float,
                calibration: dict, scores: dict, ranking: dict, figure: np.ndarray) -> None:
    """The model's MLflow run gets the relatedness of its PMI: ``pmi/<pool>/{f1, precision,
    recall, auc, ap, best_f1}``, ``pmi/<calibrate>/{f1, auc, ap}``, ``pmi/threshold`` and the
    figure as ``pmi/<calibrate>_<pool>_distributions.png``."""
    from mvae_dist.tracking import Tracker

    t = Tracker(tracking_uri)
    t.attach(run_id)
    p, c = cfg.pool, cfg.calibrate
    t.log_metrics({f"pmi/{p}/f1": scores["f1"], f"pmi/{p}/precision": scores["precision"],
                   f"pmi/{p}/recall": scores["recall"], f"pmi/{p}/auc": ranking["auc"],
                   f"pmi/{p}/ap": ranking["ap"], f"pmi/{p}/best_f1": ranking["best_f1"],
                   f"pmi/{c}/f1": calibration["f1"], f"pmi/{c}/auc": ranking["cal_auc"],
                   f"pmi/{c}/ap": ranking["cal_ap"], "pmi/threshold": threshold}, step=0)
    t.log_image(figure, f"pmi/{c}_{p}_distributions.png")


def _write_png(fs: Any, path: str, img: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    atomic_write(fs, path, buf.getvalue())


def _select(cfg: PropagateConfig, src: _Inputs, pool: _Workers, threshold: float, out: str,
            written: list[str], progress: bool) -> tuple[Scored, np.ndarray, dict]:
    """Score the pool and write its pairs with PMI >= threshold (shard i -> slot i mod W ->
    out/train/shard-i) -> (every pair's scores, found mask [P], the train split's manifest entry)."""

    entries = src.pool_info["shards"]
    rels = [shard_path("train", i) for i in range(len(entries))]
    written.extend(rels)
    n_mod = src.n_modalities
    args = [(shard_url(src.data, e), e, n_mod, threshold, out, rel) for e, rel in zip(entries, rels)]
    res = pool.run("select", args, desc=f"PMI {cfg.pool}", progress=progress,
                   weights=[e["count"] for e in entries])
    arrays = (np.concatenate([r[k] for r in res]) for k in ("scores", "related", "ids", "labels"))
    scored = Scored(*arrays, [k for r in res for k in r["keys"]])
    found = np.concatenate([r["found"] for r in res])
    train = {"count": int(found.sum()), "related": int((found & scored.related).sum()), "mixed": False,
             "class_counts": class_counts(scored.labels[found, 0]),
             "shards": [r["entry"] for r in res if r["entry"] is not None]}
    return scored, found, train


def _copy_splits(cfg: PropagateConfig, src: _Inputs, pool: _Workers, out: str, train: dict,
                 written: list[str]) -> tuple[dict, dict[str, int]]:
    """Copy ``extra_train`` (appended to train) and ``copy_splits`` by the workers -> (the output's
    splits, pairs added to train per extra split)."""

    extra_counts: dict[str, int] = {}
    copy_jobs = []
    next_index = len(src.pool_info["shards"])
    for split in cfg.extra_train:
        info = src.manifest["splits"][split]
        for e in info["shards"]:
            copy_jobs.append(("train", shard_url(src.data, e), e, shard_path("train", next_index)))
            next_index += 1
        extra_counts[split] = int(info["count"])
        train["count"] += int(info["count"])
        train["related"] += int(info.get("related", info["count"]))
        for k, v in info.get("class_counts", {}).items():
            train["class_counts"][k] = train["class_counts"].get(k, 0) + int(v)
    train["class_counts"] = dict(sorted(train["class_counts"].items(), key=lambda kv: int(kv[0])))
    for split in cfg.copy_splits:
        for e in src.manifest["splits"][split]["shards"]:
            copy_jobs.append((split, shard_url(src.data, e), e, e["path"]))
    written.extend(rel for _, _, _, rel in copy_jobs)
    copies = pool.run("copy", [(url, e, out, rel) for _, url, e, rel in copy_jobs], desc="copy",
                      progress=False)
    splits = {"train": train}
    for (split, _, _, _), entry in zip(copy_jobs, copies):
        if split == "train":
            train["shards"].append(entry)
        else:
            splits.setdefault(split, {**src.manifest["splits"][split], "shards": []})["shards"].append(entry)
    return splits, extra_counts


def _clean(fs: Any, root: str, rels: list[str]) -> None:
    """Best-effort removal of what a failed run may have written (the marker last)."""
    for rel in [r for r in rels if r != MARKER] + [MARKER]:
        try:
            if fs.exists(f"{root}/{rel}"):
                fs.rm_file(f"{root}/{rel}")
        except Exception:  # noqa: BLE001 - clean-up must not hide the original error
            pass
