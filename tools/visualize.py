#!/usr/bin/env python3
"""Pictures of what checkpoints look at in videos: one PNG grid per video.

    python tools/visualize.py --config-file configs/Quickstart/fima_synthetic.yaml \
        --input VIDEO_OR_DIR --output vis/ MODEL.WEIGHTS output/quickstart_fima/model_final.pth
    python tools/visualize.py --config-file configs/Quickstart/fima_synthetic.yaml \
        --compare output/quickstart_moco/model_final.pth output/quickstart_fima/model_final.pth \
        --input VIDEO_OR_DIR --output vis/

Each grid shows the middle test clip of the video (centre crop as in evaluation): its frames, the
frame difference, the class-agnostic activation map of the checkpoint's encoder and, for a FIMA
checkpoint, its foreground grid mask (see :mod:`fima.utils.visualization`). With ``--compare``
the grids of two checkpoints (files, URLs or model-zoo names) are side by side. The config gives
the backbone and the input (``INPUT.NUM_FRAMES``, ``SAMPLING_RATE``, ``CROP_SIZE``, ...).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys

from fima.checkpoint import CheckpointMismatchError, CheckpointReadError
from fima.checkpoint.backbone_weights import weights_problem
from fima.config.validation import validate_cfg_without_data
from fima.data.datasets.video_list import report_scan, scan_videos
from fima.data.decoder import DecodeError
from fima.engine.defaults import (
    OptionsFirstArgumentParser,
    add_import_argument,
    get_user_cfg,
    int_at_least,
    resolve_device,
    usage_error,
    usage_errors,
)
from fima.model_zoo import DownloadError
from fima.utils.files import nearest_existing
from fima.utils.logger import setup_logger
from fima.utils.progress import progress_bar
from fima.utils.visualization import (
    compute_maps,
    load_clip,
    load_encoders,
    render_grid,
    save_png,
    side_by_side,
)

logger = logging.getLogger("fima.visualize")
PROG = "visualize.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OptionsFirstArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="the config the checkpoints were trained with (backbone and input)",
    )
    parser.add_argument(
        "--input", required=True, help="a video file, or a directory searched for videos"
    )
    parser.add_argument("--output", required=True, help="directory for the PNG files")
    add_import_argument(parser)
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("WEIGHTS_A", "WEIGHTS_B"),
        help="two checkpoints (files, URLs or model-zoo names) drawn side by side, "
        "instead of MODEL.WEIGHTS",
    )
    parser.add_argument(
        "--columns", type=int_at_least(1), default=8, help="frames shown per clip (at most)"
    )
    parser.add_argument("--cell", type=int_at_least(1), default=96, help="tile size in pixels")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace PNG files that already exist"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def find_videos(path: str) -> list[str]:
    """``path`` itself if it is a file or a folder of frames, else the videos below the
    directory, found as VideoList finds them in class folders (video files and folders of
    frames; links followed, each folder once; hidden entries left out), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--input {path}: no such file or directory")
    scan = scan_videos(path, folder_may_be_video=True)
    report_scan(scan, f"--input {path}")
    return sorted(video for video, _ in scan.videos)


def output_name(video: str, root: str, keep_extension: bool = False) -> str:
    """The PNG name of a video: its path relative to ``--input`` with ``/`` as ``__``, without
    its extension unless ``keep_extension`` (``clip.avi.png``; a folder of frames keeps its
    whole name); a folder of frames given as ``--input`` itself is named after the folder."""
    is_root = os.path.normpath(video) == os.path.normpath(root)
    inside = os.path.isdir(root) and not is_root
    relative = os.path.relpath(video, root) if inside else os.path.basename(os.path.normpath(video))
    # A folder of frames has no extension to drop ("Dr. Smith/" is not "Dr").
    if not keep_extension and not os.path.isdir(video):
        relative = os.path.splitext(relative)[0]
    return relative.replace(os.sep, "__") + ".png"


def output_names(videos: list[str], root: str) -> list[str]:
    """One PNG name per video, each different: videos that differ only in their extension
    (``clip.avi``, ``clip.mp4``) keep it in their names.

    Raises:
        ValueError: two videos would still share a name (``a/b__c.avi`` and ``a__b/c.avi``).
    """
    names = [output_name(video, root) for video in videos]
    counts = collections.Counter(names)
    names = [
        output_name(video, root, keep_extension=counts[name] > 1)
        for video, name in zip(videos, names)
    ]
    first_video: dict[str, str] = {}
    for video, name in zip(videos, names):
        if name in first_video:
            raise ValueError(
                f"{first_video[name]} and {video} would both be drawn to {name}; rename one, "
                "or draw them into separate --output folders"
            )
        first_video[name] = video
    return names


def output_problem(folder: str) -> str | None:
    """Why the pictures cannot be written under ``folder``, or None: it, or the nearest path above
    it that exists, must be a directory."""
    existing = nearest_existing(folder)
    if os.path.isdir(existing):
        return None
    where = "" if existing == os.path.abspath(folder) else f" ({existing} is)"
    return f"--output {folder} is a file{where}, not a directory for the PNG files"


def checkpoint_label(weights: str) -> str:
    """A short label: the checkpoint file with its folder (``quickstart_fima/model_final``)."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(weights)))
    name = os.path.splitext(os.path.basename(weights))[0]
    return f"{parent}/{name}" if os.path.isfile(weights) else weights


def main(argv: list[str] | None = None) -> int:
    """Draw the grids; return 0, or 1 when no video could be read.

    Raises:
        SystemExit: status 2 with one line on stderr for a bad command line or config, a
            checkpoint that does not exist, or outputs that would be overwritten.
    """
    args = parse_args(argv)
    setup_logger(None, name="fima")
    with usage_errors(PROG):
        cfg = get_user_cfg(args.config_file, args.opts, args.imports)
        # The videos come from --input: the config's dataset is neither read nor checked.
        validate_cfg_without_data(cfg)
        cfg.freeze()
        videos = find_videos(args.input)
    weights = list(args.compare) if args.compare else [cfg.MODEL.WEIGHTS]
    if not all(weights):
        usage_error(PROG, "give MODEL.WEIGHTS or --compare A B")
    for name in weights:
        problem = weights_problem(name)
        if problem is not None:
            usage_error(PROG, f"{'--compare' if args.compare else 'MODEL.WEIGHTS'} {problem}")
    if not videos:
        usage_error(PROG, f"no video under {args.input}")
    # Before the checkpoints are loaded: a file in the way would fail at the first picture.
    problem = output_problem(args.output)
    if problem is not None:
        usage_error(PROG, problem)
    try:
        targets = [os.path.join(args.output, name) for name in output_names(videos, args.input)]
    except ValueError as err:
        usage_error(PROG, str(err))
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not args.overwrite:
        usage_error(
            PROG,
            f"{len(existing)} output file(s) exist, e.g. {existing[0]}; pass --overwrite to "
            "replace them or choose another --output",
        )
    device = resolve_device(cfg)
    # Weights that cannot be read, downloaded or fitted to the config's model: one line.
    with usage_errors(PROG, (CheckpointMismatchError, CheckpointReadError, DownloadError)):
        models = [(checkpoint_label(w), *load_encoders(cfg, w, device)) for w in weights]
    failed = 0
    for video, target in zip(progress_bar(videos, "visualize", total=len(videos)), targets):
        try:
            clip = load_clip(video, cfg)
        except DecodeError as err:
            logger.warning("Skipping %s: %s", video, err)
            failed += 1
            continue
        grids = []
        for label, encoder, mask_encoder in models:
            maps = compute_maps(encoder, clip[None], cfg, mask_encoder)[0]
            title = f"{label}  |  {os.path.basename(video)}"
            grids.append(render_grid(maps, title=title, columns=args.columns, cell=args.cell))
        save_png(side_by_side(grids), target)
    logger.info(
        "Wrote %d picture(s) to %s; %d video(s) could not be read",
        len(videos) - failed,
        args.output,
        failed,
    )
    return 1 if failed == len(videos) else 0


if __name__ == "__main__":
    sys.exit(main())
