"""The records of an evaluation: a summary table, ``OUTPUT_DIR/results.json`` (``--eval-only``)
and the reports folder ``OUTPUT_DIR/inference``, each of which keeps an earlier one beside it
(:func:`fima.utils.files.set_aside`)."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Mapping

from tabulate import tabulate

from fima.checkpoint import atomic_write
from fima.utils.files import set_aside

logger = logging.getLogger(__name__)

# Which kind of run wrote the reports of an inference/ folder ("training" or "evaluation"), so
# that a resumed training run knows whether the reports there are its own.
_WRITER_FILE = ".written_by"
# OUTPUT_DIRs whose runs have not written a report yet: (this run's kind, whether it resumes).
_pending: dict[str, tuple[str, bool]] = {}


def begin_reports(output_dir: str, writer: str, resumed: bool) -> None:
    """Say that a run of kind ``writer`` (``"training"`` or ``"evaluation"``) starts in
    ``output_dir``: its first :func:`reports_dir` sets the earlier reports aside, unless it
    ``resumed`` the training run that wrote them. Nothing is moved now, so that a run that
    stops before it evaluates (weights that do not load, a bad split) leaves them as they are.
    Called by :func:`fima.engine.default_setup`."""
    _pending[os.path.abspath(output_dir)] = (writer, resumed)


def reports_dir(output_dir: str) -> str:
    """``output_dir/inference``, created, for the reports of this run's evaluation (main process).

    The first call of a run started with :func:`begin_reports` keeps the reports already there
    as ``inference.<time>`` (another run's: an ``--eval-only`` of other weights, or the training
    run that an ``--eval-only`` now follows); a resumed training run's own reports are rewritten.
    """
    path = os.path.join(output_dir, "inference")
    pending = _pending.pop(os.path.abspath(output_dir), None)
    if pending is not None:
        writer, resumed = pending
        if not (resumed and writer == "training" and _written_by(path) == "training"):
            kept = set_aside(path)
            if kept is not None:
                logger.info("The earlier evaluation reports of inference/ are kept in %s", kept)
        os.makedirs(path, exist_ok=True)
        atomic_write(os.path.join(path, _WRITER_FILE), lambda f: f.write(writer + "\n"), mode="w")
    os.makedirs(path, exist_ok=True)
    return path


def _written_by(path: str) -> str | None:
    """The kind of run that wrote the reports folder ``path`` (None: unknown, or no folder)."""
    try:
        with open(os.path.join(path, _WRITER_FILE)) as f:
            return f.read().strip()
    except OSError:
        return None


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
    output_dir: str,
    metrics: Mapping[str, float],
    config_file: str,
    checkpoint: str,
    checkpoint_source: str = "",
) -> str:
    """Write ``results.json``: config path, checkpoint path and sha256 (and the URL or model-zoo
    name it was downloaded from), metrics, timestamp.

    A ``results.json`` already there (another checkpoint's evaluation) is kept as
    ``results.<its time>.json`` (:func:`fima.utils.files.set_aside`).

    Args:
        output_dir: where to write.
        metrics: the flat evaluation results.
        config_file: the config file the run was given ("" if none).
        checkpoint: the weights evaluated ("" for a randomly initialised model).
        checkpoint_source: the ``MODEL.WEIGHTS`` that ``checkpoint`` was downloaded from (a URL
            or ``fima://`` name), recorded as ``checkpoint_source``; "" for a local file.

    Returns:
        The path written.
    """
    path = os.path.join(output_dir, "results.json")
    set_aside(path)
    record = {
        "config_file": os.path.abspath(config_file) if config_file else "",
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else "",
        "checkpoint_sha256": sha256_of(checkpoint) if checkpoint else None,
        **({"checkpoint_source": checkpoint_source} if checkpoint_source else {}),
        "metrics": dict(sorted(metrics.items())),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(path, lambda f: json.dump(record, f, indent=1), mode="w")
    return path
