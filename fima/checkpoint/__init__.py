"""Checkpointing: atomic saves, safe loads, strict resume with fallback, strict weights."""

from fima.checkpoint.checkpointer import (
    Checkpointer,
    CheckpointMismatchError,
    CheckpointReadError,
    CheckpointWriteError,
    atomic_write,
    load_checkpoint_file,
    load_model_state,
)

__all__ = [
    "CheckpointMismatchError",
    "CheckpointReadError",
    "CheckpointWriteError",
    "Checkpointer",
    "atomic_write",
    "load_checkpoint_file",
    "load_model_state",
]
