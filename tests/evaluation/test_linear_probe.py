"""The feature linear probe: separable features are learned, label noise is not, no randomness."""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from fima.evaluation import VideoOutputs, linear_probe
from fima.evaluation.linear_probe import (
    LinearProbeEvaluator,
    fit_linear_probe,
    probe_accuracy,
    probe_scores,
)
from tests.evaluation.helpers import classifier_cfg


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


def test_the_fit_minimises_the_penalised_loss() -> None:
    """The returned probe is where mean cross-entropy + wd * ||W||^2 is flat (the weight decay
    is the one given), and a larger weight decay gives smaller weights."""
    x, y, _ = _blobs(100, 3)
    norms = []
    for weight_decay in (1e-3, 1e-1):
        mean, std, weight, bias = fit_linear_probe(x, y, 4, weight_decay=weight_decay)
        weight, bias = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
        z = (x.double() - mean) / std
        loss = F.cross_entropy(z @ weight + bias, y) + weight_decay * weight.square().sum()
        loss.backward()
        # Flat to 1e-7 here; a fit that ignores the decay is off by 7e-3 (wd 1e-3) or more.
        assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4, weight_decay
        norms.append(float(weight.detach().norm()))
    assert norms[1] < norms[0]


def test_the_evaluator_fits_with_the_configs_weight_decay(tmp_path) -> None:
    x, y, _ = _blobs(40, 4)
    xt, yt, _ = _blobs(20, 5)

    def videos(features: torch.Tensor, labels: torch.Tensor) -> VideoOutputs:
        return VideoOutputs(
            indices=np.arange(len(labels)),
            labels=labels.numpy(),
            outputs={"feature": features.numpy()},
        )

    cfg = classifier_cfg(str(tmp_path), **{"TEST.LINEAR_PROBE.WEIGHT_DECAY": 0.37})
    evaluator = LinearProbeEvaluator(cfg)
    with (
        mock.patch.object(
            evaluator.features, "features", side_effect=[videos(x, y), videos(xt, yt)]
        ),
        mock.patch.object(linear_probe, "fit_linear_probe", wraps=fit_linear_probe) as fit,
    ):
        results = evaluator.evaluate(torch.nn.Identity())
    assert fit.call_count == 1 and fit.call_args.args[3] == 0.37
    assert results["linear_probe/top1"] > 90.0
