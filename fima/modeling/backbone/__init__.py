"""Video backbones: ``BACKBONE_REGISTRY`` and its entries (I3D, R2Plus1D18, R3D18, Tiny3D)."""

from fima.modeling.backbone.build import BACKBONE_REGISTRY, Backbone, build_backbone
from fima.modeling.backbone.i3d import I3D
from fima.modeling.backbone.resnet3d import R3D18, R2Plus1D18
from fima.modeling.backbone.tiny import Tiny3D, add_tiny3d_config

__all__ = [
    "BACKBONE_REGISTRY",
    "I3D",
    "R3D18",
    "Backbone",
    "R2Plus1D18",
    "Tiny3D",
    "add_tiny3d_config",
    "build_backbone",
]
