#!/usr/bin/env python3
"""Benchmarks: ``tools/benchmark.py --task TASK [the task's arguments]``.

    python tools/benchmark.py --task data                  # the data pipeline (makes its videos)
    python tools/benchmark.py --task data --quick --json data.json
    python tools/benchmark.py --task motion                # MoCo vs FIMA on motion, 3 seeds
    python tools/benchmark.py --task train --config-file configs/FIMA/i3d_ucf101_pretrain.yaml \\
        --reference SOLVER.IMS_PER_BATCH 4 INPUT.CROP_SIZE 112

Each task is a module with ``main(argv)``; ``--task TASK --help`` shows its own arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Task name -> the module that runs it.
TASKS = {
    "data": "fima.benchmark.data",
    "motion": "fima.benchmark.motion",
    "train": "fima.benchmark.train",
}


def main(argv: list[str]) -> None:
    # The task's own parser handles everything but --task (and --help with a task).
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--task", choices=sorted(TASKS))
    args, rest = parser.parse_known_args(argv)
    if args.task is None:
        parser.print_help()
        raise SystemExit(0 if {"-h", "--help"} & set(argv) else 2)
    importlib.import_module(TASKS[args.task]).main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
