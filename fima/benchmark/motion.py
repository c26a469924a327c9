"""The motion benchmark: does a method learn motion, or the static appearance of its videos?

For every seed, MoCo, FIMA and FIMA without its dense or local term are pretrained with the same
backbone, data, iteration budget, seed and augmentation (``configs/Benchmark``) on
SyntheticMotion, whose appearance is unique per video and independent of the class. A supervised
arm trains the same backbone with the labels, as the ceiling of what it learns from these videos
in this budget. Each encoder, and a randomly initialised one, is then frozen and evaluated on the
motion classes: a linear probe (logistic regression on the pooled features of the training
videos, top-1 on the test videos) and retrieval (R@k of test videos querying training videos).
The table reports mean ± std over seeds.

Every run is a ``tools/train_net.py`` process (the documented commands are printed), writing into
its own folder of the output directory; a finished run of the same config is not repeated, so an
interrupted benchmark continues where it stopped, and a folder that holds a run of another config
(an edited config, other overrides) stops the benchmark rather than being reused or overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fima.utils.logger import setup_logger

logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
BENCHMARK_CONFIGS = os.path.join(ROOT, "configs", "Benchmark")
METRICS = ("linear_probe/top1", "retrieval/R@1", "retrieval/R@5")


@dataclass(frozen=True)
class Arm:
    """One pretraining method of the benchmark: its config and overrides."""

    name: str
    config: str
    opts: tuple[str, ...] = ()


ARMS = (
    Arm("MoCo", "moco_motion.yaml"),
    Arm("FIMA", "fima_motion.yaml"),
    Arm("FIMA w/o dense", "fima_motion.yaml", ("MODEL.FIMA.DENSE_WEIGHT", "0.0")),
    Arm("FIMA w/o local", "fima_motion.yaml", ("MODEL.FIMA.LOCAL_WEIGHT", "0.0")),
    # Not label-free: the ceiling of what the backbone learns from these videos in this budget.
    Arm("Supervised (labels)", "supervised_motion.yaml"),
)
RANDOM = "Random init"


@dataclass
class BenchmarkResult:
    """Per arm (and the random baseline), per seed: the evaluation metrics; the pretraining
    runs' wall times, and the runs (pretraining or evaluation folders) found done on disk and
    reused, whose time this invocation does not include."""

    metrics: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def _slug(name: str) -> str:
    return name.lower().replace(" w/o ", "_no_").replace(" (labels)", "").replace(" ", "_")


def _run(argv: list[str], log_file: str) -> float:
    """Run ``tools/train_net.py argv`` in a subprocess; return its wall time in seconds."""
    command = [sys.executable, TRAIN_NET, *argv]
    logger.info("$ %s", " ".join(command))
    start = time.perf_counter()
    with open(log_file, "a") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"Run failed (exit {done.returncode}); its output is in {log_file}")
    return time.perf_counter() - start


def _expected_config(config_file: str, opts: Sequence[str]) -> str:
    """The ``config.yaml`` text that ``train_net.py --config-file config_file opts`` records."""
    from fima.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg.dump()


def _is_done(run_dir: str, marker: str, config_file: str, opts: Sequence[str]) -> bool:
    """Whether ``run_dir`` holds this very run, finished (``marker`` exists).

    Raises:
        RuntimeError: ``run_dir`` holds a run (finished or not) of another config: reusing it
            would report another benchmark's figures, resuming it would mix two, and starting
            over would overwrite it.
    """
    recorded = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(recorded):
        return False
    with open(recorded) as f:
        same = f.read() == _expected_config(config_file, opts)
    if not same:
        raise RuntimeError(
            f"{run_dir} holds a run of another config than this benchmark's (see its "
            "config.yaml): give another --output-dir, or move that folder away; nothing was "
            "reused or overwritten"
        )
    return os.path.isfile(os.path.join(run_dir, marker))


def run_motion_benchmark(
    output_dir: str,
    seeds: Sequence[int],
    opts: Sequence[str] = (),
    arms: Sequence[Arm] = ARMS,
    config_dir: str = BENCHMARK_CONFIGS,
) -> BenchmarkResult:
    """Pretrain every arm for every seed, evaluate them and a random init; see the module doc.

    Args:
        output_dir: where every run gets its folder (``<arm>_seed<s>``, ``eval_<arm>_seed<s>``).
        seeds: the seeds; each seeds the data order, augmentation and initialisation of a run.
        opts: ``KEY VALUE`` overrides applied to every run (e.g. another dataset, a budget).
        arms: the pretraining methods.
        config_dir: the folder of the arms' configs and of ``eval_motion.yaml``.
    """
    os.makedirs(output_dir, exist_ok=True)
    result = BenchmarkResult()
    log_file = os.path.join(output_dir, "runs.log")
    eval_config = os.path.join(config_dir, "eval_motion.yaml")
    for seed in seeds:
        checkpoints: dict[str, str] = {RANDOM: ""}
        for arm in arms:
            run_dir = os.path.join(output_dir, f"{_slug(arm.name)}_seed{seed}")
            checkpoint = os.path.join(run_dir, "model_final.pth")
            config_file = os.path.join(config_dir, arm.config)
            run_opts = [*arm.opts, *opts, "SEED", str(seed), "OUTPUT_DIR", run_dir]
            if not _is_done(run_dir, "model_final.pth", config_file, run_opts):
                resume = ["--resume"] if os.path.isdir(run_dir) else []
                seconds = _run(["--config-file", config_file, *resume, *run_opts], log_file)
                result.seconds[f"{arm.name} seed {seed}"] = seconds
            else:
                result.reused.append(run_dir)
            checkpoints[arm.name] = checkpoint
        for name, checkpoint in checkpoints.items():
            eval_dir = os.path.join(output_dir, f"eval_{_slug(name)}_seed{seed}")
            record = os.path.join(eval_dir, "results.json")
            eval_opts = [*opts, "MODEL.WEIGHTS", checkpoint, "SEED", str(seed)]
            eval_opts += ["OUTPUT_DIR", eval_dir]
            if not _is_done(eval_dir, "results.json", eval_config, eval_opts):
                _run(["--config-file", eval_config, "--eval-only", *eval_opts], log_file)
            else:
                result.reused.append(eval_dir)
            with open(record) as f:
                metrics = json.load(f)["metrics"]
            result.metrics.setdefault(name, {})[seed] = {m: float(metrics[m]) for m in METRICS}
    return result


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown_table(result: BenchmarkResult, command: str, elapsed: float) -> str:
    """The results as Markdown: mean ± std over seeds, then every seed's values."""
    lines = [
        "# Motion benchmark",
        "",
        f"- Date: {datetime.date.today().isoformat()}; wall time of this invocation "
        f"{elapsed / 60:.1f} min"
        + (
            f" ({len(result.reused)} runs found done on disk were reused: their time is not "
            "included)"
            if result.reused
            else ""
        ),
        f"- Command: `{command}`",
        f"- Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "",
        "| Method | Linear probe top-1 (%) | R@1 (%) | R@5 (%) | seeds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, per_seed in result.metrics.items():
        seeds = sorted(per_seed)
        columns = [_mean_std([per_seed[s][m] for s in seeds]) for m in METRICS]
        lines.append(f"| {name} | {' | '.join(columns)} | {len(seeds)} |")
    lines += ["", "Per seed (linear probe top-1 / R@1):", ""]
    for name, per_seed in result.metrics.items():
        values = ", ".join(
            f"seed {s}: {v['linear_probe/top1']:.1f} / {v['retrieval/R@1']:.1f}"
            for s, v in sorted(per_seed.items())
        )
        lines.append(f"- {name}: {values}")
    if result.seconds:
        lines += [
            "",
            "Pretraining wall time (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()),
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/benchmark.py --task motion",
        description=__doc__.split("\n\n")[0],
        epilog="Trailing KEY VALUE pairs override every run (another dataset, budget or "
        "backbone), e.g. SOLVER.MAX_ITER 50 or DATA.SYNTHETIC.CLASSES \"('Circle','Still')\".",
    )
    parser.add_argument("--output-dir", default="output/motion_benchmark")
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(seed) for seed in text.split(",")],
        default=[0, 1, 2],
        help="comma-separated seeds (default 0,1,2)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every run")
    return parser


def main(argv: list[str]) -> BenchmarkResult:
    """``tools/benchmark.py --task motion [--output-dir D] [--seeds S ...] [KEY VALUE ...]``:
    run the benchmark, print its table and write ``results.md`` and ``results.json`` into the
    output directory."""
    args = build_parser().parse_args(argv)
    setup_logger(args.output_dir, name="fima")
    start = time.perf_counter()
    result = run_motion_benchmark(args.output_dir, args.seeds, args.opts)
    elapsed = time.perf_counter() - start
    command = shlex.join(["python", "tools/benchmark.py", "--task", "motion", *argv])
    table = markdown_table(result, command, elapsed)
    print(table)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"command": command, **dataclasses.asdict(result)}, f, indent=1)
    return result
