"""Nearest-neighbour video retrieval: test videos query the training videos (RECIPE.md §9).

A video's feature is the mean of its ``TEST.NUM_CLIPS`` clips' (times ``TEST.NUM_SPATIAL_CROPS``)
L2-normalised pooled backbone features. Each set is centred on its own mean and re-normalised
(FAME's protocol, ``TEST.RETRIEVAL.CENTER``), then every test video ranks the training videos by
cosine similarity; R@k is the share of test videos with at least one training video of their class
among the k nearest. Features are cached in ``OUTPUT_DIR/features`` under a key made of the weights,
the settings that change a feature and the videos themselves (path, size, modification time), so a
second metric on the same model costs nothing and a changed model or config never reads stale
features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fima.checkpoint import atomic_write
from fima.config.config import CfgNode
from fima.evaluation.inference import (
    VideoOutputs,
    infer_videos,
    labelled_dataset,
    log_bad_videos,
    model_device,
    video_features,
)
from fima.evaluation.results import reports_dir
from fima.utils import comm

logger = logging.getLogger(__name__)

# Similarity rows computed at once: bounds the memory of a [rows, bank] matrix to ~256 MB.
_SIMILARITY_ELEMENTS = 1 << 26


def nearest_neighbours(
    queries: torch.Tensor, bank: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar bank rows of every query (dot product), in chunks of queries.

    Args:
        queries: ``[Q, D]``; bank: ``[N, D]``; ``k <= N``.

    Returns:
        Similarities and indices, both ``[Q, k]``, most similar first.
    """
    rows = max(1, _SIMILARITY_ELEMENTS // max(len(bank), 1))
    values, indices = [], []
    for chunk in queries.split(rows):
        top = (chunk @ bank.T).topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def recall_at_k(
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    bank_features: torch.Tensor,
    bank_labels: torch.Tensor,
    topk: Sequence[int],
    center: bool = True,
) -> dict[int, float]:
    """R@k in percent: the share of queries with a same-class bank entry among the k nearest.

    Args:
        query_features: ``[Q, D]``; query_labels: ``[Q]``.
        bank_features: ``[N, D]``; bank_labels: ``[N]``.
        topk: the k to report; a k larger than N is computed as N.
        center: subtract each set's mean before normalising (FAME).
    """
    queries, bank = query_features.float(), bank_features.float()
    if center:
        queries = queries - queries.mean(dim=0, keepdim=True)
        bank = bank - bank.mean(dim=0, keepdim=True)
    queries, bank = F.normalize(queries, dim=1), F.normalize(bank, dim=1)
    largest = min(max(topk), len(bank))
    _, neighbours = nearest_neighbours(queries, bank, largest)
    hits = bank_labels[neighbours] == query_labels[:, None]  # [Q, largest]
    first_hit = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), largest)
    return {k: 100.0 * float((first_hit < min(k, len(bank))).float().mean()) for k in topk}


def _update_with_state(digest: Any, model: nn.Module) -> None:
    # The tensors that extract_features reads, where the model says (a classifier's backbone:
    # its head, which a linear probe trains between evaluations, changes no feature).
    state = getattr(model, "feature_state_dict", model.state_dict)()
    for name, tensor in state.items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def feature_cache_key(cfg: CfgNode, model: nn.Module, split: str) -> str:
    """A key that changes with the weights, the settings that change a feature, and the videos.

    Hashes every tensor of ``model``'s state (of ``model.feature_state_dict()``, the part that
    ``extract_features`` reads, where the model defines it), ``MODEL``, ``INPUT``, ``DATA`` (but
    its number of workers and bad-video budget), ``TEST.NUM_CLIPS`` and ``NUM_SPATIAL_CROPS``,
    the precision that ``SOLVER.AMP`` computes in on the model's device, the split, and every
    video's path, label, size and modification time.
    """
    from fima.data.datasets import build_dataset
    from fima.engine.train_loop import describe_amp

    digest = hashlib.sha256()
    _update_with_state(digest, model)
    settings = cfg.clone()
    settings.defrost()
    data = settings.DATA
    for key in ("NUM_WORKERS", "MAX_BAD_FRACTION", "DECODE_RETRIES"):
        data.pop(key)
    relevant = {
        "MODEL": settings.MODEL,
        "INPUT": settings.INPUT,
        "DATA": data,
        "NUM_CLIPS": settings.TEST.NUM_CLIPS,
        "NUM_SPATIAL_CROPS": settings.TEST.NUM_SPATIAL_CROPS,
        # As it resolves on the model's device: "auto" computes in bfloat16 on a CPU and in
        # float16 on a GPU, and a CPU without native bfloat16 computes in float32.
        "AMP": describe_amp(settings.SOLVER.AMP, model_device(model).type),
        "split": split,
    }
    digest.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    for record in build_dataset(cfg, split).records:
        try:
            stat = os.stat(record.path)
            seen = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            seen = "missing"
        digest.update(f"{record.path}\t{record.label}\t{seen}\n".encode())
    return digest.hexdigest()[:20]


def _to_payload(videos: VideoOutputs) -> dict:
    return {
        "indices": torch.from_numpy(videos.indices),
        "labels": torch.from_numpy(videos.labels),
        "features": torch.from_numpy(videos.outputs["feature"]),
        "bad": [list(item) for item in videos.bad],
    }


def _from_payload(payload: dict) -> VideoOutputs:
    return VideoOutputs(
        indices=payload["indices"].numpy(),
        labels=payload["labels"].numpy(),
        outputs={"feature": payload["features"].numpy()},
        bad=[(int(i), str(p), str(r)) for i, p, r in payload["bad"]],
    )


def _read_cached_features(path: str) -> VideoOutputs | None:
    """The features cached in ``path``, or None when there are none or they cannot be read (a
    file cut short by a full disk, or damaged): those are computed again and replace it."""
    if not os.path.isfile(path):
        return None
    try:
        return _from_payload(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # torch.load's errors for a damaged file are of many kinds
        logger.warning(
            "Cannot read the cached features %s (%s: %s): computing them again",
            path,
            type(err).__name__,
            err,
        )
        return None


class RetrievalEvaluator:
    """R@k of test videos querying training videos with ``model.extract_features`` (all ranks).

    Args:
        cfg: the run's config (``TEST.RETRIEVAL``, ``TEST.NUM_CLIPS``, splits, ``OUTPUT_DIR``).
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        options = cfg.TEST.RETRIEVAL
        self.topk = tuple(options.TOPK)
        self.center = options.CENTER
        self.cache = options.CACHE_FEATURES
        self.cache_dir = os.path.join(cfg.OUTPUT_DIR, "features")
        self._loaders: dict[str, object] = {}

    def check(self, model: nn.Module) -> None:
        """Fail now if retrieval could not run: both splits must build, every video labelled
        (a training run and ``--eval-only`` call this before anything runs)."""
        for split in (self.cfg.DATA.TRAIN_SPLIT, self.cfg.DATA.TEST_SPLIT):
            labelled_dataset(self.cfg, split, type(self).__name__)

    def features(self, model: nn.Module, split: str) -> VideoOutputs:
        """Video features of ``split``, from the cache when it holds them for this model."""
        from fima.data import build_test_loader

        path = ""
        if self.cache:
            key = feature_cache_key(self.cfg, model, split)
            path = os.path.join(self.cache_dir, f"{split}-{key}.pt")
            # Rank 0 reads and shares, so ranks without the output dir agree with it.
            cached = comm.broadcast_object(
                _read_cached_features(path) if comm.is_main_process() else None
            )
            if cached is not None:
                logger.info("Retrieval features of the %s split read from %s", split, path)
                return cached
        if split not in self._loaders:
            self._loaders[split] = build_test_loader(self.cfg, split)
        videos = infer_videos(
            self.cfg, model, self._loaders[split], video_features(model), desc=f"{split} features"
        )
        if path and comm.is_main_process():
            payload = _to_payload(videos)
            atomic_write(path, lambda f: torch.save(payload, f))
            logger.info("Retrieval features of the %s split cached in %s", split, path)
        return videos

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Run on every rank; return ``{"retrieval/R@k": percent}`` and the counts of videos
        (identical on all ranks)."""
        bank = self.features(model, self.cfg.DATA.TRAIN_SPLIT)
        queries = self.features(model, self.cfg.DATA.TEST_SPLIT)
        log_bad_videos(bank.bad, self.cfg.DATA.TRAIN_SPLIT)
        log_bad_videos(queries.bad, self.cfg.DATA.TEST_SPLIT)
        if self.center and min(len(bank), len(queries)) < 2:
            from fima.config.validation import ConfigError

            # Centred on its own mean, a set of one video is a zero vector: every similarity
            # would be 0 and the neighbours the first training videos, whatever the features.
            raise ConfigError(
                f"TEST.RETRIEVAL.CENTER: {len(bank)} training and {len(queries)} test videos "
                "were decoded, but centring each set on its own mean needs at least 2 in each; "
                "use more videos or set TEST.RETRIEVAL.CENTER False"
            )
        if max(self.topk) > len(bank):
            logger.warning(
                "R@k for k > %d training videos is computed with k = %d", len(bank), len(bank)
            )
        recalls = recall_at_k(
            torch.from_numpy(queries.outputs["feature"]),
            torch.from_numpy(queries.labels),
            torch.from_numpy(bank.outputs["feature"]),
            torch.from_numpy(bank.labels),
            self.topk,
            center=self.center,
        )
        results = {f"retrieval/R@{k}": value for k, value in recalls.items()}
        results["retrieval/num_queries"] = float(len(queries))
        results["retrieval/num_train"] = float(len(bank))
        results["retrieval/bad_videos"] = float(len(bank.bad) + len(queries.bad))
        if comm.is_main_process():
            report = {
                "metrics": results,
                "train_split": self.cfg.DATA.TRAIN_SPLIT,
                "test_split": self.cfg.DATA.TEST_SPLIT,
                "center": self.center,
                "bad_videos": [
                    {"split": split, "index": i, "path": p, "reason": r}
                    for split, videos in (
                        (self.cfg.DATA.TRAIN_SPLIT, bank),
                        (self.cfg.DATA.TEST_SPLIT, queries),
                    )
                    for i, p, r in videos.bad
                ],
            }
            path = os.path.join(reports_dir(self.cfg.OUTPUT_DIR), "retrieval.json")
            atomic_write(path, lambda f: json.dump(report, f, indent=1), mode="w")
        return results
