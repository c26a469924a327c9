"""Action recognition on a pretrained backbone: fine-tuning or linear probing (RECIPE.md §9).

The classification task is a registered method like MoCo, so it runs through the same
``tools/train_net.py``, trainer, hooks and configs; only its configs differ
(``configs/Finetune``, ``configs/Linear``, ``configs/Retrieval``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from fima.checkpoint.backbone_weights import (
    BACKBONE_PREFIXES,
    load_backbone_weights,
    weights_problem,
)
from fima.checkpoint.checkpointer import CheckpointMismatchError
from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.data.transforms import VideoAugmentation
from fima.modeling.backbone import build_backbone
from fima.modeling.heads import build_head
from fima.modeling.heads.build import require_head
from fima.modeling.heads.classifier import global_pool
from fima.modeling.ssl.build import SSL_METHOD_REGISTRY, SSLMethod
from fima.utils.events import get_event_storage, has_event_storage

logger = logging.getLogger(__name__)

MODES = ("finetune", "linear")


def add_classifier_config(cfg: CfgNode) -> None:
    """Add ``MODEL.CLASSIFIER``: the head and what trains.

    Args:
        cfg: the config to extend, in place.
    """
    cfg.MODEL.CLASSIFIER = CN()
    # A name in HEAD_REGISTRY, called as cls(cfg, backbone.out_channels).
    cfg.MODEL.CLASSIFIER.HEAD = "LinearClassifier"
    # Classes of the task; 0 takes the number of classes of the training split.
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 0
    # Dropout before the linear layer (RECIPE.md §9: 0.7 UCF101, 0.5 HMDB51, 0 linear probe).
    cfg.MODEL.CLASSIFIER.DROPOUT = 0.5
    # "finetune": every weight trains. "linear": the backbone is frozen and kept in eval mode
    # (its BatchNorm statistics never change); only the head trains.
    cfg.MODEL.CLASSIFIER.MODE = "finetune"


def num_classes_of(cfg: CfgNode) -> int:
    """The number of classes the head scores.

    Args:
        cfg: the finished config.

    Returns:
        ``MODEL.CLASSIFIER.NUM_CLASSES``, or the number of classes of the training split if 0.
    """
    if cfg.MODEL.CLASSIFIER.NUM_CLASSES > 0:
        return int(cfg.MODEL.CLASSIFIER.NUM_CLASSES)
    from fima.data.datasets import build_dataset

    return build_dataset(cfg, cfg.DATA.TRAIN_SPLIT).num_classes


def check_labels(cfg: CfgNode, split: str, num_classes: int) -> list[str]:
    """The class names of ``split``, after checking its labels fit a ``num_classes``-way head.

    Args:
        cfg: the finished config.
        split: the dataset split (``DATA.TRAIN_SPLIT``, ...).
        num_classes: the head's classes.

    Returns:
        The split's class names, in label order.

    Raises:
        ConfigError: the split has unlabelled videos or another number of classes.
    """
    from fima.config.validation import ConfigError
    from fima.evaluation.inference import labelled_dataset

    dataset = labelled_dataset(cfg, split, "Classification")
    if dataset.num_classes != num_classes:
        raise ConfigError(
            f"MODEL.CLASSIFIER.NUM_CLASSES is {num_classes} but {dataset!r} has "
            f"{dataset.num_classes} classes; set it to {dataset.num_classes} (or 0 to follow "
            "the dataset)"
        )
    return dataset.class_names


@SSL_METHOD_REGISTRY.register()
class VideoClassifier(SSLMethod):
    """A backbone, pooling, dropout and a linear classifier (``MODEL.CLASSIFIER``).

    - ``MODEL.WEIGHTS`` set to a pretraining checkpoint (MoCo, FIMA) or a bare backbone
      initialises the backbone from its query encoder, strictly, and keeps the head as
      initialised (see :meth:`transfer_weights`); a classifier checkpoint loads as a whole, and
      must fit as a whole. Empty: a randomly initialised backbone (the baseline to compare with).
    - ``MODE: finetune`` trains everything; ``MODE: linear`` freezes the backbone and keeps it in
      eval mode whatever ``train()`` is called with, so its BatchNorm statistics stay those of
      the checkpoint.
    - Training batch: ``global`` ``[B, 1, 3, T, S, S]`` uint8 (one random window per video,
      RandomResizedCrop and flip on the CPU), ``label`` ``[B]``; on the device: grayscale and
      colour jitter (``INPUT.AUG``), normalisation. Loss: ``loss_cls`` (cross-entropy).
    - Evaluation batch: ``global`` ``[B, K, 3, T, S, S]`` (K test clips); ``forward`` returns the
      clip scores ``[B, K, NUM_CLASSES]``.
    """

    # Its training forward has no side effect but the BatchNorm statistics: TEST.PRECISE_BN may
    # run it on extra batches.
    PRECISE_BN = True

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        options = cfg.MODEL.CLASSIFIER
        self.backbone = build_backbone(cfg)
        self.num_classes = num_classes_of(cfg)
        head_cfg = cfg.clone()
        head_cfg.defrost()
        head_cfg.MODEL.CLASSIFIER.NUM_CLASSES = self.num_classes
        self.head = build_head(options.HEAD, head_cfg, self.backbone.out_channels)
        self.channels_last = cfg.MODEL.CHANNELS_LAST
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last_3d)
        self.augment = VideoAugmentation(cfg)
        self.linear_probe = options.MODE == "linear"
        # Whether evaluation reads the head's scores (retrieval and probes read features only).
        self.evaluators = tuple(cfg.TEST.EVALUATORS)
        self.evaluates_head = "classification" in self.evaluators
        if self.linear_probe:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        """Check ``MODEL.CLASSIFIER``, ``MODEL.WEIGHTS``, the evaluators and the validation split.

        Args:
            cfg: the finished config.
            world_size: processes of the run (unused).

        Raises:
            ConfigError: naming the key that is wrong.
        """
        from fima.config.validation import require
        from fima.data.datasets.validation import validate_validation_config
        from fima.evaluation.config import validate_classifier_evaluation

        options = cfg.MODEL.CLASSIFIER
        require(options.MODE in MODES, "MODEL.CLASSIFIER.MODE", f"must be one of {MODES}")
        require_head("MODEL.CLASSIFIER.HEAD", options.HEAD)
        require(0.0 <= options.DROPOUT < 1.0, "MODEL.CLASSIFIER.DROPOUT", "must be in [0, 1)")
        require(
            options.NUM_CLASSES == 0 or options.NUM_CLASSES >= 2,
            "MODEL.CLASSIFIER.NUM_CLASSES",
            f"must be >= 2, or 0 to follow the dataset; got {options.NUM_CLASSES}",
        )
        weights = cfg.MODEL.WEIGHTS
        problem = weights_problem(weights) if weights else None
        require(problem is None, "MODEL.WEIGHTS", str(problem))
        validate_classifier_evaluation(cfg)
        validate_validation_config(cfg)

    # -- what the trainer asks of a method ------------------------------------------------------
    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """One random window per video per epoch, after checking the labels fit the head.

        Args:
            cfg: the finished config.

        Returns:
            An endless iterable of batch dicts (``fima.data.build_train_loader``).

        Raises:
            ConfigError: the training split's labels do not fit the head.
        """
        from fima.data import build_train_loader

        check_labels(cfg, cfg.DATA.TRAIN_SPLIT, num_classes_of(cfg))
        return build_train_loader(cfg)

    def build_evaluator(self, cfg: CfgNode) -> Any:
        """Classification (test split, and the validation split when carved) and/or retrieval,
        as ``TEST.EVALUATORS`` says; best-model selection when ``TEST.BEST_METRIC`` is set.

        Args:
            cfg: the finished config.

        Returns:
            The evaluator (``fima.evaluation.build_classifier_evaluator``).
        """
        from fima.evaluation import build_classifier_evaluator

        return build_classifier_evaluator(cfg)

    def train(self, mode: bool = True) -> VideoClassifier:
        """Set training mode; a linear probe's backbone stays in eval mode.

        Args:
            mode: True for training, False for evaluation.

        Returns:
            ``self``.
        """
        super().train(mode)
        if self.linear_probe:
            self.backbone.eval()
        return self

    def transfer_weights(
        self, state: Mapping[str, Any], source: str, evaluation: bool = False
    ) -> bool:
        """Initialise the backbone alone from a checkpoint without a classifier, or from a
        classifier whose head does not fit when the evaluation reads features alone.

        A state without ``backbone.*`` keys (MoCo's or FIMA's ``encoder_q.*``, or a bare
        backbone) goes through :func:`fima.checkpoint.backbone_weights.load_backbone_weights`:
        the backbone keys are mapped, every one must be present and fit, the rest is logged as
        ignored; the head stays as initialised. So does a classifier checkpoint whose head is
        not this model's (another number of classes, another head) when ``evaluation`` reads no
        head scores (retrieval, linear probe, motion sensitivity): what is evaluated is its
        backbone. Called by :func:`fima.checkpoint.load_model_state`.

        Args:
            state: the checkpoint's model state.
            source: its file, for messages.
            evaluation: the model is evaluated as loaded (``--eval-only``).

        Returns:
            False for a classifier checkpoint, which then loads strictly as a whole; True once
            the backbone alone is loaded.

        Raises:
            CheckpointMismatchError: the backbone does not fit, or ``evaluation`` with the
                classification evaluator, which would score with an untrained head.
        """
        if any(key.startswith(BACKBONE_PREFIXES[1]) for key in state):
            if not evaluation or self.evaluates_head or self._head_fits(state):
                return False
            # A classifier fine-tuned on another dataset, whose features are evaluated: its
            # head is never used, so it need not fit (the backbone still must, strictly).
            load_backbone_weights(self.backbone, state, source=source)
            logger.info(
                "%s: its classifier head does not fit this config's (%d classes), and the "
                "evaluation (%s) reads backbone features alone: its backbone is evaluated",
                source,
                self.num_classes,
                ", ".join(self.evaluators),
            )
            return True
        if evaluation and self.evaluates_head:
            raise CheckpointMismatchError(
                f"{source} has no classifier head (a pretraining checkpoint or a bare backbone), "
                "so --eval-only would classify with a random head: fine-tune or linear-probe it "
                "first (configs/Finetune, configs/Linear) and evaluate that run's checkpoint, or "
                "evaluate its features with a retrieval or linear_probe config (configs/Retrieval, "
                "TEST.EVALUATORS)"
            )
        load_backbone_weights(self.backbone, state, source=source)
        logger.info("The classifier head keeps its initialisation: %s has none", source)
        return True

    def _head_fits(self, state: Mapping[str, Any]) -> bool:
        """Whether the ``head.*`` entries of a classifier ``state`` are this head's, in shape."""
        own = self.head.state_dict(prefix="head.")
        theirs = {k: v for k, v in state.items() if k.startswith("head.")}
        return set(own) == set(theirs) and all(
            getattr(theirs[k], "shape", None) == own[k].shape for k in own
        )

    # -- forward ----------------------------------------------------------------------------------
    def encode(self, clips: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """The backbone's feature map of uint8 clips.

        Args:
            clips: ``[N, 3, T, S, S]`` uint8.
            augment: run the device augmentation before normalisation (training).

        Returns:
            ``[N, C, T', H', W']``.
        """
        x = clips.to(self.device, non_blocking=True).float().div_(255)
        x = self.augment(x) if augment else self.augment.normalize(x)
        if self.linear_probe:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def clip_scores(self, clips: torch.Tensor) -> torch.Tensor:
        """Class scores of uint8 clips, without augmentation.

        Args:
            clips: ``[N, 3, T, S, S]`` uint8.

        Returns:
            ``[N, NUM_CLASSES]`` float32.
        """
        return self.head(self.encode(clips))

    def feature_state_dict(self) -> dict[str, torch.Tensor]:
        """The state that :meth:`extract_features` reads, so that the retrieval feature cache is
        not keyed on the head.

        Returns:
            The backbone's state dict, keys prefixed ``backbone.``.
        """
        return self.backbone.state_dict(prefix="backbone.")

    @torch.no_grad()
    def extract_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, without augmentation (retrieval and kNN evaluators).

        Args:
            clips: ``[N, 3, T, S, S]`` uint8.

        Returns:
            ``[N, C]`` float32, L2-normalised.
        """
        return F.normalize(global_pool(self.encode(clips)).float(), dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | torch.Tensor:
        """The classification loss in training mode, the clip scores in eval mode.

        Args:
            batch: ``global`` ``[B, K, 3, T, S, S]`` uint8 (``K = 1`` in training) and, in
                training, ``label`` ``[B]`` int64.

        Returns:
            Training: ``{"loss_cls": 0-d float32}``. Eval: ``[B, K, NUM_CLASSES]`` float32.
        """
        clips = batch["global"]
        windows = clips.shape[1]
        if not self.training:
            return self.clip_scores(clips.flatten(0, 1)).view(clips.shape[0], windows, -1)
        labels = batch["label"].to(self.device).repeat_interleave(windows)
        logits = self.head(self.encode(clips.flatten(0, 1), augment=True))
        loss = F.cross_entropy(logits, labels)
        if has_event_storage():
            get_event_storage().put_scalar(
                "cls_accuracy", (logits.argmax(dim=1) == labels).float().mean()
            )
        return {"loss_cls": loss}
