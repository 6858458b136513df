"""The text counterpart of the image grids: generated sentences as a Markdown artifact.

For every sentence modality (a data-set modality with a ``vocab``): its reconstructions, the
sentences generated from each other modality's test items (z = the loc of q(z | x_m), as the
cross-generation grid), and sentences of z ~ p(z). Each sentence is the most likely token at
every position, read up to its "<eos>" (``data.text.decode``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..data.text import decode
from ..models.base import MultimodalVAE, evaluating


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "(empty)"


def caption_report(model: MultimodalVAE, xs: Sequence[Tensor], vocabs: Mapping[int, Sequence[str]], *,
                   labels: Tensor | None = None, n: int = 8, n_joint: int = 8, seed: int = 0) -> str:
    """Markdown tables of generated sentences for the modalities in ``vocabs`` ({index: id -> word}).

    xs: the M test tensors (a sentence modality: token ids [B, T]); labels: int [B, M] or None.
    """
    with evaluating(model) as dev:
        xs = [x[:n].to(dev) for x in xs]
        n = xs[0].shape[0]
        names = list(model.names)
        lines: list[str] = []
        for t, vocab in vocabs.items():
            lines += [f"## {names[t]}", ""]
            loc, _ = model.unimodal_posterior(xs[t], t)
            rec = model.decode_mean(t, loc)
            lines += [f"### reconstructions ({names[t]} -> z -> {names[t]})", "",
                      "| label | input | reconstruction |", "| --- | --- | --- |"]
            for i in range(n):
                lab = "" if labels is None else str(int(labels[i, t]))
                lines.append(f"| {lab} | {_cell(decode(xs[t][i].tolist(), vocab))} | "
                             f"{_cell(decode(rec[i].tolist(), vocab))} |")
            for m in range(len(xs)):
                if m == t:
                    continue
                loc, _ = model.unimodal_posterior(xs[m], m)
                gen = model.decode_mean(t, loc)
                lines += ["", f"### generated from {names[m]} ({names[m]} -> z -> {names[t]})", "",
                          f"| {names[m]} label | generated |", "| --- | --- |"]
                for i in range(n):
                    lab = "" if labels is None else str(int(labels[i, m]))
                    lines.append(f"| {lab} | {_cell(decode(gen[i].tolist(), vocab))} |")
            z = model.sample_prior(n_joint, torch.Generator().manual_seed(seed))
            joint = model.decode_mean(t, z)
            lines += ["", f"### joint generations (z ~ p(z), {n_joint})", ""]
            lines += [f"- {_cell(decode(joint[i].tolist(), vocab))}" for i in range(n_joint)]
            lines.append("")
        return "\n".join(lines)
