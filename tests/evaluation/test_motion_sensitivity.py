"""The appearance-against-motion measurements of frozen features (motion_sensitivity)."""

from __future__ import annotations

import pytest
import torch

from fima.config import ConfigError, validate_cfg
from fima.evaluation.motion_sensitivity import freeze_motion, frozen_similarity, instance_recall
from tests.evaluation.helpers import classifier_cfg


def test_freeze_motion_repeats_the_middle_frame_and_leaves_the_clips_alone() -> None:
    clips = torch.randint(0, 256, (2, 3, 3, 8, 4, 4), dtype=torch.uint8)  # [b, K, 3, T, H, W]
    original = clips.clone()
    frozen = freeze_motion(clips)
    assert frozen.shape == clips.shape and frozen.dtype == clips.dtype
    assert torch.equal(frozen, clips[..., 4:5, :, :].expand_as(clips))
    assert torch.equal(clips, original)


def test_instance_recall_finds_a_video_only_by_what_its_clips_share() -> None:
    torch.manual_seed(0)
    appearance = torch.randn(50, 16)
    drift = 0.1 * torch.randn(50, 16)
    assert instance_recall(appearance, appearance + drift) == 100.0
    # Last clips of other videos: no video finds its own.
    assert instance_recall(appearance, appearance.roll(1, dims=0)) == 0.0
    # Unrelated clips: near chance (1 in 50).
    assert instance_recall(appearance, torch.randn(50, 16)) < 20.0


def test_frozen_similarity_is_one_for_features_blind_to_motion_and_falls_with_motion() -> None:
    torch.manual_seed(0)
    real = torch.randn(200, 16)
    assert frozen_similarity(real, real) == pytest.approx(1.0)
    # Freezing the motion moves a motion feature to the mean: nothing of the clip is left.
    assert frozen_similarity(real, real.mean(dim=0, keepdim=True).expand_as(real)) == 0.0
    half = real.clone()
    half[:, 8:] = real[:, 8:].mean(dim=0)  # half of the feature was motion
    assert 0.5 < frozen_similarity(real, half) < 0.9


def test_one_clip_per_video_is_refused_naming_the_key() -> None:
    cfg = classifier_cfg(
        **{"TEST.EVALUATORS": ("linear_probe", "motion_sensitivity"), "TEST.NUM_CLIPS": 1}
    )
    with pytest.raises(ConfigError, match="TEST.NUM_CLIPS: must be >= 2"):
        validate_cfg(cfg)


def test_three_crops_are_refused_naming_the_key() -> None:
    cfg = classifier_cfg(
        **{"TEST.EVALUATORS": ("motion_sensitivity",), "TEST.NUM_SPATIAL_CROPS": 3}
    )
    with pytest.raises(ConfigError, match="TEST.NUM_SPATIAL_CROPS: must be 1 for the motion"):
        validate_cfg(cfg)
