"""Models: backbones, heads, SSL methods, and the motion and loss functions they share."""

from fima.modeling.backbone import BACKBONE_REGISTRY, Backbone, build_backbone
from fima.modeling.heads import HEAD_REGISTRY, build_head
from fima.modeling.ssl import SSL_METHOD_REGISTRY, SSLMethod, build_model

__all__ = [
    "BACKBONE_REGISTRY",
    "HEAD_REGISTRY",
    "SSL_METHOD_REGISTRY",
    "Backbone",
    "SSLMethod",
    "build_backbone",
    "build_head",
    "build_model",
]
