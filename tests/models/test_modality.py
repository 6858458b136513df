"""Modality likelihoods: the pair kernel against gathering, and its hand-written backward."""

import pytest
import torch

from mvae_dist.models import Modality
from mvae_dist.models.modality import _PairDistance
from mvae_dist.models.networks import MLPDecoder, MLPEncoder


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_pair_distance_gradcheck(power, weighted):
    g = torch.Generator().manual_seed(0)
    K, B, D, P = 3, 5, 4, 7
    loc = torch.randn(K, B, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(K, B, D, generator=g, dtype=torch.float64) + 0.5).requires_grad_(weighted)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    src = torch.randint(0, B, (P,), generator=g)
    tgt = torch.randint(0, B, (P,), generator=g)
    fn = lambda loc, w: _PairDistance.apply(loc, w if weighted else None, x, src, tgt, power)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (loc, w))


@pytest.mark.parametrize("likelihood", ["normal", "laplace"])
@pytest.mark.parametrize("scale", ["scalar", "tensor"])
def test_log_lik_pairs_equals_gathered_log_lik(likelihood, scale, monkeypatch):
    # A tiny chunk size forces several chunks, the path large batches take.
    monkeypatch.setattr("mvae_dist.models.modality._PAIR_CHUNK_ELEMENTS", 16)
    g = torch.Generator().manual_seed(1)
    K, B, D, P = 4, 6, 5, 9
    mod = Modality("v", MLPEncoder(D, 2), MLPDecoder(2, (D,)), likelihood, llik_scaling=1.7).double()
    loc = torch.randn(K, B, D, generator=g, dtype=torch.float64, requires_grad=True)
    sc = (torch.tensor(0.6, dtype=torch.float64) if scale == "scalar"
          else torch.rand(K, B, D, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    src = torch.randint(0, B, (P,), generator=g)
    tgt = torch.randint(0, B, (P,), generator=g)

    fast = mod.log_lik_pairs(x, (loc, sc), src, tgt)
    ref = mod.log_lik(x[tgt], (loc[:, src], sc if scale == "scalar" else sc[:, src]))
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-10)

    r = torch.randn(K, P, generator=g, dtype=torch.float64)
    g_fast = torch.autograd.grad((fast * r).sum(), (loc, sc))
    g_ref = torch.autograd.grad((ref * r).sum(), (loc, sc))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_log_lik_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 28, 28, generator=g)
    loc = torch.rand(2, 3, 1, 28, 28, generator=g)
    for fam, dist in [("laplace", torch.distributions.Laplace), ("normal", torch.distributions.Normal)]:
        mod = Modality("m", MLPEncoder(784, 2), MLPDecoder(2, (1, 28, 28)), fam, llik_scaling=2.0)
        got = mod.log_lik(x, (loc, torch.tensor(0.75)))
        want = 2.0 * dist(loc, 0.75).log_prob(x.unsqueeze(0)).flatten(2).sum(-1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


def test_bad_modality_arguments():
    with pytest.raises(ValueError, match="'poisson'"):
        Modality("m", MLPEncoder(4, 2), MLPDecoder(2, (4,)), likelihood="poisson")
    with pytest.raises(ValueError, match="llik_scaling"):
        Modality("m", MLPEncoder(4, 2), MLPDecoder(2, (4,)), llik_scaling=0.0)


@pytest.mark.parametrize("kind", ["mlp", "svhn"])
def test_decoders_in_row_chunks_equal_one_call(kind, monkeypatch):
    # On the CPU the decoders run K·B rows in chunks of CPU_DECODE_ROWS (a speed choice): the
    # outputs and every parameter gradient must be those of one call over all rows.
    from mvae_dist.models import networks

    torch.manual_seed(0)
    dec = (networks.MLPDecoder(3, (1, 28, 28)) if kind == "mlp" else networks.SVHNDecoder(3)).double()
    z = torch.randn(4, 5, 3, dtype=torch.float64)  # [K, B, L]: 20 rows
    weights = torch.rand(4, 5, *(dec(z)[0].shape[2:]), dtype=torch.float64)

    def run(rows: int):
        monkeypatch.setattr(networks, "CPU_DECODE_ROWS", rows)
        dec.zero_grad()
        loc, _ = dec(z)
        (loc * weights).sum().backward()
        return loc.detach(), [p.grad.clone() for p in dec.parameters()]

    one, g_one = run(10**6)
    chunked, g_chunked = run(3)  # 7 chunks, the last one short
    assert one.shape == (4, 5, *dec(z)[0].shape[2:])
    torch.testing.assert_close(chunked, one, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_chunked, g_one):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_categorical_log_lik_is_the_sum_of_token_log_probs_without_unknown_words():
    # Reference: torch.distributions.Categorical per position, summed where the token is not 0
    # (the official MMVAE CUB code's ignore_index=0: "<exc>", words outside the vocabulary).
    from mvae_dist.models import sentence_modality

    g = torch.Generator().manual_seed(0)
    V, K, B = 9, 3, 5
    mod = sentence_modality(V, latent_dim=4, llik_scaling=1.5).double()
    x = torch.randint(0, V, (B, 32), generator=g)
    x[0, :5] = 0
    logits = torch.randn(K, B, 32, V, generator=g, dtype=torch.float64)
    lp = torch.distributions.Categorical(logits=logits).log_prob(x.expand(K, B, 32))
    want = 1.5 * (lp * (x != 0)).sum(-1)
    torch.testing.assert_close(mod.log_lik(x, (logits, None)), want)
    src = torch.tensor([0, 4, 2, 2, 1])
    tgt = torch.tensor([3, 0, 2, 1, 1])
    lp_pairs = torch.distributions.Categorical(logits=logits[:, src]).log_prob(x[tgt].expand(K, 5, 32))
    torch.testing.assert_close(mod.log_lik_pairs(x, (logits, None), src, tgt),
                               1.5 * (lp_pairs * (x[tgt] != 0)).sum(-1))


def test_sentence_networks_shapes_and_tied_embedding():
    from mvae_dist.models import sentence_modality

    mod = sentence_modality(50, latent_dim=6)
    x = torch.randint(0, 50, (7, 32))
    loc, scale = mod.encode(x)
    assert loc.shape == scale.shape == (7, 6) and bool((scale > 0).all())
    logits, none = mod.decode(torch.randn(3, 7, 6))
    assert logits.shape == (3, 7, 32, 50) and none is None
    assert mod.decoder.to_vocab.weight is mod.encoder.embedding.weight  # the official tie
    tokens = mod.mean((logits, None))
    assert tokens.dtype == torch.int64 and tokens.shape == (3, 7, 32)
    # no BatchNorm: an item's posterior does not depend on the rest of the batch
    torch.testing.assert_close(mod.encode(x[:2])[0], loc[:2])
