"""The README's two Quick start commands and CI stay in step; the docs' commands run as written."""

from __future__ import annotations

import os
import re
import shlex

from fima.config import get_cfg
from fima.config.validation import validate_cfg_without_data
from fima.engine import default_argument_parser
from tests.projects.common import import_project

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quick_start_commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "configs/Quickstart/moco_synthetic.yaml" in commands[0]
    assert "pytest" in commands[1] and "ruff check" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert _quick_start_commands()[1] in ci.splitlines()


DOCS = ("README.md", "DATASETS.md", "MODEL_ZOO.md", "BENCHMARKS.md", "projects/S3D/README.md",
        "projects/FAME/README.md")  # fmt: skip


def _documented_commands(script: str) -> list[tuple[str, list[str]]]:
    """``(file, arguments)`` of every command of the docs' code blocks that runs ``script``
    (lines joined at a trailing backslash, comments dropped)."""
    commands = []
    for name in DOCS:
        with open(os.path.join(ROOT, name)) as f:
            text = f.read()
        for block in re.findall(r"^ *```[a-z]*\n(.*?)^ *```", text, re.S | re.M):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                words = shlex.split(line, comments=True)
                scripts = [i for i, word in enumerate(words) if word.endswith(script)]
                if scripts and words[0] in ("python", "torchrun"):
                    commands.append((name, words[scripts[0] :]))
    return commands


def _check_config(
    config_file: str, opts: list[str], world_size: int = 1, project: str = ""
) -> None:
    """Merge and validate a documented config and its overrides. The data and the weights are
    left out: they are the user's, or the output of a command before."""
    cfg = get_cfg()
    if project:
        import_project(project, project.lower()).add_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config_file))
    cfg.merge_from_list(opts)
    cfg.MODEL.WEIGHTS = ""
    validate_cfg_without_data(cfg, world_size)


def test_documented_train_net_commands_name_real_configs_flags_and_keys() -> None:
    commands = _documented_commands("train_net.py")
    checked = 0
    for name, (script, *argv) in commands:
        args = default_argument_parser().parse_args(argv)
        if args.config_file == "X.yaml":  # a placeholder
            continue
        project = script.split("/")[1] if script.startswith("projects/") else ""
        try:
            _check_config(args.config_file, args.opts, args.num_gpus * args.num_machines, project)
        except Exception as err:
            raise AssertionError(f"{name}: {shlex.join(argv)}: {err}") from err
        checked += 1
    assert checked >= 20, commands


def test_documented_benchmark_commands_parse_and_their_overrides_validate() -> None:
    from fima.benchmark import motion, train

    commands = _documented_commands("benchmark.py")
    for name, (_, task_flag, task, *argv) in commands:
        assert task_flag == "--task", f"{name}: {argv}"
        try:
            if task == "train":
                argv_a, argv_b = train.split_compare(argv)
                args = train.build_parser().parse_args(argv_a)
                for config_file, opts in [(args.config_file, args.opts), (argv_b[0], argv_b[1:])]:
                    _check_config(config_file, opts)
            else:
                assert task == "motion", f"{name}: --task {task}"
                args = motion.build_parser().parse_args(argv)
                for arm in ("moco_motion", "fima_motion", "supervised_motion", "eval_motion"):
                    _check_config(f"configs/Benchmark/{arm}.yaml", args.opts)
        except Exception as err:
            raise AssertionError(f"{name}: {shlex.join(argv)}: {err}") from err
    assert len(commands) >= 8, commands
