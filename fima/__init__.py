"""fima: self-supervised video representation learning (MoCo and FIMA), detectron2-style."""

__version__ = "0.1.0"
