"""Bookkeeping of videos that could not be read: counted, listed, and bounded.

Loaders retry a bad video a few times, then skip it (training draws another video; testing
marks it invalid and leaves it out of the denominator). Each skip is recorded here with its
reason and listed in ``OUTPUT_DIR/bad_videos.txt``. The run stops with a clear error only when
more than ``DATA.MAX_BAD_FRACTION`` of the videos read were bad, by all processes together
while training and testing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterable

from fima.utils import comm

logger = logging.getLogger(__name__)


class TooManyBadVideosError(RuntimeError):
    """More than ``DATA.MAX_BAD_FRACTION`` of the videos read could not be decoded."""


class BadVideoTracker:
    """Counts videos read and bad ones (with reasons) in this process; :meth:`check` bounds the
    share of all processes.

    Args:
        max_fraction: the largest tolerated share of bad videos among those read.
        output_file: where :meth:`write` lists them (``OUTPUT_DIR/bad_videos.txt``); None: nowhere.
        min_seen: the fraction is only enforced after this many videos, so that one bad file
            among the first few does not stop a run.

    Attributes:
        seen: videos read (a failed attempt that was replaced counts as one more).
        bad_events: reads that failed; a video bad in every epoch counts every time.
        bad: ``{path: reason}`` of the distinct bad videos.
    """

    def __init__(self, max_fraction: float, output_file: str | None, min_seen: int = 20) -> None:
        self.max_fraction = max_fraction
        self.output_file = output_file
        self.min_seen = min_seen
        self.seen = 0
        self.bad: dict[str, str] = {}
        self.bad_events = 0
        self._unwritten = False

    def record(self, seen: int, bad: Iterable[tuple[str, str]] = ()) -> None:
        """Count ``seen`` videos read, of which the ``(path, reason)`` pairs in ``bad`` failed."""
        self.seen += seen
        for path, reason in bad:
            if path not in self.bad:
                logger.warning("Skipping unreadable video %s: %s", path, reason)
            if self.bad.get(path) != reason:
                self.bad[path] = reason
                self._unwritten = True
            self.bad_events += 1

    def check(self, complete: bool = False, all_ranks: bool = False) -> None:
        """Raise if too large a share of the videos read was bad.

        Args:
            complete: the counts cover a whole dataset (its index), so the share is exact and
                ``min_seen`` does not apply.
            all_ranks: the share is that of the videos every rank has read (a collective: every
                rank calls it at the same point), so that all ranks stop together, and whether
                a run stops does not depend on its number of processes.
        """
        seen, bad_events = self.seen, self.bad_events
        world = comm.get_world_size() if all_ranks else 1
        if world > 1:
            seen, bad_events = comm.sum_over_ranks([seen, bad_events])
        enough = complete or seen >= self.min_seen
        if enough and bad_events > self.max_fraction * seen:
            self.write()
            where = f" by the {world} processes" if world > 1 else ""
            raise TooManyBadVideosError(
                f"{bad_events} of {seen} videos read{where} were bad (more than "
                f"DATA.MAX_BAD_FRACTION={self.max_fraction}); see {self.output_file or 'the log'}"
            )

    def write(self) -> None:
        """Merge this process's list into ``output_file`` (any rank, any time, no collective).

        The file keeps what it listed before (an earlier run, another rank, the other loader),
        one ``path<TAB>reason`` line per video, sorted; a lock serialises concurrent writers.
        """
        if not self.output_file or not self._unwritten:
            return
        directory = os.path.dirname(os.path.abspath(self.output_file))
        os.makedirs(directory, exist_ok=True)
        lock_file = os.path.join(directory, "." + os.path.basename(self.output_file) + ".lock")
        with open(lock_file, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            listed = read_bad_videos(self.output_file)
            listed.update(self.bad)
            fd, tmp = tempfile.mkstemp(prefix=".bad_videos-", dir=directory)
            try:
                with os.fdopen(fd, "w") as f:
                    f.writelines(f"{path}\t{reason}\n" for path, reason in sorted(listed.items()))
                os.replace(tmp, self.output_file)
            except BaseException:
                os.unlink(tmp)
                raise
        self._unwritten = False


def read_bad_videos(path: str) -> dict[str, str]:
    """``{path: reason}`` from a ``bad_videos.txt`` (empty if there is none)."""
    if not os.path.isfile(path):
        return {}
    listed = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            video, _, reason = line.rstrip("\n").partition("\t")
            if video:
                listed[video] = reason
    return listed
