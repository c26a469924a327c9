"""Heads: ``HEAD_REGISTRY`` and its entries."""

from fima.modeling.heads.build import HEAD_REGISTRY, build_head
from fima.modeling.heads.classifier import LinearClassifier
from fima.modeling.heads.motion_decoder import MotionDecoder, add_motion_decoder_config
from fima.modeling.heads.projection import ProjectionHead

__all__ = [
    "HEAD_REGISTRY",
    "LinearClassifier",
    "MotionDecoder",
    "ProjectionHead",
    "add_motion_decoder_config",
    "build_head",
]
