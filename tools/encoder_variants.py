"""The encoder passes of one FIMA step under layout, dtype, stem and compile variants, side by side.

Times I3D alone (no heads, losses or queues): the forward and backward of ``--q`` clips and a
no-grad forward of ``--k`` clips (at batch 8 a FIMA step's query pass and its 48-clip key pass),
median of ``--iters`` after ``--warmup``. Every eager variant runs in one process, twice, the
second round in the opposite order, so drift of a shared machine shows up as disagreement; each
``--compile`` mode runs in its own process under ``--compile-timeout``. The stem variants are
experiments (a 4th, all-zero input channel; the stem convolution in NCDHW) and are checked to
compute the plain model's features first. One JSON line per variant, then a table.

    python tools/encoder_variants.py --device cuda --crop 224 --q 16 --k 48 --compile default

BENCHMARKS.md ("Second lease") has what it measured on an H200. On a CPU, ``--crop 32 --q 2 --k
4`` is a dry run (CPU float16 autocast is emulated, so its rows take seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from fima.config import get_cfg
from fima.engine.defaults import int_at_least
from fima.modeling.backbone import build_backbone

CL = torch.channels_last_3d
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("cl", "ncdhw")
STEMS = ("none", "pad4", "ncdhw")


class Pad4Stem(nn.Module):
    """The stem convolution on 4 input channels (a zero channel and zero weights): same maths."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            4, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
        ).to(conv.weight.device)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :3] = conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, 1)).contiguous(memory_format=CL)
        return self.conv(x)


class NCDHWStem(nn.Module):
    """The stem convolution in NCDHW, its output turned channels-last for the rest."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.contiguous()).contiguous(memory_format=CL)


def build(device: str, layout: str, stem: str) -> nn.Module:
    """The default I3D backbone in ``layout`` ("cl" or "ncdhw") with ``stem`` ("none", "pad4",
    "ncdhw")."""
    torch.manual_seed(0)
    model = build_backbone(get_cfg()).to(device)
    if layout == "cl":
        model = model.to(memory_format=CL)
    if stem == "pad4":
        model.conv_1a.conv = Pad4Stem(model.conv_1a.conv)
    elif stem == "ncdhw":
        model.conv_1a.conv = NCDHWStem(model.conv_1a.conv)
    return model


def run_variant(
    args: argparse.Namespace, layout: str, dtype: str, stem: str, compile_mode: str
) -> dict[str, object]:
    """Time one variant; its row: median and best ms per step, the first step's seconds (with
    any compilation), and peak GPU memory."""
    device = args.device
    model = build(device, layout, stem)
    if compile_mode:
        model.compile(mode=None if compile_mode == "default" else compile_mode)
    fmt = CL if layout == "cl" and stem == "none" else torch.contiguous_format
    gen = torch.Generator().manual_seed(1)
    xq = torch.randn(args.q, 3, 16, args.crop, args.crop, generator=gen).to(device)
    xk = torch.randn(args.k, 3, 16, args.crop, args.crop, generator=gen).to(device)
    xq, xk = xq.contiguous(memory_format=fmt), xk.contiguous(memory_format=fmt)
    amp = DTYPES[dtype]
    cuda = device == "cuda"

    def step() -> None:
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(xq)
            loss = out.float().square().mean()
        loss.backward()
        with (
            torch.no_grad(),
            torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            model(xk)
        for p in model.parameters():
            p.grad = None

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    sync()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    row = {
        "layout": layout,
        "dtype": dtype,
        "stem": stem,
        "compile": compile_mode or "eager",
        "ms": 1000 * statistics.median(times),
        "best_ms": 1000 * min(times),
        "first_s": first,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
    }
    return row


def check_same_maths(args: argparse.Namespace) -> dict[str, float]:
    """The stem variants against the plain model's features (fp32, TF32 off): the largest
    difference relative to the largest feature, per variant (printed too)."""
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 16, 64, 64, generator=gen).to(args.device)
    errors = {}
    with torch.no_grad():
        ref = build(args.device, "cl", "none").eval()(x.contiguous(memory_format=CL))
        for stem in STEMS[1:]:
            out = build(args.device, "cl", stem).eval()(x)
            errors[stem] = ((out - ref).abs().max() / ref.abs().max()).item()
            print(json.dumps({"check": stem, "max_rel_err": errors[stem]}), flush=True)
    torch.backends.cudnn.allow_tf32 = prev
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu"
    )
    parser.add_argument(
        "--crop", type=int_at_least(1), default=224, help="clip height and width (16 frames)"
    )
    parser.add_argument(
        "--q", type=int_at_least(1), default=16, help="clips of the forward+backward pass"
    )
    parser.add_argument("--k", type=int_at_least(1), default=48, help="clips of the no-grad pass")
    parser.add_argument(
        "--iters", type=int_at_least(1), default=10, help="timed steps (the median is kept)"
    )
    parser.add_argument("--warmup", type=int_at_least(0), default=3, help="untimed steps first")
    parser.add_argument(
        "--one",
        default="",
        help="one variant only, as layout,dtype,stem,compile: layout cl or ncdhw; dtype fp32, "
        "bf16 or fp16; stem none, pad4 or ncdhw; compile empty (eager) or a torch.compile mode",
    )
    parser.add_argument(
        "--compile", default="", help="comma-separated torch.compile modes to try (default, ...)"
    )
    parser.add_argument(
        "--compile-timeout", type=int, default=200, help="seconds per compiled variant's process"
    )
    args = parser.parse_args()
    if args.one:
        parts = args.one.split(",")
        if (
            len(parts) != 4
            or parts[0] not in LAYOUTS
            or parts[1] not in DTYPES
            or parts[2] not in STEMS
        ):
            parser.error(
                f"--one {args.one!r}: expected layout,dtype,stem,compile, e.g. cl,bf16,none,"
            )
        layout, dtype, stem, mode = parts
        print(json.dumps(run_variant(args, layout, dtype, stem, mode)), flush=True)
        return
    check_same_maths(args)
    rows = []
    eager = [(lay, dt, "none") for dt in DTYPES for lay in LAYOUTS]
    eager += [("cl", dt, stem) for dt in DTYPES if DTYPES[dt] for stem in STEMS[1:]]
    # Two rounds in alternating order, so drift of the machine shows up as disagreement.
    for round_ in range(2):
        for lay, dt, stem in eager if round_ == 0 else eager[::-1]:
            row = run_variant(args, lay, dt, stem, "")
            row["round"] = round_
            rows.append(row)
            print(json.dumps(row), flush=True)
    for mode in [m for m in args.compile.split(",") if m]:
        for dt in ("bf16", "fp16"):
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--crop",
                str(args.crop),
                "--q",
                str(args.q),
                "--k",
                str(args.k),
                "--iters",
                str(args.iters),
                "--warmup",
                str(args.warmup),
                "--one",
                f"cl,{dt},none,{mode}",
            ]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=args.compile_timeout
                )
            except subprocess.TimeoutExpired:
                print(json.dumps({"compile": mode, "dtype": dt, "error": "timeout"}), flush=True)
                continue
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                print(
                    json.dumps({"compile": mode, "dtype": dt, "error": proc.stderr[-1500:]}),
                    flush=True,
                )
                continue
            row = json.loads(lines[-1])
            row["process_s"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\nlayout  dtype stem   compile          ms(median)  best   first_s  peak MiB")
    for r in rows:
        print(
            f"{r['layout']:7} {r['dtype']:5} {r['stem']:6} {r['compile']:16} {r['ms']:9.1f} "
            f"{r['best_ms']:7.1f} {r['first_s']:8.2f} {r['peak_mib']:9.0f}"
        )


if __name__ == "__main__":
    main()
