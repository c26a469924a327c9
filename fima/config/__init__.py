"""Configuration: ``get_cfg()`` and the validation of a finished config."""

from fima.config.config import CfgNode
from fima.config.validation import ConfigError, validate_cfg


def get_cfg() -> CfgNode:
    """A fresh copy of every default: the framework's and each core component's own section.

    A project adds its sections with its own ``add_*_config(cfg)`` before merging its YAML.
    """
    from fima.config.defaults import _C
    from fima.data.build import add_data_config
    from fima.data.datasets.synthetic import add_synthetic_config
    from fima.data.datasets.validation import add_validation_config
    from fima.data.datasets.video_list import add_video_list_config
    from fima.evaluation.config import add_evaluation_config
    from fima.modeling.backbone.tiny import add_tiny3d_config
    from fima.modeling.heads.motion_decoder import add_motion_decoder_config
    from fima.modeling.ssl.classifier import add_classifier_config
    from fima.modeling.ssl.fima import add_fima_config
    from fima.modeling.ssl.moco import add_moco_config
    from fima.utils.visualization import add_visualization_config

    cfg = _C.clone()
    for add_config in (
        add_tiny3d_config,
        add_moco_config,
        add_fima_config,
        add_motion_decoder_config,
        add_synthetic_config,
        add_classifier_config,
        add_evaluation_config,
        add_validation_config,
        add_data_config,
        add_video_list_config,
        add_visualization_config,
    ):
        add_config(cfg)
    return cfg


__all__ = ["CfgNode", "ConfigError", "get_cfg", "validate_cfg"]
