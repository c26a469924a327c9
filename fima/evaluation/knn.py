"""The online weighted-kNN monitor of a pretraining run (Wu et al., 2018, "InstDisc").

Every ``TEST.EVAL_PERIOD`` iterations (through the trainer's ``EvalHook``) the query encoder
embeds a fixed subset of labelled training videos (the memory bank) and of test videos (the
queries); each query takes the ``TEST.KNN.K`` most similar bank videos by cosine similarity, each
voting for its class with weight ``exp(similarity / TEST.KNN.TEMPERATURE)``. ``knn/top1`` is the
share of queries whose top-voted class is theirs, in percent; the trainer's writers put it into
``metrics.json`` and TensorBoard as a curve.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fima.config.config import CfgNode
from fima.evaluation.inference import (
    VideoOutputs,
    infer_videos,
    labelled_dataset,
    log_bad_videos,
    restrict_loader,
    video_features,
)
from fima.evaluation.retrieval import nearest_neighbours

logger = logging.getLogger(__name__)


def weighted_knn_predict(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> torch.Tensor:
    """Class votes ``[Q, num_classes]`` of each query's ``k`` nearest bank entries.

    Args:
        queries: ``[Q, D]``; bank: ``[N, D]`` (both L2-normalised here).
        bank_labels: ``[N]`` in ``[0, num_classes)``.
        k: neighbours (at most N are used).
        temperature: vote weight ``exp(cosine / temperature)``.
    """
    queries, bank = F.normalize(queries.float(), dim=1), F.normalize(bank.float(), dim=1)
    similarity, neighbours = nearest_neighbours(queries, bank, min(k, len(bank)))
    weights = (similarity / temperature).exp()
    votes = torch.zeros(len(queries), num_classes, dtype=weights.dtype)
    return votes.scatter_add_(1, bank_labels[neighbours], weights)


def subset_indices(size: int, count: int, seed: int) -> np.ndarray:
    """``count`` dataset indices out of ``size`` drawn with ``seed`` (all of them if 0)."""
    if count <= 0 or count >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).permutation(size)[:count])


class KNNEvaluator:
    """Weighted-kNN top-1 of ``model.extract_features`` (runs on all ranks; features gathered).

    Args:
        cfg: the pretraining config (``TEST.KNN``, ``DATA.TRAIN_SPLIT``, ``DATA.TEST_SPLIT``).
    """

    def __init__(self, cfg: CfgNode) -> None:
        knn = cfg.TEST.KNN
        self.cfg = cfg.clone()
        self.cfg.defrost()
        self.cfg.TEST.NUM_CLIPS = knn.NUM_CLIPS
        # A monitor, cheap by design: the centre crop of each clip.
        self.cfg.TEST.NUM_SPATIAL_CROPS = 1
        self.cfg.freeze()
        self.k = knn.K
        self.temperature = knn.TEMPERATURE
        # Videos used of each split (0: all) and the seed of their draw.
        self.subsets = {
            cfg.DATA.TRAIN_SPLIT: (knn.NUM_TRAIN, 0),
            cfg.DATA.TEST_SPLIT: (knn.NUM_TEST, 1),
        }
        self._loaders: dict[str, object] = {}
        self.num_classes = 0

    def _loader(self, split: str) -> object:
        from fima.data import build_test_loader
        from fima.data.datasets import build_dataset

        if split not in self._loaders:
            dataset = build_dataset(self.cfg, split)
            self.num_classes = max(self.num_classes, dataset.num_classes)
            count, seed = self.subsets[split]
            keep = subset_indices(len(dataset), count, seed)
            self._loaders[split] = restrict_loader(build_test_loader(self.cfg, split), keep)
            logger.info(
                "kNN monitor: %d of %d videos of the %s split", len(keep), len(dataset), split
            )
        return self._loaders[split]

    def check(self, model: nn.Module) -> None:
        """Fail now if the monitor could not run: both splits must build, every video labelled
        (a pretraining run calls this at start-up, not at its first evaluation)."""
        for split in self.subsets:
            labelled_dataset(self.cfg, split, "The kNN monitor (TEST.KNN.ENABLED)")

    def _embed(self, model: nn.Module, split: str) -> VideoOutputs:
        videos = infer_videos(
            self.cfg, model, self._loader(split), video_features(model), desc=f"kNN {split}"
        )
        log_bad_videos(videos.bad, split)
        return videos

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Embed the bank and the queries, classify the queries; ``{"knn/top1": percent}``."""
        bank = self._embed(model, self.cfg.DATA.TRAIN_SPLIT)
        queries = self._embed(model, self.cfg.DATA.TEST_SPLIT)
        votes = weighted_knn_predict(
            torch.from_numpy(queries.outputs["feature"]),
            torch.from_numpy(bank.outputs["feature"]),
            torch.from_numpy(bank.labels),
            self.num_classes,
            self.k,
            self.temperature,
        )
        correct = votes.argmax(dim=1).numpy() == queries.labels
        return {"knn/top1": 100.0 * float(correct.mean())}
