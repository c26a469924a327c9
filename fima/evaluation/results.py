"""The records of an evaluation: a summary table and ``OUTPUT_DIR/results.json``
(``--eval-only``), which keeps an earlier one beside it (:func:`fima.utils.files.set_aside`)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Mapping

from tabulate import tabulate

from fima.checkpoint import atomic_write
from fima.utils.files import set_aside


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    ``results.<its time>.json`` (:func:`fima.utils.files.set_aside`).

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
