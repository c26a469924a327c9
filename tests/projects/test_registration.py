"""The projects extend fima from outside: fima alone knows neither S3D nor FAMEMoCo."""

from __future__ import annotations

import subprocess
import sys

from tests.projects.common import PROJECTS, ROOT

CHECK = f"""
import sys
from fima.config import get_cfg
from fima.modeling import BACKBONE_REGISTRY, SSL_METHOD_REGISTRY

cfg = get_cfg()
assert "S3D" not in BACKBONE_REGISTRY and "S3D" not in cfg.MODEL
assert "FAMEMoCo" not in SSL_METHOD_REGISTRY and "FAME" not in cfg.MODEL
sys.path[:0] = [{PROJECTS + "/S3D"!r}, {PROJECTS + "/FAME"!r}]
import fame, s3d
s3d.add_config(cfg)
fame.add_config(cfg)
assert "S3D" in BACKBONE_REGISTRY and cfg.MODEL.S3D.WIDTH_MULT == 1.0
assert "FAMEMoCo" in SSL_METHOD_REGISTRY and cfg.MODEL.FAME.PROB == 0.5
assert not s3d.__file__.startswith({ROOT + "/fima"!r})
assert not fame.__file__.startswith({ROOT + "/fima"!r})
"""


def test_projects_register_only_when_imported() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
