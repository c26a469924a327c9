"""The model zoo: shipped configs and sha256-verified pretrained checkpoints (see MODEL_ZOO.md)."""

from fima.model_zoo.download import ChecksumError, DownloadError
from fima.model_zoo.model_zoo import (
    PathManager,
    available_configs,
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    register_checkpoint,
)

__all__ = [
    "ChecksumError",
    "DownloadError",
    "PathManager",
    "available_configs",
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "register_checkpoint",
]
