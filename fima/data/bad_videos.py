"""Bookkeeping of videos that could not be read: counted, listed, and bounded.

Loaders retry a bad video a few times, then skip it (training draws another video; testing
leaves it out of the denominator). Each skip is recorded here with its reason. The run stops with
a clear error only when more than ``DATA.MAX_BAD_FRACTION`` of the videos seen were bad.
"""

from __future__ import annotations

import logging
import os

from fima.utils import comm

logger = logging.getLogger(__name__)


class TooManyBadVideosError(RuntimeError):
    """More than ``DATA.MAX_BAD_FRACTION`` of the videos seen could not be decoded."""


class BadVideoTracker:
    """Counts videos seen and bad ones (with reasons), per process.

    Args:
        max_fraction: the largest tolerated share of bad videos among those seen.
        output_file: where :meth:`write` lists them (``OUTPUT_DIR/bad_videos.txt``); None: nowhere.
        min_seen: the fraction is only enforced after this many videos, so that one bad file
            among the first few does not stop a run.
    """

    def __init__(self, max_fraction: float, output_file: str | None, min_seen: int = 20) -> None:
        self.max_fraction = max_fraction
        self.output_file = output_file
        self.min_seen = min_seen
        self.seen = 0
        self.bad: dict[str, str] = {}
        self.bad_events = 0

    def record_seen(self, count: int) -> None:
        self.seen += count

    def record_bad(self, path: str, reason: str) -> None:
        if path not in self.bad:
            logger.warning("Skipping unreadable video %s: %s", path, reason)
        self.bad[path] = reason
        self.bad_events += 1
        self.seen += 1

    def check(self) -> None:
        """Raise if too large a share of the videos seen was bad."""
        if self.seen >= self.min_seen and self.bad_events > self.max_fraction * self.seen:
            raise TooManyBadVideosError(
                f"{self.bad_events} of {self.seen} videos read were bad (more than "
                f"DATA.MAX_BAD_FRACTION={self.max_fraction}); see {self.output_file or 'the log'}"
            )

    def write(self) -> None:
        """Gather every rank's list and write it on rank 0 (call on all ranks together)."""
        merged: dict[str, str] = {}
        for part in comm.all_gather_object(self.bad):
            merged.update(part)
        if comm.is_main_process() and self.output_file and merged:
            tmp = self.output_file + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(f"{path}\t{reason}\n" for path, reason in sorted(merged.items()))
            os.replace(tmp, self.output_file)
