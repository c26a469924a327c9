"""Progress bars for long non-training tasks: indexing, feature extraction, downloads."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from fima.utils import comm


def progress_bar(
    iterable: Iterable | None = None,
    desc: str = "",
    total: int | float | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar with ETA, shown on rank 0 when stderr is a terminal and quiet otherwise (CI, logs,
    other ranks), so that log files never fill with carriage returns.

    Args:
        iterable: what to iterate over, or None for a bar advanced with ``update(n)``.
        desc: the label.
        total: the number of steps (or bytes with ``unit="B", unit_scale=True``), if known.
        kwargs: further tqdm options.

    Returns:
        The bar (disabled where it would not show).
    """
    quiet = not (comm.is_main_process() and sys.stderr.isatty())
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, desc=desc, total=total, disable=quiet, **kwargs)
