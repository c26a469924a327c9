"""What each process of the two-process bad-video test runs (kept apart from the test module, so
that spawned processes do not import tests/conftest.py)."""

from __future__ import annotations

import json
import os

from fima.data.bad_videos import BadVideoTracker, TooManyBadVideosError
from fima.utils import comm


def check_shares(output_dir: str) -> None:
    """Rank 0 reads 10 videos, one bad (10%); rank 1 reads 30 good ones: 1 of 40 (2.5%) is
    within a 5% budget. Then rank 1 reads 10 more, 2 bad: 3 of 50 (6%) is not, on both ranks.
    Each rank writes what its two checks said."""
    rank = comm.get_rank()
    tracker = BadVideoTracker(0.05, None, min_seen=1)
    if rank == 0:
        tracker.record(10, [("/data/bad0.mp4", "cannot open")])
    else:
        tracker.record(30)
    said = []
    for step in range(2):
        try:
            tracker.check(all_ranks=True)
            said.append("ok")
        except TooManyBadVideosError as err:
            said.append(str(err))
        if step == 0 and rank == 1:
            tracker.record(10, [("/data/bad1.mp4", "no video stream"), ("/data/bad2.mp4", "x")])
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(said, f)
