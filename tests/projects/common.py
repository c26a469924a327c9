"""Helpers of the projects' tests: import a project's package, run its train_net.py."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from types import ModuleType

from tests.engine.procs import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECTS = os.path.join(ROOT, "projects")


def import_project(folder: str, package: str) -> ModuleType:
    """Import ``projects/<folder>/<package>`` as its train_net.py does (its folder on sys.path)."""
    path = os.path.join(PROJECTS, folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(package)


def run_tiny(
    script: str, config_file: str, output_dir: str, *opts: str, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``python <script> [flags] --config-file <config_file>``, shrunk to the tests' tiny
    synthetic set and two iterations (``TINY``), then ``opts`` (``KEY VALUE`` overrides), run
    from ``output_dir``'s parent."""
    return subprocess.run(
        [
            sys.executable,
            script,
            *flags,
            "--config-file",
            config_file,
            "OUTPUT_DIR",
            output_dir,
            *TINY,
            "SOLVER.MAX_ITER",
            "2",
            *opts,
        ],
        cwd=os.path.dirname(output_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_project(
    folder: str, config: str, output_dir: str, *opts: str
) -> subprocess.CompletedProcess:
    """``python projects/<folder>/train_net.py`` on one of its configs (:func:`run_tiny`)."""
    return run_tiny(
        os.path.join(PROJECTS, folder, "train_net.py"),
        os.path.join(PROJECTS, folder, "configs", config),
        output_dir,
        *opts,
    )


def read_metrics(output_dir: str) -> list[dict]:
    """The lines of ``metrics.json`` that hold a loss."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row for row in rows if "total_loss" in row]
