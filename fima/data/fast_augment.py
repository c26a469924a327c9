"""Faster steps for the device augmentation: kornia's colour jitter and Gaussian blur, same maths.

On a CPU two of kornia's steps cost most of the augmentation of a FIMA batch:

- ``ColorJitter``'s hue step converts to HSV and back through chains of full-size ``torch.where``
  selections; :func:`adjust_hue` computes the same rotation with the closed-form HSV to RGB
  formula, in a handful of passes over single-channel planes.
- ``RandomGaussianBlur`` convolves with one kernel per image (a depthwise convolution with
  ``groups = images x channels``, slow on CPUs); :func:`gaussian_blur2d` applies the same
  separable kernels, reflection padding included, as two batched matrix products with banded
  matrices, which the BLAS runs fast.

Everything else (parameter draws, probability gates, the random order of the colour steps,
clamping) is kornia's own: the classes below only swap these functions in.
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import torch
from kornia.filters import gaussian_blur2d as kornia_gaussian_blur2d
from kornia.filters.kernels import get_gaussian_kernel1d


def adjust_hue(image: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Rotate the HSV hue of RGB images by ``factor`` radians (``kornia.enhance.adjust_hue``).

    The HSV value (max) and saturation (range / max) are kept and the hue moves on the colour
    hexagon: output channel ``c`` is ``v - v * s * clamp(min(k_c, 4 - k_c), 0, 1)`` with
    ``k_c = (n_c + 6 * hue) mod 6`` and ``n = (5, 3, 1)`` for red, green, blue, which is the
    sextant table of the HSV to RGB conversion in closed form. Grey pixels stay grey.

    Args:
        image: ``[*, 3, H, W]`` RGB in [0, 1].
        factor: shift in radians, a float or ``[*]`` (one per image, broadcast over the rest).

    Returns:
        ``[*, 3, H, W]``, a new tensor.
    """
    if image.shape[-3] != 3:
        raise ValueError(f"adjust_hue needs RGB images [*, 3, H, W], got {tuple(image.shape)}")
    red, green, blue = image.unbind(dim=-3)
    value = image.amax(dim=-3)
    chroma = value - image.amin(dim=-3)
    # Hue in turns from the sextant of the largest channel (ties as torch.max: red, then green).
    safe_chroma = torch.where(chroma == 0, 1.0, chroma)
    sextant = torch.where(
        (red >= green) & (red >= blue),
        green - blue,
        torch.where(green >= blue, blue - red + 2.0 * chroma, red - green + 4.0 * chroma),
    )
    if isinstance(factor, torch.Tensor):
        factor = factor.to(image.dtype).reshape(*factor.shape, 1, 1)
    hue = sextant.div_(safe_chroma).div_(6.0).add_(factor / (2.0 * math.pi)).remainder_(1.0)
    # The reference formula scales the chroma by v / (v + eps) (its saturation's denominator).
    scaled = chroma.mul_(value / (value + 1e-8))
    hue6 = hue.mul_(6.0)
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (hue6 + offset).remainder_(6.0)
        weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        channels.append(value - scaled * weight)
    return torch.stack(channels, dim=-3)


class ColorJitter(K.ColorJitter):
    """``kornia.augmentation.ColorJitter`` with :func:`adjust_hue` as its hue step."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._hue_fn = adjust_hue


def reflect_blur_matrices(size: int, weights: torch.Tensor) -> torch.Tensor:
    """Banded matrices that filter a line of ``size`` samples with reflection padding.

    Args:
        size: samples per line (at least ``ksize // 2 + 1``, as reflection padding needs).
        weights: ``[N, ksize]`` 1-D kernels (odd ``ksize``).

    Returns:
        ``[N, size, size]``: row ``i`` holds the weights of output ``i``; taps beyond an edge fold
        back as ``F.pad(mode="reflect")`` does (index ``-1`` is ``1``, ``size`` is ``size - 2``).
    """
    count, ksize = weights.shape
    radius = ksize // 2
    taps = torch.arange(size, device=weights.device)[:, None] + torch.arange(
        -radius, radius + 1, device=weights.device
    )
    period = 2 * (size - 1)
    taps = taps.remainder(period) if period else torch.zeros_like(taps)
    taps = torch.where(taps >= size, period - taps, taps)  # [size, ksize]
    matrices = torch.zeros(count, size, size, device=weights.device, dtype=weights.dtype)
    return matrices.scatter_add_(
        2, taps.expand(count, size, ksize), weights[:, None, :].expand(count, size, ksize)
    )


def gaussian_blur2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    sigma: torch.Tensor | tuple[float, float],
    border_type: str = "reflect",
    separable: bool = True,
) -> torch.Tensor:
    """``kornia.filters.gaussian_blur2d`` as two banded matrix products (reflection padding).

    Other border types, non-float inputs and images too small to reflect go to kornia.

    Args:
        input: ``[B, C, H, W]`` float.
        kernel_size: ``(kH, kW)`` or one odd size for both.
        sigma: ``[B, 2]`` or ``[1, 2]`` as ``(sigma_y, sigma_x)``, or a pair of floats.

    Returns:
        ``[B, C, H, W]``.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    height, width = input.shape[-2:]
    if (
        border_type != "reflect"
        or not input.is_floating_point()
        or height <= kh // 2
        or width <= kw // 2
    ):
        return kornia_gaussian_blur2d(input, kernel_size, sigma, border_type, separable)
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor([sigma], device=input.device, dtype=torch.float32)
    sigma = sigma.to(device=input.device, dtype=torch.float32)
    rows = reflect_blur_matrices(height, get_gaussian_kernel1d(kh, sigma[:, :1]))
    cols = reflect_blur_matrices(width, get_gaussian_kernel1d(kw, sigma[:, 1:]))
    batch, channels = input.shape[:2]
    with torch.autocast(input.device.type, enabled=False):
        x = input.float().reshape(batch, channels * height, width)
        if sigma.shape[0] == 1:
            rows, cols = rows.expand(batch, -1, -1), cols.expand(batch, -1, -1)
        # Along W for all channels at once, then along H channel by channel.
        along_w = torch.bmm(x, cols.transpose(1, 2)).view(batch, channels, height, width)
        out = torch.stack([torch.bmm(rows, along_w[:, c]) for c in range(channels)], dim=1)
    return out.to(input.dtype)


class RandomGaussianBlur(K.RandomGaussianBlur):
    """``kornia.augmentation.RandomGaussianBlur`` with :func:`gaussian_blur2d` as its filter."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._gaussian_blur2d_fn = gaussian_blur2d
