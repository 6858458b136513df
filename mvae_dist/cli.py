"""``mvae-dist`` command line: parse, call one library function, map errors to one line + exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import MvaeDistError

EXIT_USAGE = 2
EXIT_ERROR = 1


def _csv(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        items = [t for t in text.split(",") if t]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"invalid choice {bad[0] if bad else text!r}; choose from {', '.join(choices)}"
            )
        return items
    return parse


def _int_list(text: str) -> list[int]:
    return [_positive_int(t) for t in text.split(",") if t]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mvae-dist",
        description="Contrastive multimodal VAEs (Relating by Contrasting) on Ray, WebDataset and MLflow.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="build data sets as WebDataset shards")
    dsub = data.add_subparsers(dest="data", required=True, metavar="WHAT")
    prep = dsub.add_parser("prepare", help="build a data set and write shards + manifest.json to URL")
    prep.add_argument("--dataset", required=True, choices=("embedded", "mnist-svhn"))
    prep.add_argument("--out", required=True, help="any fsspec URL: a path, file://, s3://, gs://")
    prep.add_argument("--fraction", type=float, default=1.0,
                      help="take this fraction of EACH unimodal training set before pairing")
    prep.add_argument("--source", default=None, help="directory of MNIST IDX + SVHN .mat files")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--shard-size", type=_positive_int, default=2000, help="pairs per shard")
    prep.add_argument("--dm", type=_positive_int, default=None, help="pairs per instance (paper: 30)")
    prep.add_argument("--max-d", type=_positive_int, default=None, help="instances per class (10000)")
    prep.add_argument("--sr-fraction", type=float, default=None,
                      help="also write label-propagation pools sr / fm / sm with this S_r fraction")
    prep.add_argument("--storage-options", default=None,
                      help="YAML file of fsspec storage options (endpoint, profile); never secrets on argv")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")

    train = sub.add_parser("train", help="one training run on Ray Train (YAML config + overrides)")
    train.add_argument("--config", default=None, help="YAML file with sections model, objective, data, "
                       "optim, train, tracking (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="override config values, e.g. objective.gamma=3 train.num_workers=4")
    train.add_argument("--resume", action="store_true",
                       help="continue the run named train.name from its latest checkpoint")
    train.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the cwd)")
    train.add_argument("--address", default=None, help="Ray cluster address (default: local / $RAY_ADDRESS)")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")

    tune = sub.add_parser("tune", help="a Ray Tune sweep (gamma, N, K, ...) from a spec in tune/")
    tune.add_argument("spec", help="YAML sweep spec, e.g. tune/gamma_n_k.yaml")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="override spec keys, e.g. num_samples=8 base.data.url=s3://bucket/embedded")
    tune.add_argument("--tracking-uri", default=None,
                      help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the cwd)")
    tune.add_argument("--address", default=None, help="Ray cluster address (default: local / $RAY_ADDRESS)")

    prop = sub.add_parser("propagate", help="PMI label propagation: score a mixed pool on Ray workers "
                          "and write the pairs found related as shards + manifest")
    src = prop.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", default=None, help="a training checkpoint directory (path or URL)")
    src.add_argument("--run", default=None, metavar="RUN_ID", help="an MLflow training run")
    prop.add_argument("--data", default=None, help="data set with the pools (default: the model's data.url)")
    prop.add_argument("--pool", default="fm", help="split to score (default fm, the mixed pool F_m)")
    prop.add_argument("--calibrate", default="sm",
                      help="split with ground truth used to choose the PMI threshold (default sm)")
    prop.add_argument("--threshold", type=float, default=None, help="use this PMI threshold instead")
    prop.add_argument("--out", required=True, help="URL to write the found pairs to (shards + manifest)")
    prop.add_argument("--workers", type=_positive_int, default=2, help="Ray workers scoring the pool")
    prop.add_argument("--K", type=_positive_int, default=30, help="importance samples per PMI estimate")
    prop.add_argument("--batch-size", type=_positive_int, default=256)
    prop.add_argument("--tracking-uri", default=None)
    prop.add_argument("--storage-options", default=None, help="YAML file of fsspec storage options")
    prop.add_argument("--address", default=None, help="Ray cluster address (default: local / $RAY_ADDRESS)")

    bench = sub.add_parser("bench", help="throughput benchmarks (JSON lines)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    step = bsub.add_parser("step", help="time one optimiser step per model x objective")
    step.add_argument("--model", type=_csv(("mmvae", "mvae", "jmvae")), default=["mmvae"],
                      help="comma list of mmvae, mvae, jmvae (default mmvae)")
    step.add_argument("--objective", type=_csv(("baseline", "contrastive")),
                      default=["baseline", "contrastive"],
                      help="comma list of baseline, contrastive (default both)")
    step.add_argument("--estimator", type=_csv(("iwae", "cubo")), default=["iwae"],
                      help="term-2 estimator(s) of the contrastive objective (default iwae)")
    step.add_argument("--impl", type=_csv(("fused", "loop")), default=["fused"],
                      help="contrastive implementation(s): fused reuse path, naive loop")
    step.add_argument("--K", type=_positive_int, default=30)
    step.add_argument("--N", type=_positive_int, default=5)
    step.add_argument("--batch-size", type=_positive_int, default=128)
    step.add_argument("--steps", type=_positive_int, default=3, help="timed rounds (median)")
    step.add_argument("--warmup", type=int, default=1)
    step.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    step.add_argument("--device", default="cpu")
    step.add_argument("--world", type=_positive_int, default=1,
                      help="W > 1: time the contrastive step on W gloo ranks with negatives from the "
                           "global batch against local-only negatives (the cost of gathering)")
    btrain = bsub.add_parser("train", help="Ray Train throughput with 1, 2, ... workers")
    btrain.add_argument("--data", required=True, help="URL of a prepared data set")
    btrain.add_argument("--workers", type=_int_list, default=[1, 2], help="comma list (default 1,2)")
    btrain.add_argument("--steps", type=_positive_int, default=20)
    btrain.add_argument("--config", default=None,
                        help="training config (default configs/embedded/mmvae-ci.yaml)")
    btrain.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    btrain.add_argument("overrides", nargs="*", metavar="section.key=value")
    loader = bsub.add_parser("loader", help="pairs/s through the shard loader")
    loader.add_argument("--data", required=True, help="URL of a prepared data set (its prefix)")
    loader.add_argument("--split", default="train")
    loader.add_argument("--batches", type=_positive_int, default=50)
    loader.add_argument("--batch-size", type=_positive_int, default=128)
    loader.add_argument("--num-workers", type=int, default=0)
    loader.add_argument("--unpaired", action="store_true", help="the random-unpaired stream")
    loader.add_argument("--storage-options", default=None, help="YAML file of fsspec storage options")
    return p


def _storage_options(path: str | None) -> dict | None:
    from .config import load_storage_options

    return load_storage_options(path, "--storage-options file")


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from .config import load_train_config

        overrides = list(args.overrides)
        if args.tracking_uri:
            overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
        cfg = load_train_config(args.config, overrides)
        if args.dry_run:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from .tracking import ui_command
        from .train.driver import fit

        result = fit(cfg, resume=args.resume, ray_address=args.address)
        m = result.metrics
        shown = {k: round(m[k], 4) if isinstance(m[k], float) else m[k]
                 for k in ("step", "epoch", "epoch_loss", "test_log_joint", "nonfinite_steps") if k in m}
        print(f"run {cfg.train.name} finished: {shown}")
        print(f"checkpoint: {result.checkpoint}")
        print(f"MLflow run {result.run_id} at {result.tracking_uri}; open the UI with:")
        print(f"  {ui_command(result.tracking_uri)}")
        return 0
    if args.command == "tune":
        from .sweep import run_sweep

        sweep = run_sweep(args.spec, list(args.overrides), tracking_uri=args.tracking_uri,
                          ray_address=args.address)
        for line in sweep.lines():
            print(line)
        return 0
    if args.command == "propagate":
        from .propagate import run_propagate

        result = run_propagate(checkpoint=args.checkpoint, run_id=args.run, data=args.data, pool=args.pool,
                               calibrate=args.calibrate, threshold=args.threshold, out=args.out,
                               workers=args.workers, K=args.K, batch_size=args.batch_size,
                               tracking_uri=args.tracking_uri,
                               storage_options=_storage_options(args.storage_options),
                               ray_address=args.address)
        for line in result.lines():
            print(line)
        return 0
    if args.command == "data" and args.data == "prepare":
        from .data import prepare

        options = {k: v for k, v in (("dm", args.dm), ("max_d", args.max_d),
                                     ("sr_fraction", args.sr_fraction)) if v is not None}
        manifest = prepare(args.dataset, args.out, fraction=args.fraction, source=args.source,
                           seed=args.seed, shard_size=args.shard_size, progress=not args.quiet,
                           storage_options=_storage_options(args.storage_options), **options)
        counts = ", ".join(f"{k} {v['count']} pairs in {len(v['shards'])} shards"
                           for k, v in manifest["splits"].items())
        synth = manifest["synthetic"]
        synthetic = f" (synthetic modality: {', '.join(synth)})" if synth else ""
        print(f"wrote {args.out.rstrip('/')}/manifest.json: {counts}{synthetic}")
        return 0
    if args.command == "bench" and args.bench == "train":
        from .bench import bench_train, print_json

        bench_train(data=args.data, workers=args.workers, steps=args.steps, config=args.config,
                    overrides=args.overrides, threads=args.threads, emit=print_json)
        return 0
    if args.command == "bench" and args.bench == "loader":
        from .bench import print_json
        from .data import bench_loader

        print_json(bench_loader(args.data, batches=args.batches, batch_size=args.batch_size,
                                split=args.split, num_workers=args.num_workers,
                                unpaired=args.unpaired,
                                storage_options=_storage_options(args.storage_options)))
        return 0
    if args.command == "bench" and args.bench == "step":
        from .bench import bench_step, print_json

        if args.N >= args.batch_size:
            raise MvaeDistError(f"--N must be < --batch-size {args.batch_size}, got {args.N}")
        if args.world > 1:
            from .bench_dist import bench_gather

            for m in args.model:
                print_json(bench_gather(world=args.world, model=m, estimator=args.estimator[0], K=args.K,
                                        N=args.N, batch_size=args.batch_size, steps=args.steps,
                                        warmup=args.warmup, threads=args.threads or 1))
            return 0
        bench_step(models=args.model, objectives=args.objective, estimators=args.estimator,
                   impls=args.impl, K=args.K, N=args.N, batch_size=args.batch_size,
                   steps=args.steps, warmup=args.warmup, device=args.device, threads=args.threads,
                   emit=print_json)
        return 0
    raise MvaeDistError(f"unknown command {args.command!r}")


def _quiet_libraries() -> None:
    """Keep library chatter (MLflow's database migrations, ...) off the user's terminal."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in-process; returns the exit code (tests call this)."""
    _quiet_libraries()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line usage error
        return int(e.code or 0)
    try:
        return run(args)
    except (MvaeDistError, ValueError) as e:
        print(f"mvae-dist: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mvae-dist: interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    sys.exit(main())
