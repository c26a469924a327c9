#!/usr/bin/env python3
"""Pretrain with FAME: fima's tools/train_net.py with the ``fame`` project imported.

    python projects/FAME/train_net.py --config-file projects/FAME/configs/fame_synthetic.yaml

It runs tools/train_net.py itself (every flag works, multi-process included) with ``--import
fame`` in front of the user's own arguments: that registers the ``FAMEMoCo`` method and adds its
``MODEL.FAME`` keys (``fame.add_config``) before the config file is merged. ``fame`` imports from
this file's folder, which Python puts first on ``sys.path`` for a script.
"""

import os
import runpy
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.argv[1:1] = ["--import", "fame"]
    runpy.run_path(os.path.join(root, "tools", "train_net.py"), run_name="__main__")
