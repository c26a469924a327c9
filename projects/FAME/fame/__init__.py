"""The FAME project: importing it registers ``FAMEMoCo``; ``add_config`` adds its keys."""

from fame.merge import background_sources, merge_foreground, motion_foreground_mask
from fame.moco import FAMEMoCo, add_fame_config

# tools/train_net.py --import fame calls add_config(cfg) before merging the config file.
add_config = add_fame_config

__all__ = [
    "FAMEMoCo",
    "add_config",
    "add_fame_config",
    "background_sources",
    "merge_foreground",
    "motion_foreground_mask",
]
