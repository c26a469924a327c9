"""The MoCo baseline: symmetric cross-window InfoNCE with a momentum key encoder and a queue."""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.data.transforms import VideoAugmentation
from fima.modeling.backbone import build_backbone
from fima.modeling.batch_shuffle import ShuffleBN, device_major, split_bn_groups, window_major
from fima.modeling.heads import build_head
from fima.modeling.heads.build import require_head
from fima.modeling.losses import info_nce, top1_accuracy
from fima.modeling.queue import KeyQueue
from fima.modeling.ssl.build import SSL_METHOD_REGISTRY, SSLMethod
from fima.utils.events import get_event_storage, has_event_storage

logger = logging.getLogger(__name__)


def add_moco_config(cfg: CfgNode) -> None:
    """Add ``MODEL.MOCO``: the instance branch shared by MoCo and FIMA.

    Args:
        cfg: the config to extend, in place.
    """
    cfg.MODEL.MOCO = CN()
    # Global queue length (RECIPE.md §7: 65536 for Kinetics-400, 2240 for UCF101). Any size works.
    cfg.MODEL.MOCO.QUEUE_SIZE = 65536
    # Key-encoder momentum m in theta_k <- m theta_k + (1 - m) theta_q.
    cfg.MODEL.MOCO.MOMENTUM = 0.999
    # "constant", or "cosine": m rises from MOMENTUM to 1 over the run (BYOL's schedule).
    cfg.MODEL.MOCO.MOMENTUM_SCHEDULE = "constant"
    cfg.MODEL.MOCO.TEMPERATURE = 0.1
    # False (the fix): both instance terms see the queue before this batch's keys are enqueued.
    # True (the reference): k_n is enqueued between the two terms, so the second term sees the
    # batch's own keys as negatives.
    cfg.MODEL.MOCO.ENQUEUE_BETWEEN_TERMS = False
    # True: one encoder call for the 2B clips of windows m and n (BatchNorm statistics over 2B
    # clips). False: one call per window, as the reference (statistics over B clips).
    cfg.MODEL.MOCO.FUSE_WINDOWS = True


# What MoCo and FIMA call on the head that MODEL.PROJECTOR.NAME names, besides its forward.
PROJECTOR_INTERFACE = (
    "embed(feat [N, C, T, H, W]) -> [N, D], the L2-normalised global embedding; FIMA also "
    "project(x [N, C, H, W]) -> [N, D, H, W], normalised per cell"
)


@SSL_METHOD_REGISTRY.register()
class MoCo(SSLMethod):
    """MoCo baseline (RECIPE.md §3, §6 "Instance", §7).

    Query and key encoder receive the same augmented RGB clip of each window; the positives are
    across windows: ``q_m`` with ``k_n`` and ``q_n`` with ``k_m``; negatives are the global queue.
    The key encoder is a momentum copy updated once per optimizer step, before the forward
    (:class:`fima.engine.hooks.MomentumSchedule`); this batch's keys are enqueued after the step
    (:class:`fima.engine.hooks.QueueUpdate`), so both loss terms see the same queue.

    Batch: ``global`` ``[B, 2, 3, T, S, S]`` uint8 (windows m and n). Losses: ``loss_inst``.
    """

    # What it calls on its projector (PROJECTOR_INTERFACE), checked at start-up.
    PROJECTOR_METHODS: tuple[str, ...] = ("embed",)

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        moco = cfg.MODEL.MOCO
        self.encoder_q = build_backbone(cfg)
        self.projector_q = build_head(cfg.MODEL.PROJECTOR.NAME, cfg, self.encoder_q.out_channels)
        if cfg.MODEL.CHANNELS_LAST:
            self.encoder_q.to(memory_format=torch.channels_last_3d)
        # A projector's 1x1 convolutions see channels-last maps (FIMA's decoder outputs, and the
        # encoder's with CHANNELS_LAST), whose weight gradients come back with channels-last
        # strides; weights of the same strides (the same memory, the kernels being 1x1) spare
        # DistributedDataParallel a stride mismatch with its buckets, and its warning.
        self.projector_q.to(memory_format=torch.channels_last)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.projector_k = copy.deepcopy(self.projector_q)
        for param in (*self.encoder_k.parameters(), *self.projector_k.parameters()):
            param.requires_grad_(False)
        self.queue = KeyQueue(moco.QUEUE_SIZE, cfg.MODEL.PROJECTOR.OUT_DIM)
        self.augment = VideoAugmentation(cfg)
        self.temperature = moco.TEMPERATURE
        self.enqueue_between_terms = moco.ENQUEUE_BETWEEN_TERMS
        self.fuse_windows = moco.FUSE_WINDOWS
        self.channels_last = cfg.MODEL.CHANNELS_LAST
        # Keys waiting for the end of the optimizer step, per queue attribute name.
        self._pending_keys: dict[str, list[torch.Tensor]] = defaultdict(list)

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        """Check the instance branch's settings (queue, momentum, projector, kNN monitor).

        Args:
            cfg: the finished config.
            world_size: processes of the run (one process without split-BN gets a warning).

        Raises:
            ConfigError: naming the key that is wrong.
        """
        from fima.config.validation import require
        from fima.evaluation.config import validate_knn_config

        moco = cfg.MODEL.MOCO
        keys_per_step = 2 * cfg.SOLVER.IMS_PER_BATCH
        require(
            keys_per_step <= moco.QUEUE_SIZE,
            "MODEL.MOCO.QUEUE_SIZE",
            f"{moco.QUEUE_SIZE} is smaller than the {keys_per_step} keys enqueued per step "
            "(2 x SOLVER.IMS_PER_BATCH): every step would replace the whole queue",
        )
        require(0 <= moco.MOMENTUM < 1, "MODEL.MOCO.MOMENTUM", "must be in [0, 1)")
        require(
            moco.MOMENTUM_SCHEDULE in ("constant", "cosine"),
            "MODEL.MOCO.MOMENTUM_SCHEDULE",
            f"must be 'constant' or 'cosine', got {moco.MOMENTUM_SCHEDULE!r}",
        )
        require(moco.TEMPERATURE > 0, "MODEL.MOCO.TEMPERATURE", "must be positive")
        require_head(
            "MODEL.PROJECTOR.NAME",
            cfg.MODEL.PROJECTOR.NAME,
            methods=cls.PROJECTOR_METHODS,
            interface=f"{cls.__name__} calls on its projector {PROJECTOR_INTERFACE} "
            "(ProjectionHead is the example)",
        )
        for key in ("HIDDEN_DIM", "OUT_DIM"):
            value = cfg.MODEL.PROJECTOR[key]
            require(value >= 1, f"MODEL.PROJECTOR.{key}", f"must be positive, got {value}")
        validate_knn_config(cfg)
        if world_size == 1 and cfg.MODEL.SPLIT_BN_GROUPS == 1:
            # Not an error (a smoke test may not care), but it changes what is learnt: the
            # motion benchmark's MoCo gave 24.4% linear top-1 without shuffle-BN, 35.2% with.
            logger.warning(
                "MODEL.SPLIT_BN_GROUPS is 1 in a single process: the key encoder's BatchNorm "
                "normalises the same clips as the query encoder's, so positives can be matched "
                "through the batch statistics instead of the content (MoCo, He et al. 2020, "
                "§3.3); set MODEL.SPLIT_BN_GROUPS to emulate shuffle-BN over that many devices"
            )

    # -- hooks' entry points -----------------------------------------------------------------
    def build_hooks(self, cfg: CfgNode) -> list[Any]:
        """Momentum update before each step, queue update after it.

        Args:
            cfg: the finished config.

        Returns:
            ``[MomentumSchedule, QueueUpdate]``.
        """
        from fima.engine.hooks import MomentumSchedule, QueueUpdate  # engine imports modeling

        return [
            MomentumSchedule(cfg.MODEL.MOCO.MOMENTUM, cfg.MODEL.MOCO.MOMENTUM_SCHEDULE),
            QueueUpdate(),
        ]

    def build_evaluator(self, cfg: CfgNode) -> Any | None:
        """The online weighted-kNN monitor.

        Args:
            cfg: the finished config.

        Returns:
            A ``KNNEvaluator`` when ``TEST.KNN.ENABLED``, else None.
        """
        if not cfg.TEST.KNN.ENABLED:
            return None
        from fima.evaluation.knn import KNNEvaluator

        return KNNEvaluator(cfg)

    @torch.no_grad()
    def extract_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Pooled query-encoder features, without augmentation (the kNN monitor and retrieval).

        Args:
            clips: ``[N, 3, T, S, S]`` uint8.

        Returns:
            ``[N, C]`` float32, L2-normalised.
        """
        x = self.augment.normalize(self.prepare_clips(clips[:, None]))
        return F.normalize(self.encoder_q(x).float().mean(dim=(2, 3, 4)), dim=1)

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """``theta_k <- m * theta_k + (1 - m) * theta_q`` for every key-side parameter.

        Args:
            momentum: ``m`` in [0, 1).
        """
        for online, target in (
            (self.encoder_q, self.encoder_k),
            (self.projector_q, self.projector_k),
        ):
            q_params = [p.detach() for p in online.parameters()]
            k_params = list(target.parameters())
            torch._foreach_mul_(k_params, momentum)
            torch._foreach_add_(k_params, q_params, alpha=1.0 - momentum)

    @torch.no_grad()
    def update_queues(self) -> None:
        """Enqueue every key stashed since the last call (once per optimizer step)."""
        for name, keys in self._pending_keys.items():
            getattr(self, name).enqueue(torch.cat(keys))
        self._pending_keys.clear()

    def stash_keys(self, queue_name: str, keys: torch.Tensor) -> None:
        """Keep ``keys`` for :meth:`update_queues` (only in training: evaluation must not
        enqueue).

        Args:
            queue_name: the attribute holding the :class:`~fima.modeling.queue.KeyQueue`.
            keys: ``[N, D]`` L2-normalised keys.
        """
        if self.training:
            self._pending_keys[queue_name].append(keys.detach())

    # -- forward -------------------------------------------------------------------------------
    def prepare_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """Move a batch's clips to the device, window-major, as floats.

        Args:
            clips: ``[B, W, 3, T, S, S]`` uint8.

        Returns:
            ``[W*B, 3, T, S, S]`` float32 in [0, 1], window ``w``'s clips at ``w * B``.
        """
        clips = clips.to(self.device, non_blocking=True)
        return clips.transpose(0, 1).flatten(0, 1).float().div_(255)

    def augment_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """Device augmentation and normalisation in float32 (also under the trainer's
        autocast), laid out for the encoders.

        Args:
            clips: ``[N, 3, T, S, S]`` float in [0, 1].

        Returns:
            ``[N, 3, T, S, S]`` float32, normalised (``channels_last_3d`` with
            ``MODEL.CHANNELS_LAST``).
        """
        return self.augment(clips)

    def encode(
        self, encoder: nn.Module, clips: torch.Tensor, windows: int = 2, by_device: bool = True
    ) -> torch.Tensor:
        """Run ``encoder`` on all windows in one call, or per window if not fused.

        With ``MODEL.SPLIT_BN_GROUPS`` G > 1 and ``by_device``, a fused call sees its clips
        device by device (:func:`~fima.modeling.batch_shuffle.device_major`), so that each
        emulated device's BatchNorm group holds both windows of its videos, as under DDP.

        Args:
            encoder: maps ``[N, 3, T, S, S]`` to ``[N, C, T', H', W']``.
            clips: ``[W*B, 3, T, S, S]`` window-major.
            windows: ``W``.
            by_device: lay a fused call out device by device (False: as it is).

        Returns:
            ``[W*B, C, T', H', W']`` window-major.
        """
        if not (self.fuse_windows or windows == 1):
            return torch.cat([encoder(part) for part in clips.chunk(windows)])
        groups = split_bn_groups(encoder) if by_device else 1
        if windows == 1 or groups == 1:
            return encoder(clips)
        return window_major(encoder(device_major(clips, windows, groups)), windows, groups)

    @torch.no_grad()
    def encode_keys(self, clips: torch.Tensor, windows: int = 2) -> torch.Tensor:
        """The key encoder's feature maps (no gradient).

        Every encoder call shuffles its clips between BatchNorm groups and back (shuffle-BN
        across ranks, or across ``MODEL.SPLIT_BN_GROUPS`` in one process; see
        :mod:`fima.modeling.batch_shuffle`), so every rank must make the same key passes.

        Args:
            clips: ``[W*B, 3, T, S, S]`` window-major, augmented and normalised.
            windows: ``W``.

        Returns:
            ``[W*B, C, T', H', W']`` in the order of ``clips``.
        """
        # The shuffle draws the BatchNorm groups at random: no device-major layout first.
        return self.encode(ShuffleBN(self.encoder_k), clips, windows, by_device=False)

    def instance_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Symmetric cross-window InfoNCE against the global queue (RECIPE.md §6 "Instance").

        Args:
            q: query embeddings ``[2B, D]``, window m first then n.
            k: key embeddings ``[2B, D]`` in the same order.

        Returns:
            ``L_inst = (CE(q_m, k_n) + CE(q_n, k_m)) / 2``; ``k_n`` then ``k_m`` are stashed for
            the queue update after the step.
        """
        q_m, q_n = q.chunk(2)
        k_m, k_n = k.chunk(2)
        queue = self.queue()
        loss_mn, logits_mn = info_nce(q_m, k_n, temperature=self.temperature, queue=queue)
        if self.enqueue_between_terms:
            queue = self.queue.peek_enqueued(k_n)
        loss_nm, logits_nm = info_nce(q_n, k_m, temperature=self.temperature, queue=queue)
        self.stash_keys("queue", torch.cat([k_n, k_m]))
        if has_event_storage():
            accuracy = (top1_accuracy(logits_mn) + top1_accuracy(logits_nm)) / 2
            get_event_storage().put_scalar("acc_inst", accuracy)
        return (loss_mn + loss_nm) / 2

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The instance loss of a pretraining batch.

        Args:
            batch: ``global`` ``[B, 2, 3, T, S, S]`` uint8 (windows m and n).

        Returns:
            ``{"loss_inst": 0-d float32}``.
        """
        rgb = self.augment_clips(self.prepare_clips(batch["global"]))
        q = self.projector_q.embed(self.encode(self.encoder_q, rgb))
        with torch.no_grad():
            k = self.projector_k.embed(self.encode_keys(rgb))
        return {"loss_inst": self.instance_loss(q, k)}
