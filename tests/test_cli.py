"""The command line: one-line errors, exit codes, JSON-lines benchmarks."""

import json

from mvae_dist.cli import main


def test_bench_step_prints_json_lines_with_ratios(capsys):
    rc = main(["bench", "step", "--model", "mmvae", "--K", "2", "--N", "2", "--batch-size", "4",
               "--steps", "1", "--warmup", "0", "--impl", "fused,loop"])
    assert rc == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in recs] == ["mmvae/baseline", "cI-mmvae/fused", "cI-mmvae/loop"]
    for r in recs:
        assert r["bench"] == "step" and r["s_per_step"] > 0 and r["pairs_per_s"] > 0
        assert {"model", "objective", "estimator", "K", "N", "batch_size"} <= r.keys()
    assert recs[0]["ratio_to_baseline"] == 1.0


def test_bad_arguments_exit_nonzero_with_one_line(capsys):
    assert main(["bench", "step", "--model", "vae"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice 'vae'" in err[-1]
    assert main(["bench", "step", "--N", "8", "--batch-size", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mvae-dist: error: --N must be < --batch-size 8, got 8"]
