"""The faster hue and blur steps give kornia's results."""

from __future__ import annotations

import math

import kornia
import kornia.augmentation as K
import pytest
import torch

from fima.data.fast_augment import ColorJitter, RandomGaussianBlur, adjust_hue, gaussian_blur2d


def _images(seed: int = 0) -> torch.Tensor:
    images = torch.rand(12, 3, 9, 11, generator=torch.Generator().manual_seed(seed))
    images[0] = 0.5  # grey
    images[1, :, :4] = 0.0  # black
    images[2, 0] = images[2, 1]  # red and green tie
    images[3] = (images[3] * 4).round() / 4  # many ties
    images[4, :, 0, 0] = 1.0
    return images


def test_adjust_hue_matches_kornia() -> None:
    images = _images()
    factors = torch.linspace(-math.pi, math.pi, images.shape[0])
    torch.testing.assert_close(
        adjust_hue(images, factors), kornia.enhance.adjust_hue(images, factors), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        adjust_hue(images, 0.7), kornia.enhance.adjust_hue(images, 0.7), atol=2e-6, rtol=0
    )


def test_color_jitter_matches_kornia_with_the_same_draws() -> None:
    images = _images(1)
    reference = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    torch.manual_seed(0)
    expected = reference(images)
    ours = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    torch.testing.assert_close(ours(images, params=reference._params), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize(
    ("shape", "kernel", "sigmas"),
    [((5, 3, 20, 17), 11, 5), ((4, 2, 6, 6), 5, 4), ((2, 3, 32, 32), (3, 7), 1)],
)
def test_gaussian_blur_matches_kornia(shape, kernel, sigmas) -> None:
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(shape, generator=gen)
    sigma = 0.1 + 1.9 * torch.rand(sigmas, 2, generator=gen)
    expected = kornia.filters.gaussian_blur2d(images, kernel, sigma, "reflect", True)
    torch.testing.assert_close(gaussian_blur2d(images, kernel, sigma), expected, atol=1e-6, rtol=0)


def test_random_gaussian_blur_matches_kornia_with_the_same_draws() -> None:
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    reference = K.RandomGaussianBlur((5, 5), (0.1, 2.0), p=0.5)
    torch.manual_seed(0)
    expected = reference(images)
    ours = RandomGaussianBlur((5, 5), (0.1, 2.0), p=0.5)
    torch.testing.assert_close(ours(images, params=reference._params), expected, atol=1e-6, rtol=0)
