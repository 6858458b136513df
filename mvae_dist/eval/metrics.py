"""The metrics of paper §4.2: latent accuracy, joint / cross / synergy coherence, log-likelihood.

Three layers, each usable alone:

1. Functions of predictions and labels (``agreement``, ``match_rate``) and of latent codes
   (``latent_accuracy``: a linear probe): pure tensor maths.
2. Functions of a model, classifiers and tensors (``joint_coherence``, ``cross_coherence``,
   ``synergy_coherence``, ``latent_codes``, ``marginal_log_likelihood``): no grad, eval mode
   (restored afterwards), randomness only from the ``generator`` argument (a CPU generator;
   noise is drawn on the CPU and moved, so results do not depend on the device).
3. ``evaluate_model``: reads test / train pairs of a data set, runs everything once per seed
   and returns an ``EvalReport`` (mean and std over seeds; JSON, Markdown, flat metrics).

Definitions (M modalities, classifiers c_m, labels y_m of related pairs; "decode" is the loc
of p(x_n | z)):

- latent accuracy: a multinomial logistic regression (L2, on standardised features) fit on
  the mean of the JOINT posterior q(z | x_1..M) of training pairs, scored on test pairs. The
  joint posterior is the model's own: MVAE the product of the experts and the prior expert,
  JMVAE its joint encoder, MMVAE the uniform mixture 1/M Σ_m q(z | x_m), whose mean is the
  average of the experts' locs. Per modality: the same probe on the mean of q(z | x_m) (the
  model's unimodal posterior; for MVAE its product with the prior expert).
- joint coherence: z ~ p(z), decode every modality; fraction of samples on which all M
  classifiers agree.
- cross coherence m -> n (every ordered pair m != n): z ~ q(z | x_m), decode modality n;
  fraction where c_n(decoded) = y_m. ``coherence_cross`` averages the M(M-1) directions.
- synergy coherence: z ~ q(z | x_1..M), decode each modality n; per n the fraction where
  c_n(decoded) = y_n, their mean, and the fraction where all M match. Not applicable to MMVAE:
  a sample of its mixture posterior is a sample of one q(z | x_m), so the number is that of
  cross / self generation (paper §4.3).
- test log-likelihood: ``log_joint(model, xs, K, estimator="iwae")`` averaged over test pairs,
  computed in chunks of items and of samples (exactly the same estimator: the chunks' weights
  are pooled in one log-sum-exp).

Metric names (``EvalReport.metrics()``; {a}, {b} are the model's modality names):
``latent_acc``, ``latent_acc_{a}``, ``coherence_joint``, ``coherence_cross_{a}_to_{b}``,
``coherence_cross``, ``coherence_synergy_{a}``, ``coherence_synergy``,
``coherence_synergy_all``, ``test_log_joint_K{K}``, ``classifier_acc_{a}`` (the classifiers
on the real test inputs: the ceiling of the coherences); each also as ``{name}_std``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.base import MultimodalVAE, evaluating
from ..models.distributions import standard_noise
from ..models.mmvae import MMVAE
from ..objectives.joint import check_K, log_joint
from ..tables import markdown_table
from .classifiers import predict

REPORT_VERSION = 1
MMVAE_SYNERGY = ("MMVAE's joint posterior is the uniform mixture of its unimodal experts, so a sample "
                 "of it is a sample of one q(z|x_m): synergy equals cross/self coherence (paper §4.3)")


# --------------------------------------------------------------- predictions and labels
def agreement(preds: Tensor) -> float:
    """Fraction of columns on which all rows agree: preds [M, N] -> scalar (joint coherence)."""
    if preds.dim() != 2 or preds.shape[1] == 0:
        raise ValueError(f"expected predictions [M, N] with N > 0, got {tuple(preds.shape)}")
    return float((preds == preds[:1]).all(0).float().mean())


def match_rate(pred: Tensor, target: Tensor) -> float:
    """Fraction of items where pred == target: [N], [N] -> scalar."""
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match, non-empty")
    return float((pred.cpu() == target.cpu()).float().mean())


def latent_accuracy(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, *,
                    l2: float = 1e-3, max_iter: int = 200) -> float:
    """Accuracy on (z_test, y_test) of a linear classifier fit on (z_train, y_train).

    z: [N, L], y: int64 [N]. Multinomial logistic regression on features standardised with
    the training mean and std, loss mean cross-entropy + l2 * ||W||², fit by L-BFGS from zero
    in float64 (convex: deterministic, no seed).
    """
    if z_train.shape[0] != y_train.shape[0] or z_test.shape[0] != y_test.shape[0] or not len(y_test):
        raise ValueError("latent_accuracy needs one label per code and a non-empty test set")
    zt, zs = z_train.detach().double().cpu(), z_test.detach().double().cpu()
    ytr, yte = y_train.cpu().long(), y_test.cpu().long()
    mu, sd = zt.mean(0), zt.std(0, unbiased=False).clamp_min(1e-8)
    zt, zs = (zt - mu) / sd, (zs - mu) / sd
    C = int(max(ytr.max(), yte.max())) + 1
    W = torch.zeros(zt.shape[1], C, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(zt @ W + b, ytr) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return match_rate((zs @ W + b).argmax(1), yte)


# --------------------------------------------------------------------------- posteriors
def joint_posterior(model: MultimodalVAE, xs: Sequence[Tensor]) -> tuple[Tensor, Tensor] | None:
    """The model's q(z | x_1..M) as (loc [B, L], scale [B, L]); None for MMVAE (a mixture)."""
    return model.joint_posterior(list(xs))


def joint_posterior_mean(model: MultimodalVAE, xs: Sequence[Tensor]) -> Tensor:
    """Mean of q(z | x_1..M): [B, L]. MMVAE: the mixture's mean, the average of the experts' locs."""
    return model.joint_posterior_mean(list(xs))


def synergy_not_applicable(model: MultimodalVAE) -> str | None:
    """Why synergy coherence does not apply to ``model`` (MMVAE), or None."""
    return MMVAE_SYNERGY if isinstance(model, MMVAE) else None


# --------------------------------------------------------------------------- model metrics
def _chunks(n: int, size: int) -> Iterator[slice]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))


def _check(model: MultimodalVAE, classifiers: Sequence[nn.Module] | None = None,
           xs: Sequence[Tensor] | None = None, labels: Tensor | None = None) -> None:
    M = model.M
    if classifiers is not None and len(classifiers) != M:
        raise ValueError(f"expected {M} classifiers (one per modality, in order), got {len(classifiers)}")
    if xs is not None:
        if len(xs) != M:
            raise ValueError(f"expected {M} modalities, got {len(xs)}")
        B = xs[0].shape[0]
        if any(x.shape[0] != B for x in xs) or B == 0:
            raise ValueError(f"modalities need the same, non-zero batch size, got {[x.shape[0] for x in xs]}")
        if labels is not None and tuple(labels.shape) != (B, M):
            raise ValueError(f"labels must be [B, M] = {[B, M]}, got {list(labels.shape)}")


def _dtype(model: MultimodalVAE) -> torch.dtype:
    """The model's floating dtype (that of its prior's parameters)."""
    return model._prior_loc.dtype


def _sample(model: MultimodalVAE, loc: Tensor, scale: Tensor, gen: torch.Generator) -> Tensor:
    """One z = loc + scale * eps of the model's family: [B, L]; eps drawn on the CPU."""
    eps = standard_noise(model.family, tuple(loc.shape), generator=gen).to(loc.device, loc.dtype)
    return loc + scale * eps


def _classify(classifier: nn.Module, x: Tensor) -> Tensor:
    """Arg-max class on the classifier's device: [B, *event] -> int64 [B] on the CPU."""
    return predict(classifier, x, batch_size=max(1, x.shape[0]))


def latent_codes(model: MultimodalVAE, xs: Sequence[Tensor], *, batch_size: int = 256) -> dict[str, Tensor]:
    """Posterior means of a set of pairs -> {"joint": [N, L], model.names[m]: [N, L] per modality}."""
    _check(model, xs=xs)
    out: dict[str, list[Tensor]] = {"joint": [], **{name: [] for name in model.names}}
    with evaluating(model) as dev:
        for s in _chunks(xs[0].shape[0], batch_size):
            xb = [x[s].to(dev) for x in xs]
            out["joint"].append(joint_posterior_mean(model, xb).float().cpu())
            for m, name in enumerate(model.names):
                out[name].append(model.unimodal_posterior(xb[m], m)[0].float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def joint_coherence(model: MultimodalVAE, classifiers: Sequence[nn.Module], n: int, *,
                    generator: torch.Generator | None = None, batch_size: int = 256) -> float:
    """z ~ p(z) (n samples), decode every modality: fraction on which all classifiers agree."""
    _check(model, classifiers)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    preds = []
    with evaluating(model):
        for s in _chunks(n, batch_size):
            z = model.sample_prior(s.stop - s.start, gen)
            preds.append(torch.stack([_classify(c, model.decode_mean(m, z))
                                      for m, c in enumerate(classifiers)]))
    return agreement(torch.cat(preds, 1))


def cross_coherence(model: MultimodalVAE, classifiers: Sequence[nn.Module], xs: Sequence[Tensor],
                    labels: Tensor, *, generator: torch.Generator | None = None,
                    batch_size: int = 256) -> dict[tuple[int, int], float]:
    """{(m, n): fraction where c_n(decode_n(z)) = labels[:, m], z ~ q(z | x_m)} for all m != n.

    xs: M tensors [B, *event_m]; labels: int64 [B, M] (each modality's own digit).
    """
    _check(model, classifiers, xs, labels)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    M = model.M
    hits = {(m, n): [] for m in range(M) for n in range(M) if m != n}
    with evaluating(model) as dev:
        for s in _chunks(xs[0].shape[0], batch_size):
            for m in range(M):
                z = _sample(model, *model.unimodal_posterior(xs[m][s].to(dev), m), gen)
                for n in range(M):
                    if n != m:
                        pred = _classify(classifiers[n], model.decode_mean(n, z))
                        hits[(m, n)].append(pred == labels[s, m])
    return {k: float(torch.cat(v).float().mean()) for k, v in hits.items()}


@dataclass(frozen=True)
class NotApplicable:
    """A metric that does not apply to a model, and why."""

    reason: str


def synergy_coherence(model: MultimodalVAE, classifiers: Sequence[nn.Module], xs: Sequence[Tensor],
                      labels: Tensor, *, generator: torch.Generator | None = None,
                      batch_size: int = 256) -> dict[str, float] | NotApplicable:
    """z ~ q(z | x_1..M), decode each modality n -> {model.names[n]: fraction c_n = labels[:, n],
    "all": fraction where every modality matches}; NotApplicable for MMVAE.
    """
    reason = synergy_not_applicable(model)
    if reason is not None:
        return NotApplicable(reason)
    _check(model, classifiers, xs, labels)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    hits = []
    with evaluating(model) as dev:
        for s in _chunks(xs[0].shape[0], batch_size):
            z = _sample(model, *joint_posterior(model, [x[s].to(dev) for x in xs]), gen)
            hits.append(torch.stack([_classify(c, model.decode_mean(n, z)) == labels[s, n]
                                     for n, c in enumerate(classifiers)]))  # [M, b]
    h = torch.cat(hits, 1).float()  # [M, B]
    out = {name: float(h[n].mean()) for n, name in enumerate(model.names)}
    out["all"] = float(h.all(0).float().mean())
    return out


def marginal_log_likelihood(model: MultimodalVAE, xs: Sequence[Tensor], K: int, *,
                            generator: torch.Generator | None = None, max_samples: int = 4096) -> Tensor:
    """IWAE estimate of log p(x_1..M) per item with K samples (MMVAE: per expert): [B].

    The same estimator as ``log_joint(model, xs, K, estimator="iwae")``, computed in chunks so
    that at most ``max_samples`` latent samples (items x samples x experts) are decoded at once:
    items are split into chunks, and each item chunk's K samples into chunks k_1 + k_2 + ... = K;
    with I_c the IWAE of a sample chunk, log p = logsumexp_c(I_c + log k_c) - log K. Noise is
    drawn from ``generator`` per (item chunk, sample chunk), in that order, with shape
    ``model.noise_shape(k_c, b)``.
    """
    check_K(K)
    _check(model, xs=xs)
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    S = model.samples_per_k
    k_chunk = max(1, min(K, max_samples // S))
    b_chunk = max(1, max_samples // (S * k_chunk))
    out = []
    with evaluating(model) as dev:
        for s in _chunks(xs[0].shape[0], b_chunk):
            xb = [x[s].to(dev) for x in xs]
            b = s.stop - s.start
            parts = []
            for k0 in range(0, K, k_chunk):
                k = min(k_chunk, K - k0)
                eps = standard_noise(model.family, model.noise_shape(k, b), generator=gen)
                lj = log_joint(model, xb, k, estimator="iwae", eps=eps.to(dev, _dtype(model)))
                parts.append(lj.double() + math.log(k))
            out.append((torch.logsumexp(torch.stack(parts), 0) - math.log(K)).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------- data
@dataclass
class Pairs:
    """Related pairs read from a data set: xs M tensors [N, *event_m] (float), labels [N, M]."""

    xs: list[Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, n: int) -> Pairs:
        return Pairs([x[:n] for x in self.xs], self.labels[:n])


def read_pairs(url: str, split: str, n: int, *, seed: int, storage_options: dict | None = None,
               batch_size: int = 256) -> Pairs:
    """Up to ``n`` related pairs of ``split``, a random sample that depends only on ``seed``.

    The split's shards are read in a seeded order through a shuffle buffer (as in training)
    and reading stops after ``n`` related pairs, so only about n + 2 000 pairs are decoded.
    """
    from ..data import make_loader

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    loader = make_loader(url, split, batch_size, shuffle=True, seed=seed, drop_last=False,
                         storage_options=storage_options)
    xs: list[list[Tensor]] | None = None
    labels, have = [], 0
    for batch in loader:
        keep = batch["related"].nonzero().squeeze(1)[: n - have]
        if xs is None:
            xs = [[] for _ in batch["xs"]]
        for m, x in enumerate(batch["xs"]):
            xs[m].append(x[keep])
        labels.append(batch["labels"][keep])
        have += len(keep)
        if have >= n:
            break
    if not have:
        raise ConfigError(f"split {split!r} of {url} has no related pairs to evaluate on")
    return Pairs([torch.cat(x) for x in xs], torch.cat(labels))


# --------------------------------------------------------------------------------- report
@dataclass
class EvalReport:
    """Per-seed values of every metric, and the metrics that do not apply (with a reason).

    values: {metric: [one float per seed]}; not_applicable: {metric: reason}; settings: how
    it was computed (sizes, K, seeds, model class). Std is the sample std over seeds (0 for
    one seed).
    """

    values: dict[str, list[float]] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def mean(self, name: str) -> float:
        v = self.values[name]
        return sum(v) / len(v)

    def std(self, name: str) -> float:
        v = self.values[name]
        if len(v) < 2:
            return 0.0
        mu = self.mean(name)
        return math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1))

    def metrics(self) -> dict[str, float]:
        """Flat {name: mean, name_std: std} for mlflow.log_metrics (not-applicable ones left out)."""
        out = {}
        for name in self.values:
            out[name] = self.mean(name)
            out[f"{name}_std"] = self.std(name)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: {"format_version", "settings", "metrics": {name: {mean, std, values}},
        "not_applicable": {name: reason}}."""
        return {
            "format_version": REPORT_VERSION,
            "settings": self.settings,
            "metrics": {k: {"mean": self.mean(k), "std": self.std(k), "values": list(v)}
                        for k, v in self.values.items()},
            "not_applicable": dict(self.not_applicable),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalReport:
        if d.get("format_version") != REPORT_VERSION:
            raise ValueError(f"unsupported report format_version {d.get('format_version')!r}")
        return cls({k: [float(x) for x in v["values"]] for k, v in d["metrics"].items()},
                   dict(d["not_applicable"]), dict(d["settings"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_markdown(self) -> str:
        """A table ``| metric | mean | std |`` (N/A rows last), then one line per N/A reason."""
        rows = [[k, f"{self.mean(k):.4f}", f"{self.std(k):.4f}"] for k in self.values]
        rows += [[k, "N/A", "N/A"] for k in self.not_applicable]
        text = markdown_table(["metric", "mean", "std"], rows, align=["left", "right", "right"])
        if self.not_applicable:
            text += "\n" + "".join(f"N/A {k}: {why}\n" for k, why in self.not_applicable.items())
        return text


def resolve_classifiers(classifiers: Mapping[str, nn.Module] | Sequence[nn.Module], data_names: Sequence[str],
                        model_names: Sequence[str]) -> list[nn.Module]:
    """Classifiers in modality order: a sequence as is, or a mapping looked up by the data set's
    modality name, then the model's; ConfigError naming a modality without one."""
    if not isinstance(classifiers, Mapping):
        classifiers = list(classifiers)
        if len(classifiers) != len(model_names):
            raise ConfigError(f"expected {len(model_names)} classifiers, got {len(classifiers)}")
        return classifiers
    out = []
    for m, (dn, mn) in enumerate(zip(data_names, model_names)):
        key = dn if dn in classifiers else mn if mn in classifiers else None
        if key is None:
            raise ConfigError(f"no classifier for modality {m} ({dn!r}); have {sorted(classifiers)}")
        out.append(classifiers[key])
    return out


def evaluate_model(model: MultimodalVAE, url: str, classifiers: Mapping[str, nn.Module] | Sequence[nn.Module],
                   *, seeds: Sequence[int] = (0, 1, 2), n_test: int = 500, n_train_latent: int = 1000,
                   n_joint: int | None = None, n_ll: int = 8, K_ll: int = 1000, batch_size: int = 256,
                   max_samples: int = 4096, storage_options: dict | None = None,
                   device: str | torch.device | None = None, progress: bool = False) -> EvalReport:
    """Every §4.2 metric of ``model`` on the data set at ``url``, once per seed -> EvalReport.

    Per seed s: ``n_test`` test pairs and ``n_train_latent`` training pairs (for the latent
    probe) are read with ``read_pairs(seed=s)``; noise comes from a generator seeded with s.
    Joint coherence uses ``n_joint`` prior samples (default n_test); the log-likelihood the
    first ``n_ll`` test pairs with ``K_ll`` samples (0 skips it). classifiers: keyed by the data
    set's (or the model's) modality names, or a sequence in modality order; moved to the
    model's device. ``device`` (default: the model's) must hold the model.
    """
    from tqdm.auto import tqdm

    from ..data import open_manifest

    manifest = open_manifest(url, storage_options)
    data_names = [m["name"] for m in manifest["modalities"]]
    if len(data_names) != model.M:
        raise ConfigError(f"the model has {model.M} modalities ({model.names}), "
                          f"the data set {len(data_names)} ({data_names})")
    if not seeds:
        raise ConfigError("seeds must not be empty")
    p = next(model.parameters(), None)
    model_dev = p.device if p is not None else torch.device("cpu")
    if device is not None and torch.device(device) != model_dev:
        raise ConfigError(f"the model is on {model_dev}, not on device {device}: move it first")
    clfs = [c.to(model_dev) for c in resolve_classifiers(classifiers, data_names, model.names)]
    report = EvalReport(settings={
        "model": type(model).__name__, "modalities": model.names, "data": manifest["prefix"],
        "seeds": list(seeds), "n_test": n_test, "n_train_latent": n_train_latent,
        "n_joint": n_joint or n_test, "n_ll": n_ll, "K_ll": K_ll,
    })
    for seed in tqdm(list(seeds), desc="evaluate", unit="seed", disable=not progress):
        for k, v in _evaluate_seed(model, url, clfs, seed, n_test, n_train_latent, n_joint or n_test, n_ll,
                                   K_ll, batch_size, max_samples, storage_options, report).items():
            report.values.setdefault(k, []).append(v)
    return report


def _evaluate_seed(model: MultimodalVAE, url: str, clfs: list[nn.Module], seed: int, n_test: int,
                   n_train: int, n_joint: int, n_ll: int, K_ll: int, batch_size: int, max_samples: int,
                   storage_options: dict | None, report: EvalReport) -> dict[str, float]:
    """The metrics of one seed (not-applicable ones are recorded in ``report``)."""
    gen = torch.Generator().manual_seed(seed)
    names = model.names
    test = read_pairs(url, "test", n_test, seed=seed, storage_options=storage_options)
    train = read_pairs(url, "train", n_train, seed=seed, storage_options=storage_options)
    report.settings.setdefault("sizes", {})[str(seed)] = {"test": len(test), "train": len(train)}
    out: dict[str, float] = {}
    z_tr = latent_codes(model, train.xs, batch_size=batch_size)
    z_te = latent_codes(model, test.xs, batch_size=batch_size)
    out["latent_acc"] = latent_accuracy(z_tr["joint"], train.labels[:, 0], z_te["joint"], test.labels[:, 0])
    for m, name in enumerate(names):
        out[f"latent_acc_{name}"] = latent_accuracy(z_tr[name], train.labels[:, m], z_te[name],
                                                    test.labels[:, m])
    out["coherence_joint"] = joint_coherence(model, clfs, n_joint, generator=gen, batch_size=batch_size)
    cross = cross_coherence(model, clfs, test.xs, test.labels, generator=gen, batch_size=batch_size)
    for (m, n), v in cross.items():
        out[f"coherence_cross_{names[m]}_to_{names[n]}"] = v
    out["coherence_cross"] = sum(cross.values()) / len(cross)
    syn = synergy_coherence(model, clfs, test.xs, test.labels, generator=gen, batch_size=batch_size)
    if isinstance(syn, NotApplicable):
        report.not_applicable.update({"coherence_synergy": syn.reason, "coherence_synergy_all": syn.reason})
    else:
        for name in names:
            out[f"coherence_synergy_{name}"] = syn[name]
        out["coherence_synergy"] = sum(syn[name] for name in names) / len(names)
        out["coherence_synergy_all"] = syn["all"]
    if n_ll > 0 and K_ll > 0:
        ll = marginal_log_likelihood(model, test.take(n_ll).xs, K_ll, generator=gen, max_samples=max_samples)
        out[f"test_log_joint_K{K_ll}"] = float(ll.mean())
    for m, name in enumerate(names):
        out[f"classifier_acc_{name}"] = match_rate(predict(clfs[m], test.xs[m]), test.labels[:, m])
    return out
