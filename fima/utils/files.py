"""Keeping an earlier record beside the one about to replace it; locking a folder for one run."""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import socket
import weakref
from typing import TextIO

logger = logging.getLogger(__name__)


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


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock; ``holder`` says which (``pid N on HOST``)."""

    def __init__(self, folder: str, holder: str) -> None:
        super().__init__(f"{folder} is in use by another process ({holder})")
        self.folder = folder
        self.holder = holder


# The lock files of lock_folder that this process holds. A flock belongs to the open file, which
# a forked child (a DataLoader worker) shares: the child would keep the folder locked after this
# process is killed, until it noticed and exited too, so a forked child closes its copies (the
# lock stays with this process; closing a copy does not unlock it).
_held: weakref.WeakSet[TextIO] = weakref.WeakSet()


def _close_held_in_child() -> None:
    for lock in list(_held):
        lock.close()
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def nearest_existing(path: str) -> str:
    """``path`` made absolute, or the nearest folder above it that exists: where creating it
    would start (whether that is a folder, and writable, says whether it can be created)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def folder_holder(folder: str) -> str | None:
    """Who holds ``folder/.lock`` (as :func:`lock_folder` wrote it), or None when no process
    does. Takes nothing and creates nothing: a check before processes that will lock it start."""
    try:
        lock = open(os.path.join(folder, ".lock"))  # noqa: SIM115  (closed below)
    except OSError:  # no folder, no lock file, or unreadable: the lock itself will say
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.read().strip() or "unknown"
        except OSError:
            return None
        fcntl.flock(lock, fcntl.LOCK_UN)
    return None


def lock_folder(folder: str) -> TextIO | None:
    """Take ``folder/.lock`` (an exclusive ``flock``) for this process, writing its pid and host
    there for the message of whoever finds it taken. The lock lasts while the returned file is
    open (closing it, or the process ending however it ends, frees it); processes forked from
    this one do not hold it.

    Returns:
        The open lock file, or None on a file system without locks (warned about: nothing then
        stops a second process).

    Raises:
        FolderInUseError: another process holds it.
    """
    lock = open(os.path.join(folder, ".lock"), "a+")  # noqa: SIM115  (held by the caller)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise FolderInUseError(folder, holder) from None
    except OSError as err:
        logger.warning("Cannot lock %s (%s): nothing stops a second run there", folder, err)
        lock.close()
        return None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    _held.add(lock)
    return lock
