"""Checkpoint round trip and the single-process step: exact state, position and RNG."""

import torch

from mvae_dist.config import ObjectiveConfig
from mvae_dist.models import build_model
from mvae_dist.train.checkpoint import Position, load_checkpoint, read_config, save_checkpoint
from mvae_dist.train.step import TrainStep, apply_step, make_optimizer, make_scheduler, step_generator

CFG = {"name": "mmvae", "modalities": ["vector:4", "vector:3"], "latent_dim": 2, "hidden": 8}


def _setup(seed):
    torch.manual_seed(seed)
    model = build_model(CFG)
    opt = make_optimizer(model.parameters(), 1e-2, 0.0)
    return model, opt, make_scheduler(opt, "cosine", 10)


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = _setup(0)
    step = TrainStep(model, ObjectiveConfig(name="contrastive", K=2, N=2))
    xs = [torch.rand(6, 4), torch.rand(6, 3)]
    for s in range(3):
        apply_step(step, opt, sched, xs, step_generator(0, s), None)
    save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched,
                    position=Position(3, 1, 2), config={"model": CFG}, extra={"nonfinite_steps": 1})
    after_save = torch.rand(3)

    model2, opt2, sched2 = _setup(1)  # different weights, fresh optimiser
    meta = load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert meta["position"] == Position(3, 1, 2) and meta["extra"] == {"nonfinite_steps": 1}
    assert torch.equal(torch.rand(3), after_save)  # RNG continues where it was saved
    assert read_config(tmp_path) == {"model": CFG}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == sched.last_epoch
    # the next step is the same in both: optimiser moments and schedule came back too
    step2 = TrainStep(model2, ObjectiveConfig(name="contrastive", K=2, N=2))
    apply_step(step, opt, sched, xs, step_generator(0, 3), None)
    apply_step(step2, opt2, sched2, xs, step_generator(0, 3), None)
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_nonfinite_loss_skips_the_step():
    model, opt, sched = _setup(0)
    step = TrainStep(model, ObjectiveConfig(name="baseline", K=2))
    before = [p.detach().clone() for p in model.parameters()]
    xs = [torch.full((4, 4), float("nan")), torch.rand(4, 3)]
    stats, stepped = apply_step(step, opt, sched, xs, step_generator(0, 0), None)
    assert not stepped and stats["loss"] != stats["loss"]  # NaN reported, nothing applied
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert sched.last_epoch == 0
