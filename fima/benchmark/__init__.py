"""The benchmarks behind ``tools/benchmark.py`` and the report they share (:class:`Figure`).

Each task measures one part of fima and reports figures (medians where repeated), so that anyone
can rerun them on their own machine.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fima.utils.logger import setup_logger


@dataclass(frozen=True)
class Figure:
    """One measured figure.

    Attributes:
        section: the group it is printed under.
        name: what was measured.
        value: the measurement.
        unit: its unit (``ms``, ``clips/s``, ``MB``, ``x`` for ratios, ...).
        target: the figure it should meet, as text (``"<= 1.2"``), or empty.
    """

    section: str
    name: str
    value: float
    unit: str
    target: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The figure's fields by name (for the JSON output)."""
        return asdict(self)


def format_figures(title: str, figures: list[Figure], notes: list[str] = ()) -> str:
    """A plain-text report: the figures grouped by section, then the notes.

    Args:
        title: the first line, underlined.
        figures: in the order printed; a new section starts where the section changes.
        notes: lines printed after the figures.

    Returns:
        The report, without a trailing newline.
    """
    lines = [title, "=" * len(title)]
    width = max((len(f.name) for f in figures), default=0)
    section = None
    for figure in figures:
        if figure.section != section:
            section = figure.section
            lines += ["", section]
        target = f"   (target {figure.target})" if figure.target else ""
        lines.append(f"  {figure.name:<{width}}  {figure.value:>10.3f} {figure.unit}{target}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def output_file_problem(path: str, overwrite: bool) -> str | None:
    """Why a report cannot be written to ``path`` (checked before anything is measured), or
    None: its folder must exist, and an existing file is kept unless ``overwrite``."""
    if not path:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"folder {folder} does not exist"
    if os.path.exists(path) and not overwrite:
        return f"{path} exists; pass --overwrite to replace it"
    return None


def write_json(path: str, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path``, atomically."""
    from fima.checkpoint import atomic_write

    atomic_write(path, lambda f: json.dump(value, f, indent=2), mode="w")


def run_figures_task(
    argv: list[str],
    task: str,
    run: Callable[[argparse.Namespace], tuple[list[Figure], list[str]]],
    add_arguments: Callable[[argparse.ArgumentParser], None],
) -> list[Figure]:
    """The command line of a task that reports :class:`Figure` s: parse ``argv`` with the task's
    options and ``--json FILE``, run it, print the report and write the figures as JSON.

    Args:
        argv: the task's options.
        task: its name (``--task``).
        run: measures, from the parsed options, and returns ``(figures, notes)``.
        add_arguments: adds the task's options to a parser.

    Returns:
        The figures.
    """
    parser = argparse.ArgumentParser(prog=f"tools/benchmark.py --task {task}")
    parser.add_argument("--json", default="", metavar="FILE", help="also write the figures here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_arguments(parser)
    args = parser.parse_args(argv)
    problem = output_file_problem(args.json, args.overwrite)
    if problem is not None:
        parser.error(f"--json: {problem}")
    setup_logger(name="fima")
    figures, notes = run(args)
    print(format_figures(f"fima benchmark: {task}", figures, notes))
    if args.json:
        write_json(args.json, {"task": task, "figures": [fig.as_dict() for fig in figures]})
    return figures
