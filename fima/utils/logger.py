"""Logging: console on rank 0 (warnings only elsewhere) and a log file per rank."""

from __future__ import annotations

import logging
import os
import sys


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
        output: a directory (then ``log.txt`` inside it) or a ``.txt``/``.log`` file; rank r > 0
            writes ``<file>.rank<r>``. ``None`` logs to the console only.
        distributed_rank: this process's rank; only rank 0 prints INFO to the console.
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
    console.setFormatter(_ColorFormatter(f"[%(asctime)s {name}]: %(message)s", datefmt=date_fmt))
    console._fima_handler = True  # type: ignore[attr-defined]
    logger.addHandler(console)
    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        handler = logging.FileHandler(filename)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt=date_fmt)
        )
        handler._fima_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
