"""Shared settings of the evaluation tests: a 3-class synthetic set whose test split is odd (3)."""

from __future__ import annotations

from fima.config import CfgNode
from tests.conftest import tiny_cfg

# 3 classes x 6 videos, one test group per class: 15 training and 3 test videos.
EVAL_DATA = {
    "DATA.SYNTHETIC.CLASSES": ("SlideHorizontal", "SlideUp", "Circle"),
    "DATA.SYNTHETIC.VIDEOS_PER_CLASS": 6,
    "DATA.SYNTHETIC.TEST_GROUPS": 1,
}

# The same sizes as command-line overrides of tools/train_net.py (tiny_cfg's model and input).
TINY_OPTS = [
    "MODEL.TINY3D.WIDTHS", "(8, 16, 16, 32)", "MODEL.PROJECTOR.HIDDEN_DIM", "32",
    "MODEL.PROJECTOR.OUT_DIM", "16", "MODEL.MOCO.QUEUE_SIZE", "64",
    "INPUT.NUM_FRAMES", "8", "INPUT.CROP_SIZE", "32", "DATA.NUM_WORKERS", "0",
    "DATA.SYNTHETIC.CLASSES", "('SlideHorizontal', 'SlideUp', 'Circle')",
    "DATA.SYNTHETIC.VIDEOS_PER_CLASS", "6", "DATA.SYNTHETIC.TEST_GROUPS", "1",
    "DATA.SYNTHETIC.NUM_FRAMES", "40", "DATA.SYNTHETIC.HEIGHT", "48",
    "DATA.SYNTHETIC.WIDTH", "64", "SOLVER.IMS_PER_BATCH", "4", "TEST.NUM_CLIPS", "2",
    "TEST.IMS_PER_BATCH", "4", "LOG_PERIOD", "1",
]  # fmt: skip


def classifier_cfg(output_dir: str | None = None, **overrides: object) -> CfgNode:
    """A tiny VideoClassifier on the 3-class set (fine-tuning unless overridden)."""
    return tiny_cfg(
        output_dir,
        **{"MODEL.META_ARCHITECTURE": "VideoClassifier", **EVAL_DATA, **overrides},
    )
