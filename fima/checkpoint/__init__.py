"""Checkpointing: atomic saves, safe loads, strict resume with fallback."""

from fima.checkpoint.checkpointer import (
    Checkpointer,
    CheckpointMismatchError,
    atomic_write,
)

__all__ = ["CheckpointMismatchError", "Checkpointer", "atomic_write"]
