"""``mvae-dist`` command line: parse, call one library function, map errors to one line + exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import MvaeDistError

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


def _negatives(text: str) -> list[str]:
    """``fresh,reuse,K5`` -> the list; argparse error naming a bad entry."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    for s in items:
        if not (s in ("fresh", "reuse") or (s.startswith("K") and s[1:].isdigit() and int(s[1:]) > 0)):
            raise argparse.ArgumentTypeError(f"{s!r} is not fresh, reuse or K<n> (n >= 1)")
    if not items:
        raise argparse.ArgumentTypeError("give at least one of fresh, reuse, K<n>")
    return items


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
    prep.add_argument("--dataset", required=True, choices=("embedded", "embedded-text", "mnist-svhn", "cub"),
                      help="embedded-text: the embedded set + a synthetic caption of each digit (M = 3); "
                           "cub: image features + captions from the official MMVAE CUB layout (--source)")
    prep.add_argument("--out", required=True, help="any fsspec URL: a path, file://, s3://, gs://")
    prep.add_argument("--fraction", type=float, default=1.0,
                      help="take this fraction of EACH unimodal training set before pairing")
    prep.add_argument("--source", default=None, help="mnist-svhn: directory of MNIST IDX + SVHN .mat files; "
                                                     "cub: the directory holding cub/")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--shard-size", type=_positive_int, default=2000, help="pairs per shard")
    prep.add_argument("--dm", type=_positive_int, default=None, help="pairs per instance (paper: 30)")
    prep.add_argument("--max-d", type=_positive_int, default=None, help="instances per class (10000)")
    prep.add_argument("--sr-fraction", type=float, default=None,
                      help="also write label-propagation pools sr / fm / sm with this S_r fraction")
    prep.add_argument("--calibration-fraction", type=float, default=None,
                      help="hold this share of the S_r draw out of training as the mixed calibration "
                           "split sc (needs --sr-fraction)")
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
    train.add_argument("--verify-data", action="store_true",
                       help="hash every shard against the manifest before Ray starts (default: "
                            "presence and size only)")

    tune = sub.add_parser("tune", help="a Ray Tune sweep (gamma, N, K, ...) from a spec in tune/")
    tune.add_argument("spec", help="YAML sweep spec, e.g. tune/gamma_n_k.yaml")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="override spec keys, e.g. num_samples=8 base.data.url=s3://bucket/embedded")
    tune.add_argument("--tracking-uri", default=None,
                      help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the cwd)")
    tune.add_argument("--address", default=None, help="Ray cluster address (default: local / $RAY_ADDRESS)")

    ev = sub.add_parser("evaluate", help="the paper's metrics, likelihood and image grids of a trained "
                        "model, printed and logged to MLflow")
    esrc = ev.add_mutually_exclusive_group(required=True)
    esrc.add_argument("--run", default=None, metavar="RUN_ID", help="an MLflow training run")
    esrc.add_argument("--checkpoint", default=None, metavar="URI", help="a checkpoint directory (path/URL)")
    ev.add_argument("--seeds", type=_positive_int, default=None, help="seeds to average (default eval.seeds)")
    ev.add_argument("--K", type=_positive_int, default=None, help="samples for log p(x,y) (eval.ll_K)")
    ev.add_argument("--n-ll", type=_positive_int, default=None, help="test pairs for log p(x,y) (eval.ll_n)")
    ev.add_argument("--n-test", type=_positive_int, default=None, help="test pairs, coherences (eval.n_test)")
    ev.add_argument("--n-train", type=_positive_int, default=None,
                    help="training pairs the latent probe is fit on (eval.n_latent_train)")
    ev.add_argument("--classifiers", default=None, help="classifier store URL, 'auto' or 'none'")
    ev.add_argument("--data", default=None, help="data set URL (default: the model's data.url)")
    ev.add_argument("--tracking-uri", default=None)
    ev.add_argument("--storage-options", default=None, help="YAML file of fsspec storage options")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="the embedded default end to end: data, classifiers, MMVAE vs "
                          "cI-MMVAE on 20%% of the pairs (Ray Train), evaluation, side-by-side table")
    demo.add_argument("--root", default="demo", help="working folder for data, runs and results")
    demo.add_argument("--percent", type=float, default=20.0, help="percent of each modality to train on")
    demo.add_argument("--dm", type=_positive_int, default=10, help="pairs per instance (default 10)")
    demo.add_argument("--tracking-uri", default=None)
    demo.add_argument("--address", default=None, help="Ray cluster address (default: local / $RAY_ADDRESS)")
    demo.add_argument("overrides", nargs="*", metavar="section.key=value", help="override the base config")

    exp = sub.add_parser("experiment", help="the paper's studies as tables + plots in MLflow")
    xsub = exp.add_subparsers(dest="experiment", required=True, metavar="STUDY")
    xde = xsub.add_parser("data-efficiency", help="MMVAE vs cI vs cC at n%% of the data (Figure 6)")
    xde.add_argument("--fractions", default="0.1,0.2,0.5,1.0", help="comma list in (0, 1]")
    xde.add_argument("--arms", type=_csv(("baseline", "cI", "cC")), default=["baseline", "cI", "cC"])
    xg = xsub.add_parser("gamma", help="the gamma ablation: generation quality and PMI F1 against gamma")
    xg.add_argument("--gammas", default="1.1,1.5,2,5,10", help="comma list, each > 1")
    xg.add_argument("--sr-fraction", type=float, default=0.1, help="S_r share of the pools for PMI F1")
    xg.add_argument("--fraction", type=float, default=1.0, help="train on this share of each modality")
    xg.add_argument("--train-on", choices=("train", "sr"), default="train",
                    help="train: all related pairs (F_m's related pairs are seen in training); sr: S_r only, "
                         "so that PMI relatedness on F_m is held out")
    xlp = xsub.add_parser("label-propagation", help="section 4.5: train on S_r, propagate by PMI, retrain")
    xlp.add_argument("--sr-fraction", type=float, default=0.1, help="S_r: this share of the related pairs")
    xlp.add_argument("--arms", type=_csv(("baseline", "cI", "cC")), default=["baseline", "cI", "cC"])
    xlp.add_argument("--siamese", default=None, metavar="SETTING",
                     help='the Siamese network\'s settings, e.g. "epochs=100;lr=0.003;width=8" (the one '
                          '`experiment siamese-tune` chose; default: epochs=10)')
    xrc = xsub.add_parser("relatedness-curve",
                          help="held-out PMI relatedness (ROC-AUC, F1) against training steps, per arm, "
                               "the Siamese network as reference (in-process, no Ray)")
    xrc.add_argument("--arms", type=_csv(("baseline", "cI", "cC")), default=["baseline", "cI"])
    xrc.add_argument("--steps", type=_positive_int, default=3000)
    xrc.add_argument("--eval-every", type=_positive_int, default=250)
    xrc.add_argument("--pairs", type=_positive_int, default=2000,
                     help="pairs of fm / sm / sc scored per evaluation")
    xrc.add_argument("--pmi-k", type=_positive_int, default=10,
                     help="IWAE samples per PMI estimate (default 10)")
    xrc.add_argument("--sr-fraction", type=float, default=0.1, help="S_r: this share of the related pairs")
    xrc.add_argument("--calibration-fraction", type=float, default=0.2,
                     help="share of S_r held out of training as the calibration split S_c (default 0.2)")
    xrc.add_argument("--siamese-epochs", type=_positive_int, default=10)
    xrc.add_argument("--siamese", default=None, metavar="SETTING",
                     help='the Siamese network\'s settings, e.g. "epochs=100;lr=0.003;width=8" (the one '
                          '`experiment siamese-tune` chose)')
    xrc.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads")
    xrc.add_argument("--dataset", choices=("embedded", "embedded-text"), default="embedded")
    xrc.add_argument("--config", default=None, help="base config (default: the studies' for --dataset)")
    xrc.add_argument("--root", default="experiments", help="working folder for data and results")
    xrc.add_argument("--dm", type=_positive_int, default=5, help="pairs per instance")
    xrc.add_argument("--train-seeds", type=_positive_int, default=1, help="train each arm this many times")
    xrc.add_argument("--tracking-uri", default=None)
    xrc.add_argument("overrides", nargs="*", metavar="section.key=value", help="override the base config")
    xst = xsub.add_parser("siamese-tune",
                          help="the Siamese baseline tuned on the held-out S_c: a grid of its settings, "
                               "several seeds each, chosen by ROC-AUC on S_c, F_m reported")
    xst.add_argument("--grid", default=None,
                     help='settings to try, "key=v1,v2;key=..." of epochs, lr, width, embed_dim, batch_size, '
                          'margin, shift (default "epochs=10,30;lr=0.001,0.003;width=8,16")')
    xst.add_argument("--sr-fraction", type=float, default=0.1, help="S_r: this share of the related pairs")
    xst.add_argument("--calibration-fraction", type=float, default=0.2,
                     help="share of S_r held out of training as the calibration split S_c (default 0.2)")
    xst.add_argument("--dataset", choices=("embedded", "embedded-text"), default="embedded")
    xst.add_argument("--root", default="experiments", help="working folder for data and results")
    xst.add_argument("--dm", type=_positive_int, default=5, help="pairs per instance")
    xst.add_argument("--train-seeds", type=_positive_int, default=3, help="seeds per setting (default 3)")
    xst.add_argument("--tracking-uri", default=None)
    for x in (xg, xlp):
        x.add_argument("--pmi-k", type=_positive_int, default=30,
                       help="IWAE samples per log-likelihood in the PMI estimate (default 30)")
        x.add_argument("--calibration-fraction", type=float, default=None,
                       help="hold this share of S_r out of training as a calibration split: thresholds "
                            "chosen there (held-out) are reported beside S_m's (the paper's)")
    for x in (xde, xg, xlp):
        x.add_argument("--dataset", choices=("embedded", "embedded-text"), default="embedded",
                       help="embedded (M = 2) or embedded-text (M = 3: + SYNTHETIC captions)")
        x.add_argument("--config", default=None, help="base config (default configs/embedded/demo.yaml; "
                       "with --dataset embedded-text configs/embedded-text/study.yaml)")
        x.add_argument("--root", default="experiments", help="working folder for data, runs and results")
        x.add_argument("--dm", type=_positive_int, default=5, help="pairs per instance")
        x.add_argument("--seeds", type=_positive_int, default=1, help="evaluation seeds per trained model")
        x.add_argument("--train-seeds", type=_positive_int, default=1,
                       help="train each arm this many times (train.seed + 0, 1, ...); tables: mean ± std")
        x.add_argument("--tracking-uri", default=None)
        x.add_argument("--address", default=None, help="Ray cluster address")
        x.add_argument("overrides", nargs="*", metavar="section.key=value", help="override the base config")

    clf = sub.add_parser("classifiers", help="digit classifiers per modality (for the coherence metrics)")
    csub = clf.add_subparsers(dest="classifiers", required=True, metavar="WHAT")
    ctrain = csub.add_parser("train", help="train one per modality on a data set; store a new version")
    ctrain.add_argument("--data", required=True, help="URL of a prepared data set")
    ctrain.add_argument("--out", default=None, help="store root (default: the data set's own prefix)")
    ctrain.add_argument("--epochs", type=_positive_int, default=None, help="default: per architecture")
    ctrain.add_argument("--seed", type=int, default=0)
    ctrain.add_argument("--storage-options", default=None, help="YAML file of fsspec storage options")
    ctrain.add_argument("--tracking-uri", default=None,
                        help="also log the version to MLflow (default: $MLFLOW_TRACKING_URI, else sqlite)")
    ctrain.add_argument("--experiment", default="mvae-dist-classifiers", help="MLflow experiment")
    ctrain.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    ctrain.add_argument("--quiet", action="store_true", help="no progress bar")
    clist = csub.add_parser("list", help="the stored classifier versions and their test accuracies")
    clist.add_argument("--data", required=True, help="store root (a data set's prefix)")
    clist.add_argument("--storage-options", default=None, help="YAML file of fsspec storage options")

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
    prop.add_argument("--compare-calibrations", default="", metavar="SPLITS",
                      help="comma list of other mixed splits (e.g. sm): the pool's F1 at the threshold "
                           "each would choose is printed beside the one used")
    prop.add_argument("--out", required=True, help="URL to write the found pairs to (shards + manifest)")
    prop.add_argument("--workers", type=_positive_int, default=2, help="Ray workers scoring the pool")
    prop.add_argument("--K", type=_positive_int, default=30, help="importance samples per PMI estimate")
    prop.add_argument("--batch-size", type=_positive_int, default=256)
    prop.add_argument("--tracking-uri", default=None)
    prop.add_argument("--storage-options", default=None, help="YAML file of fsspec storage options")
    prop.add_argument("--address", default=None, help="Ray cluster address (default: local / $RAY_ADDRESS)")

    cca = sub.add_parser("cca", help="CCA coherence scorers of data sets with a sentence modality")
    csub = cca.add_subparsers(dest="cca", required=True, metavar="WHAT")
    cfit = csub.add_parser("fit", help="fit word vectors + CCA on the training pairs; store them "
                                       "beside the data")
    cfit.add_argument("--data", required=True, help="URL of a prepared data set with a sentence modality")
    cfit.add_argument("--image", default=None,
                      help="image modality (default: the one the sentences describe)")
    cfit.add_argument("--text", default=None, help="sentence modality (default: the first)")
    cfit.add_argument("--k", type=_positive_int, default=40, help="CCA dimensions (official: 40)")
    cfit.add_argument("--n-fit", type=_positive_int, default=10_000, help="training pairs to fit on")
    cfit.add_argument("--seed", type=int, default=0)
    cfit.add_argument("--storage-options", default=None, help="YAML file of fsspec storage options")
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
    step.add_argument("--negatives", type=_negatives, default=["fresh"],
                      help="MVAE/JMVAE negatives (comma list): fresh (exact path), reuse (the positives' "
                           "samples), K<n> (n fresh samples, e.g. K5); default fresh")
    step.add_argument("--K", type=_positive_int, default=30)
    step.add_argument("--N", type=_positive_int, default=5)
    step.add_argument("--batch-size", type=_positive_int, default=128)
    step.add_argument("--steps", type=_positive_int, default=3, help="timed rounds (median)")
    step.add_argument("--warmup", type=int, default=1)
    step.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    step.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    step.add_argument("--precision", type=_csv(("fp32", "bf16")), default=["fp32"],
                      help="comma list: fp32 (default), bf16 (the networks autocast to bfloat16)")
    step.add_argument("--memory-format", type=_csv(("contiguous", "channels_last")), default=["contiguous"],
                      help="comma list: contiguous (default), channels_last (convolutions)")
    step.add_argument("--compile", type=_csv(("off", "on")), default=["off"],
                      help="comma list: off (default), on (torch.compile each encoder and decoder)")
    step.add_argument("--world", type=_positive_int, default=1,
                      help="W > 1: time the contrastive step on W gloo ranks with negatives from the "
                           "global batch against local-only negatives (the cost of gathering)")
    mv = bsub.add_parser("multivae", help="the MMVAE baseline step against MultiVae's (needs multivae: "
                                          "its own virtualenv, docs/benchmarks.md)")
    mv.add_argument("--loss", type=_csv(("dreg_looser", "iwae_looser")),
                    default=["dreg_looser", "iwae_looser"],
                    help="comma list of dreg_looser (the official MMVAE objective), iwae_looser")
    mv.add_argument("--K", type=_positive_int, default=30)
    mv.add_argument("--batch-size", type=_positive_int, default=128)
    mv.add_argument("--steps", type=_positive_int, default=5, help="timed rounds (median)")
    mv.add_argument("--warmup", type=int, default=1)
    mv.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    bound = bsub.add_parser("bound", help="how loose the negatives' estimates are (exact linear-Gaussian "
                                           "log p)")
    bound.add_argument("--K", type=_int_list, default=[1, 5, 30], help="samples per tuple (comma list)")
    bound.add_argument("--reps", type=_positive_int, default=60, help="draws per estimate")
    btrain = bsub.add_parser("train", help="Ray Train throughput with 1, 2, ... workers")
    btrain.add_argument("--data", required=True, help="URL of a prepared data set")
    btrain.add_argument("--workers", type=_int_list, default=[1, 2], help="comma list (default 1,2)")
    btrain.add_argument("--steps", type=_positive_int, default=20)
    btrain.add_argument("--config", default=None,
                        help="training config (default configs/embedded/mmvae-ci.yaml)")
    btrain.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    btrain.add_argument("overrides", nargs="*", metavar="section.key=value")
    bscale = bsub.add_parser("scale", help="step, loader and exchange time against the number of workers "
                                           "(W gloo processes each)")
    bscale.add_argument("--data", required=True, help="URL of a prepared data set (at least max W shards)")
    bscale.add_argument("--workers", type=_int_list, default=[1, 2, 4, 8],
                        help="comma list (default 1,2,4,8)")
    bscale.add_argument("--steps", type=_positive_int, default=12, help="steps per size, warm-up included")
    bscale.add_argument("--warmup", type=int, default=2)
    bscale.add_argument("--config", default=None,
                        help="training config (default configs/embedded/tiny.yaml: small networks)")
    bscale.add_argument("overrides", nargs="*", metavar="section.key=value")
    learn = bsub.add_parser("learn", help="a learning curve: train one config in-process (no Ray), "
                                          "evaluating every --eval-every steps")
    learn.add_argument("--config", required=True, help="training config (YAML)")
    learn.add_argument("--steps", type=_positive_int, default=1000)
    learn.add_argument("--eval-every", type=_positive_int, default=250)
    learn.add_argument("--n-test", type=_positive_int, default=500, help="test pairs per evaluation")
    learn.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    learn.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda, cuda:1, ...")
    learn.add_argument("--relatedness", type=_positive_int, default=0, metavar="PAIRS",
                       help="at each evaluation, PMI relatedness on this many pairs of fm / sm (/ sc): "
                            "ROC-AUC, F1 at the calibrated threshold (needs the pools, --sr-fraction)")
    learn.add_argument("--pmi-k", type=_positive_int, default=10,
                       help="IWAE samples per log-likelihood in the PMI of --relatedness (default 10)")
    learn.add_argument("--until-targets", action="store_true",
                       help="stop at the first evaluation meeting the demo's targets (street latent accuracy "
                            ">= 0.6, cross coherences >= 0.4 / 0.5, joint >= 0.2): time to quality")
    learn.add_argument("overrides", nargs="*", metavar="section.key=value")
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
    from ..config import load_storage_options

    return load_storage_options(path, "--storage-options file")


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from ..config import load_train_config

        overrides = list(args.overrides)
        if args.tracking_uri:
            overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
        cfg = load_train_config(args.config, overrides)
        if args.dry_run:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from ..tracking import ui_command
        from ..train.driver import fit

        result = fit(cfg, resume=args.resume, ray_address=args.address, verify_data=args.verify_data)
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
    if args.command == "evaluate":
        from .evaluate import evaluate_command

        result = evaluate_command(checkpoint=args.checkpoint, run_id=args.run, tracking_uri=args.tracking_uri,
                                  storage_options=_storage_options(args.storage_options), seeds=args.seeds,
                                  K=args.K, n_ll=args.n_ll, n_test=args.n_test, n_train=args.n_train,
                                  classifiers=args.classifiers, data=args.data, progress=not args.quiet)
        for line in result.lines():
            print(line)
        return 0
    if args.command == "classifiers":
        return _classifiers(args)
    if args.command == "demo":
        from .experiments import demo

        demo(args.root, percent=args.percent, dm=args.dm, overrides=list(args.overrides),
             tracking_uri=args.tracking_uri, ray_address=args.address)
        return 0
    if args.command == "experiment":
        return _experiment(args)
    if args.command == "propagate":
        from .propagate import run_propagate

        result = run_propagate(checkpoint=args.checkpoint, run_id=args.run, data=args.data, pool=args.pool,
                               calibrate=args.calibrate, threshold=args.threshold, out=args.out,
                               compare_calibrations=[t for t in args.compare_calibrations.split(",") if t],
                               workers=args.workers, K=args.K, batch_size=args.batch_size,
                               tracking_uri=args.tracking_uri,
                               storage_options=_storage_options(args.storage_options),
                               ray_address=args.address)
        for line in result.lines():
            print(line)
        return 0
    if args.command == "data" and args.data == "prepare":
        from ..data import prepare

        options = {k: v for k, v in (("dm", args.dm), ("max_d", args.max_d),
                                     ("sr_fraction", args.sr_fraction),
                                     ("calibration_fraction", args.calibration_fraction)) if v is not None}
        manifest = prepare(args.dataset, args.out, fraction=args.fraction, source=args.source,
                           seed=args.seed, shard_size=args.shard_size, progress=not args.quiet,
                           storage_options=_storage_options(args.storage_options), **options)
        counts = ", ".join(f"{k} {v['count']} pairs in {len(v['shards'])} shards"
                           for k, v in manifest["splits"].items())
        synth = manifest["synthetic"]
        synthetic = f" (synthetic modality: {', '.join(synth)})" if synth else ""
        print(f"wrote {args.out.rstrip('/')}/manifest.json: {counts}{synthetic}")
        return 0
    if args.command == "bench" and args.bench == "bound":
        from .bench import bench_bound, print_json

        bench_bound(Ks=args.K, reps=args.reps, emit=print_json)
        return 0
    if args.command == "cca":
        from ..eval.cca import cca_root, fit_and_store

        entry = fit_and_store(args.data, image=args.image, text=args.text, k=args.k, seed=args.seed,
                              n_fit=args.n_fit, storage_options=_storage_options(args.storage_options))
        print(f"CCA scorer v{entry['version']} ({entry['image']} x {entry['text']}, k {entry['k']}, "
              f"top correlation {entry['top_correlation']}) -> {cca_root(args.data)}/{entry['file']}")
        return 0
    if args.command == "bench" and args.bench == "multivae":
        from .bench import print_json
        from .bench_multivae import bench_multivae

        bench_multivae(K=args.K, batch_size=args.batch_size, losses=args.loss, steps=args.steps,
                       warmup=args.warmup, threads=args.threads, emit=print_json)
        return 0
    if args.command == "bench" and args.bench == "train":
        from .bench import bench_train, print_json

        bench_train(data=args.data, workers=args.workers, steps=args.steps, config=args.config,
                    overrides=args.overrides, threads=args.threads, emit=print_json)
        return 0
    if args.command == "bench" and args.bench == "scale":
        from .bench import print_json
        from .bench_scale import bench_scale

        bench_scale(data=args.data, workers=args.workers, steps=args.steps, warmup=args.warmup,
                    config=args.config, overrides=args.overrides, emit=print_json)
        return 0
    if args.command == "bench" and args.bench == "learn":
        from ..config import absolute_local_paths, load_train_config
        from .bench import print_json
        from .experiments.curve import DEMO_TARGETS, learning_curve

        device = _device(args.device)  # before anything is read
        cfg = load_train_config(args.config, args.overrides)
        cfg = cfg.from_dict(absolute_local_paths(cfg.to_dict()))
        learning_curve(cfg, steps=args.steps, eval_every=args.eval_every, n_test=args.n_test,
                       threads=args.threads, device=device, on_row=print_json,
                       until=DEMO_TARGETS if args.until_targets else None, relatedness=args.relatedness,
                       pmi_K=args.pmi_k)
        return 0
    if args.command == "bench" and args.bench == "loader":
        from ..data import bench_loader
        from .bench import print_json

        print_json(bench_loader(args.data, batches=args.batches, batch_size=args.batch_size,
                                split=args.split, num_workers=args.num_workers,
                                unpaired=args.unpaired,
                                storage_options=_storage_options(args.storage_options)))
        return 0
    if args.command == "bench" and args.bench == "step":
        from .bench import bench_step, compute_cases, print_json

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
                   impls=args.impl, negatives=args.negatives, K=args.K, N=args.N, batch_size=args.batch_size,
                   steps=args.steps, warmup=args.warmup, device=_device(args.device), threads=args.threads,
                   computes=compute_cases(args.precision, args.memory_format, args.compile), emit=print_json)
        return 0
    raise MvaeDistError(f"unknown command {args.command!r}")


def _device(name: str) -> str:
    """A torch device name this machine has, else a one-line error naming it."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MvaeDistError(f"--device: unknown device {name!r} (expected cpu, cuda, cuda:N, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MvaeDistError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__})")
    return name


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise MvaeDistError(f"{what} must be a comma list of numbers, got {text!r}") from None
    if not values:
        raise MvaeDistError(f"{what} must not be empty")
    return values


def _experiment(args: argparse.Namespace) -> int:
    from .experiments import studies

    if args.experiment == "relatedness-curve":
        from .experiments.siamese_tune import parse_setting

        studies.relatedness_curves(args.config, args.overrides, arms=args.arms, steps=args.steps,
                                   eval_every=args.eval_every, pairs=args.pairs, pmi_K=args.pmi_k,
                                   dm=args.dm, sr_fraction=args.sr_fraction,
                                   calibration_fraction=args.calibration_fraction, root=args.root,
                                   tracking_uri=args.tracking_uri, train_seeds=args.train_seeds,
                                   siamese_epochs=args.siamese_epochs, dataset=args.dataset,
                                   threads=args.threads,
                                   siamese=parse_setting(args.siamese) if args.siamese else None)
        return 0

    if args.experiment == "siamese-tune":
        from .experiments.siamese_tune import parse_grid, siamese_tuning

        siamese_tuning(grid=parse_grid(args.grid) if args.grid else None, train_seeds=args.train_seeds,
                       dm=args.dm, sr_fraction=args.sr_fraction,
                       calibration_fraction=args.calibration_fraction, root=args.root,
                       dataset=args.dataset, tracking_uri=args.tracking_uri)
        return 0

    common = {"root": args.root, "dm": args.dm, "seeds": args.seeds, "tracking_uri": args.tracking_uri,
              "ray_address": args.address, "train_seeds": args.train_seeds, "dataset": args.dataset}
    if args.experiment == "data-efficiency":
        studies.data_efficiency(args.config, args.overrides, fractions=_floats(args.fractions, "--fractions"),
                                arms=args.arms, **common)
    elif args.experiment == "gamma":
        studies.gamma_ablation(args.config, args.overrides, gammas=_floats(args.gammas, "--gammas"),
                               sr_fraction=args.sr_fraction, fraction=args.fraction, pmi_K=args.pmi_k,
                               calibration_fraction=args.calibration_fraction, train_on=args.train_on,
                               **common)
    else:
        from .experiments.siamese_tune import parse_setting

        studies.label_propagation(args.config, args.overrides, sr_fraction=args.sr_fraction,
                                  arms=args.arms, K=args.pmi_k,
                                  calibration_fraction=args.calibration_fraction,
                                  siamese=parse_setting(args.siamese) if args.siamese else None, **common)
    return 0


def _classifiers(args: argparse.Namespace) -> int:
    from ..eval.classifiers import list_classifier_versions, train_classifiers

    options = _storage_options(args.storage_options)
    if args.classifiers == "list":
        versions = list_classifier_versions(args.data, options)
        if not versions:
            print(f"no classifiers at {args.data}")
        for v in versions:
            accs = ", ".join(f"{k} {c['test_accuracy']:.4f}" for k, c in v["classifiers"].items())
            print(f"v{v['version']}  {v['created']}  test accuracy: {accs}")
        return 0
    records = train_classifiers(args.data, args.out, epochs=args.epochs, seed=args.seed,
                                storage_options=options, progress=not args.quiet)
    for name, r in records.items():
        print(f"{name}: test accuracy {r.test_accuracy:.4f} on {r.test_size} images "
              f"({r.architecture}, {r.epochs} epochs, {r.seconds:.0f} s) -> {r.url}")
    if not args.no_mlflow:
        from ..tracking import Tracker

        version = next(iter(records.values())).version
        with Tracker(args.tracking_uri, args.experiment) as t:
            run_id = t.start(f"classifiers-v{version}", params={"data": args.data, "seed": args.seed,
                                                       "epochs": args.epochs or "default"},
                    tags={"classifier_version": version, "store": args.out or args.data})
            t.log_metrics({f"test_accuracy_{n}": r.test_accuracy for n, r in records.items()}, step=0)
            t.log_dict({n: r.info() for n, r in records.items()}, "classifiers.json")
        print(f"logged to MLflow run {run_id} ({args.experiment})")
    return 0


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
        _stop_ray()  # its shutdown lines come before ours: the reason is the last line on stderr
        print(f"mvae-dist: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as Terminated
        _stop_ray()
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        if hasattr(e, "last_checkpoint"):  # set by train.driver.fit once its MLflow run was created
            what += f"; run ended KILLED, last checkpoint: {e.last_checkpoint or 'none'} (--resume continues)"
        print(f"mvae-dist: {what}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` / ``except KeyboardInterrupt`` runs
    (MLflow runs end KILLED, temporaries are removed)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _stop_ray() -> None:
    """Shut down the Ray instance ``fit`` started or joined in this process (no-op otherwise; left
    to ``main_entry`` when a thread is still blocked in Ray)."""
    driver = sys.modules.get("mvae_dist.train.driver")
    ray = sys.modules.get("ray")
    if getattr(driver, "ABANDONED_RAY_THREAD", False):
        return
    if driver is not None and driver.RAY_STARTED_HERE and ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # shutting down on an error path must not raise another
            pass


def main_entry() -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    code = main()
    driver = sys.modules.get("mvae_dist.train.driver")
    if getattr(driver, "ABANDONED_RAY_THREAD", False):  # a thread still blocked in Ray: no clean exit
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        _kill_local_ray()
        os._exit(code)  # a cluster's GCS ends the actors of a driver that is gone
    sys.exit(code)


def _kill_local_ray() -> None:
    """Have the processes of the local Ray instance this driver started ended once it has left
    (``launch/reaper.py`` says why not now), without ``ray.shutdown()``; nothing when it joined a
    cluster (the cluster's GCS ends the actors of a driver that is gone)."""
    driver = sys.modules.get("mvae_dist.train.driver")
    ray = sys.modules.get("ray")
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    if getattr(driver, "RAY_STARTED_HERE", False) and node is not None and node.head:
        try:
            from .reaper import reap_after_exit

            reap_after_exit([info.process.pid for infos in node.all_processes.values() for info in infos
                             if info.process is not None])
        except Exception:  # leaving anyway
            pass


if __name__ == "__main__":  # python -m mvae_dist.launch.cli (python -m mvae_dist is the short form)
    main_entry()
