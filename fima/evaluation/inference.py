"""Running a model over every video of a split on all ranks, and gathering one result per video.

``build_test_loader`` gives each rank an interleaved share of the videos. :func:`infer_videos`
runs a function on the decodable videos of this rank's share, gathers every rank's outputs, and
keeps exactly one row per dataset index (sorted by index), so a video counts once whatever the
number of processes and whether or not it divides the number of videos. Videos that could not be
decoded are returned in ``bad`` (index, path, reason) and have no row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fima.config.config import CfgNode
from fima.data.datasets.build import VideoDataset
from fima.utils import comm
from fima.utils.progress import progress_bar

logger = logging.getLogger(__name__)

# fn(clips) -> {name: [b, ...]} for the b decodable videos of a batch, clips [b, K, 3, T, S, S].
VideoFunction = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class VideoOutputs:
    """Per-video results of one split, one row per decodable video, sorted by dataset index.

    Attributes:
        indices: dataset indices ``[V]``.
        labels: labels ``[V]``.
        outputs: each ``[V, ...]``, what the function returned for the video.
        bad: ``(index, path, reason)`` of every video that could not be decoded.
    """

    indices: np.ndarray
    labels: np.ndarray
    outputs: dict[str, np.ndarray]
    bad: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)


def labelled_dataset(cfg: CfgNode, split: str, purpose: str) -> VideoDataset:
    """``split``'s dataset, after checking that every video has a label, which ``purpose`` (the
    evaluation, for the message) needs.

    Raises:
        ConfigError: the split has videos without a label (the evaluation the config asks for
            cannot run on these data).
    """
    from fima.config.validation import ConfigError
    from fima.data.datasets import build_dataset

    dataset = build_dataset(cfg, split)
    unlabelled = sum(record.label < 0 for record in dataset.records)
    if unlabelled:
        key = "DATA.TEST_SPLIT" if split == cfg.DATA.TEST_SPLIT else "DATA.TRAIN_SPLIT"
        raise ConfigError(
            f"{purpose} needs labels, but {dataset!r} has {unlabelled} videos without a label; "
            f"label them, or name a labelled split in {key}"
        )
    return dataset


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


def autocast(cfg: CfgNode, device: torch.device) -> contextlib.AbstractContextManager:
    """The training run's mixed precision (``SOLVER.AMP``) for inference on ``device``."""
    from fima.engine.train_loop import resolve_amp

    enabled, dtype = resolve_amp(cfg.SOLVER.AMP, device.type)
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def restrict_loader(loader: DataLoader, keep: Iterable[int]) -> DataLoader:
    """A test loader of ``build_test_loader`` narrowed to the dataset indices in ``keep``.

    Each rank keeps its own share's videos that are in ``keep``, so the sharding stays as the
    loader made it.
    """
    shard = loader.dataset
    if not isinstance(shard, Subset):
        raise TypeError("restrict_loader expects a loader of build_test_loader (over a Subset)")
    wanted = {int(i) for i in keep}
    return DataLoader(
        Subset(shard.dataset, [i for i in shard.indices if int(i) in wanted]),
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
    )


@torch.no_grad()
def infer_videos(
    cfg: CfgNode, model: nn.Module, loader: DataLoader, fn: VideoFunction, desc: str
) -> VideoOutputs:
    """Run ``fn`` on every decodable video of ``loader`` (this rank's share), then gather.

    Runs on all ranks (it gathers); every rank returns the same :class:`VideoOutputs`.

    Args:
        cfg: for the mixed-precision settings.
        model: the model ``fn`` uses (for its device).
        loader: a ``build_test_loader`` loader: batches with ``global`` ``[B, K, 3, T, S, S]``,
            ``label``, ``index``, ``valid`` and ``bad_videos``.
        fn: maps the clips ``[b, K, 3, T, S, S]`` of the batch's decodable videos to a dict of
            per-video tensors ``[b, ...]``.
        desc: progress-bar label.

    Raises:
        RuntimeError: no video of the split could be decoded on any rank.
    """
    device = model_device(model)
    indices: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    outputs: dict[str, list[np.ndarray]] = {}
    bad: list[tuple[int, str, str]] = []
    for batch in progress_bar(loader, desc, total=len(loader)):
        valid = batch["valid"].bool()
        bad.extend(
            (int(index), path, reason)
            for index, (path, reason) in zip(batch["index"][~valid], batch["bad_videos"])
        )
        if not valid.any():
            continue
        with autocast(cfg, device):
            result = fn(batch["global"][valid])
        indices.append(batch["index"][valid].numpy())
        labels.append(batch["label"][valid].numpy())
        for name, value in result.items():
            outputs.setdefault(name, []).append(value.detach().float().cpu().numpy())
    local = (
        np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        {name: np.concatenate(parts) for name, parts in outputs.items()},
        bad,
    )
    return merge_video_outputs(comm.all_gather_object(local))


def merge_video_outputs(
    parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[tuple[int, str, str]]]],
) -> VideoOutputs:
    """Concatenate per-rank results and keep the first row of each dataset index.

    Args:
        parts: per rank ``(indices, labels, outputs, bad)`` as built in :func:`infer_videos`.
    """
    filled = [p for p in parts if len(p[0])]
    if not filled:
        raise RuntimeError("No video of the split could be decoded; see the warnings above")
    indices = np.concatenate([p[0] for p in filled]).astype(np.int64)
    labels = np.concatenate([p[1] for p in filled]).astype(np.int64)
    names = filled[0][2].keys()
    outputs = {name: np.concatenate([p[2][name] for p in filled]) for name in names}
    unique, first = np.unique(indices, return_index=True)
    duplicates = len(indices) - len(unique)
    if duplicates:
        logger.debug("Dropped %d duplicate video rows while gathering", duplicates)
    bad = sorted({item[0]: item for p in parts for item in p[3]}.values())
    return VideoOutputs(
        indices=unique,
        labels=labels[first],
        outputs={name: value[first] for name, value in outputs.items()},
        bad=bad,
    )


def video_features(model: nn.Module) -> VideoFunction:
    """``fn`` for :func:`infer_videos`: a video's feature is the mean of its clips' L2-normalised
    pooled backbone features (``model.extract_features``), ``{"feature": [b, C]}``."""

    def fn(clips: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = model.extract_features(clips.flatten(0, 1))
        return {"feature": feats.view(clips.shape[0], clips.shape[1], -1).mean(dim=1)}

    return fn


def log_bad_videos(bad: list[tuple[int, str, str]], split: str) -> None:
    """Warn about the videos left out of a split's metrics, naming a few."""
    if not bad:
        return
    shown = "; ".join(f"{path} ({reason})" for _, path, reason in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    logger.warning(
        "%d videos of the %s split could not be decoded and are excluded from its metrics: %s%s",
        len(bad),
        split,
        shown,
        more,
    )
