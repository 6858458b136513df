"""CCA coherence of image–sentence generations, as the official MMVAE CUB evaluation computes it.

Sentences are embedded without any network of the model under test (the official
``report/helper.py``):

1. word vectors: FastText (gensim; 300-d, window 3, min_count 3, 10 epochs; 2e5 n-gram hash
   buckets instead of 2e6, see ``word_vectors``) trained on the training sentences; the special
   tokens get constant vectors, "<exc>" -1, "<pad>" 0, "<eos>" +1 in every dimension;
2. a sentence's vector: the SIF-weighted mean of its word vectors up to and including its first
   "<eos>", with weight a / (a + p(w)), a = 1e-3, p(w) the word's frequency in the training
   sentences ("<exc>" carries the excluded words' frequency);
3. minus its projection on the first principal component of the training sentences' vectors.

CCA between the image features (flattened, any [D] or [C, H, W]) and the sentence vectors is fit
on the training pairs (k = 40 dimensions); the coherence of a set of (image, sentence) pairs is
the mean cosine similarity of their centred CCA projections. ``cca`` solves the generalised
eigenproblem of the official ``cca`` with a symmetric solver and a ridge relative to each view's
variance (1e-4 x mean variance instead of an absolute 1e-12: MNIST's constant border pixels make
its covariance singular).

A fitted ``CCAScorer`` is stored beside the data like the digit classifiers, as a versioned
artifact: ``{prefix}/cca/v{n}/cca.pt`` (a torch.save dict) and ``{prefix}/cca/index.json``
({"format_version": 1, "versions": [{"version", "created", "file", "sha256", "image",
"text", "k", "top_correlation", "manifest_sha256"}]}), the file written before the index, each
atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.manifest import join, manifest_location, open_manifest, read_json, url_to_fs
from ..data.text import decode
from ..errors import ConfigError, DataError
from ..models.networks import EOS, PAD
from .classifiers import manifest_sha256

FORMAT_VERSION = 1
STORE_DIR = "cca"
INDEX = "index.json"
SIF_A = 1e-3
FIT_HINT = "mvae-dist cca fit --data {url}"


# ----------------------------------------------------------------------------------- CCA
def cca(views: Sequence[Tensor], k: int, ridge: float = 1e-4) -> tuple[Tensor, list[Tensor]]:
    """Multi-view CCA: views [N, o_i] -> (correlations [k] descending, projections [o_i, k]).

    Solves A w = λ B w with A the cross-covariances between views (zero diagonal blocks) and B
    the block-diagonal within-view covariances plus ``ridge`` x their mean variance; for two
    views λ are the canonical correlations and w = [a; b] the canonical directions.
    """
    from scipy.linalg import eigh

    vs = [np.asarray(v, dtype=np.float64).reshape(v.shape[0], -1) for v in views]
    N = vs[0].shape[0]
    if N < 2 or any(v.shape[0] != N for v in vs):
        raise ValueError(f"views need the same number (>= 2) of rows, got {[v.shape[0] for v in vs]}")
    sizes = [v.shape[1] for v in vs]
    if not 1 <= k <= min(sizes):
        raise ValueError(f"k must be in [1, {min(sizes)}], got {k}")
    cs = [v - v.mean(0) for v in vs]
    off = np.cumsum([0, *sizes])
    A = np.zeros((off[-1], off[-1]))
    B = np.zeros_like(A)
    for i, ci in enumerate(cs):
        c = ci.T @ ci / (N - 1)
        B[off[i]:off[i + 1], off[i]:off[i + 1]] = c + ridge * np.trace(c) / sizes[i] * np.eye(sizes[i])
        for j in range(i + 1, len(cs)):
            cij = ci.T @ cs[j] / (N - 1)
            A[off[i]:off[i + 1], off[j]:off[j + 1]] = cij
            A[off[j]:off[j + 1], off[i]:off[i + 1]] = cij.T
    values, vectors = eigh(A, B)
    top = np.argsort(values)[::-1][:k]
    corr = torch.from_numpy(values[top].copy())
    w = vectors[:, top]
    return corr, [torch.from_numpy(w[off[i]:off[i + 1]].copy()) for i in range(len(vs))]


# ---------------------------------------------------------------------- sentence vectors
def _words(tokens: Tensor | np.ndarray, vocab: Sequence[str]) -> list[list[str]]:
    return [decode(row, vocab).split() for row in np.asarray(tokens)]


def word_vectors(train_tokens: Tensor | np.ndarray, vocab: Sequence[str], *, dim: int = 300, window: int = 3,
                 min_count: int = 3, epochs: int = 10, seed: int = 0, bucket: int = 200_000) -> np.ndarray:
    """FastText vectors of every vocabulary word, trained on the training sentences -> [V, dim].

    bucket: hash buckets of the character n-grams. gensim's default (and the official code's) is
    2 000 000, a 2.4 GB matrix at 300-d whose random initialisation alone takes ~8 s; the
    n-grams of a caption vocabulary (23 words here, ~1 600 on CUB: a few 10^4 n-grams) fit in
    200 000 with few collisions, and a fit then takes ~0.2 s on the embedded-text set.
    """
    try:
        from gensim.models import FastText
    except ImportError:
        raise ConfigError("CCA coherence needs gensim (pip install 'mvae-dist[text]')") from None
    sentences = _words(train_tokens, vocab)
    ft = FastText(vector_size=dim, window=window, min_count=min_count, seed=seed, workers=1, bucket=bucket)
    ft.build_vocab(corpus_iterable=sentences)
    ft.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=epochs)
    emb = np.stack([np.full(dim, float(i - 1), np.float32) for i in range(3)]
                   + [ft.wv[w] for w in vocab[3:]])  # FastText has a vector for any word
    return emb.astype(np.float64)


def sif_weights(train_tokens: Tensor | np.ndarray, vocab_size: int, a: float = SIF_A) -> np.ndarray:
    """a / (a + p(w)) per token id from its frequency among the training sentences' words -> [V].

    Words are the tokens before each sentence's "<eos>" ("<exc>" counts the excluded words)."""
    counts = np.zeros(vocab_size)
    for row in np.asarray(train_tokens):
        row = row.astype(np.int64)
        end = np.flatnonzero(row == EOS)
        words = row[: end[0]] if end.size else row[row != PAD]
        np.add.at(counts, words, 1)
    p = counts / max(counts.sum(), 1)
    return a / (a + p)


def sentence_vectors(tokens: Tensor | np.ndarray, emb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """SIF-weighted mean word vector of each sentence up to and including its first "<eos>"
    (a sentence without one: all its tokens) -> [N, dim]."""
    tokens = np.asarray(tokens).astype(np.int64).clip(0, len(emb) - 1)
    N, T = tokens.shape
    has = (tokens == EOS).any(1)
    first = np.where(has, (tokens == EOS).argmax(1), T - 1)
    mask = (np.arange(T)[None, :] <= first[:, None]).astype(np.float64)  # [N, T]
    w = weights[tokens] * mask
    return (w[..., None] * emb[tokens]).sum(1) / mask.sum(1, keepdims=True)


@dataclass
class CCAScorer:
    """Everything the CCA coherence needs: word vectors [V, d], SIF weights [V], the principal
    direction u [d] removed from sentence vectors, and the CCA means and projections."""

    emb: np.ndarray
    weights: np.ndarray
    u: np.ndarray
    image_mean: Tensor
    text_mean: Tensor
    image_proj: Tensor
    text_proj: Tensor
    correlations: Tensor
    image: str
    text: str

    def embed(self, tokens: Tensor | np.ndarray) -> Tensor:
        """Sentence vectors without the principal component -> float64 [N, d]."""
        v = sentence_vectors(tokens, self.emb, self.weights)
        return torch.from_numpy(v - np.outer(v @ self.u, self.u))

    def coherence(self, images: Tensor, tokens: Tensor | np.ndarray) -> float:
        """Mean cosine similarity of the pairs' centred CCA projections (images [N, ...], tokens [N, T])."""
        x = images.detach().double().cpu().reshape(images.shape[0], -1)
        a = (x - self.image_mean) @ self.image_proj
        b = (self.embed(tokens.detach().cpu() if isinstance(tokens, Tensor) else tokens) - self.text_mean) \
            @ self.text_proj
        return float(F.cosine_similarity(a, b, dim=1).mean())


def fit_cca_scorer(images: Tensor, tokens: Tensor, vocab: Sequence[str], *, k: int = 40, seed: int = 0,
                   image: str = "image", text: str = "text", **ft_options) -> CCAScorer:
    """Fit word vectors, SIF weights, the principal component and the CCA on training pairs
    (images [N, ...] and their sentences' tokens [N, T])."""
    tokens = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens)
    emb = word_vectors(tokens, vocab, seed=seed, **ft_options)
    weights = sif_weights(tokens, len(vocab))
    v = sentence_vectors(tokens, emb, weights)
    _, _, vt = np.linalg.svd(v - v.mean(0), full_matrices=False)
    u = vt[0]
    text_vecs = torch.from_numpy(v - np.outer(v @ u, u))
    x = images.detach().double().cpu().reshape(images.shape[0], -1)
    k = min(k, x.shape[1], text_vecs.shape[1])
    corr, (pi, pt) = cca([x, text_vecs], k)
    return CCAScorer(emb, weights, u, x.mean(0), text_vecs.mean(0), pi, pt, corr, image, text)


# ---------------------------------------------------------------------------------- store
def cca_root(url: str) -> str:
    return join(manifest_location(url)[0], STORE_DIR)


def save_cca_scorer(scorer: CCAScorer, url: str, storage_options: dict | None = None) -> dict:
    """Store ``scorer`` as the next version beside the data set at ``url`` -> its index entry."""
    from ..data.shards import atomic_write

    root = cca_root(url)
    fs, _ = url_to_fs(root, storage_options)
    index = _read_index(root, storage_options) or {"format_version": FORMAT_VERSION, "versions": []}
    n = 1 + max((v["version"] for v in index["versions"]), default=0)
    buf = io.BytesIO()
    torch.save({k: getattr(scorer, k) for k in scorer.__dataclass_fields__}, buf)
    blob = buf.getvalue()
    rel = f"v{n}/cca.pt"
    atomic_write(fs, url_to_fs(join(root, rel), storage_options)[1], blob)
    entry = {"version": n, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "file": rel, "sha256": hashlib.sha256(blob).hexdigest(), "image": scorer.image,
             "text": scorer.text, "k": int(scorer.correlations.numel()),
             "top_correlation": round(float(scorer.correlations[0]), 4),
             "manifest_sha256": manifest_sha256(url, storage_options)}
    index["versions"].append(entry)
    atomic_write(fs, url_to_fs(join(root, INDEX), storage_options)[1], json.dumps(index, indent=1).encode())
    return entry


def _read_index(root: str, storage_options: dict | None) -> dict | None:
    fs, path = url_to_fs(join(root, INDEX), storage_options)
    if not fs.exists(path):
        return None
    index = read_json(join(root, INDEX), storage_options, INDEX)
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{join(root, INDEX)}: not a CCA index of format_version {FORMAT_VERSION}")
    return index


def load_cca_scorer(url: str, storage_options: dict | None = None, version: int | None = None) -> CCAScorer:
    """The latest (or ``version``) stored scorer of the data set at ``url``; DataError naming the
    command that fits one when there is none, or when the file's checksum does not match."""
    root = cca_root(url)
    index = _read_index(root, storage_options)
    if not index or not index["versions"]:
        raise DataError(f"no CCA coherence scorer for {url}; fit one with {FIT_HINT.format(url=url)}")
    entries = {v["version"]: v for v in index["versions"]}
    entry = entries[max(entries)] if version is None else entries.get(version)
    if entry is None:
        raise DataError(f"{root} has no CCA scorer version {version} (has {sorted(entries)})")
    fs, path = url_to_fs(join(root, entry["file"]), storage_options)
    blob = fs.cat_file(path)
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise DataError(f"{join(root, entry['file'])}: sha256 does not match the index (corrupt or replaced)")
    return CCAScorer(**torch.load(io.BytesIO(blob), weights_only=False))


def scorer_for(url: str, storage_options: dict | None = None) -> tuple[CCAScorer, int, int] | None:
    """(the stored scorer, image index, text index) of the data set at ``url``; None when it has
    no sentence modality; DataError naming ``cca fit`` when it has one but no scorer."""
    manifest = open_manifest(url, storage_options)
    if not text_modalities(manifest):
        return None
    scorer = load_cca_scorer(url, storage_options)
    return (scorer, *pick_views(manifest, scorer.image, scorer.text))


def text_modalities(manifest: dict) -> list[int]:
    """Indices of the data set's sentence modalities (those with a vocabulary)."""
    return [m for m, d in enumerate(manifest["modalities"]) if d.get("vocab")]


def pick_views(manifest: dict, image: str | None, text: str | None) -> tuple[int, int]:
    """(image modality, text modality) indices: named, or the first non-sentence modality and the
    first sentence modality (embedded-text: mnist and caption; CUB: image and caption)."""
    names = [d["name"] for d in manifest["modalities"]]
    texts = text_modalities(manifest)
    if not texts:
        raise ConfigError(f"{manifest.get('prefix', 'the data set')} has no sentence modality: "
                          "CCA coherence applies to data sets with a language modality")
    t = names.index(text) if text else texts[0]
    if t not in texts:
        raise ConfigError(f"modality {names[t]!r} is not a sentence modality (those are "
                          f"{[names[i] for i in texts]})")
    if image:
        if image not in names:
            raise ConfigError(f"modality {image!r} not in the data set (has {names})")
        return names.index(image), t
    return next(i for i in range(len(names)) if i not in texts), t


def fit_and_store(url: str, *, image: str | None = None, text: str | None = None, k: int = 40, seed: int = 0,
                  n_fit: int = 10_000, storage_options: dict | None = None, **ft_options) -> dict:
    """Fit a CCAScorer on up to ``n_fit`` training pairs of the data set at ``url`` and store it
    -> its index entry."""
    from .metrics import read_pairs

    manifest = open_manifest(url, storage_options)
    i, t = pick_views(manifest, image, text)
    pairs = read_pairs(url, "train", n_fit, seed=seed, storage_options=storage_options)
    names = [d["name"] for d in manifest["modalities"]]
    scorer = fit_cca_scorer(pairs.xs[i], pairs.xs[t], manifest["modalities"][t]["vocab"], k=k, seed=seed,
                            image=names[i], text=names[t], **ft_options)
    return save_cca_scorer(scorer, url, storage_options)


@torch.no_grad()
def cca_coherence(model, xs: Sequence[Tensor], scorer: CCAScorer, image: int, text: int, *,
                  n_joint: int = 1000, seed: int = 0) -> dict[str, float]:
    """The official CUB coherences on test pairs xs (model's modality order):
    ground truth (real image, real sentence), cross image -> sentence (real image, sentence
    generated from it), cross sentence -> image, and joint (both generated from z ~ p(z))."""
    from ..models.base import evaluating

    names = list(model.names)
    out = {"cca_ground_truth": scorer.coherence(xs[image], xs[text])}
    with evaluating(model) as dev:
        zi, _ = model.unimodal_posterior(xs[image].to(dev), image)
        zt, _ = model.unimodal_posterior(xs[text].to(dev), text)
        out[f"cca_cross_{names[image]}_to_{names[text]}"] = scorer.coherence(
            xs[image], model.decode_mean(text, zi).cpu())
        out[f"cca_cross_{names[text]}_to_{names[image]}"] = scorer.coherence(
            model.decode_mean(image, zt).cpu(), xs[text])
        z = model.sample_prior(n_joint, torch.Generator().manual_seed(seed)).to(dev)
        out["cca_joint"] = scorer.coherence(model.decode_mean(image, z).cpu(),
                                            model.decode_mean(text, z).cpu())
    return out


__all__ = ["CCAScorer", "cca", "cca_coherence", "fit_and_store", "fit_cca_scorer", "load_cca_scorer",
           "pick_views", "scorer_for", "sentence_vectors", "sif_weights", "text_modalities", "word_vectors"]
