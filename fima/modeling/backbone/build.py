"""The backbone registry, the ``Backbone`` base class and ``build_backbone``."""

from __future__ import annotations

import torch
from torch import nn

from fima.config.config import CfgNode
from fima.modeling.backbone.temporal_padding import pad_time_explicitly
from fima.utils.registry import Registry

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Registry of video backbones.

An entry is called as ``cls(cfg)`` and returns a :class:`Backbone` (any ``nn.Module`` with an
``out_channels: int`` attribute works) whose ``forward(x)`` maps a clip batch ``[B, 3, T, H, W]`` to
its last feature map ``[B, C, T', H', W']`` with ``C == out_channels``. Heads size themselves from
``out_channels``, so any registered backbone works with every SSL method without touching them.

Optional classmethods, which start-up validation (:func:`fima.config.validate_cfg`) calls where
an entry has them: ``output_strides(cfg) -> (temporal_stride, spatial_stride)`` (subclasses of
:class:`Backbone` have it), against which ``INPUT.NUM_FRAMES`` and ``INPUT.CROP_SIZE`` are
checked; ``validate_config(cfg, world_size)``, the checks of the backbone's own keys, raising
``ConfigError``.
"""


class Backbone(nn.Module):
    """Base class of fima's backbones.

    Attributes:
        out_channels: channels ``C`` of the returned feature map.
        temporal_stride: ``T / T'`` for inputs whose length divides by it.
        spatial_stride: ``H / H'`` for inputs whose size divides by it.
    """

    out_channels: int
    temporal_stride: int = 1
    spatial_stride: int = 1

    @classmethod
    def output_strides(cls, cfg: CfgNode) -> tuple[int, int]:
        """The strides of this backbone under ``cfg``, without building it (start-up validation
        checks the input size against them).

        Args:
            cfg: the finished config.

        Returns:
            ``(temporal_stride, spatial_stride)``.
        """
        return cls.temporal_stride, cls.spatial_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Compute the last feature map of a clip batch.

        Args:
            x: ``[B, 3, T, H, W]`` normalised clips.

        Returns:
            ``[B, C, T', H', W']`` with ``C == out_channels``.
        """
        raise NotImplementedError


def build_backbone(cfg: CfgNode) -> nn.Module:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME``.

    Its plain ``nn.Conv3d`` layers pad time explicitly where a CPU's bfloat16 weight gradient
    would otherwise be wrong (:mod:`fima.modeling.backbone.temporal_padding`; the same maths and
    state dict), so every registered backbone trains correctly under bfloat16 autocast.

    Args:
        cfg: the finished config.

    Returns:
        The backbone, on the CPU, with an integer ``out_channels``.

    Raises:
        KeyError: no backbone of that name is registered (the message lists the known ones).
        TypeError: the entry returned something without an integer ``out_channels``.
    """
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg)
    if not isinstance(backbone, nn.Module) or not isinstance(
        getattr(backbone, "out_channels", None), int
    ):
        raise TypeError(
            f"Backbone {name!r} must be an nn.Module with an integer 'out_channels' attribute"
        )
    pad_time_explicitly(backbone)
    return backbone
