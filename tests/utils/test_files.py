"""fima.utils.files: the OUTPUT_DIR lock."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from fima.utils.files import FolderInUseError, folder_holder, lock_folder


def _wait(ready, stop) -> None:
    ready.set()
    stop.wait(30)


def test_a_forked_child_does_not_keep_the_lock(tmp_path) -> None:
    """A process forked while the lock is held (a DataLoader worker) shares the lock's open file
    and kept the folder locked after its parent was killed: a --resume right after a kill -9 of
    a run with loader workers was refused as 'in use by another run (pid <the dead run>)'."""
    lock = lock_folder(str(tmp_path))
    assert lock is not None
    with pytest.raises(FolderInUseError):
        lock_folder(str(tmp_path))
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    child = context.Process(target=_wait, args=(ready, stop))
    child.start()
    try:
        assert ready.wait(30)
        lock.close()  # the parent ends; its forked child lives on
        again = lock_folder(str(tmp_path))
        assert again is not None
        again.close()
    finally:
        stop.set()
        child.join(30)


def test_the_holder_of_a_folder_is_found_without_taking_or_creating_anything(tmp_path) -> None:
    assert folder_holder(str(tmp_path / "absent")) is None
    assert folder_holder(str(tmp_path)) is None and not (tmp_path / ".lock").exists()
    lock = lock_folder(str(tmp_path))
    assert lock is not None
    try:
        assert folder_holder(str(tmp_path)).startswith(f"pid {os.getpid()} on ")
    finally:
        lock.close()
    assert folder_holder(str(tmp_path)) is None
    again = lock_folder(str(tmp_path))  # the check took nothing
    assert again is not None
    again.close()
