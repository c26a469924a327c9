"""A validation split carved from the training split by group, for model selection off the test set.

RECIPE.md §9: the reference picks the best epoch on the test split. fima reports the last epoch,
and when asked (``DATA.VALIDATION.FRACTION > 0``) holds out part of the training split as ``"val"``
to select checkpoints on. The hold-out is drawn per class and by :attr:`VideoRecord.group` (UCF101's
``gXX``: clips cut from one long video), so that near-duplicate clips of one group are never on
both sides of the split. The carving is seeded and does not depend on the number of processes.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.data.datasets.build import VideoDataset
from fima.utils.logger import log_once

logger = logging.getLogger(__name__)

# The name of the carved split, next to DATA.TRAIN_SPLIT and DATA.TEST_SPLIT. While
# DATA.VALIDATION.FRACTION is 0 the name is left to the dataset (Kinetics has its own "val").
VALIDATION_SPLIT = "val"


def add_validation_config(cfg: CfgNode) -> None:
    """``DATA.VALIDATION``: the validation split carved from the training split."""
    cfg.DATA.VALIDATION = CN()
    # Share of each class's groups held out of the training split as the "val" split. 0: no
    # validation split; the training split is used whole.
    cfg.DATA.VALIDATION.FRACTION = 0.0
    # Seed of the draw of held-out groups (independent of SEED, so that runs with different
    # training seeds select on the same videos).
    cfg.DATA.VALIDATION.SEED = 0


def validate_validation_config(cfg: CfgNode) -> None:
    """Start-up checks of ``DATA.VALIDATION``; raises ``ConfigError`` naming the key."""
    from fima.config.validation import require

    fraction = cfg.DATA.VALIDATION.FRACTION
    require(0.0 <= fraction < 1.0, "DATA.VALIDATION.FRACTION", f"must be in [0, 1), got {fraction}")
    if fraction > 0:
        require(
            VALIDATION_SPLIT not in (cfg.DATA.TRAIN_SPLIT, cfg.DATA.TEST_SPLIT),
            "DATA.TEST_SPLIT",
            f"{VALIDATION_SPLIT!r} names the split carved from the training split while "
            "DATA.VALIDATION.FRACTION > 0; use the dataset's own split names for train and test",
        )


def uses_validation_split(cfg: CfgNode, split: str) -> bool:
    """Whether ``split`` is carved: the validation split, or the training split it came from."""
    return cfg.DATA.VALIDATION.FRACTION > 0 and split in (cfg.DATA.TRAIN_SPLIT, VALIDATION_SPLIT)


def held_out_groups(groups: list[str], labels: list[int], fraction: float, seed: int) -> set[str]:
    """Draw ``fraction`` of each class's groups (at least one, never all of them).

    Args:
        groups: the group of every video (a video without a group is a group of its own).
        labels: the label of every video; a group belongs to the class of its first video.
        fraction: share of groups to hold out, in (0, 1).
        seed: seed of the draw.

    Returns:
        The held-out group names. A class with a single group keeps it for training.
    """
    by_class: dict[int, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for group, label in zip(groups, labels):
        if group not in seen:
            seen.add(group)
            by_class[label].append(group)
    held: set[str] = set()
    for label in sorted(by_class):
        names = sorted(by_class[label])
        if len(names) < 2:
            continue
        count = min(max(int(round(fraction * len(names))), 1), len(names) - 1)
        rng = np.random.default_rng([seed, label + 1])
        held.update(names[i] for i in rng.permutation(len(names))[:count])
    return held


def carve_validation_split(cfg: CfgNode, split: str, train: VideoDataset) -> VideoDataset:
    """The ``"val"`` part (``split == "val"``) or the remaining training part of ``train``.

    Raises:
        ConfigError: ``DATA.VALIDATION`` is out of range.
    """
    validate_validation_config(cfg)
    groups = [record.group or record.path for record in train.records]
    held = held_out_groups(
        groups,
        [record.label for record in train.records],
        cfg.DATA.VALIDATION.FRACTION,
        cfg.DATA.VALIDATION.SEED,
    )
    want_val = split == VALIDATION_SPLIT
    records = [r for r, g in zip(train.records, groups) if (g in held) == want_val]
    remaining = sum(g not in held for g in groups)
    # Said once, not at every build of either part.
    log_once(
        logger,
        logging.INFO,
        ("carve", train.name, train.root, train.split, len(train), len(held), remaining),
        "Validation split carved from %s/%s by group: %d groups, %d videos held out as %r; "
        "%d videos remain for training",
        train.name,
        train.split,
        len(held),
        len(train) - remaining,
        VALIDATION_SPLIT,
        remaining,
    )
    return VideoDataset(
        records,
        train.class_names,
        name=train.name,
        split=VALIDATION_SPLIT if want_val else train.split,
        root=train.root,
    )
