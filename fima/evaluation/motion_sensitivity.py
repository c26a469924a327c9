"""How much of a frozen feature is the video's static appearance, and how much its motion.

The motion benchmark's linear probe says whether features hold the motion classes; the first two
measurements say what the features hold instead, on the test split, without labels, and the third
how much of the class a single frame gives away:

- ``instance_R@1``: every video's first clip queries the last clips of all test videos (centred
  cosine similarity, as retrieval); the share that finds its own video. The clips are
  ``TEST.NUM_CLIPS`` uniformly spaced windows, so a feature that finds its video across time
  recognises what stays the same in it: on videos whose appearance is unique per video, the
  appearance. Chance is 1 / videos.
- ``frozen_similarity``: the cosine similarity of a clip's feature and the feature of the same clip
  with every frame replaced by its middle frame (no motion at all), both centred on the mean
  feature of the split's real clips, averaged over clips. 1 means the feature does not see the
  motion; lower values, that removing the motion moves it.
- ``static_top1``: the linear probe (``TEST.LINEAR_PROBE``, as ``linear_probe``) fit on the
  training videos' motion-frozen clips and scored on the test videos' motion-frozen clips: what
  the middle frames alone tell about the class. On data whose class is only in the motion it stays
  near chance for every model, whatever the features; well above chance, the dataset leaks the
  class through its appearance, and a linear probe of any model may be reading that. Reported
  only when every video of both splits has a label.

Instance contrast (MoCo) is expected to score high on the first two; a feature that has learnt
motion, lower on the second.
"""

from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from fima.checkpoint import atomic_write
from fima.config.config import CfgNode
from fima.evaluation.inference import infer_videos, log_bad_videos
from fima.evaluation.linear_probe import probe_accuracy
from fima.evaluation.results import reports_dir
from fima.evaluation.retrieval import recall_at_k
from fima.utils import comm

logger = logging.getLogger(__name__)


def freeze_motion(clips: torch.Tensor) -> torch.Tensor:
    """The clips with every frame replaced by the middle one: ``[..., 3, T, H, W]`` -> same."""
    middle = clips.shape[-3] // 2
    return clips[..., middle : middle + 1, :, :].expand_as(clips).contiguous()


def instance_recall(first: torch.Tensor, last: torch.Tensor) -> float:
    """Share (%) of videos whose first-clip feature has its own last-clip feature nearest.

    Args:
        first: ``[V, D]`` features of each video's first clip; last: ``[V, D]`` of its last.
    """
    # Retrieval's R@1 with every video its own class: a hit is the video's own last clip.
    videos = torch.arange(len(first))
    return recall_at_k(first, videos, last, videos, (1,), center=True)[1]


def frozen_similarity(real: torch.Tensor, frozen: torch.Tensor) -> float:
    """Mean cosine similarity of real and motion-frozen clip features, centred on the real mean.

    Args:
        real: ``[N, D]`` features of clips; frozen: ``[N, D]`` of the same clips, motion frozen.
    """
    centre = real.mean(dim=0, keepdim=True)
    return float(F.cosine_similarity(real - centre, frozen - centre, dim=1).mean())


class MotionSensitivityEvaluator:
    """``motion_sensitivity/instance_R@1``, ``frozen_similarity`` and ``static_top1`` of
    ``model.extract_features`` (all ranks; see the module doc).

    Args:
        cfg: the run's config (``TEST.NUM_CLIPS`` >= 2, ``DATA.TRAIN_SPLIT`` and
            ``DATA.TEST_SPLIT``, ``TEST.LINEAR_PROBE``, ``OUTPUT_DIR``).
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg

    def check(self, model: nn.Module) -> None:
        """Fail now if this evaluation could not run: both splits must build (labels are
        optional: without them there is no ``static_top1``)."""
        from fima.data.datasets import build_dataset

        for split in (self.cfg.DATA.TRAIN_SPLIT, self.cfg.DATA.TEST_SPLIT):
            build_dataset(self.cfg, split)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Run on every rank; return the metrics (identical on all ranks)."""
        from fima.data import build_test_loader

        def features(clips: torch.Tensor) -> dict[str, torch.Tensor]:
            flat = clips.flatten(0, 1)  # [b * K, 3, T, S, S]
            shape = (clips.shape[0], clips.shape[1], -1)
            return {
                "real": model.extract_features(flat).view(shape),
                "frozen": model.extract_features(freeze_motion(flat)).view(shape),
            }

        def frozen_features(clips: torch.Tensor) -> dict[str, torch.Tensor]:
            frozen = model.extract_features(freeze_motion(clips.flatten(0, 1)))
            return {"frozen": frozen.view(clips.shape[0], clips.shape[1], -1)}

        test_split, train_split = self.cfg.DATA.TEST_SPLIT, self.cfg.DATA.TRAIN_SPLIT
        videos = infer_videos(
            self.cfg, model, build_test_loader(self.cfg, test_split), features, "motion sensitivity"
        )
        log_bad_videos(videos.bad, test_split)
        real = torch.from_numpy(videos.outputs["real"])  # [V, K, D]
        frozen = torch.from_numpy(videos.outputs["frozen"])
        results = {
            "motion_sensitivity/instance_R@1": instance_recall(real[:, 0], real[:, -1]),
            "motion_sensitivity/frozen_similarity": frozen_similarity(
                real.flatten(0, 1), frozen.flatten(0, 1)
            ),
            "motion_sensitivity/num_videos": float(len(videos)),
        }
        # The training pass serves only the static probe, which needs labels on both splits.
        train = None
        if (videos.labels >= 0).all():
            train = infer_videos(
                self.cfg,
                model,
                build_test_loader(self.cfg, train_split),
                frozen_features,
                "motion-frozen training clips",
            )
            log_bad_videos(train.bad, train_split)
        if train is not None and (train.labels >= 0).all():
            # A video's static feature is the mean of its frozen clips' features, as a video's
            # feature is for the linear probe.
            results["motion_sensitivity/static_top1"], _ = probe_accuracy(
                torch.from_numpy(train.outputs["frozen"]).mean(dim=1),
                torch.from_numpy(train.labels),
                frozen.mean(dim=1),
                torch.from_numpy(videos.labels),
                self.cfg.TEST.LINEAR_PROBE.WEIGHT_DECAY,
            )
        else:
            logger.info("Motion sensitivity: unlabelled videos, so no static_top1")
        if comm.is_main_process():
            path = os.path.join(reports_dir(self.cfg.OUTPUT_DIR), "motion_sensitivity.json")
            report = {
                "metrics": results,
                "split": test_split,
                "train_split": train_split,
                "bad_videos": videos.bad,
                "train_bad_videos": train.bad if train is not None else [],
            }
            atomic_write(path, lambda f: json.dump(report, f, indent=1), mode="w")
        return results
