"""Generated sentences as text (eval/captions.py) and the token classifier of coherence."""

import torch

from mvae_dist.eval.captions import caption_report
from mvae_dist.eval.classifiers import accuracy, architecture_for, build_classifier, fit_classifier
from mvae_dist.models import build_model

VOCAB = ["<exc>", "<pad>", "<eos>", "a", "zero", "one", "two", "thin", "thick", "|"]


def test_caption_report_lists_reconstructions_cross_and_joint_sentences():
    torch.manual_seed(0)
    model = build_model({"name": "mmvae", "modalities": ["vector:4", "text:10"], "latent_dim": 3}).train()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 4, generator=g), torch.randint(3, 10, (5, 32), generator=g)]
    labels = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 0], [1, 1]])
    text = caption_report(model, xs, {1: VOCAB}, labels=labels, n=4, n_joint=3)
    lines = text.splitlines()
    assert lines[0] == "## text"
    assert "### reconstructions (text -> z -> text)" in lines
    assert "### generated from vector0 (vector0 -> z -> text)" in lines
    assert "### joint generations (z ~ p(z), 3)" in lines
    assert sum(line.startswith("| 0 |") or line.startswith("| 1 |") for line in lines) == 6  # 3 + 3 rows
    assert sum(line.startswith("- ") for line in lines) == 3
    assert "\\|" in text or "|" not in "".join(t for t in VOCAB)  # a '|' word is escaped in tables
    assert model.training  # its mode is restored


def test_token_classifier_learns_a_word_at_any_position():
    # sentences like the captions: a few words (3..8) then <eos> 2 and <pad> 1; the digit word
    # (100 + label) stands at a random place among the first 4
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (600,), generator=g)
    x = torch.ones(600, 32, dtype=torch.long)
    x[:, :5] = torch.randint(3, 9, (600, 5), generator=g)
    x[:, 5] = 2
    pos = torch.randint(0, 4, (600,), generator=g)
    x[torch.arange(600), pos] = 100 + y
    assert architecture_for([32], tokens=True) == "tokens" and architecture_for([32]) == "mlp"
    clf = build_classifier("tokens", [32])
    fit_classifier(clf, x[:500], y[:500], epochs=15, seed=0)
    assert accuracy(clf, x[500:], y[500:]) > 0.9
