"""The §4.2 metrics: oracle and random models, linear probes, the chunked IWAE, the report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mvae_dist.errors import ConfigError
from mvae_dist.eval.classifiers import build_classifier
from mvae_dist.eval.metrics import (
    EvalReport,
    NotApplicable,
    agreement,
    cross_coherence,
    evaluate_model,
    joint_coherence,
    joint_posterior_mean,
    latent_accuracy,
    latent_codes,
    marginal_log_likelihood,
    match_rate,
    read_pairs,
    resolve_classifiers,
    synergy_coherence,
)
from mvae_dist.models import JMVAE, MMVAE, MVAE, Modality, build_model
from mvae_dist.models.distributions import standard_noise
from mvae_dist.models.linear_gaussian import exact_experts, linear_modalities, random_params
from mvae_dist.objectives import log_joint

C = 10  # classes


# ------------------------------------------------------------------ oracle / random models
# Items of every modality are the one-hot code of their digit [B, 10]; the "classifier" reads
# the arg-max (nn.Identity gives the logits). The latent has one block of 10 dims per modality.
class CodeEncoder(nn.Module):
    """Oracle: q(z | x) = (8 * code in block 0, 0.1). Random: (0, 1), whatever x is."""

    def __init__(self, L: int, oracle: bool) -> None:
        super().__init__()
        self.L, self.oracle = L, oracle

    def forward(self, x):
        B = x.shape[0]
        if not self.oracle:
            return x.new_zeros(B, self.L), x.new_ones(B, self.L)
        return nn.functional.pad(8.0 * x, (0, self.L - C)), x.new_full((B, self.L), 0.1)


class BlockDecoder(nn.Module):
    """loc of p(x | z) = z's block ``k`` (oracle: every modality block 0; random: its own)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, z):
        return z[..., self.k * C:(self.k + 1) * C], torch.ones(())


class MeanJoint(nn.Module):
    """A JMVAE joint encoder: the average of the unimodal encoders' outputs."""

    def __init__(self, encoders) -> None:
        super().__init__()
        self.encoders = encoders

    def forward(self, xs):
        outs = [e(x) for e, x in zip(self.encoders, xs)]
        return torch.stack([o[0] for o in outs]).mean(0), torch.stack([o[1] for o in outs]).mean(0)


def code_model(kind: str, M: int, oracle: bool):
    L = C * M
    encs = [CodeEncoder(L, oracle) for _ in range(M)]
    mods = [Modality(f"m{i}", encs[i], BlockDecoder(0 if oracle else i), likelihood="normal")
            for i in range(M)]
    if kind == "mmvae":
        return MMVAE(mods, L, family="laplace")
    if kind == "mvae":
        return MVAE(mods, L, family="normal")
    return JMVAE(mods, L, MeanJoint(encs), family="normal")


def code_batch(M: int, B: int, seed: int = 0):
    y = torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(seed))
    x = nn.functional.one_hot(y, C).float()
    return [x.clone() for _ in range(M)], y[:, None].expand(B, M).contiguous()


KINDS = ["mmvae", "mvae", "jmvae"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("M", [2, 3])
def test_oracle_model_is_perfectly_coherent(kind, M):
    model, clfs = code_model(kind, M, oracle=True), [nn.Identity()] * M
    xs, labels = code_batch(M, 500)
    gen = torch.Generator().manual_seed(0)
    assert joint_coherence(model, clfs, 500, generator=gen, batch_size=128) == 1.0
    cross = cross_coherence(model, clfs, xs, labels, generator=gen, batch_size=128)
    assert set(cross) == {(m, n) for m in range(M) for n in range(M) if m != n}
    assert all(v == 1.0 for v in cross.values())
    syn = synergy_coherence(model, clfs, xs, labels, generator=gen)
    if kind == "mmvae":
        assert isinstance(syn, NotApplicable) and "mixture" in syn.reason
    else:
        assert syn == {**{f"m{i}": 1.0 for i in range(M)}, "all": 1.0}
    # The joint posterior's mean separates the digits linearly.
    z = joint_posterior_mean(model, xs)
    assert latent_accuracy(z[:250], labels[:250, 0], z[250:], labels[250:, 0]) == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_random_model_scores_chance(kind):
    M, N = 2, 3000
    model, clfs = code_model(kind, M, oracle=False), [nn.Identity()] * M
    xs, labels = code_batch(M, N, seed=1)
    gen = torch.Generator().manual_seed(0)
    assert joint_coherence(model, clfs, N, generator=gen) == pytest.approx(0.1, abs=0.03)
    for v in cross_coherence(model, clfs, xs, labels, generator=gen).values():
        assert v == pytest.approx(0.1, abs=0.03)
    syn = synergy_coherence(model, clfs, xs, labels, generator=gen)
    if kind != "mmvae":
        assert syn["m0"] == pytest.approx(0.1, abs=0.03) and syn["m1"] == pytest.approx(0.1, abs=0.03)
        assert syn["all"] == pytest.approx(0.01, abs=0.01)


def test_cross_coherence_scores_against_the_source_label():
    """With mismatched pairs, m -> n is right when it reproduces x_m's digit, not x_n's."""
    model, clfs = code_model("mmvae", 2, oracle=True), [nn.Identity()] * 2
    g = torch.Generator().manual_seed(0)
    y0 = torch.randint(0, C, (200,), generator=g)
    y1 = (y0 + 1 + torch.randint(0, C - 1, (200,), generator=g)) % C  # never y0's digit
    xs, labels = [nn.functional.one_hot(y, C).float() for y in (y0, y1)], torch.stack([y0, y1], 1)
    assert cross_coherence(model, clfs, xs, labels) == {(0, 1): 1.0, (1, 0): 1.0}


def test_joint_coherence_needs_all_modalities_to_agree():
    model, clfs = code_model("mvae", 3, oracle=False), [nn.Identity()] * 3
    assert joint_coherence(model, clfs, 4000, generator=torch.Generator().manual_seed(0)) == pytest.approx(
        0.01, abs=0.006)


def test_coherences_are_seeded_and_leave_the_model_as_it_was():
    model, clfs = code_model("mvae", 2, oracle=False), [nn.Identity()] * 2
    xs, labels = code_batch(2, 300)
    model.train()
    runs = [cross_coherence(model, clfs, xs, labels, generator=torch.Generator().manual_seed(s))
            for s in (4, 4, 5)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert model.training


def test_prediction_functions():
    assert agreement(torch.tensor([[1, 2, 3, 4], [1, 2, 0, 4], [1, 0, 3, 4]])) == 0.5
    assert agreement(torch.tensor([[1, 2]])) == 1.0
    assert match_rate(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError):
        match_rate(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="expected 2 classifiers"):
        joint_coherence(code_model("mvae", 2, True), [nn.Identity()], 10)


# -------------------------------------------------------------------------- latent probe
def test_linearly_separable_latent_gives_high_accuracy():
    g = torch.Generator().manual_seed(0)
    protos = 2.0 * torch.randn(C, 8, generator=g)
    y = torch.randint(0, C, (2000,), generator=g)
    z = protos[y] + 0.3 * torch.randn(2000, 8, generator=g)
    assert latent_accuracy(z[:1000], y[:1000], z[1000:], y[1000:]) >= 0.95


def test_label_independent_latent_gives_chance():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (4000,), generator=g)
    z = torch.randn(4000, 16, generator=g)
    assert latent_accuracy(z[:2000], y[:2000], z[2000:], y[2000:]) == pytest.approx(0.1, abs=0.04)


def test_latent_codes_use_each_models_posteriors():
    xs = [code_batch(1, 40, seed=s)[0][0] for s in (0, 1)]  # two different digits per pair
    enc = [8.0 * nn.functional.pad(x, (0, C)) for x in xs]  # each expert's loc
    for kind in KINDS:
        codes = latent_codes(code_model(kind, 2, oracle=True), xs, batch_size=16)
        assert set(codes) == {"joint", "m0", "m1"} and codes["joint"].shape == (40, 20)
        if kind == "mmvae":  # the mixture's mean: the experts' average
            torch.testing.assert_close(codes["joint"], (enc[0] + enc[1]) / 2)
            torch.testing.assert_close(codes["m1"], enc[1])
        elif kind == "mvae":  # PoE with the prior expert: precisions 1 + 100 + 100
            torch.testing.assert_close(codes["joint"], (enc[0] + enc[1]) * 100 / 201)
            torch.testing.assert_close(codes["m0"], enc[0] * 100 / 101)
        else:  # the joint encoder (here the experts' average)
            torch.testing.assert_close(codes["joint"], (enc[0] + enc[1]) / 2)


# -------------------------------------------------------------------------- log-likelihood
@pytest.fixture(scope="module")
def lg():
    params = random_params([3, 4], 2, generator=torch.Generator().manual_seed(0))
    xs, _ = params.sample(9, torch.Generator().manual_seed(1))
    return params, xs


def test_chunked_iwae_is_exact_with_exact_posteriors(lg):
    params, xs = lg
    mods = linear_modalities(params)
    exact_experts(mods, params)  # PoE(prior, experts) = p(z | x, y): every weight is p(x, y)
    model = MVAE(mods, 2, family="normal").double()
    ll = marginal_log_likelihood(model, xs, 7, max_samples=3)  # one item at a time, 3 + 3 + 1 samples
    torch.testing.assert_close(ll, params.log_joint(xs), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["mvae", "mmvae"])
def test_chunked_iwae_equals_log_joint_on_the_same_noise(lg, kind):
    params, xs = lg
    torch.manual_seed(0)  # random (inexact) encoders: the weights vary
    mods = linear_modalities(params)
    model = (MVAE(mods, 2, family="normal") if kind == "mvae" else MMVAE(mods, 2, family="normal")).double()
    K, S = 7, model.samples_per_k
    ll = marginal_log_likelihood(model, xs, K, generator=torch.Generator().manual_seed(3), max_samples=3 * S)
    # The same noise: items one at a time (outer), sample chunks 3, 3, 1 (inner), joined along K.
    gen, ref = torch.Generator().manual_seed(3), []
    for a in range(9):
        eps = torch.cat([standard_noise(model.family, model.noise_shape(k, 1), generator=gen)
                         for k in (3, 3, 1)], dim=0 if kind == "mvae" else 1).double()
        with torch.no_grad():
            ref.append(log_joint(model, [x[a:a + 1] for x in xs], K, estimator="iwae", eps=eps))
    torch.testing.assert_close(ll, torch.cat(ref), rtol=1e-9, atol=1e-9)
    assert not math.isclose(float(ll[0]), float(params.log_joint(xs)[0]), abs_tol=1e-3)


# ----------------------------------------------------------------------------- the report
def report_for(kind: str) -> EvalReport:
    r = EvalReport(settings={"model": kind})
    r.values = {"latent_acc": [0.5, 0.7], "coherence_cross_a_to_b": [0.25, 0.25]}
    if kind == "MMVAE":
        r.not_applicable = {"coherence_synergy": "mixture posterior"}
    return r


def test_report_statistics_markdown_and_json_round_trip():
    r = report_for("MMVAE")
    assert r.mean("latent_acc") == pytest.approx(0.6)
    assert r.std("latent_acc") == pytest.approx(math.sqrt(0.02))
    assert r.metrics() == pytest.approx({"latent_acc": 0.6, "latent_acc_std": math.sqrt(0.02),
                                         "coherence_cross_a_to_b": 0.25, "coherence_cross_a_to_b_std": 0.0})
    md = r.to_markdown().splitlines()
    assert md[:2] == ["| metric | mean | std |", "|---|---:|---:|"]
    assert "| latent_acc | 0.6000 | 0.1414 |" in md
    assert "| coherence_synergy | N/A | N/A |" in md
    assert "N/A coherence_synergy: mixture posterior" in md
    back = EvalReport.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r and back.to_markdown() == r.to_markdown()
    with pytest.raises(ValueError, match="format_version"):
        EvalReport.from_dict({**r.to_dict(), "format_version": 99})


def test_resolve_classifiers_by_data_then_model_name():
    a, b = nn.Identity(), nn.ReLU()
    data, model = ["mnist", "svhn-like"], ["mnist", "svhn"]
    assert resolve_classifiers({"mnist": a, "svhn-like": b}, data, model) == [a, b]
    assert resolve_classifiers({"mnist": a, "svhn": b}, data, model) == [a, b]
    assert resolve_classifiers([a, b], ["x", "y"], ["x", "y"]) == [a, b]
    with pytest.raises(ConfigError, match=r"no classifier for modality 1 \('svhn-like'\); have \['mnist'\]"):
        resolve_classifiers({"mnist": a}, data, model)


# ------------------------------------------------------------------ on the embedded set
def untrained_classifiers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"mnist": build_classifier("conv", (1, 28, 28)),
            "svhn": build_classifier("conv", (3, 32, 32))}


SMALL_EVAL = dict(seeds=(0, 1), n_test=64, n_train_latent=128, n_ll=4, K_ll=10, batch_size=32)


@pytest.mark.parametrize("kind", KINDS)
def test_every_metric_runs_on_the_embedded_set(small_data, kind):
    torch.manual_seed(0)
    model = build_model({"name": kind, "latent_dim": 8, "hidden": 32})
    report = evaluate_model(model, small_data, untrained_classifiers(), **SMALL_EVAL)
    names = set(report.values)
    expected = {"latent_acc", "latent_acc_mnist", "latent_acc_svhn", "coherence_joint",
                "coherence_cross_mnist_to_svhn", "coherence_cross_svhn_to_mnist", "coherence_cross",
                "test_log_joint_K10", "classifier_acc_mnist", "classifier_acc_svhn"}
    synergy = {"coherence_synergy_mnist", "coherence_synergy_svhn", "coherence_synergy",
               "coherence_synergy_all"}
    if kind == "mmvae":
        assert names == expected
        assert set(report.not_applicable) == {"coherence_synergy", "coherence_synergy_all"}
        assert "| coherence_synergy | N/A | N/A |" in report.to_markdown()
    else:
        assert names == expected | synergy and not report.not_applicable
    assert all(len(v) == 2 for v in report.values.values())
    for k, v in report.metrics().items():
        assert math.isfinite(v)
        if not k.startswith("test_log_joint"):
            assert 0.0 <= v <= 1.0
    assert report.settings["sizes"] == {"0": {"test": 64, "train": 128}, "1": {"test": 64, "train": 128}}
    json.dumps(report.to_dict())


def test_evaluation_is_a_function_of_the_seeds(small_data):
    torch.manual_seed(0)
    model = build_model({"name": "mvae", "latent_dim": 4, "hidden": 16})
    clfs = untrained_classifiers()
    kw = {**SMALL_EVAL, "seeds": (3,)}
    first = evaluate_model(model, small_data, clfs, **kw)
    assert first.values == evaluate_model(model, small_data, clfs, **kw).values
    a, b = read_pairs(small_data, "test", 50, seed=0), read_pairs(small_data, "test", 50, seed=1)
    assert len(a) == 50 and not torch.equal(a.labels, b.labels)
    assert (a.labels[:, 0] == a.labels[:, 1]).all()  # related pairs only


def test_evaluate_checks_the_modalities(small_data):
    model = build_model({"name": "mmvae", "modalities": ["mnist", "svhn", "vector:4"], "latent_dim": 4,
                         "hidden": 16})
    with pytest.raises(ConfigError, match="the model has 3 modalities"):
        evaluate_model(model, small_data, untrained_classifiers())
    model = build_model({"name": "mmvae", "latent_dim": 4, "hidden": 16})
    with pytest.raises(ConfigError, match="no classifier for modality 1"):
        evaluate_model(model, small_data, {"mnist": nn.Identity()})
