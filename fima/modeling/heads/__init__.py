"""Heads: ``HEAD_REGISTRY`` and its entries."""

from fima.modeling.heads.build import HEAD_REGISTRY, build_head
from fima.modeling.heads.projection import ProjectionHead

__all__ = ["HEAD_REGISTRY", "ProjectionHead", "build_head"]
