"""fvcore's Checkpointer made safe: atomic writes, ``weights_only`` loads, strict resume, fallback.

- A checkpoint is written to a temporary file in the same directory, fsynced, then renamed; the
  ``last_checkpoint`` pointer is replaced the same way. A kill at any moment leaves the previous
  checkpoint and pointer intact (a killed write leaves only a hidden ``.*.tmp`` file, which the
  next resume removes).
- Every load uses ``torch.load(weights_only=True)``: nothing in a checkpoint is executed.
- Resuming requires the checkpoint to match the model exactly; a mismatch fails with the keys.
- If the newest checkpoint cannot be read (truncated, corrupt), resuming falls back to the
  next newest with a warning naming the bad file.
- State that differs per rank (RNG states, BatchNorm running statistics) is gathered from every
  rank into the one file that rank 0 writes, and each rank gets its own back on resume.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Any

import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer

from fima.utils import comm

logger = logging.getLogger(__name__)

_ITERATION = re.compile(r"_(\d+)\.pth$")
# What atomic_write leaves behind when it is killed: ".<name>.<random>.tmp".
_STALE_TEMP = re.compile(r"^\.(.+\.pth|last_checkpoint)\.\w+\.tmp$")


def _file_mode() -> int:
    # mkstemp creates files readable by their owner only; written files get the usual
    # permissions instead (what open() would give under the current umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose tensors do not match the model (different config or architecture)."""


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Any, mode: str = "wb") -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it to ``path``.

    Readers see the old file or the complete new one, never a partial file, whenever the
    process is killed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _FILE_MODE)
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
    data loader position, trainer state) under ``save_dir``.

    A checkpointable may also define ``rank_state_dict()`` and ``load_rank_state_dict(state)``
    for state that differs between ranks. Under DDP :meth:`save` and :meth:`resume` are
    therefore collective: call them on every rank (only the ranks with ``save_to_disk`` write).
    """

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically and point ``last_checkpoint`` at it.

        Call on every rank: the per-rank states are gathered first.
        """
        rank_states = {
            key: comm.all_gather_object(obj.rank_state_dict())
            for key, obj in self.checkpointables.items()
            if hasattr(obj, "rank_state_dict")
        }
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if rank_states:
            data["rank_states"] = rank_states
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
        if not os.path.isdir(self.save_dir):
            return []
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

    def remove_stale_temp_files(self) -> list[str]:
        """Delete what killed writes left in ``save_dir`` (hidden ``.*.tmp`` files); return them."""
        if not os.path.isdir(self.save_dir):
            return []
        removed = []
        for name in sorted(os.listdir(self.save_dir)):
            if _STALE_TEMP.match(name):
                os.unlink(os.path.join(self.save_dir, name))
                removed.append(name)
        if removed:
            logger.info("Removed unfinished writes of an earlier run: %s", ", ".join(removed))
        return removed

    def _newest_readable(self) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """``(checkpoint, path, None)`` of the newest readable file, ``(None, None, None)`` when
        there is none, or ``(None, None, error)`` when files exist but none can be read."""
        candidates = self.checkpoint_candidates()
        for path in candidates:
            try:
                return self._load_file(path), path, None
            except Exception as err:
                logger.warning("Cannot read checkpoint %s (%s); trying the previous one", path, err)
        if not candidates:
            return None, None, None
        error = (
            f"None of the checkpoints in {self.save_dir} can be read ({len(candidates)} tried, "
            "see the warnings); move them away to start over"
        )
        return None, None, error

    def resume(self) -> dict[str, Any] | None:
        """Load the newest readable checkpoint with every checkpointable, strictly.

        Rank 0 chooses the file (falling back past unreadable ones) and every rank loads that
        file, so all ranks continue from the same state. Call on every rank.

        Returns:
            The checkpoint's extra data (e.g. ``iteration``), or None when ``save_dir`` holds no
            checkpoint.

        Raises:
            CheckpointMismatchError: the newest readable checkpoint does not fit the model.
            RuntimeError: checkpoints exist but none can be read, or a rank cannot read the
                file rank 0 chose (``OUTPUT_DIR`` must be shared by all machines).
        """
        checkpoint: dict[str, Any] | None = None
        path = error = None
        if comm.is_main_process():
            self.remove_stale_temp_files()
            checkpoint, path, error = self._newest_readable()
        path, error = comm.broadcast_object((path, error))
        if error is not None:
            raise RuntimeError(error)
        if path is None:
            return None
        if checkpoint is None:
            try:
                checkpoint = self._load_file(path)
            except Exception as err:
                error = f"rank {comm.get_rank()} cannot read {path} ({err})"
        errors = [e for e in comm.all_gather_object(error) if e]
        if errors:
            raise RuntimeError(
                "; ".join(errors) + ". Every rank resumes from the checkpoint that rank 0 "
                "chose: OUTPUT_DIR must be on a file system that all machines share."
            )
        assert checkpoint is not None
        logger.info("Resuming from %s", path)
        self._check_compatible(checkpoint["model"], path)
        self._load_model(checkpoint)
        for key, obj in self.checkpointables.items():
            if key in checkpoint:
                obj.load_state_dict(checkpoint.pop(key))
        self._load_rank_states(checkpoint.pop("rank_states", {}), path)
        return checkpoint

    def _load_rank_states(self, rank_states: dict[str, list[Any]], path: str) -> None:
        world, rank = comm.get_world_size(), comm.get_rank()
        for key, states in rank_states.items():
            obj = self.checkpointables.get(key)
            if obj is None or not hasattr(obj, "load_rank_state_dict"):
                continue
            if len(states) != world:
                logger.warning(
                    "%s was written by %d processes, this run has %d: the per-rank state of %r "
                    "is not restored, so the run does not continue bit for bit",
                    path,
                    len(states),
                    world,
                    key,
                )
                continue
            obj.load_rank_state_dict(states[rank])

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
