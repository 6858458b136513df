"""models/compute.py: bf16 autocast of the networks, channels-last convolutions, torch.compile.

On the CPU (these tests) autocast to bfloat16 runs the same code path as on a GPU; the checks
are what a user relies on there: the objective is still computed in float32 from float32
parameters, close to the fp32 value, and a step still trains; channels-last changes the layout
and nothing else; compiled networks keep their state-dict names and compute the same values.
"""

from __future__ import annotations

import pytest
import torch

from mvae_dist.models import build_model
from mvae_dist.models.compute import configure_compute
from mvae_dist.objectives import training_loss


def _pair(seed: int = 0, B: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g)]


def _model(name: str = "mmvae", **compute):
    torch.manual_seed(0)
    return configure_compute(build_model({"name": name, "modalities": ["mnist", "svhn"]}), **compute)


def _loss(model, xs, seed=1, objective="contrastive"):
    g = torch.Generator().manual_seed(seed)
    return training_loss(model, xs, objective=objective, K=2, N=3, gamma=2.0, generator=g)


@pytest.mark.parametrize("name", ["mmvae", "mvae", "jmvae"])
def test_bf16_networks_give_float32_posteriors_and_a_close_loss(name):
    xs = _pair()
    ref, _ = _loss(_model(name), xs)
    model = _model(name, precision="bf16")
    svhn = model.modalities[1]
    loc, scale = svhn.encode(xs[1])
    dec_loc, _ = svhn.decode(loc.unsqueeze(0))
    assert loc.dtype == scale.dtype == dec_loc.dtype == torch.float32
    # the networks did run in bf16: their outputs differ from fp32 by more than float32 rounding
    fp32_loc, _ = _model(name).modalities[1].encode(xs[1])
    assert 1e-6 < (loc - fp32_loc).abs().max() < 0.1
    loss, _ = _loss(model, xs)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(float(loss) - float(ref)) < 0.02 * abs(float(ref)), (float(loss), float(ref))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)


def _drop(precision: str, steps: int = 30) -> float:
    """How far ``steps`` Adam steps on one batch lower the baseline loss (mean of the first
    five against the mean of the last five)."""
    model = _model(precision=precision)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs = _pair(B=32)
    losses = []
    for step in range(steps):
        loss, _ = _loss(model, xs, seed=step, objective="baseline")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return (sum(losses[:5]) - sum(losses[-5:])) / 5


def test_bf16_steps_train_as_fp32_steps_do():
    fp32, bf16 = _drop("fp32"), _drop("bf16")
    assert fp32 > 50 and 0.7 * fp32 < bf16 < 1.3 * fp32, (fp32, bf16)


def test_channels_last_changes_the_layout_not_the_values():
    xs = _pair()
    plain, cl = _model(), _model(channels_last=True)
    conv = [p for p in cl.parameters() if p.dim() == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    assert all(not p.is_contiguous() for p in conv if p.shape[2:] != (1, 1))
    a, _ = _loss(plain, xs)
    b, _ = _loss(cl, xs)
    assert torch.allclose(a, b, rtol=1e-5), (float(a), float(b))
    a.backward()
    b.backward()
    for p, q in zip(plain.parameters(), cl.parameters()):
        # float32 sums in another order: compare the whole gradient, not its near-zero entries
        assert (p.grad - q.grad).norm() <= 1e-3 * p.grad.norm() + 1e-6
    # a checkpoint of a channels-last model loads into a plain one (and the other way round)
    fresh = build_model({"name": "mmvae", "modalities": ["mnist", "svhn"]})
    fresh.load_state_dict(cl.state_dict())
    assert torch.allclose(_loss(fresh, xs)[0], b, rtol=1e-5)


def test_compile_keeps_state_dict_names():
    """Checkpoints of a compiled model load into a plain one and back. (Its values are
    torch.compile's: compiling even a small model takes ~20 s on 2 cores, so the suite does not
    run one; `mvae-dist bench step --compile off,on` does, docs/benchmarks.md.)"""
    spec = {"name": "mmvae", "modalities": ["mnist", "svhn"]}
    plain = build_model(spec)
    compiled = configure_compute(build_model(spec), compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert all(m.encoder._compiled_call_impl is not None and m.decoder._compiled_call_impl is not None
               for m in compiled.modalities)
    compiled.load_state_dict(plain.state_dict())
    plain.load_state_dict(compiled.state_dict())


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; expected one of fp32, bf16"):
        _model(precision="fp16")
