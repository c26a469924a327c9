"""The data-pipeline benchmark: ``tools/benchmark.py --task data``.

It generates its own videos with PyAV in a temporary folder, so that anyone can run it: H.264 MP4s
at a 256-px short side with one keyframe per second and one per ten seconds, a 1080p clip, and
2,000 short clips for indexing (``--quick``: fewer, shorter and smaller). Then it measures:

- **decode efficiency**: :func:`~fima.data.decoder.decode_frames` on a 32-frame window against
  the unavoidable work, a minimal PyAV loop that opens the file, seeks to the keyframe before the
  window and decodes (without converting) through its last frame; and the share of a clip's time
  spent outside the decoder (conversion to RGB, stacking, crops and resizing);
- **conversion**: a reused swscale context against ``frame.to_ndarray(format="rgb24")``, and a
  1080p source downscaled while converting against converting at full size and cropping from it;
- **start-up**: indexing 2,000 videos from their headers (1 and 8 threads), and a second start
  that reads the list and the cached index;
- **the pretraining loader**: decoded clips/s (a clip is one window's views) with 0 and N workers,
  for MoCo's views and FIMA's, with the peak memory of the process and its workers (PSS, so that
  pages a forked worker shares with its parent count once), and the decode-only time of a clip;
- **memory**: resident memory over 5,000 decoded clips.

Figures are medians of repeated measurements (each timing the minimum of a few repeats where
noted). On a machine shared with other work they are noisy: compare runs on one quiet machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from fima.benchmark import Figure, run_figures_task
from fima.config import CfgNode, get_cfg
from fima.data import build_dataset, build_pretrain_loader, decoder
from fima.data.build import WindowClips, load_index
from fima.data.decoder import decode_frames
from fima.data.index import build_index
from fima.data.transforms import random_crop_flip
from fima.engine.defaults import int_at_least
from fima.utils.env import available_cpus, describe_cpu_model, describe_cpus
from fima.utils.memory import retain_freed_memory

logger = logging.getLogger(__name__)

FPS = 25
WINDOW = 32  # NUM_FRAMES 16 x SAMPLING_RATE 2, the recipe's window
SHORT_SIDE = 256


# The counts of a full run and of a --quick one.
COUNTS = {
    "batch_size": 8,
    "loader_batches": 8,
    "windows": 40,
    "index_videos": 2000,
    "rss_clips": 5000,
}
QUICK_COUNTS = {
    "batch_size": 2,
    "loader_batches": 2,
    "windows": 4,
    "index_videos": 100,
    "rss_clips": 40,
}


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """Add the options of ``--task data``.

    Args:
        parser: the task's parser (or an argument group), extended in place.
    """
    parser.add_argument(
        "--workdir",
        default="",
        help="generate the videos here and keep them (default: a temporary folder, removed)",
    )
    parser.add_argument(
        "--num-workers",
        type=int_at_least(0),
        default=available_cpus(),
        help="data-loader workers of the parallel loader run (default: one per usable CPU)",
    )
    # The counts: None takes the default of the run's size (COUNTS, QUICK_COUNTS).
    for option, what, least in (
        ("--batch-size", "loader batch size", 1),
        ("--loader-batches", "timed batches per run", 1),
        ("--windows", "windows per keyframe interval", 1),
        ("--index-videos", "videos to index", 1),
        # Fewer leave no reading after the warm-up: a growth of 0 that measured nothing.
        ("--rss-clips", "clips of the memory test", 10),
    ):
        dest = option[2:].replace("-", "_")
        parser.add_argument(
            option,
            type=int_at_least(least),
            default=None,
            help=f"{what} (default {COUNTS[dest]}; with --quick {QUICK_COUNTS[dest]})",
        )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small numbers for the counts not given: checks that the tooling works, figures "
        "not meaningful",
    )


# -- video generation ---------------------------------------------------------------------------


def write_video(path: str, num_frames: int, width: int, height: int, gop: int, seed: int) -> str:
    """Encode a textured, panning scene with a moving object as H.264 with a keyframe every
    ``gop`` frames exactly (B-frames as x264's ``veryfast`` preset uses them).

    Args:
        path: the MP4 file to write.
        num_frames: frames, at ``FPS`` frames per second.
        width, height: the frame size (even).
        gop: frames between two keyframes.
        seed: seeds the texture and the noise.

    Returns:
        ``path``.
    """
    rng = np.random.default_rng(seed)
    cells = rng.random((height // 16 + 2, (2 * width) // 16 + 2, 3))
    texture = (cells.repeat(16, 0).repeat(16, 1)[:height, : 2 * width] * 200 + 30).astype(np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    radius = height / 8
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "keyint_min": str(gop), "sc_threshold": "0"}
        for t in range(num_frames):
            shift = (3 * t) % width
            frame = texture[:, shift : shift + width].copy()
            cx = (0.5 + 0.4 * np.sin(t / 15)) * width
            cy = (0.5 + 0.3 * np.cos(t / 11)) * height
            frame[(xs - cx) ** 2 + (ys - cy) ** 2 < radius**2] = (230, 40, 40)
            frame = np.clip(frame + rng.integers(0, 8, frame.shape, dtype=np.uint8), 0, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_job(job: tuple[str, int, int, int, int, int]) -> str:
    return write_video(*job)


def generate(jobs: list[tuple[str, int, int, int, int, int]]) -> list[str]:
    """:func:`write_video` for each job, in parallel processes.

    Args:
        jobs: ``(path, frames, width, height, gop, seed)`` each; the folders are created.

    Returns:
        The paths, in the order of ``jobs``.
    """
    for job in jobs:
        os.makedirs(os.path.dirname(job[0]), exist_ok=True)
    with ProcessPoolExecutor(max_workers=available_cpus()) as pool:
        return list(pool.map(_write_job, jobs))


# -- measurement helpers ------------------------------------------------------------------------


def _rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MB (Linux /proc; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _children() -> list[int]:
    """Pids of this process's children (data-loader workers), from /proc."""
    pids = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(pid) for pid in f.read().split()]
    except OSError:
        pass
    return pids


def _pss_mb(pid: int | str = "self") -> float:
    """Proportional set size in MB: resident memory with pages shared by several processes
    (a forked worker shares most of its parent's) split between them. RSS where not available."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return _rss_mb(pid)


class PeakMemory:
    """Samples the memory (PSS) of this process plus its children in a background thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = _pss_mb() + sum(_pss_mb(pid) for pid in _children())
            self.peak_mb = max(self.peak_mb, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _best_of(function: Callable[[], Any], repeats: int) -> float:
    """The shortest of ``repeats`` timed calls, in seconds (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


class _CountingContainer:
    """A container whose ``decode`` counts the frames it yields (everything else delegates)."""

    def __init__(self, container: Any, counter: list[int]) -> None:
        self._container, self._counter = container, counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def __enter__(self) -> _CountingContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.__exit__(*exc)

    def decode(self, *args: Any, **kwargs: Any) -> Iterator[av.VideoFrame]:
        for frame in self._container.decode(*args, **kwargs):
            self._counter[0] += 1
            yield frame


def frames_decoded(function: Callable[[], Any]) -> int:
    """Count the frames :func:`decode_frames` decodes while ``function`` runs.

    Args:
        function: calls :func:`decode_frames` in this process.

    Returns:
        Frames decoded, converted or not.
    """
    counter = [0]
    real_open = decoder._open
    decoder._open = lambda path: _CountingContainer(real_open(path), counter)
    try:
        function()
    finally:
        decoder._open = real_open
    return counter[0]


def _keyframe_before(path: str, index: int) -> int:
    """The index timestamp of the last keyframe at or before frame ``index`` (MP4 index)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        target = (stream.start_time or 0) + int(index / FPS / stream.time_base)
        return max(
            e.timestamp for e in stream.index_entries if e.is_keyframe and e.timestamp <= target
        )


def reference_decode(path: str, keyframe_ts: int, last: int) -> int:
    """The unavoidable work: open, seek to the keyframe, decode without converting to ``last``.

    Args:
        path: the video (at ``FPS``).
        keyframe_ts: the timestamp of the keyframe at or before the window.
        last: the window's last frame index.

    Returns:
        The number of frames decoded.
    """
    count = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        start, tick = stream.start_time or 0, float(stream.time_base * FPS)
        container.seek(keyframe_ts, stream=stream, backward=True)
        for frame in container.decode(stream):
            count += 1
            if round((frame.pts - start) * tick) >= last:
                break
    return count


def _decoded(path: str, indices: Sequence[int]) -> list[av.VideoFrame]:
    wanted, frames = set(indices), []
    with av.open(path) as container:
        stream = container.streams.video[0]
        start, tick = stream.start_time or 0, float(stream.time_base * FPS)
        for frame in container.decode(stream):
            index = round((frame.pts - start) * tick)
            if index in wanted:
                frames.append(frame)
            if index >= max(indices):
                return frames
    return frames


def _crop_cfg(crop: int = 224) -> CfgNode:
    cfg = get_cfg()
    cfg.INPUT.CROP_SIZE = crop
    return cfg


# -- the sections -------------------------------------------------------------------------------


def _convert_all(reformatter: VideoReformatter, frames: list[av.VideoFrame]) -> None:
    for frame in frames:
        reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


def _to_ndarray_all(frames: list[av.VideoFrame]) -> None:
    for frame in frames:
        frame.to_ndarray(format="rgb24")


def _clip(path: str, indices: list[int], short_side: int, cfg: CfgNode) -> None:
    frames = decode_frames(path, indices, threads=1, short_side=short_side)
    random_crop_flip(frames, cfg, np.random.default_rng(0))


def decode_efficiency(videos: dict[str, list[str]], windows: int, seed: int = 0) -> list[Figure]:
    """Ours against the unavoidable work, per keyframe interval (module doc).

    Args:
        videos: paths by keyframe interval (``"1 s"``, ``"10 s"``).
        windows: random windows measured per interval.
        seed: seeds the window starts.

    Returns:
        Eight figures per interval, medians over the windows.
    """
    rng = np.random.default_rng(seed)
    cfg = _crop_cfg()
    reformatter = VideoReformatter()
    figures = []
    for interval, paths in videos.items():
        section = f"Decoding a {WINDOW}-frame window, 256-px short side, keyframe every {interval}"
        times: dict[str, list[float]] = {
            k: [] for k in ("ours", "ref", "ratio", "frames", "view", "convert", "crop", "outside")
        }
        for w in range(windows):
            path = paths[w % len(paths)]
            with av.open(path) as container:
                num_frames = container.streams.video[0].frames
            first = int(rng.integers(0, num_frames - WINDOW + 1))
            window = list(range(first, first + WINDOW))
            keyframe_ts = _keyframe_before(path, first)
            ref = _best_of(partial(reference_decode, path, keyframe_ts, window[-1]), 3)
            ours = _best_of(partial(decode_frames, path, window, threads=1), 3)
            decoded = frames_decoded(partial(decode_frames, path, window, threads=1))
            needed = reference_decode(path, keyframe_ts, window[-1])
            view = _best_of(partial(decode_frames, path, window[::2], threads=1), 3)
            convert = _best_of(partial(_convert_all, reformatter, _decoded(path, window)), 3)
            clip = decode_frames(path, window[::2], threads=1)
            crop = _best_of(partial(random_crop_flip, clip, cfg, np.random.default_rng(w)), 3)
            for key, value in (
                ("ours", ours),
                ("ref", ref),
                ("ratio", ours / ref),
                ("frames", decoded / needed),
                ("view", view),
                ("convert", convert),
                ("crop", crop),
                ("outside", (view + crop - ref) / (view + crop)),
            ):
                times[key].append(value)
        median = {key: float(np.median(values)) for key, values in times.items()}
        figures += [
            Figure(section, "decode_frames, all 32 frames to RGB", 1e3 * median["ours"], "ms"),
            Figure(section, "unavoidable: keyframe to last frame", 1e3 * median["ref"], "ms"),
            Figure(section, "time ratio (median of per-window ratios)", median["ratio"], "x"),
            Figure(section, "frames decoded / unavoidable frames", median["frames"], "x", "<= 1.2"),
            Figure(
                section, "  of which RGB conversion of 32 frames", 1e3 * median["convert"], "ms"
            ),
            Figure(section, "decode_frames, MoCo view (16 of 32)", 1e3 * median["view"], "ms"),
            Figure(section, "crop + resize of the view to 224", 1e3 * median["crop"], "ms"),
            Figure(section, "MoCo clip: share outside the decoder", 100 * median["outside"], "%"),
        ]
    return figures


def conversion(paths_256: list[str], path_hd: str) -> list[Figure]:
    """Conversion with a reused context, and downscaling an HD source while converting.

    Args:
        paths_256: videos at a 256-px short side (the first is measured).
        path_hd: the HD video.

    Returns:
        Per-frame conversion times, and a clip's decode + crop from the HD source.
    """
    with av.open(path_hd) as container:
        height = container.streams.video[0].codec_context.height
    section = f"RGB conversion (per frame) and downscaling a {height}p source while converting"
    frames = _decoded(paths_256[0], list(range(32)))
    fresh = _best_of(partial(_to_ndarray_all, frames), 3) / len(frames)
    reused = _best_of(partial(_convert_all, VideoReformatter(), frames), 3) / len(frames)
    figures = [
        Figure(section, "frame.to_ndarray(format='rgb24'), 256 px", 1e3 * fresh, "ms"),
        Figure(section, "reused reformatter (fima), 256 px", 1e3 * reused, "ms"),
    ]
    cfg = _crop_cfg()
    window = list(range(0, WINDOW, 2))
    for name, short_side in ((f"native {height}p", 0), (f"downscaled to {SHORT_SIDE}", SHORT_SIDE)):
        seconds = _best_of(partial(_clip, path_hd, window, short_side, cfg), 3)
        figures.append(Figure(section, f"MoCo clip, decode + crop, {name}", 1e3 * seconds, "ms"))
    return figures


def indexing(workdir: str, num_videos: int) -> list[Figure]:
    """Index short videos from their headers, cold and from the cache.

    Args:
        workdir: where the videos, their list and the index caches are written.
        num_videos: videos to index (copies of 20 generated ones).

    Returns:
        Seconds of a first start with 1 and 8 threads, and of a second start.
    """
    section = f"Start-up: indexing {num_videos} short videos from their headers"
    root = os.path.join(workdir, "index")
    pool = generate(
        [
            (os.path.join(workdir, "index-pool", f"{i}.mp4"), 40 + 5 * i, 160, 120, 25, i)
            for i in range(20)
        ]
    )
    rows = []
    for i in range(num_videos):
        rel = f"videos/c{i % 40}/v{i}.mp4"
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        shutil.copyfile(pool[i % len(pool)], os.path.join(root, rel))
        rows.append(f"{rel},c{i % 40}\n")
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.writelines(rows)
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.ROOT = "VideoList", root
    figures = []
    for threads in (1, 8):
        cache = os.path.join(workdir, f"index-{threads}.json")
        if os.path.exists(cache):  # a kept --workdir's: the first start is a cold one
            os.remove(cache)
        start = time.perf_counter()
        dataset = build_dataset(cfg, "train")
        build_index(dataset, cache, num_threads=threads)
        target = "< 10 on 2 cores" if threads == 8 else ""
        figures.append(
            Figure(
                section,
                f"first start, {threads} thread(s)",
                time.perf_counter() - start,
                "s",
                target,
            )
        )
    start = time.perf_counter()
    build_index(build_dataset(cfg, "train"), cache)
    figures.append(
        Figure(
            section, "second start: list + cached index", time.perf_counter() - start, "s", "< 1"
        )
    )
    return figures


def _loader_cfg(root: str, output: str, batch_size: int, workers: int) -> CfgNode:
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.ROOT, cfg.OUTPUT_DIR = "VideoList", root, output
    cfg.DATA.NUM_WORKERS = workers
    cfg.SOLVER.IMS_PER_BATCH = batch_size
    cfg.SEED = 0
    return cfg


def loader_throughput(
    root: str, output: str, batch_size: int, batches: int, workers: int
) -> list[Figure]:
    """Clips/s of ``build_pretrain_loader`` with MoCo's and FIMA's views, 0 and N workers.

    Args:
        root: the ``VideoList`` dataset root (``train.csv``).
        output: the runs' ``OUTPUT_DIR`` (index cache, bad-video list).
        batch_size: videos per batch.
        batches: timed batches per run, after the first.
        workers: the parallel run's data-loader workers.

    Returns:
        Clips/s and the peak PSS of each (views, workers) run.
    """
    section = f"Pretraining loader: 2 windows of {WINDOW} frames per video, crops of 224"
    figures = []
    for views, method in ((("global",), "MoCo views"), (("global", "local"), "FIMA views")):
        for num_workers in sorted({0, workers}):
            cfg = _loader_cfg(root, output, batch_size, num_workers)
            with PeakMemory() as memory:
                iterator = iter(build_pretrain_loader(cfg, views=views))
                next(iterator)  # workers start, first batches prefetch
                start = time.perf_counter()
                for _ in range(batches):
                    next(iterator)
                elapsed = time.perf_counter() - start
                del iterator
            name = f"{method}, {num_workers} workers"
            clips = batches * batch_size * 2
            figures += [
                Figure(section, f"{name}: clips/s", clips / elapsed, "clips/s"),
                Figure(section, f"{name}: peak PSS, process + workers", memory.peak_mb, "MB"),
            ]
    return figures


def _window_clips(root: str, output: str) -> WindowClips:
    cfg = _loader_cfg(root, output, 1, 0)
    dataset = build_dataset(cfg, "train")
    infos, _ = load_index(cfg, dataset)
    return WindowClips(dataset, infos, cfg, ("global",), num_windows=2, seed=0)


def decode_only(root: str, output: str, clips: int) -> list[Figure]:
    """Decode-only time of one clip (one window's global view), as the loader asks for it.

    Args:
        root: the ``VideoList`` dataset root.
        output: the ``OUTPUT_DIR`` of its index cache.
        clips: clips timed.

    Returns:
        The median time in ms.
    """
    section = "Pretraining loader: decode-only time per clip (MoCo view, one thread)"
    samples = _window_clips(root, output)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(clips):
        index = int(rng.integers(len(samples.dataset)))
        record, info = samples.dataset[index], samples.infos[index]
        first = int(rng.integers(0, info.num_frames - WINDOW + 1))
        indices = list(range(first, first + WINDOW, 2))
        times.append(_best_of(partial(decode_frames, record.path, indices, threads=1), 1))
    return [Figure(section, "decode_frames of a 16-frame view", 1e3 * np.median(times), "ms")]


def memory_growth(root: str, output: str, clips: int) -> list[Figure]:
    """Resident memory while decoding clips (two per sample) in this process.

    Args:
        root: the ``VideoList`` dataset root.
        output: the ``OUTPUT_DIR`` of its index cache.
        clips: clips decoded.

    Returns:
        RSS after the warm-up, and the growth from there (at the end, and the largest).
    """
    section = f"Resident memory over {clips} decoded clips (decode + crops, this process)"
    samples = _window_clips(root, output)
    order = np.random.default_rng(2).integers(len(samples.dataset), size=(clips + 1) // 2)
    warmup = max(len(order) // 10, 1)
    readings = []
    for n, index in enumerate(order):
        samples[int(index), 0, n]  # decoded and cropped, then dropped: only memory counts
        if n + 1 == warmup or (n + 1) % max(len(order) // 20, 1) == 0:
            readings.append(_rss_mb())
    after_warmup = readings[0]
    return [
        Figure(section, f"RSS after the first {2 * warmup} clips", after_warmup, "MB"),
        Figure(section, "growth from there to the end", readings[-1] - after_warmup, "MB", "< 50"),
        Figure(section, "largest growth seen", max(readings) - after_warmup, "MB"),
    ]


@contextmanager
def _workdir(path: str) -> Iterator[str]:
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="fima-benchmark-data-") as tmp:
            yield tmp


def run(args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    """Generate the videos and run every section.

    Args:
        args: the parsed options (:func:`add_arguments`); counts left None get the defaults.

    Returns:
        ``(figures, notes)`` for the report.
    """
    for dest, count in (QUICK_COUNTS if args.quick else COUNTS).items():
        if getattr(args, dest) is None:  # not given on the command line
            setattr(args, dest, count)
    # As in a data-loader worker: one thread (the measurements are per core), freed memory kept.
    torch.set_num_threads(1)
    retain_freed_memory()
    with _workdir(args.workdir) as workdir:
        seconds = 12 if not args.quick else 3
        logger.info("Generating the benchmark videos in %s ...", workdir)
        videos = {
            "1 s": [
                (os.path.join(workdir, "gop25", f"{i}.mp4"), seconds * FPS, 456, 256, FPS, i)
                for i in range(4)
            ],
            "10 s": [
                (os.path.join(workdir, "gop250", f"{i}.mp4"), seconds * FPS, 456, 256, 10 * FPS, i)
                for i in range(4)
            ],
        }
        width, height = (1920, 1080) if not args.quick else (640, 360)
        hd = (os.path.join(workdir, "hd", f"{height}p.mp4"), 2 * FPS, width, height, FPS, 0)
        paths = generate([*videos["1 s"], *videos["10 s"], hd])
        by_interval = {"1 s": paths[:4], "10 s": paths[4:8]}
        loader_root = os.path.join(workdir, "loader")
        os.makedirs(loader_root, exist_ok=True)  # a kept --workdir is reused
        with open(os.path.join(loader_root, "train.csv"), "w") as f:
            f.writelines(f"{path},{path.split(os.sep)[-2]}\n" for path in paths[:8])
        output = os.path.join(workdir, "output")
        figures: list[Figure] = []
        for name, section in (
            ("decode efficiency", lambda: decode_efficiency(by_interval, args.windows)),
            ("conversion", lambda: conversion(paths[:4], paths[8])),
            ("indexing", lambda: indexing(workdir, args.index_videos)),
            (
                "loader",
                lambda: loader_throughput(
                    loader_root, output, args.batch_size, args.loader_batches, args.num_workers
                ),
            ),  # fmt: skip
            ("decode-only", lambda: decode_only(loader_root, output, args.windows)),
            ("memory", lambda: memory_growth(loader_root, output, args.rss_clips)),
        ):
            logger.info("Measuring %s ...", name)
            figures += section()
    notes = [
        f"Machine: {describe_cpu_model()}, {describe_cpus()}; torch {torch.__version__}, "
        f"PyAV {av.__version__}, "
        f"FFmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} (libavcodec).",
        "Timings are medians (each the best of 3 calls where a section repeats); the page cache is "
        "warm, so indexing measures header parsing, not cold storage.",
    ]
    if args.quick:
        notes.append("--quick: small counts; these figures only show that the tooling works.")
    return figures, notes


def main(argv: list[str]) -> list[Figure]:
    """``tools/benchmark.py --task data [options]``: run, print the report.

    Args:
        argv: the task's options.

    Returns:
        The figures.
    """
    return run_figures_task(argv, "data", run, add_arguments)
