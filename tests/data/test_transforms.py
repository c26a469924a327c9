"""CPU crops with boxes (RECIPE.md §1), flips, test crops, device augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fima.data.transforms import (
    VideoAugmentation,
    blur_kernel_size,
    crop_box,
    random_crop_flip,
    random_resized_crop_params,
    resized_crop,
    spatial_crops,
)
from tests.conftest import tiny_cfg


def test_crop_box_formula() -> None:
    box = crop_box(top=10, left=20, h=30, w=40, height=101, width=201)
    expected = [20 / 200, 10 / 100, (20 + 40 - 1) / 200, (10 + 30 - 1) / 100]
    torch.testing.assert_close(box, torch.tensor(expected))


def test_random_crop_params_stay_inside_and_respect_scale() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(96, 128, (0.2, 1.0), (3 / 4, 4 / 3), rng)
        assert top >= 0 and top + h <= 96 and left >= 0 and left + w <= 128
        assert h * w >= 0.2 * 96 * 128 * 0.9


def test_random_crop_params_fall_back_to_a_centre_crop_in_the_ratio_range() -> None:
    """No area fraction in ``scale`` fits (as torchvision): the centre crop, its aspect ratio
    clamped to ``ratio``."""
    rng = np.random.default_rng(0)
    # A frame 4:1, wider than 4/3: full height, 4/3 of it wide, centred.
    assert random_resized_crop_params(100, 400, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (
        0,
        133,
        100,
        133,
    )
    # A frame 1:4, taller than 3/4: full width, 4/3 of it high.
    assert random_resized_crop_params(400, 100, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (
        133,
        0,
        133,
        100,
    )
    # Within the range: the whole frame.
    assert random_resized_crop_params(90, 100, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (0, 0, 90, 100)


def test_flip_swaps_x1_and_x2_and_mirrors_pixels() -> None:
    cfg = tiny_cfg(
        **{
            "INPUT.FLIP_PROB": 1.0,
            "INPUT.CROP_SCALE": (1.0, 1.0),
            "INPUT.CROP_RATIO": (4 / 3, 4 / 3),
        }
    )
    frames = torch.randint(0, 255, (8, 48, 64, 3), dtype=torch.uint8)
    clip, box = random_crop_flip(frames, cfg, np.random.default_rng(0))
    assert box[0] > box[2]
    unflipped = resized_crop(frames, 0, 0, 48, 64, cfg.INPUT.CROP_SIZE)
    assert torch.equal(clip, unflipped.flip(-1))
    torch.testing.assert_close(box, torch.tensor([1.0, 0.0, 0.0, 1.0]))


def test_center_crop_shape_and_position() -> None:
    cfg = tiny_cfg()
    frames = torch.zeros(8, 48, 64, 3, dtype=torch.uint8)
    frames[:, 20:28, 28:36] = 255
    clip = spatial_crops(frames, cfg)
    assert clip.shape == (1, 3, 8, 32, 32)
    assert clip[0, :, :, 14:18, 14:18].float().mean() > 200  # the bright centre stays centred


@pytest.mark.parametrize("portrait", [False, True])
def test_three_crops_take_both_ends_and_the_centre_of_the_long_side(portrait: bool) -> None:
    cfg = tiny_cfg(**{"INPUT.TEST_CROP_FRACTION": 1.0})
    frames = torch.zeros(2, 32, 64, 3, dtype=torch.uint8)
    frames[..., 0] = torch.arange(64, dtype=torch.uint8) * 4  # red grows along the long side
    if portrait:
        frames = frames.transpose(1, 2)
    crops = spatial_crops(frames, cfg, num_crops=3)
    assert crops.shape == (3, 3, 2, 32, 32)
    # 32-pixel squares starting at 0, 16 and 32 of the 64: mean red 62, 126 and 190.
    red = crops[:, 0].float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(red, torch.tensor([62.0, 126.0, 190.0]))
    assert torch.equal(crops[1], spatial_crops(frames, cfg)[0])
    with pytest.raises(ValueError, match="num_crops must be 1 or 3"):
        spatial_crops(frames, cfg, num_crops=2)


def test_blur_kernel_is_odd_and_scaled() -> None:
    assert blur_kernel_size(tiny_cfg(**{"INPUT.CROP_SIZE": 224})) == 23
    assert blur_kernel_size(tiny_cfg(**{"INPUT.CROP_SIZE": 112})) == 11
    assert blur_kernel_size(tiny_cfg(**{"INPUT.CROP_SIZE": 16})) == 3


def test_augmentation_is_shared_by_the_frames_of_a_clip() -> None:
    cfg = tiny_cfg(**{"INPUT.AUG.BLUR_PROB": 0.0})
    aug = VideoAugmentation(cfg)
    frame = torch.rand(1, 3, 1, 32, 32)
    clips = frame.repeat(6, 1, 4, 1, 1)  # six clips of four identical frames
    torch.manual_seed(0)
    out = aug(clips)
    assert out.shape == clips.shape
    for clip in out:
        for t in range(1, 4):
            torch.testing.assert_close(clip[:, t], clip[:, 0])
    assert not torch.allclose(out[0], out[1])  # but clips get their own draws


def test_reference_blur_sigma_is_fixed_per_model() -> None:
    cfg = tiny_cfg(**{"INPUT.AUG.BLUR_SIGMA_PER_CLIP": False})
    aug = VideoAugmentation(cfg)
    low, high = aug.augment.blur_sigma  # the range sigma is drawn from
    assert float(low) == float(high)
    # Drawn from SEED: a resumed run (a model built again) blurs with the same sigma.
    assert VideoAugmentation(cfg).augment.blur_sigma == (low, high)
    other = VideoAugmentation(tiny_cfg(**{"INPUT.AUG.BLUR_SIGMA_PER_CLIP": False, "SEED": 1}))
    assert other.augment.blur_sigma != (low, high)


@pytest.mark.parametrize("grayscale_prob", [0.0, 1.0])
def test_grayscale_probability_comes_from_the_config(grayscale_prob: float) -> None:
    cfg = tiny_cfg(
        **{
            "INPUT.AUG.GRAYSCALE_PROB": grayscale_prob,
            "INPUT.AUG.COLOR_JITTER_PROB": 0.0,
            "INPUT.AUG.BLUR_PROB": 0.0,
        }
    )
    aug = VideoAugmentation(cfg)
    clips = torch.rand(4, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    rgb = aug(clips) * aug.std + aug.mean  # undo the normalisation
    gray = torch.isclose(rgb[:, 0], rgb[:, 1], atol=1e-5) & torch.isclose(
        rgb[:, 1], rgb[:, 2], atol=1e-5
    )
    assert bool(gray.all()) == (grayscale_prob == 1.0)
    if grayscale_prob == 0.0:
        torch.testing.assert_close(rgb, clips)


@pytest.mark.parametrize("channels_last", [True, False])
def test_augmentation_writes_the_encoders_layout(channels_last: bool) -> None:
    aug = VideoAugmentation(tiny_cfg(**{"MODEL.CHANNELS_LAST": channels_last}))
    clips = torch.rand(3, 3, 4, 16, 16)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    normalised = aug.normalize(clips)
    assert normalised.is_contiguous(memory_format=layout)
    torch.testing.assert_close(normalised, (clips - aug.mean) / aug.std)
    assert aug(clips).is_contiguous(memory_format=layout)


def test_augmentation_runs_in_float32_under_the_trainers_autocast() -> None:
    # A method of one's own calls VideoAugmentation inside its forward, which the trainer runs
    # under bf16 autocast: the augmentation must come out as without autocast (float32, the
    # same draws), not fail on bf16 intermediates.
    cfg = tiny_cfg(
        **{
            "INPUT.AUG.GRAYSCALE_PROB": 1.0,
            "INPUT.AUG.COLOR_JITTER_PROB": 1.0,
            "INPUT.AUG.BLUR_PROB": 1.0,
        }
    )
    aug = VideoAugmentation(cfg)
    clips = torch.rand(4, 3, 4, 16, 16)
    torch.manual_seed(0)
    expected = aug(clips)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(clips)
        normalised = aug.normalize(clips)
    assert out.dtype == normalised.dtype == torch.float32
    torch.testing.assert_close(out, expected)
