"""``bench multivae``: the MMVAE baseline step of this project and of MultiVae, side by side.

MultiVae (``pip install multivae``, Senellart et al.) is what a user would pick instead of this
project for an MMVAE on MNIST-SVHN. It needs torchvision, which does not import beside a CPU-only
torch here, so it lives in its own virtualenv (docs/benchmarks.md gives the recipe) with this
package installed there with ``--no-deps``; this module imports it only when asked.

Both models get the same networks — the very modules of ``mnist_modality`` / ``svhn_modality``
(784-400-L MLP, 32-64-128 conv net), wrapped in MultiVae's encoder/decoder interface — the same
posterior (Laplace, softmax scale x L + 1e-6, learned prior scale), the same likelihoods (Laplace,
scale 0.75, MNIST rescaled by 3072/784), the same K, batch, data and threads; both compute the
official code's objective, ``dreg_looser`` (or ``iwae_looser``). Steps are timed in interleaved
rounds and summarised by medians, as ``bench step``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import MvaeDistError
from ..models import build_model
from ..models.builders import EVENT_SHAPES as _SHAPES
from ..objectives import training_loss

LOSSES = ("dreg_looser", "iwae_looser")


def _import_multivae():
    try:
        from multivae.data.datasets.base import MultimodalBaseDataset
        from multivae.models import MMVAE, MMVAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder
    except Exception as e:  # ImportError, or torchvision's RuntimeError against a CPU torch
        raise MvaeDistError(
            f"bench multivae needs the multivae package, which did not import ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else e}); run it from its own virtualenv "
            "(docs/benchmarks.md, 'Side by side with MultiVae')"
        ) from None
    return MultimodalBaseDataset, MMVAE, MMVAEConfig, ModelOutput, BaseEncoder, BaseDecoder


def _multivae_model(ours: nn.Module, K: int, loss: str, seed: int):
    """A MultiVae MMVAE whose encoders/decoders are fresh copies of our modalities' networks."""
    import copy

    Dataset, MMVAE, MMVAEConfig, ModelOutput, BaseEncoder, BaseDecoder = _import_multivae()

    class Encoder(BaseEncoder):
        """Our encoder's layers; MultiVae applies the softmax scale to ``log_covariance`` itself."""

        def __init__(self, enc: nn.Module) -> None:
            BaseEncoder.__init__(self)
            self.enc = copy.deepcopy(enc)

        def forward(self, x: Tensor):
            e = self.enc
            if hasattr(e, "body") and isinstance(e.loc, nn.Conv2d):  # SVHNEncoder
                h = e.body(x)
                return ModelOutput(embedding=e.loc(h).flatten(1), log_covariance=e.raw_scale(h).flatten(1))
            h = e.body(x.flatten(1))  # MLPEncoder
            return ModelOutput(embedding=e.loc(h), log_covariance=e.raw_scale(h))

    class Decoder(BaseDecoder):
        """Our decoder's layers over all rows in one call, as MultiVae's own Decoder_VAE_SVHN
        does (the CPU row chunking of ``networks.in_row_chunks`` is this project's)."""

        def __init__(self, dec: nn.Module) -> None:
            BaseDecoder.__init__(self)
            self.dec = copy.deepcopy(dec)

        def forward(self, z: Tensor):
            loc = self.dec._rows(z)  # [n, L] -> [n, *event] (MMVAE passes [K*B, L])
            return ModelOutput(reconstruction=loc.reshape(z.shape[0], *_SHAPES[self.name]))

    names = [m.name for m in ours.modalities]
    cfg = MMVAEConfig(
        n_modalities=len(names), latent_dim=ours.latent_dim,
        input_dims={n: _SHAPES[n] for n in names},
        uses_likelihood_rescaling=True,
        rescale_factors={m.name: m.llik_scaling for m in ours.modalities},
        decoders_dist={n: "laplace" for n in names},
        decoder_dist_params={n: {"scale": 0.75} for n in names},
        K=K, prior_and_posterior_dist="laplace_with_softmax", learn_prior=True, loss=loss,
    )
    torch.manual_seed(seed)
    decoders = {}
    for m in ours.modalities:
        decoders[m.name] = Decoder(m.decoder)
        decoders[m.name].name = m.name
    model = MMVAE(cfg, encoders={m.name: Encoder(m.encoder) for m in ours.modalities}, decoders=decoders)
    return model, Dataset


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bench_multivae(*, K: int = 30, batch_size: int = 128, losses: Sequence[str] = LOSSES, steps: int = 5,
                   warmup: int = 1, threads: int | None = None, seed: int = 0,
                   emit: Callable[[dict], None] | None = None) -> list[dict]:
    """Time the MMVAE baseline step (forward, backward, Adam) of both implementations.

    Returns (and emits) one record per (implementation, loss) with s/step and, for this
    project's rows, the ratio to MultiVae's step of the same loss (below 1: ours is faster).
    """
    bad = [x for x in losses if x not in LOSSES]
    if bad:
        raise MvaeDistError(f"--loss must be one of {', '.join(LOSSES)}, got {bad[0]!r}")
    if threads:
        torch.set_num_threads(threads)
    _import_multivae()  # fails early, with one line naming the fix, when missing

    gen = torch.Generator().manual_seed(seed)
    xs = [torch.rand(batch_size, *_SHAPES[n], generator=gen) for n in ("mnist", "svhn")]
    fns: dict[tuple[str, str], Callable[[], None]] = {}
    sizes: dict[tuple[str, str], int] = {}
    # loss per item at each step: at the first step both start from the same weights and data,
    # so the two must agree up to Monte Carlo noise (the same objective, not just the same cost)
    seen: dict[tuple[str, str], list[float]] = {(i, x): [] for x in losses for i in ("mvae-dist", "multivae")}
    for loss in losses:
        torch.manual_seed(seed)
        ours = build_model({"name": "mmvae", "modalities": ["mnist", "svhn"], "family": "laplace",
                            "posterior_scale": "softmax", "learn_prior": True})
        theirs, Dataset = _multivae_model(ours, K, loss, seed)
        batch = Dataset(data={"mnist": xs[0], "svhn": xs[1]}, labels=torch.zeros(batch_size))
        fns[("mvae-dist", loss)] = _our_step(ours, xs, K, loss == "dreg_looser", seen[("mvae-dist", loss)])
        fns[("multivae", loss)] = _their_step(theirs, batch, batch_size, seen[("multivae", loss)])
        sizes[("mvae-dist", loss)], sizes[("multivae", loss)] = _n_params(ours), _n_params(theirs)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[tuple[str, str], list[float]] = {c: [] for c in fns}
    from tqdm import tqdm

    for _ in tqdm(range(steps), desc="bench multivae rounds", leave=False):
        for c, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[c].append(time.perf_counter() - t0)
    from importlib.metadata import version

    records = []
    for (impl, loss), ts in times.items():
        s = statistics.median(ts)
        rec = {"bench": "multivae", "impl": impl, "model": "mmvae", "loss": loss, "K": K,
               "batch_size": batch_size, "threads": torch.get_num_threads(), "steps": steps,
               "params": sizes[(impl, loss)], "first_loss_per_item": round(seen[(impl, loss)][0], 2),
               "s_per_step": round(s, 5), "torch": torch.__version__, "multivae": version("multivae")}
        if impl == "mvae-dist":
            rec["ratio_to_multivae"] = round(s / statistics.median(times[("multivae", loss)]), 3)
        records.append(rec)
        if emit:
            emit(rec)
    return records


def _our_step(model: nn.Module, xs: list[Tensor], K: int, dreg: bool,
              losses: list[float]) -> Callable[[], None]:
    """One step; appends the loss per item (-bound, batch mean) to ``losses``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss, _ = training_loss(model, xs, objective="baseline", K=K, dreg=dreg, looser=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    return step


def _their_step(model: nn.Module, batch, B: int, losses: list[float]) -> Callable[[], None]:
    """One MultiVae step; its loss is the batch sum, recorded per item."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = model(batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()) / B)

    return step
