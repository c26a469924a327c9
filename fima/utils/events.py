"""Metrics from anywhere: an ``EventStorage`` that models and hooks write into, and its writers.

Inside a training run any code may call ``get_event_storage().put_scalar("loss_dense", v)``; the
writers (console with ETA, ``metrics.json`` with one JSON object per line, TensorBoard) read the
storage periodically. Only rank 0 builds writers, so nothing else writes files.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from collections import defaultdict
from typing import Any

import torch
from fvcore.common.history_buffer import HistoryBuffer

from fima.utils.files import set_aside

logger = logging.getLogger(__name__)

_CURRENT_STORAGE_STACK: list[EventStorage] = []
# Iterations over which the writers take the median of a smoothed scalar (losses, times).
SMOOTHING_WINDOW = 20


def get_event_storage() -> EventStorage:
    """The storage of the innermost ``with EventStorage():`` block.

    Returns:
        That storage.

    Raises:
        RuntimeError: outside any such block (for example a model called outside training).
    """
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError("get_event_storage() must be called inside a 'with EventStorage(...)'")
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Whether a storage is active, so that models can put metrics only when someone listens.

    Returns:
        True inside a ``with EventStorage():`` block.
    """
    return bool(_CURRENT_STORAGE_STACK)


class EventStorage:
    """Scalars (with history), images and the current iteration of a run."""

    def __init__(self, start_iter: int = 0) -> None:
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest_scalars: dict[str, tuple[float, int]] = {}
        self._images: list[tuple[str, torch.Tensor, int]] = []
        self._iter = start_iter

    def put_scalar(
        self, name: str, value: float | torch.Tensor, smoothing_hint: bool = True
    ) -> None:
        """Record ``value`` for the current iteration.

        Args:
            name: metric name, e.g. ``"loss_inst"`` or ``"knn/top1"``.
            value: a float or a 0-d tensor (read with ``.item()``).
            smoothing_hint: whether writers should show a windowed median rather than the raw
                value (losses: yes; an evaluation result: no).
        """
        value = float(value.detach().item() if isinstance(value, torch.Tensor) else value)
        self._history[name].update(value, self._iter)
        self._latest_scalars[name] = (value, self._iter)
        previous = self._smoothing_hints.setdefault(name, smoothing_hint)
        if previous != smoothing_hint:
            raise ValueError(f"Scalar {name!r} was put with different smoothing hints")

    def put_scalars(self, *, smoothing_hint: bool = True, **values: float | torch.Tensor) -> None:
        """:meth:`put_scalar` for several scalars with the same smoothing hint.

        Args:
            smoothing_hint: as for :meth:`put_scalar`.
            **values: metric name to a float or a 0-d tensor.
        """
        for name, value in values.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def put_image(self, name: str, image: torch.Tensor) -> None:
        """Queue an image for the TensorBoard writer, at the current iteration.

        Args:
            name: the image's tag, e.g. ``"vis/0_clip"``.
            image: ``[3, H, W]`` float in [0, 1]; kept detached, on the CPU.
        """
        self._images.append((name, image.detach().cpu(), self._iter))

    def pop_images(self) -> list[tuple[str, torch.Tensor, int]]:
        """Take the queued images, emptying the queue.

        Returns:
            ``(name, image [3, H, W], iteration)`` in the order they were put.
        """
        images, self._images = self._images, []
        return images

    def recent_history(self, length: int = SMOOTHING_WINDOW) -> dict[str, list[list[float]]]:
        """What a checkpoint keeps so that a resumed run's medians are those of an
        uninterrupted one.

        Args:
            length: pairs kept per scalar.

        Returns:
            The last ``length`` ``[value, iteration]`` pairs of every smoothed scalar, by name.
        """
        return {
            name: [[value, itr] for value, itr in self._history[name].values()[-length:]]
            for name, smoothed in self._smoothing_hints.items()
            if smoothed
        }

    def restore_history(self, history: dict[str, list[list[float]]]) -> None:
        """Put back what :meth:`recent_history` returned, before this storage's first scalar,
        into the histories only: the writers do not write these values again.

        Args:
            history: ``[value, iteration]`` pairs by scalar name.
        """
        for name, pairs in history.items():
            for value, itr in pairs:
                self._history[name].update(float(value), int(itr))

    def history(self, name: str) -> HistoryBuffer:
        """The values of one scalar.

        Args:
            name: the scalar's name.

        Returns:
            Its fvcore ``HistoryBuffer`` (values with their iterations).

        Raises:
            KeyError: no value was put under ``name``.
        """
        if name not in self._history:
            raise KeyError(f"No history metric available for {name!r}")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        """Every scalar's ``HistoryBuffer``, by name (a new dict)."""
        return dict(self._history)

    def latest(self) -> dict[str, tuple[float, int]]:
        """Latest ``(value, iteration)`` of every scalar, by name (a new dict)."""
        return dict(self._latest_scalars)

    def latest_with_smoothing_hint(
        self, window_size: int = SMOOTHING_WINDOW
    ) -> dict[str, tuple[float, int]]:
        """Latest scalars, the smoothed ones replaced by their median.

        Args:
            window_size: iterations the median is taken over.

        Returns:
            ``(value, iteration)`` of every scalar, by name.
        """
        result = {}
        for name, (value, itr) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            result[name] = (value, itr)
        return result

    @property
    def iter(self) -> int:
        """The current iteration, which new scalars and images are recorded at."""
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    """Base class of the writers; ``start()`` is called before training, ``write()``
    periodically, ``close()`` at the end."""

    def start(self, purge_from: int, keep_final: bool = False) -> None:
        """Prepare to write a run. A writer whose output outlives a run forgets what it wrote
        for iterations from ``purge_from`` on, which this run records again (the iterations a
        resumed run trains again), so that no iteration appears twice.

        Args:
            purge_from: the run's first iteration.
            keep_final: this run continues a finished run from its final checkpoint, and that
                run's records after training, at ``purge_from`` too (the first record there),
                are kept; what a continuation stopped before its first checkpoint wrote there
                is not.
        """

    def write(self) -> None:
        """Write what the current storage holds that this writer has not written yet."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the writer's files; called once, after the last write."""


class JSONWriter(EventWriter):
    """Append one JSON object per iteration with the scalars new since the last write.

    The file is opened on the first write. A resumed run (:meth:`start`) first removes the
    records of the iterations that it redoes, which an interrupted run wrote after its last
    checkpoint; a run that starts from iteration 0 where an earlier one left records (it
    stopped before its first checkpoint) keeps them as ``metrics.<time>.json``.
    """

    def __init__(self, json_file: str, window_size: int = SMOOTHING_WINDOW) -> None:
        self._path = json_file
        self._file: Any = None
        self._window_size = window_size
        self._last_written = -1

    def start(self, purge_from: int, keep_final: bool = False) -> None:
        """Drop the records from ``purge_from`` on, or, from iteration 0, set the file aside."""
        if not os.path.isfile(self._path) or os.path.getsize(self._path) == 0:
            return
        if purge_from > 0:
            self._drop_records_from(purge_from, keep_final)
            return
        kept = set_aside(self._path)
        logger.info(
            "This run starts from iteration 0: the records of an earlier run in %s are kept as %s",
            self._path,
            kept,
        )

    def _drop_records_from(self, first: int, keep_first: bool = False) -> None:
        """Rewrite the file without the records of iterations >= ``first`` (and without lines
        that are not a record, such as a line cut short when a run was killed), except, with
        ``keep_first``, the first record of iteration ``first``."""
        from fima.checkpoint import atomic_write  # fima.checkpoint imports fima.utils

        with open(self._path) as f:
            lines = f.read().splitlines()
        iterations = [_record_iteration(line) for line in lines]
        # The finished run wrote its records after training once, before any continuation.
        final = iterations.index(first) if keep_first and first in iterations else None
        kept = [line for n, line in enumerate(lines) if iterations[n] < first or n == final]
        if len(kept) == len(lines):
            return
        atomic_write(self._path, lambda f: f.writelines(f"{line}\n" for line in kept), mode="w")
        logger.info(
            "%s: removed %d records of iterations from %d on, which this run records again",
            self._path,
            len(lines) - len(kept),
            first,
        )

    def write(self) -> None:
        """Append a line per iteration with new scalars, and sync the file to disk."""
        if self._file is None:
            self._file = open(self._path, "a")  # noqa: SIM115  (kept open for the whole run)
        by_iter: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, (value, itr) in _scalars_after(self._last_written, self._window_size).items():
            by_iter[itr][name] = value
        for itr in sorted(by_iter):
            self._file.write(json.dumps({"iteration": itr, **by_iter[itr]}, sort_keys=True) + "\n")
        if by_iter:
            self._last_written = max(by_iter)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()


def _scalars_after(last_written: int, window_size: int) -> dict[str, tuple[float, int]]:
    """The current storage's latest scalars (smoothed as hinted) recorded after iteration
    ``last_written``: what a writer has not written yet."""
    scalars = get_event_storage().latest_with_smoothing_hint(window_size)
    return {name: (value, itr) for name, (value, itr) in scalars.items() if itr > last_written}


def _record_iteration(line: str) -> float:
    """The ``iteration`` of a ``metrics.json`` line; infinity for a line that is not a record."""
    try:
        record = json.loads(line)
        return int(record["iteration"])
    except (ValueError, TypeError, KeyError):
        return math.inf


class TensorboardWriter(EventWriter):
    """Scalars and images to TensorBoard event files in ``log_dir``.

    The event file is created on :meth:`start` (or the first write). Its first event tells
    TensorBoard to hide what earlier files of ``log_dir`` hold from ``purge_from`` on
    (``purge_step``), so the iterations a resumed run trains again, or those of a run that
    stopped before its first checkpoint, are not plotted twice.
    """

    def __init__(self, log_dir: str, window_size: int = SMOOTHING_WINDOW) -> None:
        self._log_dir = log_dir
        self._writer: Any = None
        self._window_size = window_size
        self._last_written = -1

    def start(self, purge_from: int, keep_final: bool = False) -> None:
        """Open the event file, hiding earlier files' events from ``purge_from`` on (after it,
        with ``keep_final``)."""
        # From 0 too: what a run that stopped before its first checkpoint wrote is hidden. The
        # purge cannot tell a finished run's final records from a stopped continuation's step at
        # the same iteration: the final records are kept, with that step.
        self._open(purge_step=purge_from + 1 if keep_final else purge_from)

    def _open(self, purge_step: int | None = None) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self._log_dir, purge_step=purge_step)
        return self._writer

    def write(self) -> None:
        """Add the new scalars and the queued images, and flush."""
        self._open()
        newest = self._last_written
        for name, (value, itr) in _scalars_after(self._last_written, self._window_size).items():
            self._writer.add_scalar(name, value, itr)
            newest = max(newest, itr)
        self._last_written = newest
        for name, image, itr in get_event_storage().pop_images():
            self._writer.add_image(name, image, itr)
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Log iteration, ETA, losses, timings, learning rate and memory to the console."""

    def __init__(self, max_iter: int, window_size: int = SMOOTHING_WINDOW) -> None:
        self._logger = logger
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: tuple[int, float] | None = None
        self._last_printed = -1

    def _eta(self, storage: EventStorage, iteration: int) -> str:
        try:
            seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
        except KeyError:
            # Before the timer has data: estimate from wall time between two writes.
            now = time.perf_counter()
            if self._last_write is None:
                self._last_write = (iteration, now)
                return ""
            last_iter, last_time = self._last_write
            per_iter = (now - last_time) / max(iteration - last_iter, 1)
            seconds = per_iter * (self._max_iter - iteration - 1)
            self._last_write = (iteration, now)
        return str(datetime.timedelta(seconds=int(seconds)))

    def write(self) -> None:
        """Log one line about the last step whose losses were put, once per step."""
        storage = get_event_storage()
        # The line is about the last step whose losses were put: a run that stopped inside a
        # step (an exception, the non-finite loss guard) has storage.iter at that unfinished
        # step, whose losses would be shown as the previous step's. The final write after
        # training, or after a stop right after a line, has nothing new to say.
        loss_iters = [itr for name, (_, itr) in storage.latest().items() if "loss" in name]
        iteration = max(loss_iters, default=storage.iter)
        if iteration <= self._last_printed or iteration >= self._max_iter:
            return
        self._last_printed = iteration
        histories = storage.histories()

        def median(name: str) -> str:
            return f"{histories[name].median(self._window_size):.4f}" if name in histories else ""

        losses = "  ".join(
            f"{k}: {v.median(self._window_size):.4g}"
            for k, v in sorted(histories.items())
            if "loss" in k
        )
        eta = self._eta(storage, iteration)  # unknown until a step has been timed
        parts = [*([f"eta: {eta}"] if eta else []), f"iter: {iteration}", losses]
        if "time" in histories:
            parts.append(f"time: {median('time')}")
        if "data_time" in histories:
            parts.append(f"data_time: {median('data_time')}")
        if "lr" in histories:
            parts.append(f"lr: {histories['lr'].latest():.5g}")
        if torch.cuda.is_available():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        self._logger.info("  ".join(p for p in parts if p))
