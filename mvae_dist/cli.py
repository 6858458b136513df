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
    return p


def run(args: argparse.Namespace) -> int:
    if args.command == "bench" and args.bench == "step":
        from .bench import bench_step, print_json

        if args.N >= args.batch_size:
            raise MvaeDistError(f"--N must be < --batch-size {args.batch_size}, got {args.N}")
        bench_step(models=args.model, objectives=args.objective, estimators=args.estimator,
                   impls=args.impl, K=args.K, N=args.N, batch_size=args.batch_size,
                   steps=args.steps, warmup=args.warmup, device=args.device, threads=args.threads,
                   emit=print_json)
        return 0
    raise MvaeDistError(f"unknown command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in-process; returns the exit code (tests call this)."""
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
