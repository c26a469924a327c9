#!/usr/bin/env python3
"""Pretrain (or evaluate) with the S3D backbone: fima's tools/train_net.py with ``s3d`` imported.

    python projects/S3D/train_net.py --config-file projects/S3D/configs/moco_s3d_synthetic.yaml

It runs tools/train_net.py itself (every flag works, multi-process included) with ``--import
s3d`` in front of the user's own arguments: that registers the ``S3D`` backbone and adds its
``MODEL.S3D`` keys (``s3d.add_config``) before the config file is merged. ``s3d`` imports from
this file's folder, which Python puts first on ``sys.path`` for a script.
"""

import os
import runpy
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.argv[1:1] = ["--import", "s3d"]
    runpy.run_path(os.path.join(root, "tools", "train_net.py"), run_name="__main__")
