"""Training-step speed of any config: videos/s, encoder time, FLOPs, MFU and peak memory.

``tools/benchmark.py --task train --config-file A.yaml [KEY VALUE ...] [--compare B.yaml [KEY
VALUE ...]]`` builds the method of each config (the *variants*: each config in fp32 and/or under
autocast, and with ``--reference`` the reference's schedule of config A) and runs full training
steps on them in turn, A B A B ..., so that the machine's noise hits all of them alike; the
figures to quote are the per-round ratios and their median.

What a step is: the key-encoder momentum update, the forward (device augmentation, encoders,
heads, losses) under the config's autocast, the backward, the optimizer step and the queue update,
on a synthetic batch of random uint8 clips of the config's shape that stays in memory (so the
step time excludes data loading). The real loader of config A is timed separately.

Also measured, each in the same run:

- the step's encoder passes alone: every call the step makes to ``encoder_q`` / ``encoder_k``
  (recorded with hooks) replayed on random inputs of the same shape and memory format under the
  same autocast, the query calls with their backward;
- FLOPs per step: fvcore's ``FlopCountAnalysis`` of each encoder call (fvcore counts a
  multiply-add as one, so FLOPs are twice its count), the query calls counted three times (forward
  and a backward of twice the forward). Heads, decoder, losses and augmentation are not counted;
- the peak FLOP/s of a large float32 matmul and of one in each variant's autocast dtype (the best
  of runs in every round; on a CPU also timed as oneDNN's 1x1 convolution, see
  :func:`peak_matmul_flops`; on a GPU whose float32 convolutions run on TF32 tensor cores, cuDNN's
  default, also a TF32 matmul, see :func:`float32_peak_name`), and the model FLOPs utilisation
  (MFU) of the step and of its encoder passes against the peak of its dtype;
- peak memory per step: the resident set's high-water mark on the CPU (reset before each step),
  the peak allocated memory on a GPU.

On a GPU the synthetic batch is pinned, as the training loader pins its batches, and each
variant runs with its own ``CUDNN_BENCHMARK`` (so ``--compare`` can weigh cuDNN's autotuning).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import math
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fima.benchmark import output_file_problem, write_json
from fima.config import CfgNode, get_cfg
from fima.config.validation import require, validate_cfg_without_data
from fima.engine.defaults import (
    OptionsFirstArgumentParser,
    int_at_least,
    resolve_device,
    usage_errors,
)
from fima.engine.solver import build_optimizer
from fima.engine.train_loop import (
    SimpleTrainer,
    amp_dtype_name,
    autocast_dtype,
    native_autocast,
)
from fima.modeling import build_model
from fima.modeling.batch_shuffle import convert_batchnorm_for
from fima.modeling.ssl.build import SSL_METHOD_REGISTRY
from fima.modeling.ssl.moco import MoCo
from fima.utils.env import describe_cpu_model
from fima.utils.events import EventStorage
from fima.utils.logger import setup_logger
from fima.utils.memory import retain_freed_memory, return_freed_memory

logger = logging.getLogger(__name__)
PROG = "tools/benchmark.py --task train"

# The reference implementation's schedule (issue 4): float32, each window through the query
# encoder on its own (2 query passes) and each view of each window through the key encoder on its
# own (8 key passes for FIMA), no channels_last.
REFERENCE_OVERRIDES = [
    "SOLVER.AMP.ENABLED", "False",
    "MODEL.CHANNELS_LAST", "False",
    "MODEL.MOCO.FUSE_WINDOWS", "False",
    "MODEL.FIMA.KEY_PASSES", "view",
]  # fmt: skip
ENCODERS = ("encoder_q", "encoder_k")


# Per --dtype choice, its variants: (autocast on, pin an "auto" SOLVER.AMP.DTYPE to bfloat16).
DTYPE_CHOICES: dict[str, list[tuple[bool, bool]]] = {
    "fp32": [(False, False)],
    "bf16": [(True, True)],
    "amp": [(True, False)],
    "both": [(False, False), (True, False)],
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``--task train`` (config A's; ``--compare`` is split off first)."""
    parser = OptionsFirstArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Examples:\n"
            "  tools/benchmark.py --task train --config-file configs/FIMA/i3d_ucf101_pretrain.yaml"
            " --reference SOLVER.IMS_PER_BATCH 4 INPUT.CROP_SIZE 112\n"
            "  tools/benchmark.py --task train --config-file configs/FIMA/i3d_ucf101_pretrain.yaml"
            " SOLVER.IMS_PER_BATCH 4 --compare configs/MoCo/i3d_ucf101_pretrain.yaml"
            " SOLVER.IMS_PER_BATCH 4\n"
            "Everything after --compare is config B and its KEY VALUE overrides."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config A")
    parser.add_argument(
        "--iters", type=int_at_least(1), default=5, help="timed rounds (median of these)"
    )
    parser.add_argument("--warmup", type=int_at_least(0), default=2, help="untimed rounds first")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPE_CHOICES),
        default="both",
        help="autocast off (fp32); on in bfloat16 (bf16), unless the config names "
        "SOLVER.AMP.DTYPE; on in the dtype training would use (amp: SOLVER.AMP.DTYPE, whose "
        "'auto' is float16 on a GPU, bfloat16 on a CPU); or fp32 and amp (both)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run config A with the reference's schedule (fp32, windows and views each "
        "through the encoders on their own, no channels_last)",
    )
    parser.add_argument(
        "--data-iters",
        type=int_at_least(0),
        default=10,
        help="batches of config A's real training loader to time (0: skip)",
    )
    parser.add_argument(
        "--matmul-size",
        type=matmul_size,
        default=0,
        help="side of the peak matmul, at least 256 (0, the default: 2048 on a CPU, 8192 on a "
        "GPU, where a smaller one does not fill the chip)",
    )
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    parser.add_argument("--output-json", default="", metavar="FILE", help="write results here")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output-json file"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of A")
    # --compare is listed for --usage and --help only: split_compare takes it and everything after
    # it off the command line before the rest is parsed, so it comes last, after A's overrides.
    usage = parser.format_usage().removeprefix("usage: ").rstrip("\n")
    parser.usage = f"{usage}\n{' ' * (len(PROG) + 8)}[--compare B.yaml [KEY VALUE ...]]"
    parser.add_argument(
        "--compare",
        nargs=argparse.REMAINDER,
        help="B.yaml [KEY VALUE ...]: config B, run alternately with A (A B A B ...), and the "
        "ratio of each pair reported; everything after it is B's",
    )
    return parser


def matmul_size(text: str) -> int:
    """``--matmul-size``: 0 (the device's default) or at least 256. A smaller matmul measures
    call overhead, not the peak, and every MFU read against it is meaningless (1-px: 11 million
    percent)."""
    size = int_at_least(0)(text)
    if 0 < size < 256:
        raise argparse.ArgumentTypeError(
            f"must be 0 (the device's default) or at least 256, got {size}"
        )
    return size


def load_config(config_file: str, opts: list[str]) -> CfgNode:
    """The config with overrides, validated; exits with a one-line message (status 2) if it is
    invalid.

    Steps run on synthetic batches, so the dataset settings are not checked here (the loader
    timing reports a dataset it cannot open).

    Args:
        config_file: the YAML config.
        opts: ``KEY VALUE`` overrides.

    Returns:
        The frozen config; a negative ``SEED`` becomes 0.
    """
    with usage_errors(PROG):
        cfg = get_cfg()
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts)
        if cfg.SEED < 0:
            cfg.SEED = 0
        validate_cfg_without_data(cfg)
        method = SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        require(
            issubclass(method, MoCo),
            "MODEL.META_ARCHITECTURE",
            "the train benchmark times the encoder passes of MoCo-style pretraining (MoCo, FIMA "
            f"and methods built on them), not {cfg.MODEL.META_ARCHITECTURE}",
        )
    cfg.freeze()
    return cfg


def synthetic_batch(cfg: CfgNode, views: tuple[str, ...], seed: int = 0) -> dict[str, Any]:
    """A pretraining batch of one process: random uint8 clips and crop boxes (some flipped).

    Args:
        cfg: the config (batch, accumulation, clip size).
        views: the method's input views.
        seed: seeds the batch.

    Returns:
        ``label`` ``[B]``, ``index`` ``[B]`` and per view ``<view>`` ``[B, 2, 3, T, S, S]``
        uint8 (``[B, 2, 2, 3, T, S, S]`` for ``local``) with ``<view>_box`` ``[B, 2, 4]``
        (``[B, 2, 2, 4]``), ``B = IMS_PER_BATCH / ACCUM_STEPS``.
    """
    gen = torch.Generator().manual_seed(seed)
    batch_size = cfg.SOLVER.IMS_PER_BATCH // cfg.SOLVER.ACCUM_STEPS
    clip = (3, cfg.INPUT.NUM_FRAMES, cfg.INPUT.CROP_SIZE, cfg.INPUT.CROP_SIZE)
    batch: dict[str, Any] = {
        "label": torch.zeros(batch_size, dtype=torch.long),
        "index": torch.arange(batch_size),
    }
    for view in views:
        shape = (batch_size, 2, 2) if view == "local" else (batch_size, 2)
        batch[view] = torch.randint(0, 256, (*shape, *clip), dtype=torch.uint8, generator=gen)
        low = 0.4 * torch.rand(*shape, 2, generator=gen)
        box = torch.cat([low, low + 0.2 + 0.4 * torch.rand(*shape, 2, generator=gen)], dim=-1)
        flip = torch.rand(shape, generator=gen) < 0.5
        box[flip] = box[flip][:, [2, 1, 0, 3]]
        batch[f"{view}_box"] = box
    return batch


@dataclass(frozen=True)
class EncoderCall:
    """One call of an encoder in a step: which, input shape, channels_last, with gradient."""

    encoder: str
    shape: tuple[int, ...]
    channels_last: bool
    grad: bool


@dataclass
class Variant:
    """A method under one config and autocast setting, ready to step."""

    name: str
    cfg: CfgNode
    amp: bool
    device: torch.device
    model: nn.Module
    trainer: SimpleTrainer
    calls: list[EncoderCall] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    step_cpu_times: list[float] = field(default_factory=list)
    encoder_times: list[float] = field(default_factory=list)
    encoder_cpu_times: list[float] = field(default_factory=list)
    peak_memory: int = 0
    step_memory: int = 0
    flops: float = 0.0

    @property
    def dtype_name(self) -> str:
        """What the variant computes in: ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
        return amp_dtype_name(self.cfg.SOLVER.AMP, self.device.type) if self.amp else "float32"

    @property
    def peak_name(self) -> str:
        """The name of the matmul peak this variant's MFU is read against."""
        return self.dtype_name if self.amp else float32_peak_name(self.device)

    @property
    def batch_size(self) -> int:
        """Videos per step (``SOLVER.IMS_PER_BATCH``)."""
        return self.cfg.SOLVER.IMS_PER_BATCH


def build_variant(name: str, cfg: CfgNode) -> Variant:
    """Build the method, its optimizer, hooks and trainer on a synthetic batch, as training
    would (BatchNorm converted, the batch pinned on a GPU).

    Args:
        name: the variant's name in the report.
        cfg: its config.

    Returns:
        The variant, ready to step.
    """
    device = resolve_device(cfg)
    torch.manual_seed(cfg.SEED)
    # BatchNorm as the trainer converts it: split groups cost time (MODEL.SPLIT_BN_GROUPS).
    model = convert_batchnorm_for(cfg, build_model(cfg)).to(device)
    method = SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    batch = synthetic_batch(cfg, method.input_views(cfg), cfg.SEED)
    if device.type == "cuda":
        # As the training loader's pin_memory does: the copy to the GPU is then asynchronous.
        batch = {key: value.pin_memory() for key, value in batch.items()}
    optimizer = build_optimizer(cfg, model)
    trainer = SimpleTrainer(
        model,
        itertools.repeat(batch),
        optimizer,
        amp=cfg.SOLVER.AMP.ENABLED,
        amp_dtype=autocast_dtype(cfg.SOLVER.AMP.DTYPE, device.type),
        device_type=device.type,
    )
    trainer.register_hooks(model.build_hooks(cfg))
    trainer.max_iter = 1 << 30
    return Variant(name, cfg, cfg.SOLVER.AMP.ENABLED, device, model, trainer)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        # Writing 5 resets the process's resident-set high-water mark (VmHWM) on Linux.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _memory(device: torch.device) -> tuple[int, int]:
    """Bytes ``(peak, current)``: allocated memory on a GPU, the resident set on the CPU.

    Without Linux's /proc the CPU peak is the process's lifetime maximum (not reset per step).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
    if not os.path.exists("/proc/self/status"):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
        peak *= 1 if sys.platform == "darwin" else 1024
        return peak, 0
    with open("/proc/self/status") as f:
        status = f.read()
    peak, current = (
        int(re.search(rf"{name}:\s+(\d+) kB", status).group(1)) * 1024
        for name in ("VmHWM", "VmRSS")
    )
    return peak, current


def measure_step_memory(variant: Variant, storage: EventStorage) -> None:
    """Run one step of ``variant`` for its memory: set ``peak_memory`` and ``step_memory``.

    Not a timed step: on the CPU the freed memory that the process keeps for reuse is first
    returned to the system, so that the resident set at the start is the memory in use and the
    step's high-water mark is its real peak; the step then faults its pages in afresh.

    Args:
        variant: the variant; its trainer advances one iteration.
        storage: the run's event storage.
    """
    device = variant.device
    if device.type == "cpu":
        return_freed_memory()
    _reset_peak_memory(device)
    before = _memory(device)[1]
    run_step(variant, storage)
    variant.peak_memory = _memory(device)[0]
    variant.step_memory = variant.peak_memory - before


def _clocks() -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds (all threads)."""
    return time.perf_counter(), time.process_time()


def _elapsed(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def run_step(variant: Variant, storage: EventStorage) -> tuple[float, float]:
    """One full training step with the hooks around it.

    Args:
        variant: the variant; its trainer advances one iteration.
        storage: the run's event storage.

    Returns:
        ``(wall-clock, process CPU)`` seconds of the step.
    """
    trainer = variant.trainer
    trainer.storage = storage
    torch.backends.cudnn.benchmark = variant.cfg.CUDNN_BENCHMARK
    _synchronize(variant.device)
    start = _clocks()
    storage.iter = trainer.iter
    trainer.before_step()
    trainer.run_step()
    trainer.after_step()
    _synchronize(variant.device)
    elapsed = _elapsed(start)
    trainer.iter += 1
    return elapsed


def record_encoder_calls(variant: Variant, storage: EventStorage) -> None:
    """Run one step with hooks on the encoders and keep the calls it made in ``variant.calls``.

    Args:
        variant: the variant; its trainer advances one iteration.
        storage: the run's event storage.

    Raises:
        RuntimeError: the method has no ``encoder_q`` / ``encoder_k``.
    """
    calls: list[EncoderCall] = []
    handles = []
    for name in ENCODERS:
        module = getattr(variant.model, name, None)
        if module is None:
            continue

        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], name: str = name) -> None:
            x = inputs[0]
            calls.append(
                EncoderCall(
                    name,
                    tuple(x.shape),
                    x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d),
                    torch.is_grad_enabled(),
                )
            )

        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_step(variant, storage)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        raise RuntimeError(
            f"{variant.name}: the method has no {' / '.join(ENCODERS)} to time; the train "
            "benchmark times MoCo-style methods"
        )
    variant.calls = calls


def encoder_replay(variant: Variant) -> Callable[[], tuple[float, float]]:
    """Prepare a replay of the step's encoder calls on random inputs.

    Args:
        variant: the variant, after :func:`record_encoder_calls`.

    Returns:
        A function that replays the calls (with the query calls' backward) under the step's
        autocast and returns their ``(wall-clock, process CPU)`` seconds.
    """
    inputs = {}
    for call in variant.calls:
        if call not in inputs:
            x = torch.randn(call.shape, device=variant.device)
            if call.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            inputs[call] = x
    query_params = [p for p in variant.model.encoder_q.parameters() if p.requires_grad]

    def replay() -> tuple[float, float]:
        torch.backends.cudnn.benchmark = variant.cfg.CUDNN_BENCHMARK
        _synchronize(variant.device)
        start = _clocks()
        with variant.trainer.autocast():
            outputs = []
            for call in variant.calls:
                module = getattr(variant.model, call.encoder)
                with torch.set_grad_enabled(call.grad):
                    out = module(inputs[call])
                if call.grad:
                    outputs.append(out.float().mean())
        if outputs:
            torch.stack(outputs).sum().backward()
        _synchronize(variant.device)
        elapsed = _elapsed(start)
        for param in query_params:
            param.grad = None
        return elapsed

    return replay


def count_flops(variant: Variant) -> float:
    """FLOPs of the step's encoder passes (fvcore; query calls x3 for forward + backward).

    Args:
        variant: the variant, after :func:`record_encoder_calls`.

    Returns:
        FLOPs (a multiply-add counts two).
    """
    from fvcore.nn import FlopCountAnalysis

    per_clip: dict[tuple[str, tuple[int, ...]], float] = {}
    total = 0.0
    for call in variant.calls:
        key = (call.encoder, call.shape[1:])
        if key not in per_clip:
            module = copy.deepcopy(getattr(variant.model, call.encoder)).float().eval()
            x = torch.zeros(1, *call.shape[1:], device=variant.device)
            analysis = FlopCountAnalysis(module, x)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            # fvcore counts one multiply-add as one flop.
            per_clip[key] = 2.0 * analysis.total()
        total += per_clip[key] * call.shape[0] * (3 if call.grad else 1)
    return total


def matmul_as_convolution(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix product as the inputs of a 1x1 convolution.

    Args:
        a: ``[M, K]``.
        b: ``[K, N]``.

    Returns:
        An image ``[1, K, M, 1]`` (channels-last) and a kernel ``[N, K, 1, 1]`` whose
        ``conv2d`` is ``(a @ b).t()`` as ``[1, N, M, 1]``.
    """
    image = a.t().contiguous().view(1, a.shape[1], a.shape[0], 1)
    kernel = b.t().contiguous().view(b.shape[1], b.shape[0], 1, 1)
    return image.contiguous(memory_format=torch.channels_last), kernel


def float32_peak_name(device: torch.device) -> str:
    """The peak that float32 work on a device is read against.

    Args:
        device: where the work runs.

    Returns:
        ``"tfloat32"`` on a GPU whose float32 convolutions run on TF32 tensor cores
        (``torch.backends.cudnn.allow_tf32``, on by default; against the plain float32 peak
        their MFU would pass 100%), else ``"float32"``.
    """
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tfloat32"
    return "float32"


def peak_matmul_flops(dtype: torch.dtype | str, device: torch.device, size: int) -> float:
    """FLOP/s of a ``size`` x ``size`` x ``size`` matrix product in ``dtype``: the best of 10
    runs after warm-up. ``"tfloat32"``'s is float32's on TF32 tensor cores (GPU only).

    On a CPU the product is also timed as a 1x1 convolution in channels-last layout, which
    oneDNN computes, and the faster of the two counts: torch.mm goes to MKL, whose float32 GEMM
    takes a generic path on AMD CPUs (183 GFLOP/s against oneDNN's 370 on a 2-core Zen 5), and
    the encoders' convolutions are oneDNN's, so MKL's figure alone put their MFU above 100%.

    Args:
        dtype: a torch dtype, or ``"tfloat32"``.
        device: where the product runs.
        size: the matrices' side.

    Returns:
        FLOP/s of the best run (``2 * size**3`` FLOPs a product).
    """
    tf32 = dtype == "tfloat32"
    if tf32:
        dtype = torch.float32
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return _best_matmul_flops(dtype, device, size)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def _best_matmul_flops(dtype: torch.dtype, device: torch.device, size: int) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen).to(dtype)
    b = torch.randn(size, size, device=device, generator=gen).to(dtype)
    products = [lambda: torch.mm(a, b)]
    if device.type == "cpu":
        image, kernel = matmul_as_convolution(a, b)
        products.append(lambda: torch.nn.functional.conv2d(image, kernel))
    best = math.inf
    for product in products:
        for _ in range(3):
            product()
        for _ in range(10):
            _synchronize(device)
            start = time.perf_counter()
            product()
            _synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def time_loader(cfg: CfgNode, iters: int) -> dict[str, Any]:
    """Seconds per batch of the real training loader alone (after one warm-up batch).

    Args:
        cfg: the config whose method builds the loader.
        iters: batches timed.

    Returns:
        ``seconds_per_batch`` (median), ``batches``, ``workers`` and ``dataset``; or ``error``
        when the loader cannot be built.
    """
    method = SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    try:
        loader = method.build_train_loader(cfg)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        logger.warning("Loader not timed: %s", err)
        return {"error": str(err)}
    times = []
    iterator = iter(loader)
    next(iterator)
    for _ in range(iters):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    del iterator
    return {
        "seconds_per_batch": statistics.median(times),
        "batches": iters,
        "workers": cfg.DATA.NUM_WORKERS,
        "dataset": cfg.DATA.DATASET,
    }


# oneDNN's tags of the 5-D layouts fima uses: letters are dimensions in memory order (a = N,
# b = C, c = T, d = H, e = W); a capital with a number is a dimension blocked by that many.
ONEDNN_LAYOUTS = {
    "abcde": "NCDHW (contiguous)",
    "acdeb": "NDHWC (channels_last_3d)",
    "abcd": "NCHW",
    "acdb": "NHWC (channels_last)",
}


def onednn_primitive_times(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Sum oneDNN's verbose ``primitive,exec`` lines by kind, implementation, propagation and
    the source's data type and memory layout; largest total first.

    Args:
        lines: ``ONEDNN_VERBOSE`` output, e.g. ``onednn_verbose,v1,primitive,exec,cpu,
            convolution,brg_conv_fwd:avx512_core_bf16,forward_training,src:bf16::blocked:acdeb::f0
            wei:...,attr-...,alg:...,mb8_ic64...,12.5``.

    Returns:
        ``{"kind", "implementation", "propagation", "dtype", "layout", "calls", "ms"}`` per group.
    """
    totals: dict[tuple[str, ...], list[float]] = {}
    for line in lines:
        fields = line.strip().split(",")
        if len(fields) < 10 or fields[2:4] != ["primitive", "exec"]:
            continue
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        # The first memory descriptor, "src:bf16::blocked:acdeb::f0": name, type, -, kind, tag.
        source = fields[8].split(" ")[0].split(":")
        dtype, tag = (source[1], source[4]) if len(source) > 4 else ("?", fields[8][:24])
        key = (fields[5], fields[6], fields[7], dtype, ONEDNN_LAYOUTS.get(tag, tag))
        entry = totals.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += ms
    names = ("kind", "implementation", "propagation", "dtype", "layout")
    rows = [{**dict(zip(names, key)), "calls": int(n), "ms": ms} for key, (n, ms) in totals.items()]
    return sorted(rows, key=lambda row: -row["ms"])


def onednn_verbose_lines(function: Callable[[], Any]) -> list[str]:
    """Run ``function`` with oneDNN's verbose mode on and return what oneDNN printed.

    oneDNN writes to the process's standard output (file descriptor 1), so that descriptor is
    pointed at a temporary file meanwhile and restored after.

    Args:
        function: runs oneDNN work in this process.

    Returns:
        The lines printed meanwhile, with their newlines.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                function()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        return capture.readlines()


def profile_step(variant: Variant, storage: EventStorage) -> str:
    """torch.profiler's operator tables of one step and, on a CPU, oneDNN's primitives of
    another step by implementation and memory layout (which kernels, in which formats).

    The profiled step is followed by a plain one, and the header gives both times, so that a
    reader sees what the profiler (recording every operator and its shapes) added, and a step
    that a noisy machine slowed down.

    Args:
        variant: the variant; its trainer advances two iterations (three with oneDNN's table).
        storage: the run's event storage.

    Returns:
        The tables as text.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if variant.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        profiled = run_step(variant, storage)[0]
    plain = run_step(variant, storage)[0]
    sort = "self_device_time_total" if variant.device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    by_shape = prof.key_averages(group_by_input_shape=True)
    text = (
        f"-- {variant.name}: top operators of one profiled step ({profiled:.3f} s; the next "
        f"step, unprofiled, {plain:.3f} s)\n{averages.table(sort_by=sort, row_limit=20)}\n"
        f"-- {variant.name}: top operators by input shape\n"
        f"{by_shape.table(sort_by=sort, row_limit=15)}"
    )
    if variant.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return text
    step_seconds: list[float] = []
    lines = onednn_verbose_lines(lambda: step_seconds.append(run_step(variant, storage)[0]))
    rows = onednn_primitive_times(lines)
    inside = sum(row["ms"] for row in rows) / 1000
    table = [
        f"-- {variant.name}: oneDNN primitives of one step ({step_seconds[0]:.3f} s, of which "
        f"{inside:.3f} s in oneDNN; the rest is PyTorch's own kernels)",
        f"{'ms':>9} {'calls':>6}  {'kind':<12}{'propagation':<18}{'dtype':<6}{'layout':<26}"
        "implementation",
    ]
    table += [
        f"{row['ms']:>9.1f} {row['calls']:>6}  {row['kind']:<12}{row['propagation']:<18}"
        f"{row['dtype']:<6}{row['layout']:<26}{row['implementation']}"
        for row in rows[:15]
    ]
    return text + "\n" + "\n".join(table)


def _ratios(numerators: list[float], denominators: list[float]) -> dict[str, Any]:
    """Per-round ratios, their median, and the ratio of the best (smallest) times: on a shared
    machine other processes only ever slow a step down, so the best is the least disturbed."""
    per_round = [a / b for a, b in zip(numerators, denominators)]
    return {
        "per_round": per_round,
        "median": statistics.median(per_round),
        "of_best": min(numerators) / min(denominators),
    }


def _describe_calls(calls: list[EncoderCall]) -> str:
    parts = []
    for encoder in ENCODERS:
        sizes = [c.shape[0] for c in calls if c.encoder == encoder]
        if sizes:
            parts.append(f"{encoder.split('_')[1]}: {len(sizes)} x {sizes}")
    return "; ".join(parts)


def split_compare(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split the command line at ``--compare``.

    Args:
        argv: the task's command line.

    Returns:
        A's arguments, and B's config and overrides (None without ``--compare``).

    Raises:
        ValueError: ``--compare`` without a config file.
    """
    if "--compare" not in argv:
        return argv, None
    index = argv.index("--compare")
    rest = argv[index + 1 :]
    if not rest:
        raise ValueError("--compare needs a config file, then optional KEY VALUE overrides")
    return argv[:index], rest


def variant_configs(
    label: str, config_file: str, opts: list[str], dtype: str
) -> list[tuple[str, CfgNode]]:
    """The variants of one config under ``--dtype``: ``(name, config)`` pairs, named
    ``label/fp32`` or ``label/<the dtype autocast computes in on the config's device>``.

    ``bf16`` keeps a dtype that the config or its overrides name and pins ``"auto"`` to
    bfloat16, so that ``--dtype bf16`` measures bfloat16 on a GPU too; ``amp`` keeps ``"auto"``,
    the dtype a training run there would use.

    Args:
        label: ``"A"`` or ``"B"``.
        config_file: the config.
        opts: its overrides.
        dtype: the ``--dtype`` choice.

    Returns:
        ``(name, frozen config)`` per variant.
    """
    variants = []
    for amp, pin_bfloat16 in DTYPE_CHOICES[dtype]:
        cfg = load_config(config_file, [*opts, "SOLVER.AMP.ENABLED", str(amp)])
        if pin_bfloat16 and cfg.SOLVER.AMP.DTYPE == "auto":
            cfg.defrost()
            cfg.SOLVER.AMP.DTYPE = "bfloat16"
            cfg.freeze()
        name = amp_dtype_name(cfg.SOLVER.AMP, resolve_device(cfg).type) if amp else "fp32"
        variants.append((f"{label}/{name}", cfg))
    return variants


def main(argv: list[str]) -> dict[str, Any]:
    """Run the train benchmark; print the results (and write them with ``--output-json``).

    Args:
        argv: the task's command line.

    Returns:
        The results, as written to JSON.
    """
    parser = build_parser()
    try:
        argv_a, argv_b = split_compare(argv)
    except ValueError as err:
        parser.error(str(err))
    args = parser.parse_args(argv_a)
    problem = output_file_problem(args.output_json, args.overwrite)
    if problem is not None:
        parser.error(f"--output-json: {problem}")
    setup_logger(name="fima")
    specs: list[tuple[str, str, list[str]]] = [("A", args.config_file, list(args.opts))]
    if argv_b is not None:
        specs.append(("B", argv_b[0], argv_b[1:]))
    variants = [
        build_variant(name, cfg)
        for label, config_file, opts in specs
        for name, cfg in variant_configs(label, config_file, opts, args.dtype)
    ]
    if args.reference:
        cfg = load_config(args.config_file, [*args.opts, *REFERENCE_OVERRIDES])
        variants.append(build_variant("A/reference", cfg))
    device = variants[0].device
    if device.type == "cpu":
        retain_freed_memory()  # as a training process does (default_setup)
    logger.info("Variants: %s", ", ".join(v.name for v in variants))
    for v in variants:
        if v.amp and not native_autocast(device.type, v.trainer.amp_dtype):
            # Measured as asked (training runs would fall back to float32: resolve_amp).
            logger.warning("%s: this %s emulates %s", v.name, device.type, v.dtype_name)

    with EventStorage() as storage:
        for variant in variants:
            record_encoder_calls(variant, storage)
            variant.flops = count_flops(variant)
        replays = {v.name: encoder_replay(v) for v in variants}
        # The matmul peaks are measured in every round too; the best of them is the peak. Only
        # float32 and the variants' own dtypes: an emulated bf16 peak that no variant is read
        # against would take minutes per round on a CPU without AVX512-BF16/AMX.
        peak_dtypes = {
            name: name if name == "tfloat32" else getattr(torch, name)
            for name in ("float32", *sorted({v.peak_name for v in variants}))
        }
        matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
        peaks: dict[str, float] = {}
        for round_index in range(args.warmup + args.iters):
            for variant in variants:
                seconds, cpu_seconds = run_step(variant, storage)
                encoder_seconds, encoder_cpu_seconds = replays[variant.name]()
                if round_index >= args.warmup:
                    variant.step_times.append(seconds)
                    variant.step_cpu_times.append(cpu_seconds)
                    variant.encoder_times.append(encoder_seconds)
                    variant.encoder_cpu_times.append(encoder_cpu_seconds)
            for name, dtype in peak_dtypes.items():
                peaks[name] = max(
                    peaks.get(name, 0.0), peak_matmul_flops(dtype, device, matmul_size)
                )
            logger.info("Round %d of %d done", round_index + 1, args.warmup + args.iters)
        # Profiled before the memory step, which hands the kept memory back to the system: a
        # profile after it timed page faults (one 50 MB add took 107 ms; warm, all the adds of
        # the step took 7 ms).
        profiles = [profile_step(v, storage) for v in variants] if args.profile else []
        for variant in variants:
            measure_step_memory(variant, storage)

    results: dict[str, Any] = {
        "device": str(device),
        "device_name": (
            describe_cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
        ),
        "threads": torch.get_num_threads(),
        "rounds": args.iters,
        "warmup": args.warmup,
        "what_a_step_is": "momentum update, forward, backward, optimizer step, queue update on an "
        "in-memory synthetic batch (no data loading)",
        "flops_counted": "encoder passes only (fvcore, 2 FLOPs per multiply-add; query calls x3)",
        "memory": "peak: max allocated (GPU) or the process's resident-set high-water mark during "
        "the step (CPU; the process holds every variant); +step: peak minus the memory at its "
        "start; both from one more step after the timed rounds, with the freed memory that a CPU "
        "process keeps (retain_freed_memory) returned to the system first",
        "matmul_peak_flops": peaks,
        "variants": {},
        "ratios": {},
        # Where other processes share the machine, the process's CPU seconds vary less than the
        # wall clock (they miss the time slices lost to others, not the contention for caches).
        "cpu_time_ratios": {},
    }
    for v in variants:
        step = statistics.median(v.step_times)
        encoders = statistics.median(v.encoder_times)
        peak = peaks[v.peak_name]
        results["variants"][v.name] = {
            "config": v.cfg.MODEL.META_ARCHITECTURE,
            "backbone": v.cfg.MODEL.BACKBONE.NAME,
            "batch": v.batch_size,
            "input": f"{v.cfg.INPUT.NUM_FRAMES}x{v.cfg.INPUT.CROP_SIZE}x{v.cfg.INPUT.CROP_SIZE}",
            "dtype": v.dtype_name,
            "seconds_per_step": step,
            "videos_per_second": v.batch_size / step,
            "best_seconds_per_step": min(v.step_times),
            "step_times": v.step_times,
            "cpu_seconds_per_step": statistics.median(v.step_cpu_times),
            "step_cpu_times": v.step_cpu_times,
            "encoder_seconds": encoders,
            "encoder_share": encoders / step,
            "encoder_cpu_share": statistics.median(v.encoder_cpu_times)
            / statistics.median(v.step_cpu_times),
            "encoder_calls": _describe_calls(v.calls),
            "flops_per_step": v.flops,
            "mfu_peak": v.peak_name,
            "mfu_step": v.flops / step / peak,
            "mfu_encoders": v.flops / encoders / peak,
            "peak_memory_bytes": v.peak_memory,
            "step_memory_bytes": v.step_memory,
        }
    by_name = {v.name: v for v in variants}
    # Config A's variant at each autocast setting (on/off): B's variant at that setting is read
    # against it, also where B autocasts to another dtype (A bfloat16 vs B float16).
    a_by_amp = {
        v.amp: v.name for v in variants if v.name.startswith("A/") and v.name != "A/reference"
    }
    for name in by_name:
        label, dtype = name.split("/")
        pairs = []
        if label == "B" and by_name[name].amp in a_by_amp:
            pairs.append((a_by_amp[by_name[name].amp], name))  # speed of A relative to B
        if label == "A" and dtype not in ("fp32", "reference") and "A/fp32" in by_name:
            pairs.append((name, "A/fp32"))
        if label == "A" and dtype != "reference" and "A/reference" in by_name:
            pairs.append((name, "A/reference"))
        for fast, slow in pairs:
            # videos/s of `fast` over `slow` = step time of `slow` over `fast`, round by round.
            results["ratios"][f"{fast} vs {slow}"] = _ratios(
                by_name[slow].step_times, by_name[fast].step_times
            )
            results["cpu_time_ratios"][f"{fast} vs {slow}"] = _ratios(
                by_name[slow].step_cpu_times, by_name[fast].step_cpu_times
            )
    if args.data_iters > 0:
        results["loader"] = time_loader(variants[0].cfg, args.data_iters)
    print(format_report(results))
    for text in profiles:
        print(text)
    if args.output_json:
        write_json(args.output_json, results)
    return results


def format_report(results: dict[str, Any]) -> str:
    """The results as a plain-text table.

    Args:
        results: what :func:`main` returns.

    Returns:
        The report, without a trailing newline.
    """
    peaks = results["matmul_peak_flops"]
    lines = [
        f"Device {results['device']} ({results['device_name']}), {results['threads']} threads; "
        f"median of {results['rounds']} rounds after {results['warmup']} warm-up rounds.",
        f"A step: {results['what_a_step_is']}.",
        f"FLOPs: {results['flops_counted']}. Memory: {results['memory']}.",
        "Peak matmul: "
        + ", ".join(f"{name} {value / 1e9:.0f} GFLOP/s" for name, value in peaks.items())
        + "; MFU against "
        + ", ".join(
            sorted({f"{v['dtype']}: {v['mfu_peak']}" for v in results["variants"].values()})
        ),
        "",
        f"{'variant':<14}{'method':<7}{'backbone':<12}{'batch':>5} {'input':<11}{'dtype':<9}"
        f"{'s/step':>8}{'best':>7}{'videos/s':>9}{'cpu s':>8}{'enc s':>8}{'enc %':>6}{'cpu %':>6}"
        f"{'GFLOP':>8}{'MFU':>6}"
        f"{'MFU enc':>8}{'peak MiB':>9}{'+step':>7}  encoder calls (clips per call)",
    ]
    for name, v in results["variants"].items():
        lines.append(
            f"{name:<14}{v['config']:<7}{v['backbone']:<12}{v['batch']:>5} {v['input']:<11}"
            f"{v['dtype']:<9}{v['seconds_per_step']:>8.3f}{v['best_seconds_per_step']:>7.3f}"
            f"{v['videos_per_second']:>9.3f}"
            f"{v['cpu_seconds_per_step']:>8.2f}{v['encoder_seconds']:>8.3f}"
            f"{100 * v['encoder_share']:>6.0f}{100 * v['encoder_cpu_share']:>6.0f}"
            f"{v['flops_per_step'] / 1e9:>8.0f}{100 * v['mfu_step']:>5.1f}%"
            f"{100 * v['mfu_encoders']:>7.1f}%{v['peak_memory_bytes'] / 2**20:>9.0f}"
            f"{v['step_memory_bytes'] / 2**20:>7.0f}  {v['encoder_calls']}"
        )
    for key, title in (("ratios", "wall clock"), ("cpu_time_ratios", "process CPU time")):
        if results[key]:
            lines += [
                "",
                f"Speed ratios by {title} (the first over the second), per round, median:",
            ]
            for name, ratio in results[key].items():
                rounds = " ".join(f"{r:.2f}" for r in ratio["per_round"])
                lines.append(
                    f"  {name:<28} median {ratio['median']:.2f}  of best times "
                    f"{ratio['of_best']:.2f}  ({rounds})"
                )
    loader = results.get("loader")
    if loader is not None:
        if "error" in loader:
            lines.append(f"\nLoader: not timed ({loader['error']})")
        else:
            lines.append(
                f"\nLoader alone ({loader['dataset']}, {loader['workers']} workers): "
                f"{loader['seconds_per_batch']:.3f} s/batch (median of {loader['batches']})"
            )
    return "\n".join(lines)
