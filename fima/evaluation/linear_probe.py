"""Linear probe on frozen video features: multinomial logistic regression, fit in one go.

The training videos' features (the same cached features as retrieval: the mean of ``TEST.NUM_CLIPS``
clips' (times ``TEST.NUM_SPATIAL_CROPS``) L2-normalised pooled backbone features) are standardised
with the training set's statistics; a softmax classifier with an L2 penalty is fit to them with
full-batch L-BFGS in float64, and the test videos are classified. Nothing is tuned on the test
split, no augmentation is involved and the fit is deterministic, so it measures what the frozen
features linearly encode with little noise and in seconds. It complements the paper's SGD linear
probe (``configs/Linear``), which trains the classifier on augmented clips for many epochs.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from fima.config.config import CfgNode
from fima.evaluation.retrieval import RetrievalEvaluator

logger = logging.getLogger(__name__)


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 500,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit a standardised softmax classifier.

    Args:
        features: ``[N, D]`` training features; labels: ``[N]`` in ``[0, num_classes)``.
        num_classes: the number of classes ``C``.
        weight_decay: the L2 penalty on the weights (mean loss + wd * ||W||^2).
        max_iter: L-BFGS iterations.

    Returns:
        ``mean [D]``, ``std [D]`` (the standardisation), ``weight [D, C]`` and ``bias [C]``.
    """
    x = features.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    target = labels.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, target) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return mean, std, weight.detach(), bias.detach()


def probe_scores(
    features: torch.Tensor, fitted: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Class scores ``[N, C]`` of ``features`` ``[N, D]`` under a fitted probe."""
    mean, std, weight, bias = fitted
    return ((features.double() - mean) / std) @ weight + bias


def probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decay: float,
) -> tuple[float, float]:
    """Top-1 and top-5 (%) on the test videos of a probe fit on the training videos.

    Args:
        train_features: ``[N, D]``, train_labels: ``[N]``; test_features: ``[M, D]``,
            test_labels: ``[M]``; classes are ``0 .. max label``.
        weight_decay: the probe's L2 penalty (:func:`fit_linear_probe`).
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fitted = fit_linear_probe(train_features, train_labels, num_classes, weight_decay)
    top = probe_scores(test_features, fitted).topk(min(5, num_classes), dim=1).indices
    top1 = 100.0 * float((top[:, 0] == test_labels).double().mean())
    top5 = 100.0 * float((top == test_labels[:, None]).any(dim=1).double().mean())
    return top1, top5


class LinearProbeEvaluator:
    """Top-1/top-5 of a logistic-regression probe on frozen video features (all ranks).

    Reuses :class:`RetrievalEvaluator`'s feature extraction and cache, so retrieval and the probe
    on one model cost a single pass over the videos.
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        self.features = RetrievalEvaluator(cfg)
        self.weight_decay = cfg.TEST.LINEAR_PROBE.WEIGHT_DECAY

    def check(self, model: nn.Module) -> None:
        """Fail now if the probe could not run: both splits labelled (as for retrieval)."""
        self.features.check(model)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Return ``{"linear_probe/top1", "linear_probe/top5"}`` in percent, and the number of
        videos left out as undecodable (``linear_probe/bad_videos``)."""
        train = self.features.features(model, self.cfg.DATA.TRAIN_SPLIT)
        test = self.features.features(model, self.cfg.DATA.TEST_SPLIT)
        top1, top5 = probe_accuracy(
            torch.from_numpy(train.outputs["feature"]),
            torch.from_numpy(train.labels),
            torch.from_numpy(test.outputs["feature"]),
            torch.from_numpy(test.labels),
            self.weight_decay,
        )
        logger.info(
            "Linear probe on %d training videos: top-1 %.2f, top-5 %.2f on %d test videos",
            len(train),
            top1,
            top5,
            len(test),
        )
        return {
            "linear_probe/top1": top1,
            "linear_probe/top5": top5,
            "linear_probe/bad_videos": float(len(train.bad) + len(test.bad)),
        }
