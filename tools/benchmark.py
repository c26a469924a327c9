#!/usr/bin/env python3
"""Benchmarks: ``tools/benchmark.py --task TASK [the task's arguments]``.

Tasks (``--task TASK --help`` shows a task's own arguments):
  data    the data pipeline: decoding against a minimal PyAV loop, start-up indexing, the
          loader's clips/s and memory (on videos it makes itself)
  motion  does a method learn motion? MoCo, FIMA, its ablations, a random init and a
          supervised arm on the synthetic motion videos, linear probe and retrieval, 3 seeds
  train   a config's training-step speed, FLOPs, MFU and memory; --compare runs two configs
          alternately and reports the ratio per round

    python tools/benchmark.py --task data                  # the data pipeline (makes its videos)
    python tools/benchmark.py --task data --quick --json data.json
    python tools/benchmark.py --task motion                # MoCo vs FIMA on motion, 3 seeds
    python tools/benchmark.py --task train --config-file configs/FIMA/i3d_ucf101_pretrain.yaml \\
        --reference SOLVER.IMS_PER_BATCH 4 INPUT.CROP_SIZE 112

Each task is a module (``TASKS``) with ``main(argv)``.
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
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("--task", choices=sorted(TASKS), help="--task TASK --help: its arguments")
    args, rest = parser.parse_known_args(argv)
    if args.task is None:
        if {"-h", "--help"} & set(argv):
            parser.print_help()
            raise SystemExit(0)
        parser.error("--task is required: one of " + ", ".join(sorted(TASKS)))
    importlib.import_module(TASKS[args.task]).main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
