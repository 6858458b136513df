"""Checkpoints to s3:// (a moto server): Ray Train writes them, --resume reads them back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mvae_dist.config import load_train_config

pytestmark = pytest.mark.slow
TINY = str(Path(__file__).parents[2] / "configs" / "embedded" / "tiny.yaml")


def test_checkpoints_to_s3_and_resume_from_them(ray_cluster, tiny_data, tmp_path, s3_storage_options,
                                                s3_bucket):
    import s3fs

    from mvae_dist.train.checkpoint import load_checkpoint
    from mvae_dist.train.driver import fit

    opts = tmp_path / "s3.yaml"
    opts.write_text(yaml.safe_dump(s3_storage_options))
    base = [f"data.url={tiny_data}", f"train.storage_path=s3://{s3_bucket}/runs",
            f"train.storage_options_file={opts}", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "train.name=on-s3", "train.eval_every=0", "train.checkpoint_every=2", "train.num_workers=1"]
    res = fit(load_train_config(TINY, [*base, "train.max_steps=4"]))
    assert res.metrics["step"] == 4
    assert res.checkpoint.startswith(f"s3://{s3_bucket}/runs/on-s3/") and res.run_path == \
        f"s3://{s3_bucket}/runs/on-s3"

    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.invalidate_cache()
    assert fs.exists(f"{res.checkpoint}/state.pt")
    local = tmp_path / "ckpt"
    fs.get(res.checkpoint, str(local), recursive=True)
    from mvae_dist.models import build_model

    cfg = load_train_config(TINY, base)
    meta = load_checkpoint(local, model=build_model(cfg.model))
    assert meta["position"].step == 4

    # the same name again is refused; --resume continues from the checkpoint on S3
    with pytest.raises(Exception, match="already exists"):
        fit(load_train_config(TINY, [*base, "train.max_steps=6"]))
    res2 = fit(load_train_config(TINY, [*base, "train.max_steps=6"]), resume=True)
    assert res2.metrics["step"] == 6 and res2.run_id == res.run_id
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=res.tracking_uri).get_run(res.run_id)
    assert run.data.metrics["resumed_from_step"] == 4  # read back from S3, not a restart from 0
