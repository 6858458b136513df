"""`ray submit deploy/ray_local.yaml deploy/submit_tiny.py`: train the tiny config on the cluster
the script runs beside (``ray.init()`` joins the head's cluster) and print the MLflow run id.

A small embedded data set is built on first use under ~/mvae-dist/data-tiny (seconds, no download).
On a cluster of several machines the data and the runs must be on storage every machine sees:
pass ``--data URL --storage URL`` (e.g. s3://bucket/embedded s3://bucket/runs).
"""

from __future__ import annotations

import argparse
import os

from mvae_dist.config import load_train_config
from mvae_dist.data import prepare
from mvae_dist.train.driver import fit


def main() -> None:
    home = os.path.expanduser("~/mvae-dist")
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=f"{home}/data-tiny")
    ap.add_argument("--storage", default=f"{home}/runs")
    ap.add_argument("--name", default="submitted-tiny")
    args = ap.parse_args()
    if "://" not in args.data and not os.path.exists(os.path.join(args.data, "manifest.json")):
        prepare("embedded", args.data, dm=1, shard_size=500, progress=False)
    cfg = load_train_config("embedded/tiny.yaml", [
        f"data.url={args.data}", f"train.storage_path={args.storage}", f"train.name={args.name}",
        "train.eval_every=0"])
    result = fit(cfg, ray_address="auto")
    print(f"run id: {result.run_id}  checkpoint: {result.checkpoint}")


if __name__ == "__main__":
    main()
