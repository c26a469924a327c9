#!/usr/bin/env python3
"""Benchmarks of fima, one task at a time; each prints its figures and notes.

    python tools/benchmark.py --task data                  # the data pipeline (makes its videos)
    python tools/benchmark.py --task data --quick          # a fast check that the tooling works
    python tools/benchmark.py --task data --json data.json # also write the figures as JSON

A task is an entry of ``TASKS``: its function takes the parsed arguments and returns the figures
and notes of its report; its options come from its module's ``add_arguments``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from fima.benchmark import Figure, format_figures
from fima.benchmark import data as data_benchmark
from fima.utils.logger import setup_logger

Task = Callable[[argparse.Namespace], tuple[list[Figure], list[str]]]
AddArguments = Callable[[argparse._ArgumentGroup], None]

# name -> (the task, the adder of its options)
TASKS: dict[str, tuple[Task, AddArguments]] = {
    "data": (data_benchmark.run, data_benchmark.add_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="what to measure")
    parser.add_argument("--json", default="", metavar="FILE", help="also write the figures here")
    for name, (_, add_arguments) in TASKS.items():
        add_arguments(parser.add_argument_group(f"--task {name}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(name="fima")
    task, _ = TASKS[args.task]
    figures, notes = task(args)
    print(format_figures(f"fima benchmark: {args.task}", figures, notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"task": args.task, "figures": [fig.as_dict() for fig in figures]}, f, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
