"""Keeping an earlier record beside the one about to replace it."""

from __future__ import annotations

import datetime
import os


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
