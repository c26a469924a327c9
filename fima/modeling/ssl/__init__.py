"""Training methods: ``SSL_METHOD_REGISTRY`` and its entries."""

from fima.modeling.ssl.build import SSL_METHOD_REGISTRY, SSLMethod, build_model
from fima.modeling.ssl.classifier import VideoClassifier, add_classifier_config
from fima.modeling.ssl.fima import FIMA, add_fima_config
from fima.modeling.ssl.moco import MoCo, add_moco_config

__all__ = [
    "FIMA",
    "SSL_METHOD_REGISTRY",
    "MoCo",
    "SSLMethod",
    "VideoClassifier",
    "add_classifier_config",
    "add_fima_config",
    "add_moco_config",
    "build_model",
]
