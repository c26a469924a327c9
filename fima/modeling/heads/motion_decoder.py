"""FIMA's motion decoder: predicts another window's motion from a clip's query features."""

from __future__ import annotations

import math

import torch
from torch import nn

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.modeling.heads.build import HEAD_REGISTRY


def add_motion_decoder_config(cfg: CfgNode) -> None:
    """Add ``MODEL.MOTION_DECODER``: the sizes of :class:`MotionDecoder` (RECIPE.md §3).

    Args:
        cfg: the config to extend, in place.
    """
    cfg.MODEL.MOTION_DECODER = CN()
    # A name in HEAD_REGISTRY, called as cls(cfg, backbone out_channels).
    cfg.MODEL.MOTION_DECODER.NAME = "MotionDecoder"
    cfg.MODEL.MOTION_DECODER.DIM = 512
    cfg.MODEL.MOTION_DECODER.NUM_LAYERS = 2
    cfg.MODEL.MOTION_DECODER.NUM_HEADS = 4
    cfg.MODEL.MOTION_DECODER.FFN_DIM = 512
    cfg.MODEL.MOTION_DECODER.DROPOUT = 0.1
    # False (the reference): each layer is cross-attention + FFN only, so every target token is
    # decoded on its own. True: a self-attention block before the cross-attention.
    cfg.MODEL.MOTION_DECODER.SELF_ATTENTION = False


def sine_position_encoding(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """The transformer's 1-D sine encoding.

    ``PE[p, 2i] = sin(p / 10000^(2i/dim))`` and ``PE[p, 2i+1] = cos(p / 10000^(2i/dim))``.

    Args:
        length: positions ``p``.
        dim: channels; an odd ``dim`` ends with a sine channel.
        device: where the encoding is made.

    Returns:
        ``[length, dim]`` float32.
    """
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    encoding = torch.zeros(length, dim, device=device)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return encoding


class DecoderLayer(nn.Module):
    """A pre-norm transformer decoder layer: [self-attention], cross-attention, FFN.

    Each block is ``x = x + dropout(block(norm(x)))``; the memory is used as is (keys and values).
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, dropout: float, self_attention: bool
    ) -> None:
        super().__init__()
        self.self_attn = None
        if self_attention:
            self.norm_self = nn.LayerNorm(dim)
            self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, target: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Let ``target`` attend to ``memory``.

        Args:
            target: ``[N, L, dim]`` tokens being decoded.
            memory: ``[N, S, dim]`` tokens they attend to (keys and values).

        Returns:
            ``[N, L, dim]``, the updated target tokens.
        """
        if self.self_attn is not None:
            x = self.norm_self(target)
            target = target + self.dropout(self.self_attn(x, x, x, need_weights=False)[0])
        x = self.norm_cross(target)
        target = target + self.dropout(self.cross_attn(x, memory, memory, need_weights=False)[0])
        return target + self.dropout(self.ffn(self.norm_ffn(target)))


@HEAD_REGISTRY.register()
class MotionDecoder(nn.Module):
    """Cross-window motion decoder (RECIPE.md §3), sized by ``MODEL.MOTION_DECODER``.

    A 1x1 convolution ``C -> DIM`` turns each feature map into tokens. Per temporal slice ``t``
    the target sequence is ``[CLS; tokens of slice t of the target clip + PE]`` and the memory is
    ``tokens of slice t of the memory clip + PE``, where PE is a 1-D sine encoding over the
    ``H * W`` positions and CLS a learned, zero-initialised vector without encoding. Every slice
    of every clip is decoded in one batched call; the outputs go through a 1x1 convolution
    ``DIM -> C``, back to the backbone's channels (the method projects them).

    Nothing is fixed to a grid or a length: ``T'``, ``H`` and ``W`` come from the input.
    """

    HEAD_KIND = "motion decoder"

    def __init__(self, cfg: CfgNode, in_channels: int) -> None:
        super().__init__()
        dec = cfg.MODEL.MOTION_DECODER
        self.dim = dec.DIM
        # 1x1 convolutions, written as the per-token linear layers they are.
        self.input_proj = nn.Linear(in_channels, dec.DIM)
        self.cls_token = nn.Parameter(torch.zeros(dec.DIM))
        self.layers = nn.ModuleList(
            DecoderLayer(dec.DIM, dec.NUM_HEADS, dec.FFN_DIM, dec.DROPOUT, dec.SELF_ATTENTION)
            for _ in range(dec.NUM_LAYERS)
        )
        self.output_proj = nn.Linear(dec.DIM, in_channels)

    def tokens(self, feat: torch.Tensor) -> torch.Tensor:
        """Turn each temporal slice of a feature map into position-encoded tokens.

        Args:
            feat: ``[N, C, T', H, W]``.

        Returns:
            ``[N * T', H * W, DIM]``, slice-major (row ``n * T' + t``), cells in row-major order.
        """
        # Channels last is free for a channels_last_3d feature map.
        tokens = self.input_proj(feat.permute(0, 2, 3, 4, 1)).flatten(0, 1).flatten(1, 2)
        encoding = sine_position_encoding(tokens.shape[1], self.dim, feat.device)
        return tokens + encoding.to(tokens.dtype)

    def forward(self, target: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Decode every temporal slice of ``target`` against the same slice of ``memory``.

        Args:
            target: ``[N, C, T', H, W]`` query feature maps (whose grid the outputs live on).
            memory: ``[N, C, T', H, W]`` query feature maps of the clips to predict.

        Returns:
            ``[N, T', 1 + H * W, C]``: position 0 is the CLS output (the clip-level motion
            prediction), positions ``1 + y * W + x`` the outputs on the target's cells.
        """
        if target.shape != memory.shape:
            raise ValueError(
                f"MotionDecoder: target {tuple(target.shape)} and memory {tuple(memory.shape)} "
                "feature maps must have the same shape"
            )
        batch, _, length = target.shape[:3]
        queries = self.tokens(target)
        keys = self.tokens(memory)
        cls = self.cls_token.to(queries.dtype).expand(queries.shape[0], 1, -1)
        x = torch.cat([cls, queries], dim=1)
        for layer in self.layers:
            x = layer(x, keys)
        return self.output_proj(x).view(batch, length, x.shape[1], -1)
