"""fvcore's Checkpointer made safe: atomic writes, ``weights_only`` loads, strict resume, fallback.

- A checkpoint is written to a temporary file in the same directory, fsynced, then renamed; the
  ``last_checkpoint`` pointer is replaced the same way. A kill at any moment leaves the previous
  checkpoint and pointer intact (a killed write leaves only a hidden ``.*.tmp`` file, which the
  next resume removes).
- Every load uses ``torch.load(weights_only=True)``: nothing in a checkpoint is executed. A file
  that cannot be read (not a checkpoint, truncated, a directory, the reference code's layout) is a
  one-line :class:`CheckpointReadError` naming it and saying what to do.
- Every load of a model's weights goes through :func:`load_model_state`: resuming requires the
  checkpoint to match the model exactly; ``MODEL.WEIGHTS`` requires every tensor of the model, in
  its shape, and logs the entries the model does not have. A mismatch is a
  :class:`CheckpointMismatchError` listing the keys. The one partial load is a method's own
  ``transfer_weights`` (a classifier initialised from a pretraining checkpoint's backbone).
- If the newest checkpoint cannot be read (truncated, corrupt), resuming falls back to the
  next newest with a warning naming the bad file.
- State that differs per rank (RNG states, BatchNorm running statistics) is gathered from every
  rank into the one file that rank 0 writes, and each rank gets its own back on resume.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from torch import nn

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


class CheckpointReadError(ValueError):
    """A file that cannot be read as a checkpoint; the message names it and says why."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, say); the message names it, says
    why, and which checkpoint is intact."""


# How many keys of each kind a mismatch message shows before it gives their count.
_SHOWN_KEYS = 5
# A write that failed with less free space than this left on its disk failed for want of it.
_FULL_BELOW_BYTES = 1 << 20
# What a mismatch message suggests, when resuming and for MODEL.WEIGHTS.
_RESUME_ADVICE = (
    "Was it made with another config? Resume with that config, or give another OUTPUT_DIR"
)
_WEIGHTS_ADVICE = (
    "Was it made with another config or method? MODEL.WEIGHTS must be a checkpoint of this "
    "config's model (a classifier also starts from a backbone exported by "
    "tools/convert_checkpoint.py --to backbone)"
)


def _unreadable_reason(err: Exception, path: str) -> str:
    """One line on why ``torch.load(weights_only=True)`` of ``path`` failed with ``err``."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        # Also what a text file or random bytes give, read as a legacy pickle stream.
        with open(path, "rb") as f:
            problem = torch_file_problem(f)
        if problem is not None:
            return problem
        detail = next((line for line in text.splitlines() if "WeightsUnpickler" in line), "")
        detail = detail.strip().split(". Please")[0]
        return (
            "it holds objects that cannot be loaded without executing code, so it is not read "
            f"(weights_only=True; {detail or 'see torch.load'}); save its tensors alone, e.g. "
            "torch.save({'model': model.state_dict()}, path)"
        )
    if isinstance(err, EOFError):
        return "the file is empty or ends early (an interrupted copy or download?)"
    if isinstance(err, RuntimeError) and "zip archive" in text:
        return "it is truncated or corrupt (" + text.split(". ")[0] + "); copy it again"
    first = text.splitlines()[0] if text else ""
    return (
        "it is not a file written by torch.save, or it is corrupt "
        f"({type(err).__name__}: {first[:120]})"
    )


def torch_file_problem(f: BinaryIO) -> str | None:
    """Why the open file ``f`` cannot be a ``torch.save`` file, or None when it can be.

    Reads only its first bytes and, for a zip archive (``torch.save``'s format since torch 1.6),
    the central directory at its end; a legacy file (a pickle stream) is accepted on its first
    byte. This catches what a server sends instead of a checkpoint (an error or login page) and
    an archive cut short, without loading the tensors.

    Args:
        f: opened for reading in binary mode, at any position (it is left at an undefined one).
    """
    f.seek(0)
    head = f.read(64)
    if not head:
        return "it is empty"
    if head.startswith(b"\x80"):  # a pickle stream (protocol >= 2): torch.save's legacy format
        return None
    if zipfile.is_zipfile(f):
        f.seek(0)
        try:
            names = zipfile.ZipFile(f).namelist()
        except (zipfile.BadZipFile, OSError) as err:
            return f"it is a corrupt zip archive ({err})"
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return None
        return "it is a zip archive without data.pkl, not a file written by torch.save"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive without its end (cut short)"
    text = head.lstrip().lower()
    page = text.startswith((b"<!doctype", b"<html", b"<?xml", b"{")) or b"<html" in text
    return f"it is not a file written by torch.save: it starts with {head[:40]!r}" + (
        " (a web page or an error message: check the URL)" if page else ""
    )


def read_checkpoint(path: str) -> dict[str, Any]:
    """The dict stored in a checkpoint file, read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointReadError: ``path`` is a directory, is not a ``torch.save`` file, is truncated,
            holds objects that would need code to run, or holds something other than a dict;
            the one-line message names the file and says why.
    """
    if os.path.isdir(path):
        raise CheckpointReadError(
            f"Cannot read checkpoint {path}: it is a directory; give the checkpoint file in it "
            "(e.g. model_final.pth)"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        # torch.load raises EINVAL for some files cut short (where a record's data would be).
        reason = (
            "it is truncated or corrupt (torch.load: Invalid argument); copy it again"
            if err.errno == errno.EINVAL
            else err.strerror or str(err)
        )
        raise CheckpointReadError(f"Cannot read checkpoint {path}: {reason}") from err
    except Exception as err:
        raise CheckpointReadError(
            f"Cannot read checkpoint {path}: {_unreadable_reason(err, path)}"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(
            f"Cannot read checkpoint {path}: it holds a {type(checkpoint).__name__}, not a "
            "checkpoint dict"
        )
    return checkpoint


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """A checkpoint file as ``{"model": state_dict, ...}``: a fima checkpoint as it is, a plain
    ``state_dict`` (e.g. an exported backbone) as the model's weights.

    Raises:
        FileNotFoundError, CheckpointReadError: as :func:`read_checkpoint`; also for a checkpoint
            of the reference code bases, which ``tools/convert_checkpoint.py`` converts first.
    """
    from fima.checkpoint.convert import reference_state

    checkpoint = read_checkpoint(path)
    if "model" in checkpoint:
        return checkpoint
    if reference_state(checkpoint) is not None:
        raise CheckpointReadError(
            f"Cannot load {path}: it is a checkpoint of the reference code (FIMA/FAME/MoCo: "
            "{'state_dict': ...}); convert it first with python tools/convert_checkpoint.py "
            f"--from fima-reference --to backbone --input {path} --output converted.pth (--to "
            "classifier for a fine-tuned one) and give converted.pth"
        )
    return {"model": checkpoint}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")


def check_state(
    own: Mapping[str, Any],
    state: Mapping[str, Any],
    source: str,
    *,
    exact: bool,
    advice: str = _RESUME_ADVICE,
) -> list[str]:
    """Check that a checkpoint's model ``state`` fits a model whose state is ``own``.

    Args:
        own: the model's ``state_dict()``.
        state: the checkpoint's model state.
        source: what the state came from, for the message (the file).
        exact: also refuse entries that the model does not have (resuming).
        advice: what the message suggests.

    Returns:
        The keys of ``state`` that the model does not have (empty when ``exact``).

    Raises:
        CheckpointMismatchError: a model key is missing, a shape differs, or (``exact``) a key is
            unexpected; the one-line message lists a few of each and their number.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    )
    problems = [("missing", missing), ("shape", shapes)]
    if exact:
        problems.append(("unexpected", unexpected))
    listed = [f"{title}: {_listed(keys)}" for title, keys in problems if keys]
    if listed:
        raise CheckpointMismatchError(
            f"Checkpoint {source} does not match the model: {'; '.join(listed)}. {advice}"
        )
    return [] if exact else unexpected


def model_state(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """A checkpoint's model state without DDP's ``module.`` prefix, checked to hold tensors only.

    Raises:
        CheckpointReadError: an entry is not a tensor.
    """
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointReadError(
                f"Cannot load {source}: its model entry {key!r} is a {type(value).__name__}, not "
                "a tensor; is it a fima checkpoint? (tools/convert_checkpoint.py converts the "
                "reference code's and torchvision's)"
            )
    return dict(state)


def load_model_state(
    model: nn.Module,
    state: Mapping[str, Any],
    source: str,
    *,
    exact: bool = False,
    evaluation: bool = False,
) -> None:
    """Load a checkpoint's model ``state`` into ``model``, strictly: the one way weights enter a
    model (``MODEL.WEIGHTS`` for training and ``--eval-only``, resuming, the model zoo).

    Every tensor of the model must be in ``state`` with its shape. Entries that the model does
    not have are logged and ignored, or refused when ``exact``. A model may take a checkpoint of
    another layout through its ``transfer_weights(state, source, evaluation)``, which returns
    False for its own layout; e.g. a ``VideoClassifier`` initialises its backbone from a
    pretraining checkpoint and keeps its head (not when ``exact``).

    Args:
        model: the model to load into.
        state: the checkpoint's model state (a DDP ``module.`` prefix is dropped).
        source: the checkpoint's path or URL, for messages.
        exact: the checkpoint must be of this very model (resuming).
        evaluation: the model is evaluated as loaded, so nothing it computes with may be left
            as initialised (passed to ``transfer_weights``).

    Raises:
        CheckpointMismatchError: the checkpoint does not fit the model; the message lists keys.
        CheckpointReadError: the state holds something other than tensors.
    """
    state = model_state(state, source)
    transfer = getattr(model, "transfer_weights", None)
    if not exact and transfer is not None and transfer(state, source, evaluation=evaluation):
        return
    own = model.state_dict()
    advice = _RESUME_ADVICE if exact else _WEIGHTS_ADVICE
    unexpected = check_state(own, state, source, exact=exact, advice=advice)
    if unexpected:
        logger.warning(
            "%s: %d entries that the model does not have are ignored: %s",
            source,
            len(unexpected),
            _listed(unexpected),
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    logger.info("Loaded %d tensors from %s", len(own), source)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Any, mode: str = "wb", tag: str = "") -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it to ``path``.

    Readers see the old file or the complete new one, never a partial file, whenever the
    process is killed; a kill leaves the temp file ``.<name>.[<tag>.]<random>.tmp``.

    Args:
        path: the file to write.
        write: called with the open temp file.
        mode: the temp file's open mode.
        tag: put in the temp file's name (say, which process writes it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    prefix = f".{os.path.basename(path)}." + (f"{tag}." if tag else "")
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException as err:
        # Asked while the temp file still holds its space.
        full = isinstance(err, Exception) and _disk_full(err, directory)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from err
        raise


def _disk_full(err: BaseException, directory: str) -> bool:
    """Whether ``err``, raised while writing into ``directory``, comes of a full disk (or quota):
    torch.save reports a short write as a RuntimeError ('unexpected pos ...'), without errno."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    try:
        return shutil.disk_usage(directory).free < _FULL_BELOW_BYTES
    except OSError:
        return False


class Checkpointer(_FvcoreCheckpointer):
    """Saves and loads the model and any ``state_dict``-bearing objects (optimizer, scheduler,
    data loader position, trainer state) under ``save_dir``.

    A checkpointable may also define ``rank_state_dict()`` and ``load_rank_state_dict(state)``
    for state that differs between ranks. Under DDP :meth:`save` and :meth:`resume` are
    therefore collective: call them on every rank (only the ranks with ``save_to_disk`` write).
    """

    # The file that :meth:`resume` loaded (None before, or when there was none).
    resumed_file: str | None = None

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
        try:
            atomic_write(path, lambda f: torch.save(data, f))
        except OSError as err:
            intact = self.get_checkpoint_file() if self.has_checkpoint() else ""
            raise CheckpointWriteError(
                f"Cannot write checkpoint {path}: {err.strerror or err}; "
                + (
                    f"the newest checkpoint, {intact}, is intact: make room, then continue with "
                    "--resume"
                    if intact
                    else "there is no earlier checkpoint: make room and start again"
                )
            ) from err
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            mode="w",
        )

    def _load_file(self, f: str) -> dict[str, Any]:
        return load_checkpoint_file(f)

    def load(
        self, path: str, checkpointables: list[str] | None = None, *, evaluation: bool = False
    ) -> dict[str, Any]:
        """Load the local file ``path`` into the model (strictly: :func:`load_model_state`) and
        the named checkpointables (default all; ``[]`` for the weights alone).

        Args:
            path: the checkpoint file; empty: nothing is loaded.
            checkpointables: which of the other objects to restore.
            evaluation: the model is evaluated as loaded (see :func:`load_model_state`).

        Returns:
            The checkpoint's remaining data (e.g. ``iteration``).

        Raises:
            FileNotFoundError, CheckpointReadError: the file cannot be read.
            CheckpointMismatchError: it does not fit the model.
        """
        if not path:
            logger.info("No checkpoint given: the model keeps its initialisation")
            return {}
        logger.info("Loading %s", path)
        return self._load_weights(self._load_file(path), path, checkpointables, evaluation)

    def _load_weights(
        self,
        checkpoint: dict[str, Any],
        path: str,
        checkpointables: list[str] | None,
        evaluation: bool,
    ) -> dict[str, Any]:
        """:meth:`load` of the already read ``checkpoint`` of file ``path``."""
        load_model_state(self.model, checkpoint.pop("model"), path, evaluation=evaluation)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
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
        elif os.path.basename(pointed):  # moved or deleted since: another is taken, or none
            logger.warning(
                "last_checkpoint in %s names %s, which is not there; %s",
                self.save_dir,
                os.path.basename(pointed),
                f"taking the newest checkpoint there, {ordered[0]}"
                if ordered
                else "there is no checkpoint to continue from",
            )
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

    def load_newest(self, *, evaluation: bool = False) -> str | None:
        """Load the model weights alone from the newest checkpoint file of ``save_dir`` that can
        be read, falling back past unreadable ones as :meth:`resume` does (each logged), as
        :meth:`load` with ``checkpointables=[]`` (``--eval-only --resume``). The file is read
        once.

        Returns:
            The file loaded, or None when ``save_dir`` holds no checkpoint.

        Raises:
            CheckpointReadError: checkpoints exist but none can be read.
            CheckpointMismatchError: the file does not fit the model.
        """
        checkpoint, path, error = self._newest_readable()
        if error is not None:
            raise CheckpointReadError(error)
        if checkpoint is None or path is None:
            return None
        logger.info("Loading %s, the newest checkpoint of %s", path, self.save_dir)
        self._load_weights(checkpoint, path, [], evaluation)
        return path

    def _newest_readable(self) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """``(checkpoint, path, None)`` of the newest readable file, ``(None, None, None)`` when
        there is none, or ``(None, None, error)`` when files exist but none can be read."""
        candidates = self.checkpoint_candidates()
        for path in candidates:
            try:
                return self._load_file(path), path, None
            except (OSError, CheckpointReadError) as err:
                logger.warning("%s; trying the previous one", err)
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
            CheckpointReadError: checkpoints exist but none can be read, or a rank cannot read
                the file rank 0 chose (``OUTPUT_DIR`` must be shared by all machines).
        """
        checkpoint: dict[str, Any] | None = None
        path = error = None
        if comm.is_main_process():
            self.remove_stale_temp_files()
            checkpoint, path, error = self._newest_readable()
        path, error = comm.broadcast_object((path, error))
        if error is not None:
            raise CheckpointReadError(error)
        if path is None:
            return None
        if checkpoint is None:
            try:
                checkpoint = self._load_file(path)
            except Exception as err:
                error = f"rank {comm.get_rank()} cannot read {path} ({err})"
        errors = [e for e in comm.all_gather_object(error) if e]
        if errors:
            raise CheckpointReadError(
                "; ".join(errors) + ". Every rank resumes from the checkpoint that rank 0 "
                "chose: OUTPUT_DIR must be on a file system that all machines share."
            )
        assert checkpoint is not None
        logger.info("Resuming from %s", path)
        self.resumed_file = path
        load_model_state(self.model, checkpoint.pop("model"), path, exact=True)
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
