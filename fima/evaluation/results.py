"""The records of an evaluation: a summary table, ``OUTPUT_DIR/results.json`` (``--eval-only``),
and keeping an earlier evaluation's records (``results.json``, ``inference/``) beside new ones."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Mapping

from tabulate import tabulate

from fima.checkpoint import atomic_write


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _written_at(path: str) -> float:
    """When ``path`` was last written: a file's modification time, a folder's newest file's
    (the folder's own if it holds none)."""
    times = [
        os.path.getmtime(os.path.join(folder, name))
        for folder, _, files in os.walk(path)
        for name in files
    ]
    return max(times, default=os.path.getmtime(path))


def set_aside(path: str) -> str | None:
    """Rename an earlier record ``path`` (a file or a folder) to ``<stem>.<time>[<ext>]`` beside
    it, the time being when it was written, so that the record about to be written there does
    not replace it: ``results.json`` becomes ``results.20261204-234054.json``, ``inference``
    ``inference.20261204-234054``. A name already taken (two records of one second) gets
    ``-2``, ``-3``, ... after the time.

    Returns:
        The new path, or None if nothing was at ``path``.
    """
    if not os.path.lexists(path):
        return None
    stamp = datetime.datetime.fromtimestamp(_written_at(path)).strftime("%Y%m%d-%H%M%S")
    stem, ext = (path, "") if os.path.isdir(path) else os.path.splitext(path)
    target, n = f"{stem}.{stamp}{ext}", 1
    while os.path.lexists(target):
        n += 1
        target = f"{stem}.{stamp}-{n}{ext}"
    os.rename(path, target)
    return target


def summary_table(metrics: Mapping[str, float]) -> str:
    """One table of every metric, sorted by name (percentages with two decimals)."""
    rows = [(name, f"{value:.2f}") for name, value in sorted(metrics.items())]
    return tabulate(
        rows,
        headers=["metric", "value"],
        tablefmt="pipe",
        colalign=("left", "right"),
        disable_numparse=True,
    )


def write_results(
    output_dir: str, metrics: Mapping[str, float], config_file: str, checkpoint: str
) -> str:
    """Write ``results.json``: config path, checkpoint path and sha256, metrics, timestamp.

    A ``results.json`` already there (another checkpoint's evaluation) is kept as
    ``results.<its time>.json`` (:func:`set_aside`).

    Args:
        output_dir: where to write.
        metrics: the flat evaluation results.
        config_file: the config file the run was given ("" if none).
        checkpoint: the weights evaluated ("" for a randomly initialised model).

    Returns:
        The path written.
    """
    path = os.path.join(output_dir, "results.json")
    set_aside(path)
    record = {
        "config_file": os.path.abspath(config_file) if config_file else "",
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else "",
        "checkpoint_sha256": sha256_of(checkpoint) if checkpoint else None,
        "metrics": dict(sorted(metrics.items())),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(path, lambda f: json.dump(record, f, indent=1), mode="w")
    return path
