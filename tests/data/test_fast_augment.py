"""The fused clip augmentation gives what kornia's steps give, frame by frame."""

from __future__ import annotations

import math

import kornia
import pytest
import torch

from fima.data.fast_augment import (
    ClipAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_clips,
)


def _clips(seed: int = 0, count: int = 6, frames: int = 3) -> torch.Tensor:
    clips = torch.rand(count, 3, frames, 9, 11, generator=torch.Generator().manual_seed(seed))
    clips[0] = 0.5  # grey
    clips[1, :, :, :4] = 0.0  # black
    clips[2, 0] = clips[2, 1]  # red and green tie
    clips[3] = (clips[3] * 4).round() / 4  # many ties
    return clips


def _frames(clips: torch.Tensor) -> torch.Tensor:
    """``[N, 3, T, H, W]`` -> kornia's ``[N * T, 3, H, W]``."""
    return clips.transpose(1, 2).flatten(0, 1)


def _per_frame(values: torch.Tensor, frames: int) -> torch.Tensor:
    return values.repeat_interleave(frames)


def test_hue_matches_kornia() -> None:
    clips = _clips()
    frames = _frames(clips)
    factors = torch.linspace(-math.pi, math.pi, frames.shape[0])
    expected = kornia.enhance.adjust_hue(frames, factors)
    torch.testing.assert_close(adjust_hue(frames, factors), expected, atol=2e-6, rtol=0)
    clip_factors = torch.linspace(-3, 3, clips.shape[0])
    torch.testing.assert_close(
        _frames(adjust_hue(clips, clip_factors, dim=1)),
        kornia.enhance.adjust_hue(frames, _per_frame(clip_factors, 3)),
        atol=2e-6,
        rtol=0,
    )


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (adjust_brightness, kornia.enhance.adjust_brightness_accumulative),
        (adjust_contrast, kornia.enhance.adjust_contrast_with_mean_subtraction),
        (adjust_saturation, kornia.enhance.adjust_saturation_with_gray_subtraction),
    ],
)
def test_colour_steps_match_kornia(ours, theirs) -> None:
    clips = _clips(1)
    factors = torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4, 0.0])
    expected = theirs(_frames(clips), _per_frame(factors, 3))
    torch.testing.assert_close(_frames(ours(clips.clone(), factors)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kernel", "size"), [(11, (20, 17)), (5, (6, 6)), (3, (2, 9))])
def test_blur_matches_kornia(kernel: int, size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(2)
    clips = torch.rand(4, 3, 2, *size, generator=gen)
    sigma = 0.1 + 1.9 * torch.rand(4, generator=gen)
    expected = kornia.filters.gaussian_blur2d(
        _frames(clips), kernel, _per_frame(sigma, 2)[:, None].expand(-1, 2), "reflect"
    )
    torch.testing.assert_close(
        _frames(blur_clips(clips, kernel, sigma)), expected, atol=1e-6, rtol=0
    )


def naive_augmentation(clips: torch.Tensor, params: dict, kernel: int) -> torch.Tensor:
    """kornia's RandomGrayscale, ColorJitter and GaussianBlur, clip by clip on its frames."""
    steps = (
        kornia.enhance.adjust_brightness_accumulative,
        kornia.enhance.adjust_contrast_with_mean_subtraction,
        kornia.enhance.adjust_saturation_with_gray_subtraction,
        lambda x, f: kornia.enhance.adjust_hue(x, f * 2 * math.pi),
    )
    out = []
    for n, clip in enumerate(clips):
        frames = clip.transpose(0, 1)  # [T, 3, H, W]
        if params["grayscale"][n]:
            frames = kornia.color.rgb_to_grayscale(frames).expand(-1, 3, -1, -1)
        if params["jitter"][n]:
            frames = frames.clamp(0, 1)
            for step in params["order"].tolist():
                factor = params["factors"][step, n].repeat(frames.shape[0])
                frames = steps[step](frames, factor)
            frames = frames.clamp(0, 1)
        if params["blur"][n]:
            sigma = params["sigma"][n].repeat(frames.shape[0], 2)
            frames = kornia.filters.gaussian_blur2d(frames, kernel, sigma, "reflect")
        out.append(frames.transpose(0, 1))
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_augmentation_matches_kornia_steps(seed: int) -> None:
    augment = ClipAugmentation(0.3, (0.4, 0.4, 0.4, 0.1), 0.8, 5, (0.1, 2.0), 0.5)
    clips = _clips(seed, count=8)
    torch.manual_seed(seed)
    params = augment.sample(8, clips.device)
    before = clips.clone()
    out = augment(clips, params)
    assert torch.equal(clips, before)
    torch.testing.assert_close(out, naive_augmentation(clips, params, 5), atol=2e-6, rtol=0)
    # Laid out for channels-last encoders: the same values, a new tensor in that layout.
    laid_out = augment(clips, params, memory_format=torch.channels_last_3d)
    assert laid_out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(clips, before)
    torch.testing.assert_close(laid_out, out, atol=1e-6, rtol=0)


def test_draws_follow_the_probabilities_and_ranges() -> None:
    augment = ClipAugmentation(0.2, (0.4, 0.3, 0.2, 0.1), 0.8, 3, (0.1, 2.0), 0.5)
    torch.manual_seed(0)
    params = augment.sample(20000, torch.device("cpu"))
    for key, p in (("grayscale", 0.2), ("jitter", 0.8), ("blur", 0.5)):
        assert abs(params[key].float().mean().item() - p) < 0.02, key
    for factors, (low, high) in zip(
        params["factors"], ((0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1))
    ):
        assert low <= factors.min() and factors.max() <= high
        assert factors.min() < low + 0.01 and factors.max() > high - 0.01
    assert sorted(params["order"].tolist()) == [0, 1, 2, 3]
    assert params["sigma"].min() >= 0.1 and params["sigma"].max() <= 2.0


def test_neutral_steps_are_skipped() -> None:
    augment = ClipAugmentation(0.0, (0.4, 0.0, 0.0, 0.0), 1.0, 3, (1.0, 1.0), 0.0)
    clips = _clips(3)
    torch.manual_seed(0)
    params = augment.sample(clips.shape[0], clips.device)
    factor = params["factors"][0].view(-1, 1, 1, 1, 1)
    # Bit for bit: a contrast, saturation or hue step with its neutral factor would still
    # round (a hue shift of 0 goes to HSV and back).
    assert torch.equal(augment(clips, params), (clips * factor).clamp(0, 1))
