"""FIMA: MoCo's instance term plus dense and local motion alignment with frame differences."""

from __future__ import annotations

import logging

import torch

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.modeling.backbone import build_backbone
from fima.modeling.heads import build_head
from fima.modeling.heads.build import require_head
from fima.modeling.losses import (
    dense_contrastive_loss,
    dense_positive_pairs,
    info_nce,
    top1_accuracy,
)
from fima.modeling.motion import foreground_grid_mask, frame_difference
from fima.modeling.queue import KeyQueue
from fima.modeling.ssl.build import SSL_METHOD_REGISTRY
from fima.modeling.ssl.moco import MoCo
from fima.utils.events import get_event_storage, has_event_storage

logger = logging.getLogger(__name__)

# The views whose frame differences go through the key encoder: the global view (dense keys,
# foreground mask) and the two halves of the window (local keys, index 0 and 1 of "local").
DIFF_VIEWS = ("global", "local1", "local2")
LOCAL_HALF = {"local1": 0, "local2": 1}
KEY_PASSES = ("modality", "kind", "view")


def add_fima_config(cfg: CfgNode) -> None:
    """Add ``MODEL.FIMA``: FIMA's losses, queues and key passes (RECIPE.md §2-§7).

    Args:
        cfg: the config to extend, in place.
    """
    cfg.MODEL.FIMA = CN()
    # L = L_inst + DENSE_WEIGHT * L_dense + LOCAL_WEIGHT * L_local. A weight of 0 leaves its term
    # out altogether, with the key passes only it needs (the paper's ablations).
    cfg.MODEL.FIMA.DENSE_WEIGHT = 1.0
    cfg.MODEL.FIMA.LOCAL_WEIGHT = 1.0
    # Temperature of the dense and local terms (the instance term uses MODEL.MOCO.TEMPERATURE).
    cfg.MODEL.FIMA.TEMPERATURE = 0.1
    # Two cells are a positive pair when their centres are closer than POS_RATIO bin diagonals.
    cfg.MODEL.FIMA.POS_RATIO = 0.7
    # Motion queue of local keys: 4 x IMS_PER_BATCH keys per step (65536 for Kinetics-400, 2240
    # for UCF101). Any size works: the queue wraps.
    cfg.MODEL.FIMA.MOTION_QUEUE_SIZE = 65536
    # Dense queue of difference keys (every cell of every slice of both windows' global-view
    # differences: 2 x IMS_PER_BATCH x T' x H x W keys per step); 0 turns it off (UCF101).
    cfg.MODEL.FIMA.DENSE_QUEUE_SIZE = 31360
    # True (the reference): frame 0 is differenced against the last frame. False: that wrapped
    # frame is dropped, so difference clips have NUM_FRAMES - 1 frames.
    cfg.MODEL.FIMA.DIFF_WRAP_FIRST_FRAME = True
    # How the key encoder's inputs are grouped into calls (BatchNorm computes its statistics per
    # call): "modality": the RGB clips of both windows in one call and every difference clip in
    # another (2 calls); "kind": RGB, global-view differences, local differences (3 calls, 2
    # with a motion term off); "view": each view of each window alone, as the reference (8 calls
    # of B clips). The query encoder's calls follow MODEL.MOCO.FUSE_WINDOWS.
    cfg.MODEL.FIMA.KEY_PASSES = "modality"


def _feature_map_shape(cfg: CfgNode, num_frames: int) -> tuple[int, int, int] | None:
    """``(T', H, W)`` of the backbone's feature map for a clip of ``num_frames`` frames, found
    on the meta device (no memory, no compute); None if the backbone cannot run there.

    The backbone runs in eval mode: in training mode BatchNorm refuses a batch of one clip whose
    feature map is a single cell (1x1x1), which is the very shape this check must report.
    """
    size = cfg.INPUT.CROP_SIZE
    try:
        with torch.device("meta"), torch.no_grad():
            feat = build_backbone(cfg).eval()(torch.empty(1, 3, num_frames, size, size))
    except (NotImplementedError, RuntimeError) as err:
        logger.warning(
            "%s cannot run on the meta device (%s): FIMA checks its feature map at the first "
            "step instead of at start-up",
            cfg.MODEL.BACKBONE.NAME,
            err,
        )
        return None
    return tuple(feat.shape[2:])


def _slice_layout_problem(length: int) -> str | None:
    """Why ``length`` temporal slices cannot each be mapped to one half of the window."""
    if length < 2 or length % 2:
        return (
            f"the backbone's feature map has T'={length} temporal slices; the local motion term "
            "maps each slice to the half of the window that covers it, which needs an even T' "
            ">= 2 (raise INPUT.NUM_FRAMES, use a backbone with less temporal striding, or set "
            "MODEL.FIMA.LOCAL_WEIGHT 0)"
        )
    return None


def _grid_problem(height: int, width: int) -> str | None:
    """Why a feature grid of ``height x width`` cells cannot give the dense term anything."""
    if height * width < 2:
        return (
            f"a {height}x{width} feature grid; the dense term's foreground mask (the cells above "
            "the median, RECIPE.md §5) of a single cell is empty, so loss_dense would be 0 "
            "throughout: raise INPUT.CROP_SIZE (the grid is the crop divided by the backbone's "
            "spatial stride) or set MODEL.FIMA.DENSE_WEIGHT 0"
        )
    return None


@SSL_METHOD_REGISTRY.register()
class FIMA(MoCo):
    """Fine-grained motion alignment (RECIPE.md): MoCo's instance branch plus two motion terms.

    The instance term is :meth:`MoCo.instance_loss` itself. The key encoder also encodes frame
    differences: of each window's global view (dense keys per cell and temporal slice, and with
    the RGB keys the foreground mask of §5) and of its two halves (local keys). A
    :class:`~fima.modeling.heads.MotionDecoder` reads the query feature maps of one window and
    predicts, per temporal slice, the other window's local key (CLS output) and dense keys (cell
    outputs). Losses: ``loss_inst``, ``loss_dense`` and ``loss_local`` (the latter two already
    weighted).

    Encoder calls per step (``B`` clips per window), with the defaults: one query call of ``2B``
    RGB clips, one key call of the same ``2B`` clips, one key call of the ``6B`` difference clips
    (two windows x global view, first half, second half). Grouping changes BatchNorm statistics
    in training mode: the reference normalises each view of each window over its own ``B``
    clips; here the RGB statistics are over both windows (same distribution, twice the clips)
    and the difference statistics pool global-view differences (frames ``SAMPLING_RATE`` apart)
    with the local ones (adjacent frames), whose magnitudes differ. ``MODEL.FIMA.KEY_PASSES``
    ``"kind"`` keeps the kinds of clips apart (3 key calls), ``"view"`` has the reference's 8 key
    calls; ``MODEL.MOCO.FUSE_WINDOWS False`` splits the query call per window (the reference's 2).

    Batch: ``global`` ``[B, 2, 3, T, S, S]`` uint8, ``global_box`` ``[B, 2, 4]`` and (if the
    local term is on) ``local`` ``[B, 2, 2, 3, T, S, S]`` uint8.
    """

    # The dense keys and the decoder's outputs are projected per cell.
    PROJECTOR_METHODS = ("embed", "project")

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(cfg)
        fima = cfg.MODEL.FIMA
        # Without a motion term nothing uses the decoder (and DDP would find it unused).
        self.decoder = (
            build_head(cfg.MODEL.MOTION_DECODER.NAME, cfg, self.encoder_q.out_channels)
            if fima.DENSE_WEIGHT or fima.LOCAL_WEIGHT
            else None
        )
        dim = cfg.MODEL.PROJECTOR.OUT_DIM
        self.dense_weight = fima.DENSE_WEIGHT
        self.local_weight = fima.LOCAL_WEIGHT
        self.motion_temperature = fima.TEMPERATURE
        self.pos_ratio = fima.POS_RATIO
        self.wrap_first_frame = fima.DIFF_WRAP_FIRST_FRAME
        self.key_passes = fima.KEY_PASSES
        self.motion_queue = KeyQueue(fima.MOTION_QUEUE_SIZE, dim) if self.local_weight else None
        self.dense_queue = (
            KeyQueue(fima.DENSE_QUEUE_SIZE, dim)
            if self.dense_weight and fima.DENSE_QUEUE_SIZE
            else None
        )

    @classmethod
    def input_views(cls, cfg: CfgNode) -> tuple[str, ...]:
        """The views FIMA's training batches need.

        Args:
            cfg: the finished config.

        Returns:
            ``("global", "local")``, or ``("global",)`` when ``MODEL.FIMA.LOCAL_WEIGHT`` is 0.
        """
        return ("global", "local") if cfg.MODEL.FIMA.LOCAL_WEIGHT else ("global",)

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        """MoCo's checks, then FIMA's (weights, queues, decoder, and the backbone's feature map
        for ``INPUT.NUM_FRAMES``, found on the meta device).

        Args:
            cfg: the finished config.
            world_size: processes of the run.

        Raises:
            ConfigError: naming the key that is wrong.
        """
        from fima.config.validation import require

        super().validate_config(cfg, world_size)
        fima, dec = cfg.MODEL.FIMA, cfg.MODEL.MOTION_DECODER
        batch = cfg.SOLVER.IMS_PER_BATCH
        for key in ("DENSE_WEIGHT", "LOCAL_WEIGHT"):
            require(fima[key] >= 0, f"MODEL.FIMA.{key}", f"must be >= 0, got {fima[key]}")
        require(fima.TEMPERATURE > 0, "MODEL.FIMA.TEMPERATURE", "must be positive")
        require(fima.POS_RATIO > 0, "MODEL.FIMA.POS_RATIO", "must be positive")
        require(
            fima.KEY_PASSES in KEY_PASSES,
            "MODEL.FIMA.KEY_PASSES",
            f"must be one of {', '.join(KEY_PASSES)}, got {fima.KEY_PASSES!r}",
        )
        require(fima.DENSE_QUEUE_SIZE >= 0, "MODEL.FIMA.DENSE_QUEUE_SIZE", "must be >= 0 (0: off)")
        require(
            dec.DIM > 0 and dec.NUM_HEADS > 0 and dec.DIM % dec.NUM_HEADS == 0,
            "MODEL.MOTION_DECODER.DIM",
            f"must be a positive multiple of NUM_HEADS ({dec.NUM_HEADS}), got {dec.DIM}",
        )
        require_head("MODEL.MOTION_DECODER.NAME", dec.NAME)
        require(dec.NUM_LAYERS >= 1, "MODEL.MOTION_DECODER.NUM_LAYERS", "must be >= 1")
        require(dec.FFN_DIM >= 1, "MODEL.MOTION_DECODER.FFN_DIM", "must be >= 1")
        require(0 <= dec.DROPOUT < 1, "MODEL.MOTION_DECODER.DROPOUT", "must be in [0, 1)")
        if fima.LOCAL_WEIGHT:
            require(
                cfg.INPUT.SAMPLING_RATE % 2 == 0,
                "INPUT.SAMPLING_RATE",
                f"FIMA's local views take each half of the window at stride SAMPLING_RATE / 2, "
                f"so it must be even, got {cfg.INPUT.SAMPLING_RATE}",
            )
            keys_per_step = 4 * batch
            require(
                keys_per_step <= fima.MOTION_QUEUE_SIZE,
                "MODEL.FIMA.MOTION_QUEUE_SIZE",
                f"{fima.MOTION_QUEUE_SIZE} is smaller than the {keys_per_step} local keys "
                "enqueued per step (4 x SOLVER.IMS_PER_BATCH): every step would replace the "
                "whole queue",
            )
        if not (fima.LOCAL_WEIGHT or fima.DENSE_WEIGHT):
            return
        frames = cfg.INPUT.NUM_FRAMES
        rgb_shape = _feature_map_shape(cfg, frames)
        if rgb_shape is None:
            return
        if fima.LOCAL_WEIGHT:
            problem = _slice_layout_problem(rgb_shape[0])
            require(problem is None, "INPUT.NUM_FRAMES", f"{frames} frames: {problem}")
        if not fima.DIFF_WRAP_FIRST_FRAME:
            diff_shape = _feature_map_shape(cfg, frames - 1)
            require(
                diff_shape == rgb_shape,
                "MODEL.FIMA.DIFF_WRAP_FIRST_FRAME",
                f"False makes difference clips {frames - 1} frames long, whose feature map "
                f"{diff_shape} differs from the RGB clips' {rgb_shape}; keep it True or change "
                "INPUT.NUM_FRAMES",
            )
        if fima.DENSE_WEIGHT:
            problem = _grid_problem(*rgb_shape[1:])
            require(
                problem is None,
                "INPUT.CROP_SIZE",
                f"{cfg.INPUT.CROP_SIZE}-pixel crops give {cfg.MODEL.BACKBONE.NAME} {problem}",
            )
        if fima.DENSE_WEIGHT and fima.DENSE_QUEUE_SIZE:
            length, height, width = rgb_shape
            keys_per_step = 2 * batch * length * height * width
            require(
                keys_per_step <= fima.DENSE_QUEUE_SIZE,
                "MODEL.FIMA.DENSE_QUEUE_SIZE",
                f"{fima.DENSE_QUEUE_SIZE} is smaller than the {keys_per_step} dense keys enqueued "
                f"per step (2 x SOLVER.IMS_PER_BATCH x {length}x{height}x{width} cells): every "
                "step would replace the whole queue; make it larger or 0 (off)",
            )

    # -- key passes -------------------------------------------------------------------------------
    def difference_views(self) -> tuple[str, ...]:
        """The views whose frame differences this configuration encodes.

        Returns:
            A subsequence of ``("global", "local1", "local2")``: ``global`` with the dense
            term, the local halves with the local term.
        """
        return tuple(
            view
            for view in DIFF_VIEWS
            if (view == "global" and self.dense_weight) or (view != "global" and self.local_weight)
        )

    def difference_clips(
        self, global_clips: torch.Tensor, local_clips: torch.Tensor | None
    ) -> torch.Tensor:
        """Augmented frame differences ``[V, W, B, 3, T, S, S]`` of :meth:`difference_views`.

        The clips are gathered in uint8 and converted to float once.

        Args:
            global_clips: ``[B, W, 3, T, S, S]`` uint8 global views.
            local_clips: ``[B, W, 2, 3, T, S, S]`` uint8 local views (None without local term).

        Returns:
            ``[V, W, B, 3, T, S, S]`` float32, normalised, ``V = len(difference_views())``;
            ``T - 1`` frames with ``MODEL.FIMA.DIFF_WRAP_FIRST_FRAME False``.

        Raises:
            KeyError: the local term is on and ``local_clips`` is None.
        """
        parts = []
        for view in self.difference_views():
            if view == "global":
                parts.append(global_clips)
            elif local_clips is None:
                raise KeyError(
                    "FIMA's local term needs the batch's 'local' views; build the loader with "
                    "FIMA.input_views(cfg)"
                )
            else:
                parts.append(local_clips[:, :, LOCAL_HALF[view]])
        clips = torch.stack(parts).transpose(1, 2).contiguous()  # [V, W, B, 3, T, S, S]
        layout = clips.shape[:3]
        diffs = frame_difference(clips.flatten(0, 2).float().div_(255), wrap=self.wrap_first_frame)
        return self.augment_clips(diffs).view(*layout, *diffs.shape[1:])

    @torch.no_grad()
    def encode_rgb_keys(self, rgb: torch.Tensor) -> torch.Tensor:
        """Key-encoder feature maps of the RGB clips: one call, or one per window with
        ``KEY_PASSES "view"``.

        Args:
            rgb: ``[2B, 3, T, S, S]`` augmented clips, window-major.

        Returns:
            ``[2B, C, T', H', W']`` in the same order.
        """
        if self.key_passes == "view":
            return torch.cat([self.encode_keys(part, windows=1) for part in rgb.chunk(2)])
        return self.encode_keys(rgb, windows=1)

    @torch.no_grad()
    def encode_differences(self, diffs: torch.Tensor) -> torch.Tensor:
        """Key-encoder feature maps of difference clips, grouped into calls as ``KEY_PASSES``
        says.

        Args:
            diffs: ``[V, W, B, 3, T, S, S]`` (:meth:`difference_clips`).

        Returns:
            ``[V, W, B, C, T', H', W']``.
        """
        views, windows, batch = diffs.shape[:3]
        clips = diffs.flatten(0, 2)
        if self.key_passes == "view":
            groups = list(clips.split(batch))
        elif self.key_passes == "kind":
            # One call per kind of clip: the global-view differences (first, when encoded) and
            # the local ones (both halves together, also when the dense term is off).
            global_views = int("global" in self.difference_views())
            sizes = [n * windows * batch for n in (global_views, views - global_views) if n]
            groups = list(clips.split(sizes))
        else:
            groups = [clips]
        feats = [self.encode_keys(group, windows=1) for group in groups]
        feats = feats[0] if len(feats) == 1 else torch.cat(feats)
        return feats.view(views, windows, batch, *feats.shape[1:])

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of a pretraining batch.

        Args:
            batch: ``global`` ``[B, 2, 3, T, S, S]`` uint8, ``global_box`` ``[B, 2, 4]`` and,
                with the local term, ``local`` ``[B, 2, 2, 3, T, S, S]`` uint8.

        Returns:
            0-d float32 losses: ``loss_inst``, and ``loss_dense`` and ``loss_local`` (already
            weighted) for the terms whose weight is not 0.

        Raises:
            ValueError: the local term is on and the feature map's ``T'`` is odd or below 2.
        """
        global_clips = batch["global"].to(self.device, non_blocking=True)
        rgb = self.augment_clips(self.prepare_clips(global_clips))
        feat_q = self.encode(self.encoder_q, rgb)  # [2B, C, T', H, W]
        q = self.projector_q.embed(feat_q)
        with torch.no_grad():
            feat_k = self.encode_rgb_keys(rgb)
            k = self.projector_k.embed(feat_k)
        losses = {"loss_inst": self.instance_loss(q, k)}
        if not (self.dense_weight or self.local_weight):
            return losses
        # What start-up validation checks, for a backbone that cannot run on the meta device.
        if self.local_weight:
            problem = _slice_layout_problem(feat_q.shape[2])
            if problem is not None:
                raise ValueError(f"FIMA: {problem}")
        if self.dense_weight:
            problem = _grid_problem(*feat_q.shape[3:])
            if problem is not None:
                raise ValueError(f"FIMA: the backbone gives {problem}")
        local_clips = batch.get("local")
        if local_clips is not None:
            local_clips = local_clips.to(self.device, non_blocking=True)
        with torch.no_grad():
            # [V, W, B, C, T', H, W] in the order of difference_views(): global, local1, local2.
            diff_feats = self.encode_differences(self.difference_clips(global_clips, local_clips))
        cls_pred, dense_pred = self.predict_motion(feat_q)
        if self.dense_weight:
            boxes = batch["global_box"].to(self.device, non_blocking=True)
            losses["loss_dense"] = self.dense_weight * self.dense_loss(
                dense_pred, feat_k, diff_feats[0], boxes
            )
        if self.local_weight:
            losses["loss_local"] = self.local_weight * self.local_loss(cls_pred, diff_feats[-2:])
        return losses

    def predict_motion(self, feat_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's predictions of each window's motion from the other's queries.

        Args:
            feat_q: ``[2B, C, T', H, W]`` query feature maps, window m then n.

        Returns:
            ``cls [2, B, T', D]`` and ``dense [2, B, T', H*W, D]``, L2-normalised float32; index
            ``w`` holds the predictions on window ``w``'s grid of window ``1 - w``'s motion.
        """
        windows, length = 2, feat_q.shape[2]
        batch = feat_q.shape[0] // windows
        # Target = window w's tokens, memory = window 1 - w's: both directions in one call.
        out = self.decoder(feat_q, feat_q.roll(batch, dims=0))  # [2B, T', 1 + HW, C]
        # The shared projector applies per token: [2B, C, T', 1 + HW] -> [2B, D, T', 1 + HW].
        proj = self.projector_q.project(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        proj = proj.reshape(windows, batch, length, proj.shape[2], proj.shape[3])
        return proj[:, :, :, 0], proj[:, :, :, 1:]

    def dense_keys(self, diff_feat: torch.Tensor) -> torch.Tensor:
        """Per-cell, per-slice keys of difference feature maps.

        Args:
            diff_feat: ``[W, B, C, T', H, W]`` key-encoder features of global-view differences.

        Returns:
            ``[W, B, T', H*W, D]`` L2-normalised float32.
        """
        windows, batch, _, length, height, width = diff_feat.shape
        slices = diff_feat.flatten(0, 1).transpose(1, 2).flatten(0, 1)  # [W*B*T', C, H, W]
        keys = self.projector_k.project(slices)  # [W*B*T', D, H, W]
        return keys.flatten(2).transpose(1, 2).reshape(windows, batch, length, height * width, -1)

    def dense_loss(
        self,
        pred: torch.Tensor,
        feat_k: torch.Tensor,
        diff_feat: torch.Tensor,
        boxes: torch.Tensor,
    ) -> torch.Tensor:
        """``L_dense``: the mean of :func:`dense_contrastive_loss` over slices and directions.

        Args:
            pred: ``[2, B, T', H*W, D]`` dense predictions (:meth:`predict_motion`).
            feat_k: ``[2B, C, T', H, W]`` key-encoder RGB feature maps, window m then n.
            diff_feat: ``[2, B, C, T', H, W]`` key-encoder features of the global-view
                differences.
            boxes: ``[B, 2, 4]`` crop boxes of the global views.

        Returns:
            The unweighted loss, 0-d float32; the dense keys are stashed for the dense queue,
            if there is one.
        """
        windows, batch, length, cells, _ = pred.shape
        grid = tuple(diff_feat.shape[-2:])
        with torch.no_grad():
            masks = foreground_grid_mask(feat_k, diff_feat.flatten(0, 1)).view(windows, batch, -1)
            keys = self.dense_keys(diff_feat)  # [2, B, T', HW, D]
        queue = self.dense_queue() if self.dense_queue is not None else None
        terms, positive_share = [], []
        for w in range(windows):
            other = 1 - w
            box_q, box_k = boxes[:, w], boxes[:, other]
            for t in range(length):
                rest = [s for s in range(length) if s != t]
                terms.append(
                    dense_contrastive_loss(
                        pred[w, :, t],
                        keys[other, :, t],
                        keys[other, :, rest].flatten(1, 2),
                        box_q,
                        box_k,
                        masks[w],
                        masks[other],
                        pos_ratio=self.pos_ratio,
                        temperature=self.motion_temperature,
                        queue=queue,
                        grid=grid,
                    )
                )
            if has_event_storage():
                pairs = dense_positive_pairs(
                    box_q, box_k, masks[w], masks[other], grid, self.pos_ratio
                )
                positive_share.append(pairs.any(dim=2).float().mean())
        if self.dense_queue is not None:
            self.stash_keys("dense_queue", keys.flatten(0, 3))
        if has_event_storage():
            storage = get_event_storage()
            storage.put_scalar("fg_share", masks.float().mean())
            storage.put_scalar("pos_cell_share", torch.stack(positive_share).mean())
        return torch.stack(terms).mean()

    def local_loss(self, pred: torch.Tensor, local_feat: torch.Tensor) -> torch.Tensor:
        """``L_local``: InfoNCE of each slice's CLS prediction with the local key of its half.

        For window ``w`` and slice ``t`` (in half ``h = 2t // T'``), the prediction from window
        ``w``'s queries has positive ``l_h`` of window ``1 - w``; the negatives are the other
        half's key of ``1 - w`` and both local keys of ``w`` (3B in-batch vectors) plus the
        motion queue. The keys ``[l1_n, l2_n, l1_m, l2_m]`` are stashed for the queue update.

        Args:
            pred: ``[2, B, T', D]`` CLS predictions (:meth:`predict_motion`).
            local_feat: ``[2 halves, 2 windows, B, C, T'', H', W']`` key-encoder features of the
                local differences.

        Returns:
            The unweighted loss, 0-d float32.
        """
        windows, batch, length, _ = pred.shape
        with torch.no_grad():
            keys = self.projector_k.embed(local_feat.flatten(0, 2)).view(2, windows, batch, -1)
        queue = self.motion_queue()
        terms, accuracies = [], []
        for w in range(windows):
            other = 1 - w
            for t in range(length):
                half = 2 * t // length
                negatives = torch.cat([keys[1 - half, other], keys[0, w], keys[1, w]])
                loss, logits = info_nce(
                    pred[w, :, t],
                    keys[half, other],
                    temperature=self.motion_temperature,
                    queue=queue,
                    negatives=negatives,
                )
                terms.append(loss)
                accuracies.append(top1_accuracy(logits))
        self.stash_keys("motion_queue", torch.cat([keys[0, 1], keys[1, 1], keys[0, 0], keys[1, 0]]))
        if has_event_storage():
            get_event_storage().put_scalar("acc_local", torch.stack(accuracies).mean())
        return torch.stack(terms).mean()
