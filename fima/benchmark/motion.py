"""The motion benchmark: does a method learn motion, or the static appearance of its videos?

For every seed, MoCo, FIMA and FIMA without its dense or local term are pretrained with the same
backbone, data, iteration budget, seed and augmentation (``configs/Benchmark``) on
SyntheticMotion, whose appearance is unique per video and independent of the class. A supervised
arm trains the same backbone with the labels, as the ceiling of what it learns from these videos
in this budget. Each encoder, and a randomly initialised one, is then frozen and evaluated on the
motion classes: a linear probe (logistic regression on the pooled features of the training
videos, top-1 on the test videos) and retrieval (R@k of test videos querying training videos).
The table reports mean ± std over seeds, and why each arm lands where it does
(:mod:`fima.evaluation.motion_sensitivity`): what the middle frames alone tell about the class
(``static_top1``; a data check compares it with chance: the class must be in the motion) and
how blind the features are to the motion (``frozen_similarity``).

Every run is a ``tools/train_net.py`` process (the documented commands are printed), writing into
its own folder of the output directory; a finished run of the same config is not repeated, so an
interrupted benchmark continues where it stopped, and a folder that holds a run of another config
(an edited config, other overrides) stops the benchmark rather than being reused or overwritten.
An evaluation is repeated when its pretraining ran again. Every run's config and the data are
checked before the first run starts; the output directory is locked while the benchmark or any run
it started lives, so that a second benchmark cannot train into the same folders.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import torch

from fima.checkpoint import atomic_write
from fima.config import CfgNode, get_cfg, validate_cfg
from fima.data.datasets import AnnotationError, VideoDataset, build_dataset
from fima.engine.defaults import (
    USAGE_ERRORS,
    int_at_least,
    resolve_device,
    usage_error,
    usage_errors,
)
from fima.engine.launch import stop_interrupted
from fima.engine.train_loop import describe_amp
from fima.evaluation.results import sha256_of
from fima.model_zoo.model_zoo import configs_root
from fima.utils.env import (
    describe_cpu_model,
    describe_cpus,
    processes_per_cpus,
    threads_per_process,
    user_threads,
)
from fima.utils.files import FolderInUseError, folder_holder, lock_folder
from fima.utils.logger import setup_logger

logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The checkout's tools/train_net.py: beside the fima package (a checkout, an editable install), or
# beside the running tools/benchmark.py when fima is installed from a wheel, which ships no tools.
_TRAIN_NETS = [
    os.path.join(folder, "train_net.py")
    for folder in (os.path.join(ROOT, "tools"), os.path.dirname(os.path.abspath(sys.argv[0])))
]
TRAIN_NET = next((path for path in _TRAIN_NETS if os.path.isfile(path)), _TRAIN_NETS[0])
# The configs as the model zoo finds them: a checkout's configs/, or the wheel's copy.
BENCHMARK_CONFIGS = str(configs_root() / "Benchmark")
PROG = "tools/benchmark.py --task motion"
METRICS = ("linear_probe/top1", "retrieval/R@1", "retrieval/R@5")
# What each evaluation's motion_sensitivity evaluator adds (configs/Benchmark/eval_motion.yaml):
# what the appearance alone tells about the class, and how blind a feature is to the motion. They
# say why an arm lands where it does, and whether the data keep the class out of the appearance,
# as the benchmark needs, on any dataset it is run on.
DIAGNOSTICS = ("motion_sensitivity/static_top1", "motion_sensitivity/frozen_similarity")
# The static top-1 of these arms tests the data: a supervised arm learns what little a frame tells.
DATA_CHECK_EXCLUDES = ("Supervised (labels)",)
# Standard errors above chance at which the data check says the appearance tells the class.
LEAK_STANDARD_ERRORS = 4.0
METRIC_NAMES = {
    "linear_probe/top1": "linear probe top-1",
    "retrieval/R@1": "R@1",
    "retrieval/R@5": "R@5",
}


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
# The paper's claim at small scale, best first: FIMA learns motion, MoCo at least something more
# than random 3-D convolutions see. Each neighbour pair, and FIMA against each ablation, is
# compared seed by seed in the report.
CLAIMED_ORDER = ("FIMA", "MoCo", RANDOM)
ABLATION_PAIRS = (("FIMA", "FIMA w/o dense"), ("FIMA", "FIMA w/o local"))


@dataclass
class BenchmarkResult:
    """Per arm (and the random baseline), per seed: the evaluation metrics; the pretraining
    runs' wall times, and the runs (pretraining or evaluation folders) found done on disk and
    reused, whose time this invocation does not include."""

    metrics: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    # How the runs shared the CPUs (cpu_sharing): "2 at a time, 1 thread(s) each".
    cpu_sharing: str = ""
    # What the pretraining runs computed in (run_precision): "bfloat16 autocast", "float32".
    precision: str = ""
    # The test split's chance top-1 (chance_top1) and its size: the noise of a top-1 around it.
    chance: float = 0.0
    num_test_videos: int = 0


def _slug(name: str) -> str:
    return name.lower().replace(" w/o ", "_no_").replace(" (labels)", "").replace(" ", "_")


def _run(
    argv: list[str], log_file: str, threads: int | None = None, lock_fd: int | None = None
) -> tuple[int, float]:
    """Run ``tools/train_net.py argv`` in a subprocess whose output is appended to ``log_file``;
    return its exit status and wall time in seconds. ``threads`` sets its ``OMP_NUM_THREADS``;
    the process inherits ``lock_fd`` (the output directory's lock: it stays held while the run
    lives, even if the benchmark itself is killed). It runs in the current directory, so that
    relative paths among the overrides mean what they mean to the user."""
    command = [sys.executable, TRAIN_NET, *argv]
    logger.info("$ %s", shlex.join(command))
    env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    with open(log_file, "a") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=() if lock_fd is None else (lock_fd,),
        )
        child = _Child(process)
        _running.add(child)
        try:
            returncode = process.wait()
        finally:
            _running.discard(child)
    return returncode, time.perf_counter() - start


class _Child:
    """A run's process as :func:`fima.engine.launch.stop_interrupted` stops it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.pid = process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)


# The runs under way (their threads wait on them), for a SIGINT to the benchmark alone.
_running: set[_Child] = set()


def _load_config(config_file: str, opts: Sequence[str]) -> CfgNode:
    """The config of ``train_net.py --config-file config_file opts``."""
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def _expected_config(config_file: str, opts: Sequence[str]) -> str:
    """The ``config.yaml`` text that ``train_net.py --config-file config_file opts`` records."""
    return _load_config(config_file, opts).dump()


def run_precision(config_file: str, opts: Sequence[str]) -> str:
    """What the run ``train_net.py --config-file config_file opts`` computes in on this
    machine.

    Args:
        config_file: the run's config.
        opts: its ``KEY VALUE`` overrides.

    Returns:
        In words, as :func:`~fima.engine.train_loop.describe_amp` puts it.
    """
    cfg = _load_config(config_file, opts)
    return describe_amp(cfg.SOLVER.AMP, resolve_device(cfg).type)


def _lock_output_dir(output_dir: str) -> TextIO | None:
    """Hold ``output_dir``'s lock (``.lock``) for this benchmark and the runs it starts; None on
    a file system without locks.

    Raises:
        RuntimeError: another motion benchmark, or a run that one started, uses the directory.
    """
    try:
        return lock_folder(output_dir)
    except FolderInUseError as err:
        raise RuntimeError(_in_use_message(output_dir, err.holder)) from None


def _in_use_message(output_dir: str, holder: str) -> str:
    return (
        f"Another motion benchmark, or a run it started, is using {output_dir} ({holder}): wait "
        "for it to end (or stop its train_net.py processes), or give another --output-dir"
    )


def _evaluated_checkpoint_changed(run: _Run) -> bool:
    """Whether a finished evaluation scored another file than its checkpoint now holds (its
    pretraining was run again since): then it must run again."""
    checkpoint = run.opts[run.opts.index("MODEL.WEIGHTS") + 1]
    if not checkpoint or not os.path.isfile(checkpoint):
        return False
    with open(os.path.join(run.folder, run.marker)) as f:
        recorded = json.load(f).get("checkpoint_sha256")
    return recorded != sha256_of(checkpoint)


def _check_runs(runs: Sequence[_Run]) -> None:
    """Check every run's config before any run starts (the data: :func:`_read_splits`).

    Raises:
        ConfigError, KeyError, ValueError: a bad override or config (the message names the key).
    """
    for run in runs:
        opts = list(run.opts)
        if run.flags and "MODEL.WEIGHTS" in opts:  # an evaluation: its pretraining writes them
            opts[opts.index("MODEL.WEIGHTS") + 1] = ""
        validate_cfg(_load_config(run.config_file, opts))


def _read_splits(cfg: CfgNode) -> dict[str, VideoDataset]:
    """The training and test splits that every run of the benchmark reads (lists, no video).

    Raises:
        FileNotFoundError, AnnotationError: the dataset is not where or what the config says.
    """
    return {
        split: build_dataset(cfg, split)
        for split in dict.fromkeys((cfg.DATA.TRAIN_SPLIT, cfg.DATA.TEST_SPLIT))
    }


def data_fingerprint(splits: Mapping[str, VideoDataset]) -> dict[str, dict[str, object]]:
    """What identifies the videos of each split: their count, and a sha256 of every video's path
    (below the dataset's root), label, size and modification time. No video is opened: a
    ``stat`` per file."""
    fingerprint: dict[str, dict[str, object]] = {}
    for split, dataset in splits.items():
        digest = hashlib.sha256()
        for record in dataset.records:
            try:
                stat = os.stat(record.path)
                size, modified = stat.st_size, stat.st_mtime_ns
            except OSError:  # a missing video: the runs skip it, and so does the fingerprint
                size, modified = -1, -1
            relative = os.path.relpath(record.path, dataset.root or "/")
            digest.update(f"{relative}\t{record.label}\t{size}\t{modified}\n".encode())
        fingerprint[split] = {"videos": len(dataset), "sha256": digest.hexdigest()}
    return fingerprint


def _check_same_data(output_dir: str, fingerprint: dict, reusable: bool) -> None:
    """Record ``fingerprint`` in ``output_dir/data.json``, after checking that the runs found
    there read the same videos.

    Raises:
        RuntimeError: runs in ``output_dir`` (finished or part-way) read other videos (a
            VideoList folder rebuilt or edited under the same ``DATA.ROOT``): reusing them would
            average two datasets in one table.
    """
    path = os.path.join(output_dir, "data.json")
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f)
        if reusable and recorded != fingerprint:
            changed = ", ".join(
                f"{split}: {recorded.get(split, {}).get('videos', 0)} videos then, "
                f"{now['videos']} now" + ("" if recorded.get(split) != now else " (the same)")
                for split, now in fingerprint.items()
            )
            raise RuntimeError(
                f"The videos this benchmark reads differ from those its finished runs in "
                f"{output_dir} read ({changed}; a file added, removed, relabelled or rewritten): "
                "give another --output-dir, or move that folder away; nothing was reused or "
                "overwritten"
            )
    elif reusable:
        logger.warning(
            "%s holds finished runs but no record of the videos they read (data.json, written "
            "since 2026-12-05): they are reused as if they read these",
            output_dir,
        )
    atomic_write(path, lambda f: json.dump(fingerprint, f, indent=1), mode="w")


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


@dataclass(frozen=True)
class _Run:
    """One ``train_net.py`` process of the benchmark: done once ``marker`` exists in ``folder``."""

    folder: str
    marker: str
    config_file: str
    opts: tuple[str, ...]
    flags: tuple[str, ...] = ()
    # Pretraining only: its wall time's key in BenchmarkResult.seconds; a pretraining that
    # stopped part-way is resumed from its last checkpoint.
    timed_as: str = ""


def _plan(
    output_dir: str, seeds: Sequence[int], opts: Sequence[str], arms: Sequence[Arm], config_dir: str
) -> list[tuple[str, int, list[_Run]]]:
    """Every ``(name, seed, runs)`` of the benchmark: an arm's pretraining and then its
    evaluation, or the random init's evaluation alone; the runs of one entry go in order.

    Arm by arm across the seeds, the random init last, so that with several runs at a time the
    last to finish are short ones."""
    eval_config = os.path.join(config_dir, "eval_motion.yaml")

    def evaluation(name: str, seed: int, checkpoint: str) -> _Run:
        folder = os.path.join(output_dir, f"eval_{_slug(name)}_seed{seed}")
        run_opts = (*opts, "MODEL.WEIGHTS", checkpoint, "SEED", str(seed), "OUTPUT_DIR", folder)
        return _Run(folder, "results.json", eval_config, run_opts, ("--eval-only",))

    plan = []
    for arm in arms:
        for seed in seeds:
            folder = os.path.join(output_dir, f"{_slug(arm.name)}_seed{seed}")
            run_opts = (*arm.opts, *opts, "SEED", str(seed), "OUTPUT_DIR", folder)
            config_file = os.path.join(config_dir, arm.config)
            timed_as = f"{arm.name} seed {seed}"
            pretrain = _Run(folder, "model_final.pth", config_file, run_opts, timed_as=timed_as)
            checkpoint = os.path.join(folder, "model_final.pth")
            plan.append((arm.name, seed, [pretrain, evaluation(arm.name, seed, checkpoint)]))
    plan += [(RANDOM, seed, [evaluation(RANDOM, seed, "")]) for seed in seeds]
    return plan


class RunFailedError(RuntimeError):
    """A run of the benchmark exited with an error (its output is in ``runs.log``)."""


class _NotStarted(Exception):
    """A run not started because another one failed."""


def run_motion_benchmark(
    output_dir: str,
    seeds: Sequence[int],
    opts: Sequence[str] = (),
    arms: Sequence[Arm] = ARMS,
    config_dir: str = BENCHMARK_CONFIGS,
    jobs: int | None = None,
) -> BenchmarkResult:
    """Pretrain every arm for every seed, evaluate them and a random init; see the module doc.

    Args:
        output_dir: where every run gets its folder (``<arm>_seed<s>``, ``eval_<arm>_seed<s>``).
        seeds: the seeds; each seeds the data order, augmentation and initialisation of a run.
        opts: ``KEY VALUE`` overrides applied to every run (e.g. another dataset, a budget).
        arms: the pretraining methods.
        config_dir: the folder of the arms' configs and of ``eval_motion.yaml``.
        jobs: runs at a time. Above 1, each run gets its share of the CPUs as
            ``OMP_NUM_THREADS`` (:func:`run_threads`), and its output is appended to
            ``runs.log`` when it ends, so that the runs' lines do not interleave. None: one run
            per CPU (:func:`~fima.utils.env.processes_per_cpus`), but no more than the plan can
            run at once (an arm's pretraining and evaluation, or a random init, per seed), so
            that a larger CPU gives each run more threads.

    Returns:
        Every evaluated arm's metrics per seed, with the runs' times and how they ran.

    Raises:
        ValueError: ``jobs`` below 1.
        RunFailedError: a run exited with an error.
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    plan = _plan(output_dir, seeds, opts, arms, config_dir)
    # No more at a time than the plan can run at once, which the report then says.
    jobs = min(jobs if jobs is not None else processes_per_cpus(), len(plan))
    # Every arm takes SOLVER.AMP and MODEL.DEVICE from the defaults and the same overrides.
    first_pretraining = plan[0][2][0]
    result = BenchmarkResult(
        cpu_sharing=cpu_sharing(jobs),
        precision=run_precision(first_pretraining.config_file, first_pretraining.opts),
    )
    logger.info("Motion benchmark: runs %s, in %s", result.cpu_sharing, result.precision)
    os.makedirs(output_dir, exist_ok=True)
    lock = _lock_output_dir(output_dir)
    # Held until the benchmark ends, however it ends (the runs it starts inherit it).
    with lock or contextlib.nullcontext():
        log_file = os.path.join(output_dir, "runs.log")
        threads = run_threads(jobs)
        # Checked for all runs before any starts: a folder of another config, a bad override or a
        # dataset that is not there stops the benchmark before it spends anything.
        done = {
            run.folder: _is_done(run.folder, run.marker, run.config_file, run.opts)
            and not (run.flags and _evaluated_checkpoint_changed(run))
            for _, _, runs in plan
            for run in runs
        }
        to_run = [run for _, _, runs in plan for run in runs if not done[run.folder]]
        if to_run:
            _check_runs(to_run)
        # Every run reads the data of the overrides (the arms' configs name no dataset), read
        # once here: checked before any run starts, fingerprinted, and the test split's chance.
        data_cfg = _load_config(plan[-1][2][-1].config_file, opts)
        splits = _read_splits(data_cfg)
        _check_same_data(
            output_dir,
            data_fingerprint(splits),
            # A run found finished is reused, one found part-way is resumed: either way its
            # videos must be these.
            reusable=any(
                os.path.isfile(os.path.join(run.folder, "config.yaml"))
                for _, _, runs in plan
                for run in runs
            ),
        )
        executed: set[str] = set()
        log_lock = threading.Lock()
        failed = threading.Event()

        def execute(runs: list[_Run]) -> dict[str, float]:
            """Run ``runs`` in order; their wall times by ``timed_as``. Once a run has run, the
            ones after it run too (an evaluation of a pretraining that ran again)."""
            seconds = {}
            ran = False
            for run in runs:
                if done[run.folder] and not ran:
                    continue
                if failed.is_set():  # another run failed: start nothing more
                    raise _NotStarted()
                resume = ["--resume"] if run.timed_as and os.path.isdir(run.folder) else []
                argv = ["--config-file", run.config_file, *run.flags, *resume, *run.opts]
                ran = True
                executed.add(run.folder)
                if jobs == 1:
                    status, elapsed = _run(argv, log_file, lock_fd=lock.fileno())
                else:
                    # Its own file while it runs, then appended whole: runs.log stays readable.
                    own_log = os.path.join(output_dir, f".{os.path.basename(run.folder)}.log")
                    open(own_log, "w").close()  # not what a killed benchmark left there
                    try:
                        status, elapsed = _run(argv, own_log, threads, lock_fd=lock.fileno())
                    finally:
                        with log_lock, open(own_log) as part, open(log_file, "a") as log:
                            shutil.copyfileobj(part, log)
                        os.remove(own_log)
                if status != 0:
                    failed.set()
                    raise RunFailedError(
                        f"Run {run.folder} failed (exit {status}); its output is in {log_file}"
                    )
                if run.timed_as:
                    seconds[run.timed_as] = elapsed
            return seconds

        first_error: Exception | None = None
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
        try:
            for future in [pool.submit(execute, runs) for _, _, runs in plan]:
                try:
                    result.seconds.update(future.result())
                except _NotStarted:
                    pass
                # The runs under way finish; then the first error is raised.
                except Exception as err:
                    failed.set()
                    first_error = first_error or err
        except KeyboardInterrupt:
            # Ctrl-C reaches the runs too, and they stop after their last checkpoint; a SIGINT
            # to this process alone (kill -INT) does not: no run starts after it, and the runs
            # under way are given the same chance, then SIGINT, then killed.
            failed.set()
            pool.shutdown(wait=False, cancel_futures=True)
            stop_interrupted(list(_running))
            raise
        finally:
            pool.shutdown(wait=True)
        if first_error is not None:
            raise first_error
        order = [run.timed_as for _, _, runs in plan for run in runs if run.timed_as]
        result.seconds = {key: result.seconds[key] for key in order if key in result.seconds}
        result.reused = [
            folder for folder, finished in done.items() if finished and folder not in executed
        ]
        evaluations = {(name, seed): runs[-1].folder for name, seed, runs in plan}
        for seed in seeds:
            for name in (RANDOM, *(arm.name for arm in arms)):
                with open(os.path.join(evaluations[name, seed], "results.json")) as f:
                    metrics = json.load(f)["metrics"]
                result.metrics.setdefault(name, {})[seed] = {
                    m: float(metrics[m]) for m in METRICS + DIAGNOSTICS if m in metrics
                }
                result.num_test_videos = int(metrics["retrieval/num_queries"])
        test_split = splits[data_cfg.DATA.TEST_SPLIT]
        result.chance = chance_top1([record.label for record in test_split])
        return result


def chance_top1(labels: Sequence[int]) -> float:
    """The top-1 that features without information about the class reach: the share of the
    most frequent class among ``labels`` (``1 / classes`` on a balanced split), as a fraction.

    Args:
        labels: the test videos' labels.

    Returns:
        A fraction in ``(0, 1]``; 0 for no labels.
    """
    if not labels:
        return 0.0
    return max(collections.Counter(labels).values()) / len(labels)


def _mean_std(values: list[float], signed: bool = False, digits: int = 1) -> str:
    mean = f"{statistics.mean(values):{'+' if signed else ''}.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.{digits}f}"


def _has_diagnostics(result: BenchmarkResult) -> bool:
    """Whether every evaluation reported :data:`DIAGNOSTICS` (not with TEST.EVALUATORS
    overridden without ``motion_sensitivity``)."""
    return bool(result.metrics) and all(
        metric in values
        for per_seed in result.metrics.values()
        for values in per_seed.values()
        for metric in DIAGNOSTICS
    )


def data_check(result: BenchmarkResult) -> list[str]:
    """Markdown lines on whether the appearance alone tells the class: the static top-1 of the
    label-free arms and the random init, against chance.

    The benchmark needs data whose class is only in the motion; a static top-1 more than
    :data:`LEAK_STANDARD_ERRORS` binomial standard errors (at the test split's size) above
    chance (:func:`chance_top1`) says the data leak the class through the appearance, and any
    arm's linear probe may be reading that instead of motion.

    Args:
        result: the benchmark's metrics, with :data:`DIAGNOSTICS`, ``chance`` and
            ``num_test_videos``.

    Returns:
        The lines; none without the diagnostics or the chance level.
    """
    if not _has_diagnostics(result) or not 0 < result.chance < 1 or result.num_test_videos < 1:
        return []
    values = [
        per_seed[seed]["motion_sensitivity/static_top1"]
        for name, per_seed in result.metrics.items()
        if name not in DATA_CHECK_EXCLUDES
        for seed in per_seed
    ]
    chance = result.chance
    error = 100.0 * (chance * (1.0 - chance) / result.num_test_videos) ** 0.5
    limit = 100.0 * chance + LEAK_STANDARD_ERRORS * error
    line = (
        f"- Data check: the appearance alone (static top-1, label-free arms and random init, "
        f"every seed) tells {min(values):.1f}-{max(values):.1f}%, chance {100.0 * chance:.1f}% "
        f"(standard error {error:.1f} at {result.num_test_videos} test videos): "
    )
    if max(values) > limit:
        line += (
            f"**above {limit:.1f}, so the appearance tells part of the class**, and a linear "
            "probe may be reading it instead of motion; the benchmark needs data whose class is "
            "only in the motion"
        )
    else:
        line += "within the noise of chance: no feature reads the class from the appearance"
    return [line]


def markdown_table(result: BenchmarkResult, command: str, elapsed: float) -> str:
    """The results as Markdown: mean ± std over seeds, every seed's values, and the methods
    compared seed by seed (:func:`paired_differences`) on linear top-1 and R@1.

    Args:
        result: what :func:`run_motion_benchmark` returned.
        command: the command line, quoted in the report.
        elapsed: this invocation's wall time in seconds.

    Returns:
        The report, ending with a newline.
    """
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
        f"- Command: `{command}`"
        + (f"; runs {result.cpu_sharing}" if result.cpu_sharing else "")
        + (
            " (the reused runs as the invocation that ran them did: each run's log.txt gives its "
            "CPU threads)"
            if result.reused and result.cpu_sharing
            else ""
        ),
        f"- Machine: {describe_cpu_model()}, {describe_cpus()}, torch {torch.__version__}",
        *([f"- Precision: {result.precision}"] if result.precision else []),
        "",
    ]
    diagnosed = _has_diagnostics(result)
    extra = " Static top-1 (%) | Frozen similarity |" if diagnosed else ""
    lines += [
        f"| Method | Linear probe top-1 (%) | R@1 (%) | R@5 (%) |{extra} seeds |",
        "| --- |" + " ---: |" * (4 + 2 * diagnosed),
    ]
    for name, per_seed in result.metrics.items():
        seeds = sorted(per_seed)
        columns = [_mean_std([per_seed[s][m] for s in seeds]) for m in METRICS]
        if diagnosed:
            static, frozen = ([per_seed[s][m] for s in seeds] for m in DIAGNOSTICS)
            columns += [_mean_std(static), _mean_std(frozen, digits=3)]
        lines.append(f"| {name} | {' | '.join(columns)} | {len(seeds)} |")
    if diagnosed:
        lines += [
            "",
            "- Static top-1: the linear probe fit and scored on clips whose every frame is the "
            "middle one, what the appearance alone tells about the class. Frozen similarity: "
            "the cosine similarity of a clip's feature and the feature of the same clip without "
            "its motion (centred; 1 is blind to the motion). From the `motion_sensitivity` "
            "evaluator (fima/evaluation/motion_sensitivity.py).",
            *data_check(result),
        ]
    lines += ["", "Per seed (linear probe top-1 / R@1):", ""]
    for name, per_seed in result.metrics.items():
        values = ", ".join(
            f"seed {s}: {v['linear_probe/top1']:.1f} / {v['retrieval/R@1']:.1f}"
            for s, v in sorted(per_seed.items())
        )
        lines.append(f"- {name}: {values}")
    for metric in ("linear_probe/top1", "retrieval/R@1"):
        lines += paired_differences(result, metric)
    if result.seconds:
        lines += [
            "",
            "Pretraining wall time (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()),
        ]
    return "\n".join(lines) + "\n"


def paired_differences(result: BenchmarkResult, metric: str = "linear_probe/top1") -> list[str]:
    """Markdown lines comparing methods seed by seed on ``metric``.

    For each pair of ``CLAIMED_ORDER``'s neighbours and of ``ABLATION_PAIRS`` (where both were
    run): the per-seed differences, their mean ± std, and on how many seeds the first is ahead;
    then on how many seeds the whole claimed order holds. A mean within its std of zero is not
    an ordering that the seeds support, whatever the count of seeds ahead.

    Args:
        result: the benchmark's metrics.
        metric: one of :data:`METRICS`.

    Returns:
        The lines, headed by a title; none when no pair was run.
    """

    def seeds_of(*names: str) -> list[int]:
        if not all(name in result.metrics for name in names):
            return []
        return sorted(set.intersection(*(set(result.metrics[name]) for name in names)))

    def value(name: str, seed: int) -> float:
        return result.metrics[name][seed][metric]

    neighbours = list(zip(CLAIMED_ORDER, CLAIMED_ORDER[1:], strict=False))
    lines = []
    for first, second in neighbours + list(ABLATION_PAIRS):
        seeds = seeds_of(first, second)
        if not seeds:
            continue
        diffs = [value(first, s) - value(second, s) for s in seeds]
        ahead = sum(d > 0 for d in diffs)
        lines.append(
            f"- {first} - {second}: {', '.join(f'{d:+.1f}' for d in diffs)} (mean "
            f"{_mean_std(diffs, signed=True)}; {first} ahead on {ahead} of {len(seeds)} seeds)"
        )
    seeds = seeds_of(*CLAIMED_ORDER)
    if seeds:
        holds = sum(all(value(a, s) > value(b, s) for a, b in neighbours) for s in seeds)
        lines.append(f"- {' > '.join(CLAIMED_ORDER)}: on {holds} of {len(seeds)} seeds")
    if not lines:
        return []
    return ["", f"Paired by seed ({METRIC_NAMES[metric]}, first - second, points):", "", *lines]


def run_threads(jobs: int) -> int | None:
    """The ``OMP_NUM_THREADS`` each run gets.

    Args:
        jobs: runs at a time.

    Returns:
        The CPUs' share of each of ``jobs`` runs; None for one run at a time: the
        environment's, which every run inherits.
    """
    return threads_per_process(jobs) if jobs > 1 else None


def cpu_sharing(jobs: int) -> str:
    """How runs share the CPUs (:func:`run_threads`), for the report.

    Args:
        jobs: runs at a time.

    Returns:
        In words, e.g. ``"2 at a time, 1 thread(s) each"``.
    """
    threads = run_threads(jobs)
    if threads is not None:
        return f"{jobs} at a time, {threads} thread(s) each"
    omp = user_threads()
    each = f"OMP_NUM_THREADS={omp}" if omp is not None else "every CPU"
    return f"{jobs} at a time, {each} each" if jobs > 1 else f"1 at a time, on {each}"


def _seed_list(text: str) -> list[int]:
    """``--seeds``: distinct non-negative integers (a negative SEED draws a random one per run,
    which would pair runs of unrelated seeds; a repeated seed would run into one folder twice)."""
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text!r}") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and >= 0, got {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``--task motion``: options, then ``KEY VALUE`` overrides."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Trailing KEY VALUE pairs override every run (another dataset, budget or "
        "backbone), e.g. SOLVER.MAX_ITER 50 or DATA.SYNTHETIC.CLASSES \"('Circle','Still')\".",
    )
    parser.add_argument("--output-dir", default="output/motion_benchmark")
    parser.add_argument(
        "--seeds",
        type=_seed_list,
        default=[0, 1, 2],
        help="comma-separated seeds, distinct and >= 0 (default 0,1,2)",
    )
    parser.add_argument(
        "--jobs",
        type=int_at_least(1),
        default=None,
        help="runs at a time, sharing the CPUs: each gets CPUs / JOBS threads (default: one run "
        "per CPU, or CPUs / OMP_NUM_THREADS runs if that is set, at most 6 per seed). A run on "
        "fewer threads wastes less of each (on a 2-core CPU, 2 runs of 1 thread finished the "
        "benchmark in 61 min, 1 run of 2 threads in 76). A run's figures depend on its thread "
        "count (the order of its sums), so they differ from those of another --jobs as a rerun "
        "with another OMP_NUM_THREADS would; --jobs 1 gives every run all the CPUs",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every run")
    return parser


def main(argv: list[str]) -> BenchmarkResult:
    """``tools/benchmark.py --task motion [--output-dir D] [--seeds S ...] [KEY VALUE ...]``:
    run the benchmark, print its table and write ``results.md`` and ``results.json`` into the
    output directory.

    Args:
        argv: the task's options and overrides.

    Returns:
        The results.

    Raises:
        SystemExit: 2 on a usage error (bad option, override or data), 1 when a run failed.
    """
    args = build_parser().parse_args(argv)
    # The runs see the output directory and the overrides from where the user stands.
    args.output_dir = os.path.abspath(args.output_dir)
    # Before its log file is opened: a refused benchmark wrote into the running one's log.txt.
    holder = folder_holder(args.output_dir)
    if holder is not None:
        usage_error(PROG, _in_use_message(args.output_dir, holder))
    # And a bad override, before the folder is made (the data are checked with the runs).
    with usage_errors(PROG):
        for arm in ARMS:
            config_file = os.path.join(BENCHMARK_CONFIGS, arm.config)
            validate_cfg(_load_config(config_file, [*arm.opts, *args.opts]))
    setup_logger(args.output_dir, name="fima")
    start = time.perf_counter()
    # A bad override, a dataset that is not there, a folder of another run, the output directory
    # in use: one line, exit 2. A run that fails: one line naming its log, exit 1.
    with usage_errors(PROG, (*USAGE_ERRORS, AnnotationError, RuntimeError)):
        try:
            result = run_motion_benchmark(args.output_dir, args.seeds, args.opts, jobs=args.jobs)
        except RunFailedError as err:
            logger.debug("A run failed", exc_info=True)
            print(f"{PROG}: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print(
                f"{PROG}: interrupted; the same command continues it (finished runs are reused, "
                "a pretraining resumes from its last checkpoint)",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
    elapsed = time.perf_counter() - start
    command = shlex.join(["python", "tools/benchmark.py", "--task", "motion", *argv])
    table = markdown_table(result, command, elapsed)
    print(table)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"command": command, **dataclasses.asdict(result)}, f, indent=1)
    return result
