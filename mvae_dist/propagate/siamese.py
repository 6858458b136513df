"""The paper's label-propagation baseline: a Siamese network (Hadsell et al., 2006).

One small embedding net per modality maps its input into a shared space, trained on the same
related pairs S_r as the generative model with the contrastive loss

    L = y·d² / 2 + (1 - y)·max(0, margin - d)² / 2,     d = ||f_0(x_0) - f_m(x_m)||,

y = 1 for the pairs of S_r and y = 0 for negatives made by re-matching within the batch: the
partners are rolled by a random offset in [1, B) (seeded), so no pair meets its own partner.
Like the generative model's contrastive negatives they are random matches, about 1/10 of which
happen to share the digit; labels are never used. The relatedness score of a pair is -d; the
threshold is chosen on S_m with ``choose_threshold``, as for PMI. With M > 2 modalities every
member is compared with the anchor (modality 0); a sentence modality (one with a vocabulary in
the manifest: the SYNTHETIC captions of embedded-text, CUB's) gets a bag-of-words token net.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mvae_dist.errors import ConfigError
from mvae_dist.eval.classifiers import Standardize

from .pools import event_shape
from .relatedness import (
    Scored,
    choose_threshold,
    ranking_report,
    relatedness_report,
    relatedness_scores,
    score_batches,
)

NetKind = Literal["mlp", "cnn", "tokens"]


class TokenEmbedding(nn.Module):
    """Sentences: token ids [B, T] (int, or their float values) -> [B, 64], the mean and the
    max over positions of 32-d word embeddings (a bag of words; "<pad>" included, as the
    digit classifiers' token net does)."""

    def __init__(self, vocab_size: int, dim: int = 32) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.embedding = nn.Embedding(self.vocab_size, dim)

    def forward(self, x: Tensor) -> Tensor:
        e = self.embedding(x.long().clamp(0, self.vocab_size - 1))  # [B, T, dim]
        return torch.cat([e.mean(1), e.amax(1)], -1)


def embedding_net(shape: Sequence[int], embed_dim: int = 16, width: int = 8,
                  kind: NetKind | None = None, vocab_size: int | None = None) -> nn.Module:
    """x [B, *shape] -> [B, embed_dim].

    kind: "cnn" (3 conv blocks of width, 2·width, 2·width channels, then 128 hidden units),
    "mlp" (flattened input, 256 hidden units) or "tokens" (sentences of token ids [B, T]:
    ``TokenEmbedding`` of ``vocab_size`` words, then 128 hidden units); default as the paper's
    networks: an MLP for grey images (MNIST) and vectors, a CNN for colour images (street
    numbers / SVHN), and "tokens" whenever a ``vocab_size`` is given.
    The output is batch-normalised without affine parameters: every embedding dimension keeps
    unit variance over the batch, so the nets cannot settle in the collapsed state where every
    input maps to one point (d_pos = d_neg = margin / 2, a saddle that Hadsell's loss leaves
    only slowly).
    """
    shape = tuple(shape)
    if len(shape) not in (1, 3):
        raise ConfigError(f"siamese: cannot embed inputs of shape {list(shape)}")
    if kind is None:
        kind = "tokens" if vocab_size else "cnn" if len(shape) == 3 and shape[0] > 1 else "mlp"
    if kind == "tokens":
        if not vocab_size or len(shape) != 1:
            raise ConfigError(f"siamese: a token net needs sentences [T] and a vocabulary size, got "
                              f"shape {list(shape)} and vocab_size {vocab_size}")
        body = [TokenEmbedding(vocab_size), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, embed_dim)]
    elif kind == "mlp":
        n_in = 1
        for s in shape:
            n_in *= s
        body: list[nn.Module] = [nn.Flatten(), nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, embed_dim)]
    elif kind == "cnn" and len(shape) == 3:
        c, h, w = shape
        body = [Standardize(eps=1e-3)]  # per image: street-number colours and contrast vary
        ch = c
        for out in (width, 2 * width, 2 * width):
            body += [nn.Conv2d(ch, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            ch = out
        body += [nn.Flatten(), nn.Linear(ch * (h // 8) * (w // 8), 128), nn.ReLU(), nn.Linear(128, embed_dim)]
    else:
        raise ConfigError(f"siamese: unknown net {kind!r} for inputs of shape {list(shape)}; "
                          "use mlp, cnn or tokens")
    return nn.Sequential(*body, nn.BatchNorm1d(embed_dim, affine=False))


def jitter(x: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """Images [B, C, H, W] shifted by one random offset in [-pixels, pixels]² (wrapping); other
    inputs unchanged. Cheap augmentation: S_r is small and the nets memorise it otherwise."""
    if pixels <= 0 or x.dim() != 4:
        return x
    dy, dx = torch.randint(-pixels, pixels + 1, (2,), generator=generator).tolist()
    return torch.roll(x, (dy, dx), dims=(2, 3))


class SiameseModel(nn.Module):
    """One embedding net per modality into a shared space; ``forward`` -> relatedness score [B].

    Embeddings are L2-normalised, so distances lie in [0, 2] and ``margin`` is on that scale.
    For M > 2 modalities every member is compared with the anchor (modality 0):
    score = -mean_m ||f_0(x_0) - f_m(x_m)||. vocab_sizes: per modality, the vocabulary of a
    sentence modality (token ids [T]; a "tokens" net) or None.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], embed_dim: int = 16, width: int = 8,
                 nets: Sequence[NetKind | None] | None = None,
                 vocab_sizes: Sequence[int | None] | None = None) -> None:
        super().__init__()
        if len(shapes) < 2:
            raise ConfigError(f"siamese needs at least 2 modalities, got {len(shapes)}")
        self.shapes = [tuple(s) for s in shapes]
        kinds = list(nets) if nets is not None else [None] * len(self.shapes)
        if len(kinds) != len(self.shapes):
            raise ConfigError(f"siamese: {len(kinds)} nets given for {len(self.shapes)} modalities")
        vocabs = list(vocab_sizes) if vocab_sizes is not None else [None] * len(self.shapes)
        if len(vocabs) != len(self.shapes):
            raise ConfigError(f"siamese: {len(vocabs)} vocabulary sizes given for {len(self.shapes)} "
                              "modalities")
        self.vocab_sizes = vocabs
        self.nets = nn.ModuleList(embedding_net(s, embed_dim, width, k, v)
                                  for s, k, v in zip(self.shapes, kinds, vocabs))
        self.threshold: float | None = None  # set by siamese_baseline (chosen on S_m)

    def embed(self, xs: list[Tensor]) -> list[Tensor]:
        """M unit-length embeddings [B, embed_dim]."""
        return [nn.functional.normalize(net(x), dim=-1) for net, x in zip(self.nets, xs)]

    def distances(self, emb: list[Tensor]) -> Tensor:
        """||e_0 - e_m|| for m = 1..M-1: [M-1, B]."""
        return torch.stack([(emb[0] - e).pow(2).sum(-1).add(1e-12).sqrt() for e in emb[1:]])

    def forward(self, xs: list[Tensor]) -> Tensor:
        return -self.distances(self.embed(xs)).mean(0)


def contrastive_pair_loss(d_pos: Tensor, d_neg: Tensor, margin: float) -> Tensor:
    """Hadsell et al. (2006): mean of d_pos²/2 and max(0, margin - d_neg)²/2 (both [..., B])."""
    return 0.5 * (d_pos.pow(2).mean() + (margin - d_neg).clamp_min(0).pow(2).mean())


def rematch(xs: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    """Negatives: the anchor (modality 0) keeps its place, every other modality is rolled by its
    own random offset in [1, B): a derangement, so no pair meets its own partner."""
    B = xs[0].shape[0]
    out = [xs[0]]
    for x in xs[1:]:
        shift = int(torch.randint(1, B, (1,), generator=generator)) if B > 1 else 0
        out.append(torch.roll(x, shift, dims=0))
    return out


def _manifest_shapes(url: str, split: str, storage_options: dict | None
                     ) -> tuple[dict, list[tuple], list[int | None]]:
    """(manifest, the loader's event shape per modality, vocabulary size per modality or None)."""
    from mvae_dist.data import open_manifest

    manifest = open_manifest(url, storage_options)
    if split not in manifest["splits"]:
        raise ConfigError(f"split {split!r} not in data set {url} (has {sorted(manifest['splits'])})")
    mods = manifest["modalities"]
    return (manifest, [event_shape(m["shape"]) for m in mods],
            [len(m["vocab"]) if m.get("vocab") else None for m in mods])


def train_siamese(url: str, split: str = "sr", *, epochs: int = 10, batch_size: int = 64, lr: float = 2e-3,
                  margin: float = 1.0, embed_dim: int = 16, width: int = 8, shift: int = 2, seed: int = 0,
                  nets: Sequence[NetKind | None] | None = None,
                  storage_options: dict | None = None, progress: bool = False,
                  device: str | torch.device = "cpu") -> SiameseModel:
    """Train the Siamese baseline on the related pairs of ``split`` (S_r) -> model in eval mode.

    Each epoch streams the split shuffled (seeded by ``seed`` and the epoch) in batches of
    ``batch_size``; every batch gives B positives and B re-matched negatives; images are
    jittered by up to ``shift`` pixels. ``nets``: "mlp" / "cnn" / "tokens" per modality
    (default: MLP for grey images, CNN for colour ones, "tokens" for sentence modalities, those
    with a vocabulary in the manifest). Deterministic in ``seed`` on one device and thread count.
    """
    from tqdm.auto import tqdm

    from mvae_dist.data import make_loader

    if epochs < 1:
        raise ConfigError(f"siamese epochs must be >= 1, got {epochs}")
    if batch_size < 2:
        raise ConfigError(f"siamese batch_size must be >= 2 (negatives come from the batch), "
                          f"got {batch_size}")
    manifest, shapes, vocabs = _manifest_shapes(url, split, storage_options)
    count = manifest["splits"][split]["count"]
    if count < 2:
        raise ConfigError(f"split {split!r} of {url} has {count} pairs; the Siamese baseline needs >= 2")
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiameseModel(shapes, embed_dim, width, nets, vocabs).to(dev)
    gen = torch.Generator().manual_seed(seed + 1)
    loader = make_loader(url, split, min(batch_size, count), shuffle=True, drop_last=True, seed=seed,
                         storage_options=storage_options, shuffle_buffer=min(count, 20000))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with tqdm(total=epochs * len(loader), desc="siamese", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                xs = [jitter(x, shift, gen).to(dev) for x in batch["xs"]]
                emb = model.embed(xs)
                d_pos = model.distances(emb)
                d_neg = model.distances(rematch(emb, gen))
                loss = contrastive_pair_loss(d_pos, d_neg, margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def siamese_scores(model: SiameseModel, url: str, split: str, *, batch_size: int = 256,
                   storage_options: dict | None = None, progress: bool = False,
                   device: str | torch.device = "cpu") -> Scored:
    """Relatedness scores -mean_m ||f_0(x_0) - f_m(x_m)|| of every pair of ``split``, in shard order ->
    Scored: (scores [P], related [P], ids [P, M], labels [P, M]) and ``.keys``."""
    from mvae_dist.data import make_loader

    _, shapes, vocabs = _manifest_shapes(url, split, storage_options)
    if [tuple(s) for s in shapes] != model.shapes or vocabs != model.vocab_sizes:
        raise ConfigError(f"siamese model expects inputs {model.shapes} (vocabularies {model.vocab_sizes}), "
                          f"data set {url} has {shapes} ({vocabs})")
    loader = make_loader(url, split, batch_size, shuffle=False, drop_last=False,
                         storage_options=storage_options)
    dev = torch.device(device)
    model.eval()

    def score(batch: dict) -> Tensor:
        with torch.no_grad():
            return model([x.to(dev) for x in batch["xs"]])

    return score_batches(score, loader, progress=progress, desc=f"siamese {split}")


@dataclass
class SiameseResult:
    """The baseline's run: threshold chosen on ``calibrate``, relatedness_scores there and on
    ``pool`` (None without ground truth); pool_scores: every pool pair's score; ranking: the
    ranking measures of relatedness_report (cal_auc, cal_ap, auc, ap, best_f1, best_threshold),
    None without ground truth on the pool; compared: {split: relatedness_report on the pool at
    the threshold chosen on split} for each of ``compare_calibrations``."""

    model: SiameseModel
    threshold: float
    calibration: dict
    pool: dict | None
    seconds: dict = field(default_factory=dict)
    pool_scores: Scored | None = field(default=None, repr=False)
    ranking: dict | None = None
    compared: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"siamese threshold {self.threshold:.4f} (F1 {self.calibration['f1']:.3f} on calibration)"]
        if self.pool is not None:
            p = self.pool
            out.append(f"siamese on pool: precision {p['precision']:.3f} recall {p['recall']:.3f} "
                       f"F1 {p['f1']:.3f} ({p['n_pred_related']} of {p['n']} predicted related)")
        if self.ranking is not None:
            r = self.ranking
            out.append(f"siamese ranking: ROC-AUC {r['auc']:.3f} on pool ({r['cal_auc']:.3f} on "
                       f"calibration), average precision {r['ap']:.3f}; F1 at the pool's best threshold "
                       f"{r['best_f1']:.3f} (upper bound)")
        return out


def siamese_baseline(url: str, *, train_split: str = "sr", calibrate: str = "sm", pool: str = "fm",
                     epochs: int = 10, seed: int = 0, storage_options: dict | None = None,
                     progress: bool = False, device: str | torch.device = "cpu",
                     compare_calibrations: Sequence[str] = (), **train_kw: Any) -> SiameseResult:
    """Figure 8f's Siamese row: train on S_r, choose the threshold on S_m (or ``calibrate``),
    predict F_m; compare_calibrations: more splits whose own thresholds are reported on the pool."""
    t0 = time.perf_counter()
    model = train_siamese(url, train_split, epochs=epochs, seed=seed, storage_options=storage_options,
                          progress=progress, device=device, **train_kw)
    t1 = time.perf_counter()
    cal = siamese_scores(model, url, calibrate, storage_options=storage_options, device=device)
    if cal.related is None:
        raise ConfigError(f"split {calibrate!r} has no ground truth to choose a threshold on")
    threshold = choose_threshold(cal.scores, cal.related)
    model.threshold = threshold
    cal_metrics = relatedness_scores(cal.scores >= threshold, cal.related)
    pool_metrics, scored, ranking = None, None, None
    if pool:
        scored = siamese_scores(model, url, pool, storage_options=storage_options, device=device,
                                progress=progress)
        if scored.related is not None:
            pool_metrics = relatedness_scores(scored.scores >= threshold, scored.related)
            ranking = ranking_report((cal.scores, cal.related), (scored.scores, scored.related))
    compared = {}
    for split in compare_calibrations if pool_metrics is not None else ():
        other = siamese_scores(model, url, split, storage_options=storage_options, device=device)
        rep = relatedness_report((other.scores, other.related), (scored.scores, scored.related))
        compared[split] = {k: float(v) for k, v in rep.items()}
    t2 = time.perf_counter()
    return SiameseResult(model, threshold, cal_metrics, pool_metrics,
                         {"train": t1 - t0, "score": t2 - t1}, scored, ranking, compared)


__all__ = ["SiameseModel", "SiameseResult", "TokenEmbedding", "contrastive_pair_loss", "embedding_net",
           "event_shape", "jitter", "rematch", "siamese_baseline", "siamese_scores", "train_siamese"]
