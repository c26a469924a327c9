"""The S3D project: importing it registers the ``S3D`` backbone; ``add_config`` adds its keys."""

from s3d.backbone import S3D, SepInceptionBlock, SepUnit3D, add_s3d_config

# tools/train_net.py --import s3d calls add_config(cfg) before merging the config file.
add_config = add_s3d_config

__all__ = ["S3D", "SepInceptionBlock", "SepUnit3D", "add_config", "add_s3d_config"]
