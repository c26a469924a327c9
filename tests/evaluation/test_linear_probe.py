"""The feature linear probe: separable features are learned, label noise is not, no randomness."""

from __future__ import annotations

import torch

from fima.evaluation.linear_probe import fit_linear_probe, probe_accuracy, probe_scores


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.randint(0, 4, (n,), generator=gen)
    return centres[labels] + torch.randn(n, 16, generator=gen), labels, centres


def test_separable_features_are_classified() -> None:
    x, y, _ = _blobs(200, 0)
    xt, yt, _ = _blobs(100, 1)
    fitted = fit_linear_probe(x, y, 4, weight_decay=1e-3)
    assert (probe_scores(xt, fitted).argmax(dim=1) == yt).double().mean() > 0.95
    top1, top5 = probe_accuracy(x, y, xt, yt, weight_decay=1e-3)
    assert top1 > 95.0 and top5 == 100.0  # 4 classes: the top 5 holds every class


def test_features_without_information_stay_near_chance() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 16, generator=gen), torch.randint(0, 4, (400,), generator=gen)
    xt, yt = torch.randn(400, 16, generator=gen), torch.randint(0, 4, (400,), generator=gen)
    fitted = fit_linear_probe(x, y, 4, weight_decay=1e-3)
    assert (probe_scores(xt, fitted).argmax(dim=1) == yt).double().mean() < 0.4
    top1, _ = probe_accuracy(x, y, xt, yt, weight_decay=1e-3)
    assert top1 < 40.0


def test_fit_is_deterministic_and_scale_invariant() -> None:
    x, y, _ = _blobs(100, 2)
    first = fit_linear_probe(x, y, 4, weight_decay=1e-2)
    second = fit_linear_probe(x, y, 4, weight_decay=1e-2)
    scaled = fit_linear_probe(x * 100.0, y, 4, weight_decay=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.testing.assert_close(probe_scores(x, first), probe_scores(x * 100.0, scaled))
