#!/usr/bin/env python
"""Convert a checkpoint of the reference code bases (FIMA, FAME, MoCo) or torchvision into fima's
layout, or export a plain backbone ``state_dict`` from a fima checkpoint.

Examples::

    # reference FIMA pretraining checkpoint -> backbone weights for fine-tuning
    python tools/convert_checkpoint.py --from fima-reference --to backbone \
        --input checkpoint_0199.pth.tar --output fima_i3d_backbone.pth
    python tools/train_net.py --config-file configs/Finetune/i3d_ucf101.yaml \
        MODEL.WEIGHTS fima_i3d_backbone.pth

    # reference fine-tuned classifier -> fima classifier (evaluate with --eval-only)
    python tools/convert_checkpoint.py --from fame-reference --to classifier \
        --input model_best.pth.tar --output fame_i3d_ucf101.pth

    # torchvision r2plus1d_18 weights; a fima pretraining run's backbone
    python tools/convert_checkpoint.py --from torchvision --to backbone \
        --input r2plus1d_18-91a641e6.pth --output r2plus1d_k400.pth
    python tools/convert_checkpoint.py --from fima --to backbone \
        --config-file configs/Quickstart/moco_synthetic.yaml \
        --input output/quickstart_moco/model_final.pth --output tiny3d_moco.pth

The report lists mapped, dropped, missing and unexpected keys; a conversion that loses part of
the target is refused unless ``--allow-lossy``. Inputs are loaded with ``weights_only=True``; the
output is written atomically and never replaces an existing file without ``--overwrite``. Exit
status 0 on success, 2 when refused, the input is unusable or the output cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from fima.checkpoint import atomic_write
from fima.checkpoint.convert import (
    SOURCES,
    TARGETS,
    LossyConversionError,
    convert_checkpoint,
    load_source,
)
from fima.engine.defaults import add_import_argument, get_user_cfg
from fima.model_zoo.download import file_sha256


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--input", required=True, help="the checkpoint to convert")
    parser.add_argument("--output", required=True, help="where to write the result")
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES)
    parser.add_argument(
        "--to",
        dest="target",
        required=True,
        choices=TARGETS,
        help="backbone: a plain backbone state_dict (MODEL.WEIGHTS of a classifier);\n"
        "classifier: a fima VideoClassifier checkpoint (needs a trained head)",
    )
    parser.add_argument(
        "--config-file",
        default="",
        help="config naming the backbone (default: detected: I3D, R2Plus1D18 or R3D18)",
    )
    parser.add_argument(
        "--allow-lossy", action="store_true", help="write what fits even if part is lost"
    )
    add_import_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--verbose", action="store_true", help="list every mapped key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if os.path.isdir(args.output):
            raise IsADirectoryError(
                f"--output {args.output} is a directory; give the file to write, e.g. "
                f"{os.path.join(args.output, 'converted.pth')}"
            )
        if os.path.exists(args.output) and not args.overwrite:
            raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
        cfg = None
        if args.config_file:
            cfg = get_user_cfg(args.config_file, imports=args.imports)
        output, report = convert_checkpoint(
            load_source(args.input), args.source, args.target, cfg, allow_lossy=args.allow_lossy
        )
        try:
            atomic_write(args.output, lambda f: torch.save(output, f))
        except OSError as err:
            raise OSError(f"Cannot write {args.output}: {err.strerror or err}") from err
    except (LossyConversionError, ValueError, KeyError, OSError) as err:
        # KeyError: an unknown config key or backbone name; its str() would quote the message.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"convert_checkpoint.py: error: {message}", file=sys.stderr)
        return 2
    print(report.format(verbose=args.verbose))
    if report.lossy:
        print("  WARNING: lossy conversion written because of --allow-lossy")
    print(f"Wrote {args.output} (sha256 {file_sha256(args.output)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
