"""``FAMEMoCo``: fima's MoCo with foreground-background merging of the query clips."""

from __future__ import annotations

import torch

from fame.merge import background_sources, merge_foreground, motion_foreground_mask
from fima.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.modeling import SSL_METHOD_REGISTRY
from fima.modeling.ssl.moco import MoCo
from fima.utils.events import get_event_storage, has_event_storage


def add_fame_config(cfg: CfgNode) -> None:
    """``MODEL.FAME``: how often and on which grid the query clips are merged."""
    cfg.MODEL.FAME = CN()
    # Probability that a query clip is merged (drawn per clip); the others stay as they are.
    cfg.MODEL.FAME.PROB = 0.5
    # Cells per side of the motion grid: the foreground is the half of the GRID x GRID cells with
    # the most motion (7: I3D's feature grid at 224 px, cells of 32 px).
    cfg.MODEL.FAME.GRID = 7


@SSL_METHOD_REGISTRY.register()
class FAMEMoCo(MoCo):
    """MoCo whose query clips show their own moving foreground on another video's background.

    For each training step: the foreground mask of every clip comes from its frame differences
    on the unnormalised pixels (:func:`fame.merge.motion_foreground_mask`); the clips are
    augmented once, as in MoCo; then each query clip, with probability ``MODEL.FAME.PROB``, keeps
    its foreground cells and takes the rest from another video of the batch (the same window,
    all frames; :func:`fame.merge.background_sources`). Keys see the clips unmerged, so the
    instance term (``q_m`` with ``k_n`` and ``q_n`` with ``k_m``) asks the query encoder to find
    a video by its motion rather than by its background. A clip without motion (empty mask) is
    never merged. Outside training the queries are not merged.

    Batch and losses: MoCo's (``global`` ``[B, 2, 3, T, S, S]`` uint8; ``loss_inst``). Metrics:
    ``fame_merged`` (share of merged query clips), ``fame_fg_share`` (their foreground cells).
    """

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(cfg)
        self.merge_prob = cfg.MODEL.FAME.PROB
        self.grid = cfg.MODEL.FAME.GRID

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        """MoCo's checks, then FAME's; raises ``ConfigError`` naming the key."""
        from fima.config.validation import require

        super().validate_config(cfg, world_size)
        fame = cfg.MODEL.FAME
        require(0 <= fame.PROB <= 1, "MODEL.FAME.PROB", f"must be in [0, 1], got {fame.PROB}")
        require(
            1 <= fame.GRID <= cfg.INPUT.CROP_SIZE,
            "MODEL.FAME.GRID",
            f"must be between 1 and INPUT.CROP_SIZE ({cfg.INPUT.CROP_SIZE}), got {fame.GRID}",
        )
        require(
            cfg.INPUT.NUM_FRAMES >= 2,
            "INPUT.NUM_FRAMES",
            f"FAME's mask needs frame differences: at least 2 frames, got {cfg.INPUT.NUM_FRAMES}",
        )
        per_process = cfg.SOLVER.IMS_PER_BATCH // (world_size * cfg.SOLVER.ACCUM_STEPS)
        require(
            fame.PROB == 0 or per_process >= 2,
            "SOLVER.IMS_PER_BATCH",
            f"FAME takes backgrounds from other videos of a process's batch, which holds "
            f"{per_process} (IMS_PER_BATCH / (processes x ACCUM_STEPS)); it must be >= 2",
        )

    def merge_queries(self, rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The query clips: ``rgb`` with FAME applied to a random share of them.

        Args:
            rgb: ``[2B, 3, T, S, S]`` augmented, normalised clips, window-major.
            mask: ``[2B, g, g]`` bool foreground cells of the same clips
                (:func:`fame.merge.motion_foreground_mask` of their pixels).

        Returns:
            ``[2B, 3, T, S, S]`` in ``rgb``'s memory layout.
        """
        merged = torch.rand(mask.shape[0], device=mask.device) < self.merge_prob
        merged &= mask.flatten(1).any(dim=1)
        sources = background_sources(mask.shape[0] // 2, 2, mask.device)
        query = merge_foreground(rgb, mask | ~merged[:, None, None], sources)
        if has_event_storage():
            storage = get_event_storage()
            storage.put_scalar("fame_merged", merged.float().mean())
            if merged.any():
                storage.put_scalar("fame_fg_share", mask[merged].float().mean())
        if self.channels_last:
            query = query.contiguous(memory_format=torch.channels_last_3d)
        return query

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss_inst": 0-d}`` for a batch with ``global`` ``[B, 2, 3, T, S, S]`` uint8."""
        clips = self.prepare_clips(batch["global"])
        merging = self.training and self.merge_prob > 0
        # The mask comes from the pixels before the augmentation (which works in place).
        mask = motion_foreground_mask(clips, self.grid) if merging else None
        rgb = self.augment_clips(clips)
        query = self.merge_queries(rgb, mask) if mask is not None else rgb
        q = self.projector_q.embed(self.encode(self.encoder_q, query))
        with torch.no_grad():
            k = self.projector_k.embed(self.encode_keys(rgb))
        return {"loss_inst": self.instance_loss(q, k)}
