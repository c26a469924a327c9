"""fvcore's Checkpointer made safe: atomic writes, ``weights_only`` loads, strict resume, fallback.

- A checkpoint is written to a temporary file in the same directory, fsynced, then renamed; the
  ``last_checkpoint`` pointer is replaced the same way. A kill at any moment leaves the previous
  checkpoint and pointer intact.
- Every load uses ``torch.load(weights_only=True)``: nothing in a checkpoint is executed.
- Resuming requires the checkpoint to match the model exactly; a mismatch fails with the keys.
- If the newest checkpoint cannot be read (truncated, corrupt), resuming falls back to the
  next newest with a warning naming the bad file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Any

import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer

logger = logging.getLogger(__name__)

_ITERATION = re.compile(r"_(\d+)\.pth$")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose tensors do not match the model (different config or architecture)."""


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Any, mode: str = "wb") -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Checkpointer(_FvcoreCheckpointer):
    """Saves and loads the model and any ``state_dict``-bearing objects (optimizer, scheduler,
    data loader position, trainer state) under ``save_dir``."""

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically and point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            mode="w",
        )

    def _load_file(self, f: str) -> dict[str, Any]:
        checkpoint = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict):
            raise ValueError(f"{f} is not a checkpoint dict")
        if "model" not in checkpoint:
            # A plain state_dict (e.g. an exported backbone): treat it as the model's weights.
            checkpoint = {"model": checkpoint}
        return checkpoint

    def checkpoint_candidates(self) -> list[str]:
        """Checkpoint files of ``save_dir``, newest first: the pointer's target, then the others
        by iteration number (``model_final`` counts as newest)."""
        files = self.get_all_checkpoint_files()

        def order(path: str) -> tuple[int, float]:
            match = _ITERATION.search(path)
            rank = int(match.group(1)) if match else (1 << 62 if "final" in path else -1)
            return rank, os.path.getmtime(path)

        ordered = sorted(files, key=order, reverse=True)
        pointed = self.get_checkpoint_file()
        if pointed in ordered:
            ordered.remove(pointed)
            ordered.insert(0, pointed)
        return ordered

    def resume(self) -> dict[str, Any] | None:
        """Load the newest readable checkpoint with every checkpointable, strictly.

        Returns:
            The checkpoint's extra data (e.g. ``iteration``), or None when ``save_dir`` holds no
            checkpoint.

        Raises:
            CheckpointMismatchError: the newest readable checkpoint does not fit the model.
        """
        for path in self.checkpoint_candidates():
            try:
                checkpoint = self._load_file(path)
            except Exception as err:
                logger.warning("Cannot read checkpoint %s (%s); trying the previous one", path, err)
                continue
            logger.info("Resuming from %s", path)
            self._check_compatible(checkpoint["model"], path)
            self._load_model(checkpoint)
            for key, obj in self.checkpointables.items():
                if key in checkpoint:
                    obj.load_state_dict(checkpoint.pop(key))
            return checkpoint
        return None

    def _check_compatible(self, state: dict[str, Any], path: str) -> None:
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(state)
            if isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
        )
        if missing or unexpected or shapes:
            lines = [
                f"Checkpoint {path} does not match the model (was it made with another config?)"
            ]
            for title, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape", shapes),
            ):
                if keys:
                    shown = ", ".join(keys[:20]) + (
                        f" ... ({len(keys)} in all)" if len(keys) > 20 else ""
                    )
                    lines.append(f"  {title}: {shown}")
            raise CheckpointMismatchError("\n".join(lines))
