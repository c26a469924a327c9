"""The device augmentation of whole clips, fused: kornia's colour and blur steps, same maths.

:class:`ClipAugmentation` does what ``kornia.augmentation.VideoSequential(RandomGrayscale,
ColorJitter, RandomGaussianBlur, same_on_frame=True)`` does to a ``[N, 3, T, H, W]`` batch (one
draw of parameters per clip, shared by all its frames; torchvision's formulas, as kornia's
``ColorJitter`` implements them), at a fraction of the cost on a CPU, where a FIMA step augments
four times as many clips as it has videos:

- it works on the ``[N, 3, T, H, W]`` layout as it is (no reshuffling to frames and back) and on
  the drawn clips only, mostly in place;
- the hue step (:func:`adjust_hue`) computes the HSV rotation with the closed-form HSV to RGB
  formula instead of chains of full-size ``torch.where`` selections;
- the Gaussian blur (:func:`blur_clips`) applies the separable kernels, reflection padding
  included, as batched matrix products with banded matrices instead of a depthwise convolution
  with one group per image and channel.

Draws use the torch RNG of the input's device, except the order of the colour-jitter steps,
which is drawn from the CPU generator.
"""

from __future__ import annotations

import math

import torch
from kornia.filters.kernels import get_gaussian_kernel1d
from torch import nn

# ITU-R 601 luma weights, as kornia's rgb_to_grayscale.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _per_clip(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[N]`` -> ``[N, 1, ...]`` broadcastable against an ``ndim``-dimensional batch."""
    return values.reshape(-1, *([1] * (ndim - 1)))


def grayscale(clips: torch.Tensor) -> torch.Tensor:
    """Luma of RGB clips (ITU-R 601 weights).

    Args:
        clips: ``[N, 3, ...]`` (e.g. ``[N, 3, T, H, W]``).

    Returns:
        ``[N, 1, ...]``, a new tensor.
    """
    red, green, blue = clips.unbind(dim=1)
    gray = red * GRAY_WEIGHTS[0]
    return gray.add_(green, alpha=GRAY_WEIGHTS[1]).add_(blue, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def adjust_brightness(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(x * factor, 0, 1)``, in place.

    Args:
        clips: ``[N, 3, ...]`` in [0, 1]; overwritten.
        factor: ``[N]``, one per clip.

    Returns:
        ``clips`` itself.
    """
    return clips.mul_(_per_clip(factor, clips.dim())).clamp_(0.0, 1.0)


def adjust_contrast(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each frame with the mean of its luma, clamped to [0, 1], in place.

    Args:
        clips: ``[N, 3, T, H, W]`` in [0, 1]; overwritten.
        factor: ``[N]``, one per clip (1 keeps the clip, 0 gives the grey mean).

    Returns:
        ``clips`` itself.
    """
    factor = _per_clip(factor, clips.dim())
    mean = grayscale(clips).mean(dim=(-2, -1), keepdim=True)  # per frame, [N, 1, T, 1, 1]
    return clips.mul_(factor).add_(mean * (1.0 - factor)).clamp_(0.0, 1.0)


def adjust_saturation(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the per-pixel luma, clamped to [0, 1], in place.

    Args:
        clips: ``[N, 3, ...]`` in [0, 1]; overwritten.
        factor: ``[N]``, one per clip (1 keeps the clip, 0 gives its luma).

    Returns:
        ``clips`` itself.
    """
    factor = _per_clip(factor, clips.dim())
    gray = grayscale(clips).mul_(1.0 - factor)
    return clips.mul_(factor).add_(gray).clamp_(0.0, 1.0)


def adjust_hue(image: torch.Tensor, factor: torch.Tensor | float, dim: int = -3) -> torch.Tensor:
    """Rotate the HSV hue of RGB images by ``factor`` radians (``kornia.enhance.adjust_hue``).

    The HSV value (max) and saturation (range / max) are kept and the hue moves on the colour
    hexagon: output channel ``c`` is ``v - v * s * clamp(min(k_c, 4 - k_c), 0, 1)`` with
    ``k_c = (n_c + 6 * hue) mod 6`` and ``n = (5, 3, 1)`` for red, green, blue, which is the
    sextant table of the HSV to RGB conversion in closed form. Grey pixels stay grey.

    Args:
        image: RGB in [0, 1] with its 3 channels at ``dim`` (``[*, 3, H, W]`` by default).
        factor: shift in radians, a float or one per leading index (``[N]`` for ``[N, 3, ...]``).
        dim: the channel dimension.

    Returns:
        A new tensor of ``image``'s shape.
    """
    if image.shape[dim] != 3:
        raise ValueError(f"adjust_hue needs 3 channels at dim {dim}, got {tuple(image.shape)}")
    red, green, blue = image.unbind(dim=dim)
    value = image.amax(dim=dim)
    chroma = value - image.amin(dim=dim)
    # Hue in turns from the sextant of the largest channel (ties as torch.max: red, then green).
    safe_chroma = torch.where(chroma == 0, 1.0, chroma)
    sextant = torch.where(
        (red >= green) & (red >= blue),
        green - blue,
        torch.where(green >= blue, blue - red + 2.0 * chroma, red - green + 4.0 * chroma),
    )
    if isinstance(factor, torch.Tensor):
        factor = factor.to(image.dtype).reshape(
            *factor.shape, *([1] * (value.dim() - factor.dim()))
        )
    hue = sextant.div_(safe_chroma).div_(6.0).add_(factor / (2.0 * math.pi)).remainder_(1.0)
    # kornia's saturation divides the range by max + 1e-8.
    scaled = chroma.mul_(value / (value + 1e-8))
    hue6 = hue.mul_(6.0)
    out = torch.empty_like(image)
    for channel, offset in enumerate((5.0, 3.0, 1.0)):
        k = (hue6 + offset).remainder_(6.0)
        weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(value, weight.mul_(scaled), out=out.select(dim, channel))
    return out


def reflect_blur_matrices(size: int, weights: torch.Tensor) -> torch.Tensor:
    """Banded matrices that filter a line of ``size`` samples with reflection padding.

    Args:
        size: samples per line (more than ``ksize // 2``, as reflection padding needs).
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


def blur_clips(clips: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of every frame of each clip with the clip's sigma (reflection padding).

    The same as ``kornia.filters.gaussian_blur2d(frames, kernel_size, sigma, "reflect")`` on the
    clip's frames, as two batched matrix products with banded matrices.

    Args:
        clips: ``[N, C, T, H, W]`` float with ``H, W > kernel_size // 2``.
        kernel_size: odd kernel side.
        sigma: ``[N]`` standard deviations.

    Returns:
        A new ``[N, C, T, H, W]`` tensor.
    """
    count, height, width = clips.shape[0], clips.shape[-2], clips.shape[-1]
    kernels = get_gaussian_kernel1d(kernel_size, sigma.float()[:, None])
    rows = reflect_blur_matrices(height, kernels)
    cols = reflect_blur_matrices(width, kernels)
    planes = clips.reshape(count, -1, height, width)
    along_w = torch.bmm(planes.reshape(count, -1, width), cols.transpose(1, 2))
    along_w = along_w.view(count, -1, height, width)
    # Along H plane by plane, which needs no transposed copy of the clips.
    out = torch.stack([torch.bmm(rows, along_w[:, p]) for p in range(along_w.shape[1])], dim=1)
    return out.view(clips.shape)


class ClipAugmentation(nn.Module):
    """Random grayscale, colour jitter and Gaussian blur of clips, one draw per clip.

    Args:
        grayscale_prob: probability of replacing a clip by its luma (3 equal channels).
        color_jitter: ``(brightness, contrast, saturation, hue)``: factors drawn from
            ``[max(0, 1 - b), 1 + b]`` etc. and a hue shift from ``[-hue, hue]`` turns, applied
            in a random order drawn per call (as kornia's ``ColorJitter``), with clamping to [0, 1].
        color_jitter_prob: probability of jittering a clip.
        blur_kernel: odd side of the Gaussian kernel.
        blur_sigma: ``(min, max)`` of the uniformly drawn sigma.
        blur_prob: probability of blurring a clip.
    """

    def __init__(
        self,
        grayscale_prob: float,
        color_jitter: tuple[float, float, float, float],
        color_jitter_prob: float,
        blur_kernel: int,
        blur_sigma: tuple[float, float],
        blur_prob: float,
    ) -> None:
        super().__init__()
        self.grayscale_prob = grayscale_prob
        brightness, contrast, saturation, hue = color_jitter
        self.jitter_ranges = [
            (max(0.0, 1.0 - brightness), 1.0 + brightness),
            (max(0.0, 1.0 - contrast), 1.0 + contrast),
            (max(0.0, 1.0 - saturation), 1.0 + saturation),
            (-hue, hue),
        ]
        # A step whose factor can only be neutral is skipped (as kornia does).
        neutral = (1.0, 1.0, 1.0, 0.0)
        self.jitter_steps = {
            step for step, bounds in enumerate(self.jitter_ranges) if bounds != (neutral[step],) * 2
        }
        self.color_jitter_prob = color_jitter_prob
        self.blur_kernel = blur_kernel
        self.blur_sigma = tuple(blur_sigma)
        self.blur_prob = blur_prob

    def sample(self, count: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Draw the parameters of ``count`` clips.

        Args:
            count: clips ``N``.
            device: where the draws are made (its torch RNG); the jitter order is drawn on the
                CPU.

        Returns:
            ``grayscale``, ``jitter``, ``blur``: ``[N]`` bool, which clips each step takes;
            ``factors``: ``[4, N]`` brightness, contrast, saturation factors and hue shift (in
            turns); ``order``: ``[4]`` the jitter steps' order; ``sigma``: ``[N]`` blur sigmas.
        """

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(count, device=device) * (high - low) + low

        return {
            "grayscale": torch.rand(count, device=device) < self.grayscale_prob,
            "jitter": torch.rand(count, device=device) < self.color_jitter_prob,
            "factors": torch.stack([uniform(*bounds) for bounds in self.jitter_ranges]),
            "order": torch.randperm(4),
            "blur": torch.rand(count, device=device) < self.blur_prob,
            "sigma": uniform(*self.blur_sigma),
        }

    def forward(
        self,
        clips: torch.Tensor,
        params: dict[str, torch.Tensor] | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> torch.Tensor:
        """Augment a batch of clips.

        Args:
            clips: ``[N, 3, T, H, W]`` float in [0, 1] (left unchanged).
            params: from :meth:`sample`; drawn here when None.
            memory_format: the layout of the result (``torch.channels_last_3d`` for encoders
                that take it: the copy that keeps ``clips`` unchanged also lays them out, one
                full-size copy instead of two).

        Returns:
            A new ``[N, 3, T, H, W]`` tensor in ``memory_format``.
        """
        params = params if params is not None else self.sample(clips.shape[0], clips.device)
        out = torch.empty_like(clips, memory_format=memory_format).copy_(clips)
        chosen = params["grayscale"].nonzero().flatten()
        if chosen.numel():
            out.index_copy_(0, chosen, grayscale(out[chosen]).expand(-1, 3, -1, -1, -1))
        chosen = params["jitter"].nonzero().flatten()
        if chosen.numel():
            part = out[chosen].clamp_(0.0, 1.0)
            factors = params["factors"][:, chosen]
            for step in params["order"].tolist():
                if step not in self.jitter_steps:
                    continue
                if step == 0:
                    part = adjust_brightness(part, factors[0])
                elif step == 1:
                    part = adjust_contrast(part, factors[1])
                elif step == 2:
                    part = adjust_saturation(part, factors[2])
                else:
                    part = adjust_hue(part, factors[3] * (2.0 * math.pi), dim=1).clamp_(0.0, 1.0)
            out.index_copy_(0, chosen, part)
        chosen = params["blur"].nonzero().flatten()
        if chosen.numel():
            out.index_copy_(
                0, chosen, blur_clips(out[chosen], self.blur_kernel, params["sigma"][chosen])
            )
        return out
