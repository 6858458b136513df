"""Sentences as token ids: a vocabulary built from training sentences, encoding and decoding.

The conventions are the official MMVAE CUB code's (its ``CUBSentences``): the vocabulary starts
with the special tokens "<exc>" = 0 (any word outside the vocabulary), "<pad>" = 1 and
"<eos>" = 2, followed by every word that occurs more than ``min_occ`` times in the training
sentences, in order of first occurrence; a sentence is its words, then "<eos>", cut to
``max_len`` tokens and filled up with "<pad>". Token ids are stored as uint16 (the data set's
dtype says "token ids", not pixels: the loader gives them as int64).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from mvae_dist.errors import DataError
from mvae_dist.models.networks import EOS, PAD, SENTENCE_LENGTH, SPECIAL_TOKENS, UNK

#: the official code's minimum: a word enters the vocabulary when it occurs more than 3 times
MIN_OCC = 3
TOKEN_DTYPE = np.uint16

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(sentence: str) -> list[str]:
    """Lower-cased words and punctuation marks: "A small, red bird." -> [a, small, ",", red, bird, "."]."""
    return _WORD.findall(sentence.lower())


def build_vocab(sentences: Iterable[Sequence[str]], min_occ: int = MIN_OCC) -> list[str]:
    """The vocabulary (id -> word) of tokenised training ``sentences``: the special tokens, then
    every word occurring more than ``min_occ`` times, in order of first occurrence."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for words in sentences:
        for w in words:
            counts[w] += 1
            first.setdefault(w, len(first))
    words = [w for w in sorted(first, key=first.__getitem__)
             if counts[w] > min_occ and w not in SPECIAL_TOKENS]
    vocab = [*SPECIAL_TOKENS, *words]
    if len(vocab) > np.iinfo(TOKEN_DTYPE).max + 1:
        raise DataError(f"vocabulary of {len(vocab)} words does not fit "
                        f"{np.dtype(TOKEN_DTYPE).name} token ids")
    return vocab


def encode(sentences: Iterable[Sequence[str]], vocab: Sequence[str],
           max_len: int = SENTENCE_LENGTH) -> np.ndarray:
    """Tokenised sentences -> token ids uint16 [N, max_len]: words (unknown ones "<exc>"), "<eos>",
    "<pad>" up to max_len; a sentence longer than max_len - 1 words is cut (its "<eos>" kept)."""
    index = {w: i for i, w in enumerate(vocab)}
    rows = []
    for words in sentences:
        ids = [index.get(w, UNK) for w in words][: max_len - 1] + [EOS]
        rows.append(ids + [PAD] * (max_len - len(ids)))
    return np.asarray(rows, dtype=TOKEN_DTYPE).reshape(-1, max_len)


def decode(tokens: Sequence[int] | np.ndarray, vocab: Sequence[str]) -> str:
    """Token ids [T] -> the words up to the first "<eos>" (pads dropped), joined by spaces."""
    words = []
    for t in (int(t) for t in tokens):
        if t == EOS:
            break
        if t != PAD:
            words.append(vocab[t] if 0 <= t < len(vocab) else SPECIAL_TOKENS[UNK])
    return " ".join(words)
