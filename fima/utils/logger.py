"""Logging: the console and ``OUTPUT_DIR/log.txt`` on rank 0; warnings and errors elsewhere.

Only rank 0 writes files, so a run of any size leaves one set of outputs. The other ranks print
their warnings and errors (a skipped video, an exception's traceback) to their console, prefixed
with their rank: with ``--num-gpus`` and torchrun that is the launching terminal, on other
machines their own terminal or job log.
"""

from __future__ import annotations

import logging
import os
import sys

_said_once: set[tuple] = set()


def log_once(logger: logging.Logger, level: int, key: tuple, message: str, *args: object) -> None:
    """Log ``message % args`` the first time this process passes ``key``, and not again: for
    what each build of the same dataset or setting would repeat."""
    if key in _said_once:
        return
    _said_once.add(key)
    logger.log(level, message, *args)


class _ColorFormatter(logging.Formatter):
    """Prefix warnings and errors so that they stand out on a terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = super().formatMessage(record)
        if record.levelno >= logging.ERROR:
            return "ERROR " + message
        if record.levelno >= logging.WARNING:
            return "WARNING " + message
        return message


def setup_logger(
    output: str | None = None, distributed_rank: int = 0, name: str = "fima"
) -> logging.Logger:
    """Configure the ``fima`` logger.

    Args:
        output: a directory (then ``log.txt`` inside it) or a ``.txt``/``.log`` file, written by
            rank 0 only. ``None`` logs to the console only.
        distributed_rank: this process's rank; rank 0 prints INFO and above to the console and
            writes the file, the others print warnings and errors, prefixed with their rank.
        name: the logger to configure.

    Returns:
        The configured logger.
    """
    logger = logging.getLogger(name)
    # Calling again (another run in the same process) replaces the handlers instead of
    # duplicating every line.
    for handler in [h for h in logger.handlers if getattr(h, "_fima_handler", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    date_fmt = "%m/%d %H:%M:%S"
    console = logging.StreamHandler(stream=sys.stdout)
    console.setLevel(logging.INFO if distributed_rank == 0 else logging.WARNING)
    prefix = name if distributed_rank == 0 else f"{name} rank{distributed_rank}"
    console.setFormatter(_ColorFormatter(f"[%(asctime)s {prefix}]: %(message)s", datefmt=date_fmt))
    console._fima_handler = True  # type: ignore[attr-defined]
    logger.addHandler(console)
    if output is not None and distributed_rank == 0:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        handler = logging.FileHandler(filename)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt=date_fmt)
        )
        handler._fima_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
