"""``DefaultTrainer``, ``default_argument_parser`` and ``default_setup``: the standard way to
train and evaluate from a config, used by ``tools/train_net.py`` and by projects."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import logging.handlers
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, NoReturn, TextIO

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fima.checkpoint import Checkpointer, atomic_write
from fima.checkpoint.backbone_weights import resolve_weights
from fima.config import CfgNode, ConfigError, get_cfg, validate_cfg
from fima.data.bad_videos import BadVideoTracker
from fima.engine import hooks
from fima.engine.solver import build_lr_scheduler, build_optimizer, max_iterations
from fima.engine.train_loop import SimpleTrainer, describe_amp, resolve_amp
from fima.evaluation.evaluator import as_metrics, check_evaluator
from fima.evaluation.results import begin_reports
from fima.modeling import build_model
from fima.modeling.batch_shuffle import convert_batchnorm_for
from fima.modeling.ssl.build import SSL_METHOD_REGISTRY
from fima.utils import comm
from fima.utils.env import get_rng_state, seed_all_rng, set_rng_state, shared_seed
from fima.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardWriter
from fima.utils.files import FolderInUseError, folder_holder, lock_folder, set_aside
from fima.utils.logger import setup_logger
from fima.utils.memory import retain_freed_memory
from fima.utils.visualization import check_visualizable

logger = logging.getLogger(__name__)


class OptionsFirstArgumentParser(argparse.ArgumentParser):
    """argparse, except that an option given after the ``KEY VALUE`` overrides, which
    ``argparse.REMAINDER`` takes for overrides, is said to be misplaced: argparse would call
    ``--config-file`` missing, or take ``--resume`` for a config key. Every tool whose command
    line ends in overrides (``train_net.py``, ``visualize.py``, ``benchmark.py --task train``)
    parses with it, so they all say so alike."""

    _deferred: list[argparse.Action] = []

    def parse_known_args(
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # Required options (--config-file) are checked here, after the misplaced ones: argparse
        # would call one given after the overrides missing.
        self._deferred = [a for a in self._actions if a.required and a.option_strings]
        for action in self._deferred:
            action.required = False
        try:
            namespace, extras = super().parse_known_args(args, namespace)
        finally:
            for action in self._deferred:
                action.required = True
        misplaced = [
            item
            for item in getattr(namespace, "opts", None) or []
            if item.split("=")[0] in self._option_string_actions
        ]
        if misplaced:
            self.error(f"options ({' '.join(misplaced)}) must come before the KEY VALUE overrides")
        missing = [
            action.option_strings[0]
            for action in self._deferred
            if getattr(namespace, action.dest, None) is None
        ]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return namespace, extras

    @contextlib.contextmanager
    def _required_shown(self) -> Iterator[None]:
        """The usage and help (``--help`` prints them while parsing) show required options as
        required, without brackets."""
        relaxed = [action for action in self._deferred if not action.required]
        for action in relaxed:
            action.required = True
        try:
            yield
        finally:
            for action in relaxed:
                action.required = False

    def format_usage(self) -> str:
        with self._required_shown():
            return super().format_usage()

    def format_help(self) -> str:
        with self._required_shown():
            return super().format_help()


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``tools/train_net.py`` (and of projects' entry points)."""
    parser = OptionsFirstArgumentParser(
        epilog=epilog
        or (
            "Examples:\n"
            "  python tools/train_net.py --config-file configs/Quickstart/moco_synthetic.yaml\n"
            "  python tools/train_net.py --config-file cfg.yaml --resume\n"
            "  python tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS m.pth\n"
            "  python tools/train_net.py --config-file cfg.yaml --num-gpus 2 SOLVER.BASE_LR 0.02\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="path to a config file"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in OUTPUT_DIR (else start from MODEL.WEIGHTS)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS only")
    add_import_argument(parser)
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous URL for multi-process runs ('auto': a free port on this machine)",
    )
    parser.add_argument(
        "--dist-backend",
        default="auto",
        choices=("auto", "nccl", "gloo"),
        help="how processes communicate ('auto': NCCL when GPUs are visible, else gloo; "
        "gloo with MODEL.DEVICE cpu runs the processes on the CPU of a GPU machine)",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="time limit of any collective: if a rank dies, the others fail after this",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.1",
    )
    return parser


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--import MODULE_OR_FILE`` (repeatable; ``args.imports``), which every tool that
    reads a config takes, so that a project's backbones and config keys work with all of them."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module or .py file first, e.g. one that registers a backbone "
        "(may be repeated); its add_config(cfg), if it defines one, adds its config keys",
    )


def import_user_module(spec: str) -> ModuleType:
    """Import a dotted module name or a ``.py`` file path (``--import``).

    A module name is looked up on the Python path, then in the working directory (Python puts
    a script's folder on the path, not the working directory, where a user's module lies). A
    ``.py`` file may import the modules beside it, as a script run by ``python file.py`` can:
    its folder is added to the end of the path.

    Raises:
        FileNotFoundError: no such ``.py`` file.
        ValueError: no such module (a module that imports a missing one keeps its own error).
    """
    if spec.lower().endswith(".py"):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--import {spec}: no such file")
        name = os.path.splitext(os.path.basename(path))[0]
        # Last, like the working directory below: a sibling never shadows an installed module.
        _append_to_path(os.path.dirname(path))
        # An explicit loader: Python infers one from a lower-case .py only (not MODULE.PY).
        loader = importlib.machinery.SourceFileLoader(name, path)
        module_spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    # Last, so that a file in the working directory never shadows an installed module.
    if os.curdir not in sys.path and "" not in sys.path:
        _append_to_path(os.getcwd())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name is None or not (spec == err.name or spec.startswith(f"{err.name}.")):
            raise  # the module exists but imports a missing one: its traceback says where
        raise ValueError(
            f"--import {spec}: no module named {err.name!r} on the Python path or in the working "
            "directory (give a module name importable from there, or the path of a .py file)"
        ) from None


def _append_to_path(folder: str) -> None:
    """Put ``folder`` at the end of ``sys.path`` unless it is on it already."""
    if folder not in sys.path:
        sys.path.append(folder)


def get_user_cfg(
    config_file: str, opts: list[str] | None = None, imports: list[str] | tuple[str, ...] = ()
) -> CfgNode:
    """The config a tool runs with: ``get_cfg()``, then the keys that the ``--import`` modules
    add (their ``add_config(cfg)``, if they define one), the file, and the ``KEY VALUE``
    overrides. Not validated, not frozen.

    Raises:
        FileNotFoundError, ValueError: an ``--import`` that cannot be found.
        KeyError: a key that neither fima nor an imported module defines.
    """
    cfg = get_cfg()
    for spec in imports:
        add_config = getattr(import_user_module(spec), "add_config", None)
        if add_config is not None:
            add_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    cfg.OUTPUT_DIR = os.path.expanduser(cfg.OUTPUT_DIR)
    return cfg


# What a user's config or command line can get wrong before anything runs (the first line of
# defence is validate_cfg's ConfigError): tools say it in one line with exit status 2.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    KeyError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
)


def usage_error(prog: str, message: str) -> NoReturn:
    """Stop with ``PROG: error: MESSAGE`` on stderr and exit status 2, as argparse does; ranks
    other than 0 say ``PROG (rank N): error: ...``, as their log lines carry their rank."""
    rank = comm.get_rank()
    where = f" (rank {rank})" if rank > 0 else ""
    print(f"{prog}{where}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def usage_errors(prog: str, errors: tuple[type[Exception], ...] = USAGE_ERRORS) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into :func:`usage_error`; anything else keeps its
    traceback. The traceback of a converted error goes to the log file (DEBUG).

    Example::

        with usage_errors("train_net.py"):
            cfg = setup(args)
    """
    try:
        yield
    except errors as err:
        logger.debug("Stopped on a usage error", exc_info=True)
        # A KeyError's str() quotes its message.
        usage_error(prog, err.args[0] if isinstance(err, KeyError) and err.args else str(err))


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (else argparse's usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _preserve_previous_config(path: str, new_text: str) -> None:
    """Keep a differing ``config.yaml`` of an earlier run as ``config.<time>.yaml``."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        if f.read() == new_text:
            return
    # set_aside, not a rename to the name of that second: two configs set aside within one
    # second would keep only the second.
    kept = set_aside(path)
    logger.info("The earlier config of %s is kept in %s", os.path.dirname(path), kept)


def _previous_run_files(output_dir: str) -> list[str]:
    """The files of ``output_dir`` that a new run would overwrite: ``last_checkpoint`` and the
    checkpoints (``*.pth``; ``--resume`` reads any of them, pointer or not)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(
        name
        for name in os.listdir(output_dir)
        if name == "last_checkpoint" or (name.endswith(".pth") and not name.startswith("."))
    )


def check_run(
    cfg: CfgNode,
    args: argparse.Namespace | None,
    world_size: int,
    previous: list[str] | None,
) -> None:
    """What :func:`default_setup` checks before it writes anything: the config
    (:func:`validate_cfg`; resuming a run of OUTPUT_DIR does not read ``MODEL.WEIGHTS``, which
    may be gone since), and that a run which does not resume overwrites no other run.

    Args:
        previous: the files of OUTPUT_DIR that a new run would overwrite
            (:func:`_previous_run_files`); None where they are not known (a machine other than
            the first, before launch), which checks neither against them.

    Raises:
        ConfigError: the config is invalid (the message names the key).
        FileExistsError: OUTPUT_DIR holds another run's checkpoints and neither ``--resume``
            nor ``--eval-only`` was given.
    """
    checked = cfg
    if args is not None and args.resume and (previous is None or previous):
        checked = cfg.clone()
        checked.defrost()
        checked.MODEL.WEIGHTS = ""
    validate_cfg(checked, world_size)
    resuming = args is not None and (args.resume or args.eval_only)
    if not resuming and previous:
        raise FileExistsError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR} already holds a run ({', '.join(previous[:3])}). Pass "
            "--resume to continue it, or set OUTPUT_DIR to another directory; nothing was "
            "overwritten."
        )


def check_before_launch(args: argparse.Namespace, world_size: int, first_machine: bool) -> None:
    """Check the config and command line of a run of ``world_size`` processes in the process
    that launches them, before it spawns any: a bad setting is then said once, not once by
    every rank. The ranks check again in :func:`default_setup`, with their process group (what
    depends on its backend is checked there only). The warnings of the checks are left to the
    ranks' logs.

    Args:
        args: the command line (``config_file``, ``opts``, ``imports``, ``resume``,
            ``eval_only``).
        world_size: the processes of the whole run.
        first_machine: whether this machine runs rank 0, which decides whether OUTPUT_DIR
            holds a run (other machines may not see it).

    Raises:
        As :func:`get_user_cfg` and :func:`check_run`.
    """
    quiet = logging.NullHandler()
    fima_logger = logging.getLogger("fima")
    fima_logger.addHandler(quiet)
    try:
        cfg = get_user_cfg(args.config_file, args.opts, args.imports)
        previous = _previous_run_files(cfg.OUTPUT_DIR) if first_machine else None
        check_run(cfg, args, world_size, previous)
    finally:
        fima_logger.removeHandler(quiet)
    # Rank 0 takes the lock once spawned; a run already there is said now, not by every rank.
    holder = folder_holder(cfg.OUTPUT_DIR) if first_machine else None
    if holder is not None:
        raise ConfigError(_in_use(cfg.OUTPUT_DIR, holder))


# The lock files (OUTPUT_DIR/.lock) that this process holds, open for as long as it lives: a
# second default_setup of the same OUTPUT_DIR in this process (a test, a notebook) keeps it.
_held_locks: dict[str, TextIO] = {}


def _in_use(output_dir: str, holder: str) -> str:
    return (
        f"OUTPUT_DIR: {output_dir} is in use by another run ({holder}): wait for it to end, or "
        "set OUTPUT_DIR to another directory"
    )


def _lock_output_dir(output_dir: str) -> str | None:
    """Hold ``output_dir``'s lock until this process ends, so that two runs started into one
    OUTPUT_DIR cannot write each other's checkpoints, metrics and reports; say which process
    holds it, or None once this one does."""
    key = os.path.realpath(output_dir)
    if key in _held_locks:
        return None
    try:
        lock = lock_folder(output_dir)
    except FolderInUseError as err:
        return _in_use(output_dir, err.holder)
    if lock is not None:
        _held_locks[key] = lock
    return None


def _output_dir_problem(output_dir: str) -> str | None:
    """Create and lock ``output_dir``; say why it cannot hold this run's files, or None when
    it can."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        return f"OUTPUT_DIR: {output_dir} is a file, not a folder; set OUTPUT_DIR to a folder"
    try:
        os.makedirs(output_dir, exist_ok=True)
        # A folder that exists on a read-only file system, or of another user.
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        return (
            f"OUTPUT_DIR: cannot write to {output_dir} ({err.strerror or err}); set OUTPUT_DIR "
            "to a folder you can write"
        )
    return _lock_output_dir(output_dir)


def default_setup(cfg: CfgNode, args: argparse.Namespace | None = None) -> CfgNode:
    """Prepare a run: seed, validation, then output dir, logging, ``config.yaml``; freezes
    ``cfg``. An invalid config leaves nothing on disk.

    A negative ``SEED`` is replaced by a drawn seed shared by all ranks, so that
    ``OUTPUT_DIR/config.yaml`` records the seed that was actually used; an ``--eval-only``
    run (``args.eval_only``) saves it later, once its weights are loaded (:func:`save_config`),
    and a resumed one (``args.resume``) in :meth:`DefaultTrainer.resume_or_load`.
    An earlier run's evaluation reports (``OUTPUT_DIR/inference``) are kept as
    ``inference.<time>`` when this run writes its first one, unless this run resumes the
    training run that wrote them (:func:`fima.evaluation.results.reports_dir`).

    Raises:
        ConfigError: the config is invalid (the message names the key), OUTPUT_DIR cannot
            be created or written, or another run uses it (rank 0 holds ``OUTPUT_DIR/.lock``
            until its process ends).
        FileExistsError: OUTPUT_DIR holds another run's checkpoints and ``--resume`` was not
            given (starting over would overwrite them).
    """
    rank = comm.get_rank()
    if cfg.is_frozen():
        cfg.defrost()
    # As DATA.ROOT and MODEL.WEIGHTS are: "~/runs/x" made a folder named "~" in the cwd.
    cfg.OUTPUT_DIR = output_dir = os.path.expanduser(cfg.OUTPUT_DIR)
    cfg.SEED = shared_seed(cfg.SEED)
    # Nothing is written before the config is known to be valid (an empty OUTPUT_DIR is one of
    # its errors). What the checks log goes to the console now and into log.txt once it exists.
    fima_logger = setup_logger(None, distributed_rank=rank, name="fima")
    held = logging.handlers.BufferingHandler(capacity=sys.maxsize)
    fima_logger.addHandler(held)
    # Rank 0 decides, so that all ranks stop together (other machines may not see the files).
    previous = comm.broadcast_object(
        _previous_run_files(output_dir) if comm.is_main_process() else None
    )
    try:
        check_run(cfg, args, comm.get_world_size(), previous)
    finally:
        fima_logger.removeHandler(held)
    # Rank 0 creates it; every rank stops with its one line if it cannot.
    problem = comm.broadcast_object(
        _output_dir_problem(output_dir) if comm.is_main_process() else None
    )
    if problem is not None:
        raise ConfigError(problem)
    setup_logger(output_dir, distributed_rank=rank, name="fima")
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    for handler in fima_logger.handlers:
        if isinstance(handler, logging.FileHandler):
            for record in held.buffer:
                handler.handle(record)
    logger.info(
        "Rank %d of %d; Python %s; torch %s; %d CPU threads; CUDA: %s",
        rank,
        comm.get_world_size(),
        sys.version.split()[0],
        torch.__version__,
        torch.get_num_threads(),
        torch.cuda.is_available(),
    )
    if args is not None:
        logger.info("Command line arguments: %s", args)
    # A CPU step allocates its activations afresh every step; kept, they are not faulted in and
    # zeroed again by the kernel each time (see retain_freed_memory).
    if resolve_device(cfg).type == "cpu" and retain_freed_memory():
        logger.info("Freed memory is kept for reuse by this process (glibc: no mmap, no trim)")
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    # The evaluation reports of OUTPUT_DIR/inference are rewritten by each evaluation; those of
    # an earlier run (an --eval-only of other weights, the final evaluation of the training run
    # that a --eval-only now follows) are set aside when this run writes its first report, so
    # that a run that stops before evaluating moves nothing.
    eval_only = args is not None and args.eval_only
    resumed = args is not None and args.resume
    begin_reports(output_dir, "evaluation" if eval_only else "training", resumed)
    # An --eval-only run's config is saved once its weights are loaded (save_config), and a
    # resumed run's once its checkpoint is (DefaultTrainer.resume_or_load), so that one that
    # cannot start leaves the config.yaml of the run it evaluates or resumes in place.
    if not eval_only and not resumed:
        save_config(cfg)
    seed_all_rng(cfg.SEED + rank)
    cfg.freeze()
    return cfg


@contextlib.contextmanager
def batchnorm_statistics_of_rank0(model: nn.Module) -> Iterator[None]:
    """Inside the block every rank holds rank 0's BatchNorm running statistics; afterwards its
    own again.

    Each rank keeps its own statistics while training (``create_ddp_model`` does not broadcast
    buffers), and the checkpoints hold rank 0's. An evaluation shards the videos over the
    ranks, so without this each rank's share would be scored with other statistics than the
    checkpoint's, and the figures would belong to no saved model. Training in train mode never
    reads the running statistics, so giving them back changes nothing there either. A
    collective: every rank enters it together.
    """
    if comm.get_world_size() == 1:
        yield
        return
    buffers = [
        buffer
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in module.buffers(recurse=False)
    ]
    own = [buffer.clone() for buffer in buffers]
    for buffer in buffers:
        comm.broadcast_tensor(buffer)
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in zip(buffers, own, strict=True):
                buffer.copy_(saved)


def save_config(cfg: CfgNode) -> str:
    """Write ``OUTPUT_DIR/config.yaml`` (main process); a differing one of an earlier run is kept
    as ``config.<time>.yaml``. Returns its path."""
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if comm.is_main_process():
        text = cfg.dump()
        _preserve_previous_config(path, text)
        atomic_write(path, lambda f: f.write(text), mode="w")
        logger.info("Full config saved to %s", path)
    return path


def resolve_device(cfg: CfgNode) -> torch.device:
    """``MODEL.DEVICE`` as a device: ``auto`` is this process's GPU if it has one (see
    ``comm.uses_gpu``), else CPU."""
    if cfg.MODEL.DEVICE == "auto":
        if comm.uses_gpu():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device(cfg.MODEL.DEVICE)


def create_ddp_model(model: nn.Module, device: torch.device, **kwargs: Any) -> nn.Module:
    """Wrap in DistributedDataParallel when the world size is > 1, else return the model.

    Parameters and buffers are broadcast from rank 0 once, here, so every rank starts from the
    same weights and queues (each rank draws its own random initial queue). Buffers are not
    broadcast each step: the queues stay identical through their all-gathers, and each rank
    keeps its own BatchNorm running statistics (as MoCo does; checkpoints hold rank 0's).
    """
    if comm.get_world_size() == 1:
        return model
    with torch.no_grad():
        for buffer in model.buffers():
            comm.broadcast_tensor(buffer)
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.13 renamed broadcast_buffers (which also skipped the initial sync of buffers).
    if "forward_sync_buffers" in inspect.signature(ddp).parameters:
        kwargs.setdefault("forward_sync_buffers", False)
    else:
        kwargs.setdefault("broadcast_buffers", False)
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
    return ddp(model, **kwargs)


class DefaultTrainer(SimpleTrainer):
    """Training from a config with the standard hooks (see :meth:`build_hooks`).

    It builds the model (``build_model``), converts its BatchNorm layers for multi-device
    training (``MODEL.SPLIT_BN_GROUPS``, ``MODEL.SYNC_BN``), builds its optimizer and LR
    schedule and the method's own training loader, wraps DDP when needed, and runs
    ``SimpleTrainer``'s step. Subclass and override a ``build_*`` method to change one piece.

    Checkpoints hold everything a run needs to continue bit for bit: the model (query and key
    encoders, heads, queues and their pointers, BatchNorm statistics), optimizer, LR scheduler,
    grad scaler, iteration, the data loader's position and every rank's RNG states (Python,
    NumPy, torch CPU and CUDA).

    Example::

        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg)
        method = convert_batchnorm_for(cfg, self.build_model(cfg)).to(self.device)
        optimizer = self.build_optimizer(cfg, method)
        data_loader = self.build_train_loader(cfg)
        accum = cfg.SOLVER.ACCUM_STEPS
        amp, amp_dtype = resolve_amp(cfg.SOLVER.AMP, self.device.type)
        logger.info("Precision: %s", describe_amp(cfg.SOLVER.AMP, self.device.type))
        super().__init__(
            create_ddp_model(
                method,
                self.device,
                find_unused_parameters=cfg.MODEL.DDP_FIND_UNUSED_PARAMETERS,
            ),
            data_loader,
            optimizer,
            amp=amp,
            amp_dtype=amp_dtype,
            accum_steps=accum,
            device_type=self.device.type,
        )
        self.method = method
        self.iters_per_epoch = max(data_loader.iters_per_epoch // accum, 1)
        self.max_iter = max_iterations(cfg, self.iters_per_epoch)
        self.scheduler = self.build_lr_scheduler(
            cfg, optimizer, self.max_iter, self.iters_per_epoch
        )
        self.checkpointer = Checkpointer(
            method,
            cfg.OUTPUT_DIR,
            save_to_disk=comm.is_main_process(),
            trainer=weakref.proxy(self),
            scheduler=self.scheduler,
            data_loader=data_loader,
        )
        self.start_iter = 0
        # The evaluator of the EvalHook (build_hooks sets it), None when there is none.
        self.evaluator: Any | None = None
        self.register_hooks(self.build_hooks())
        logger.info(
            "%s: %d iterations (%d per epoch) of %d clips",
            cfg.MODEL.META_ARCHITECTURE,
            self.max_iter,
            self.iters_per_epoch,
            cfg.SOLVER.IMS_PER_BATCH,
        )

    def train(self) -> dict[str, float]:
        """Run from ``start_iter`` to ``max_iter``; return the last evaluation results, if any."""
        super().train(self.start_iter, self.max_iter)
        for hook in self.hooks:
            if isinstance(hook, hooks.EvalHook):
                return hook.latest
        return {}

    # -- checkpoint state ------------------------------------------------------------------------
    def run_step(self) -> None:
        """:meth:`SimpleTrainer.run_step`, with the config key to set when DDP finds parameters
        that got no gradient (its own message names a constructor argument the user does not
        call)."""
        try:
            super().run_step()
        except RuntimeError as err:
            if "find_unused_parameters" not in str(err):
                raise
            raise RuntimeError(
                f"{self.cfg.MODEL.META_ARCHITECTURE}: some parameters got no gradient in the "
                "last step, which DistributedDataParallel cannot reduce; set "
                "MODEL.DDP_FIND_UNUSED_PARAMETERS True, or leave unused modules out of the "
                "model (DDP's own message follows)"
            ) from err

    def rank_state_dict(self) -> dict[str, Any]:
        """What differs between ranks: the RNG states and the BatchNorm running statistics
        (each rank keeps its own; the model's state holds rank 0's). The checkpointer gathers
        it from every rank."""
        return {
            "rng": get_rng_state(),
            "batchnorm": {k: v.detach().cpu().clone() for k, v in self._batchnorm_stats().items()},
        }

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state["rng"])
        own = self._batchnorm_stats()
        with torch.no_grad():
            for name, value in state["batchnorm"].items():
                own[name].copy_(value)

    def _batchnorm_stats(self) -> dict[str, torch.Tensor]:
        return {
            f"{module_name}.{name}": buffer
            for module_name, module in self.method.named_modules()
            if isinstance(module, _BatchNorm)
            for name, buffer in module.named_buffers(recurse=False)
            if name in ("running_mean", "running_var")
        }

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume``, continue from the newest readable checkpoint of OUTPUT_DIR if there
        is one; otherwise initialise the model from ``MODEL.WEIGHTS`` (if set), strictly
        (:func:`fima.checkpoint.load_model_state`). Call on every rank.

        Raises:
            CheckpointMismatchError: the checkpoint does not fit the model.
            FileNotFoundError, CheckpointReadError: ``MODEL.WEIGHTS`` cannot be read.
            fima.model_zoo.DownloadError: it cannot be downloaded.
        """
        if resume and self.checkpointer.resume() is not None:
            save_config(self.cfg)  # default_setup leaves it to here, for a resume that fails
            self.start_iter = self.iter + 1
            # Resumed from a finished run's final checkpoint, which a larger MAX_ITER continues:
            # the writers keep the records it made after training, and the checkpointer keeps
            # that checkpoint under its iteration's name.
            resumed = os.path.basename(self.checkpointer.resumed_file or "")
            self.continues_finished_run = resumed == "model_final.pth"
            if self.start_iter >= self.max_iter:
                logger.warning(
                    "The checkpoint has trained %d iterations, as many as or more than this run's "
                    "%d (SOLVER.MAX_ITER / MAX_EPOCHS): there is nothing left to train",
                    self.start_iter,
                    self.max_iter,
                )
            return
        if resume:
            save_config(self.cfg)
            # Not an error: a job restarted after preemption passes --resume from its first
            # start. But a mistyped OUTPUT_DIR would silently start over, so it is said.
            start = (
                f"MODEL.WEIGHTS {self.cfg.MODEL.WEIGHTS}" if self.cfg.MODEL.WEIGHTS else "scratch"
            )
            logger.warning(
                "--resume: OUTPUT_DIR %s holds no checkpoint; this run starts from %s",
                self.cfg.OUTPUT_DIR,
                start,
            )
        # Not resumed: the best weights in OUTPUT_DIR/best, if any, are another run's.
        selector = getattr(self.evaluator, "selector", None)
        if selector is not None:
            selector.start_over()
        if self.cfg.MODEL.WEIGHTS:
            # A path, a URL or a model-zoo name (fima:// files are sha256-verified).
            self.checkpointer.load(resolve_weights(self.cfg.MODEL.WEIGHTS), checkpointables=[])

    # -- builders --------------------------------------------------------------------------------
    @classmethod
    def method_class(cls, cfg: CfgNode) -> type:
        return SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        model = build_model(cfg)
        logger.info(
            "Model %s: %.2fM trainable parameters",
            cfg.MODEL.META_ARCHITECTURE,
            sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        )
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(
        cls, cfg: CfgNode, optimizer: torch.optim.Optimizer, max_iter: int, iters_per_epoch: int
    ) -> Any:
        return build_lr_scheduler(cfg, optimizer, max_iter, iters_per_epoch)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """The method's own training loader (``build_train_loader(cfg)`` of its class)."""
        return cls.method_class(cfg).build_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, model: nn.Module) -> Any | None:
        """The method's evaluator (``build_evaluator(cfg)``), or None if it has none."""
        build = getattr(comm.unwrap_model(model), "build_evaluator", None)
        return build(cfg) if build is not None else None

    def build_writers(self) -> list[EventWriter]:
        """Console with ETA, ``metrics.json`` and TensorBoard, all in OUTPUT_DIR."""
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardWriter(self.cfg.OUTPUT_DIR),
        ]

    def build_hooks(self) -> list[hooks.HookBase | None]:
        """The standard hooks, in the order they must run."""
        cfg = self.cfg
        tracker: BadVideoTracker | None = getattr(self.data_loader, "tracker", None)
        build_method_hooks = getattr(self.method, "build_hooks", None)
        evaluator = self.evaluator = self.build_evaluator(cfg, self.method)
        # An evaluation that could not run (its split missing, unlabelled) fails now, not
        # after training: the EvalHook runs at least once, at the end.
        check_evaluator(evaluator, self.method)
        if evaluator is None and cfg.TEST.KNN.ENABLED:
            # The kNN monitor is an evaluator (MoCo's): without one it would silently not run.
            raise ConfigError(
                f"TEST.KNN.ENABLED: {cfg.MODEL.META_ARCHITECTURE} builds no evaluator "
                "(build_evaluator), so nothing would run the kNN monitor; give the method a "
                "build_evaluator that returns fima.evaluation.knn.KNNEvaluator(cfg) and an "
                "extract_features, or set TEST.KNN.ENABLED False"
            )
        if cfg.VIS_PERIOD > 0:
            # Likewise a method without an encoder to draw, on every rank alike.
            check_visualizable(self.method)
        return [
            # First, so that a step's time includes every other hook.
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            # The method's own hooks (momentum update before the step, queue update after it)
            # come before checkpointing, so that a checkpoint holds the updated queues.
            *(build_method_hooks(cfg) if build_method_hooks is not None else []),
            hooks.NonFiniteLossGuard(),
            hooks.BadVideoReport(tracker, cfg.LOG_PERIOD) if tracker is not None else None,
            # Before the checkpointer and the evaluation, which then hold the new statistics.
            hooks.PreciseBN(
                cfg.TEST.EVAL_PERIOD,
                self.method,
                lambda: iter(self.data_loader.restarted()),
                cfg.TEST.PRECISE_BN.NUM_ITER,
                self.autocast,
            )
            if cfg.TEST.PRECISE_BN.ENABLED
            else None,
            hooks.PeriodicCheckpointer(
                self.checkpointer,
                cfg.SOLVER.CHECKPOINT_PERIOD,
                max_to_keep=cfg.SOLVER.MAX_TO_KEEP or None,
            ),
            # Evaluate after checkpointing, so that a crash in evaluation loses no training.
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, lambda: self.test(cfg, self.model, evaluator))
            if evaluator is not None
            else None,
            # Pictures before the writers, which send them to TensorBoard.
            hooks.VisualizationHook(cfg, cfg.VIS_PERIOD, cfg.VIS_NUM_CLIPS)
            if cfg.VIS_PERIOD > 0 and comm.is_main_process()
            else None,
            # Write last, so that the writers see what every other hook put this iteration.
            hooks.PeriodicWriter(self.build_writers(), cfg.LOG_PERIOD)
            if comm.is_main_process()
            else None,
        ]

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluator: Any | None = None) -> dict[str, float]:
        """Run the method's evaluator on ``model``; return flat ``{metric: value}`` results."""
        evaluator = evaluator or cls.build_evaluator(cfg, model)
        if evaluator is None:
            raise RuntimeError(
                f"{cfg.MODEL.META_ARCHITECTURE} defines no evaluator (build_evaluator). Evaluate "
                "its backbone with a linear-probe or retrieval config instead."
            )
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        unwrapped = comm.unwrap_model(model)
        try:
            with batchnorm_statistics_of_rank0(unwrapped):
                results = as_metrics(evaluator.evaluate(unwrapped), finite=False)
        finally:
            model.train(was_training)
        logger.info("Evaluation took %.1f s: %s", time.perf_counter() - start, results)
        return results
