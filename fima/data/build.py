"""Data loaders: ``build_pretrain_loader``, ``build_train_loader`` and ``build_test_loader``.

Every random choice of a training sample (window positions, crops, flips, replacement of a bad
video) comes from a generator seeded by ``(seed, epoch, position in epoch)``. A batch is therefore
the same whatever the number of workers, and a resumed run, which restarts the sampler at the
iteration it stopped, sees exactly the data that the uninterrupted run would have seen.

Workers: each decodes with one thread (the workers are the parallelism) and seeds NumPy and
Python from the seed the DataLoader gives it, for user code that draws from them. Pinned memory
is used when the model runs on a GPU. Persistent workers serve the test loader, which evaluation
iterates again and again; a training loader's batch sampler never ends, so its workers already
live as long as the run's one iterator, and a resume (a new position) needs new ones anyway.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fima.config.config import CfgNode
from fima.config.validation import require, runs_on_gpu
from fima.data.bad_videos import BadVideoTracker, TooManyBadVideosError
from fima.data.datasets.build import VideoDataset, build_dataset
from fima.data.decoder import DecodeError, VideoInfo, decode_frames
from fima.data.index import build_index, index_cache_file
from fima.data.sampling import (
    random_window_start,
    uniform_clip_starts,
    view_positions,
    window_indices,
)
from fima.data.transforms import random_crop_flip, spatial_crops
from fima.utils import comm
from fima.utils.env import shared_seed
from fima.utils.memory import retain_freed_memory

logger = logging.getLogger(__name__)


def add_data_config(cfg: CfgNode) -> None:
    """Keys of the decoding and loading steps (the basic ``DATA`` keys are framework defaults)."""
    # Frames whose short side is larger are downscaled to this while they are converted to RGB,
    # before the random crops (the reference rescaled its videos to 256 px offline). 0: keep.
    cfg.INPUT.TRAIN_SHORT_SIDE = 256
    # Decoder threads per video. 0: one inside data-loader workers (they are the parallelism),
    # FFmpeg's choice when decoding in the main process (DATA.NUM_WORKERS 0).
    cfg.DATA.DECODE_THREADS = 0
    # A video with fewer frames (by its header) is a bad video: a 1-frame "video" has no motion.
    cfg.DATA.MIN_VIDEO_FRAMES = 2
    # Keep the test loader's workers between evaluation passes.
    cfg.DATA.PERSISTENT_WORKERS = True


def decode_threads(cfg: CfgNode) -> int:
    """``DATA.DECODE_THREADS``, with 0 resolved as its comment in :func:`add_data_config` says."""
    if cfg.DATA.DECODE_THREADS > 0:
        return cfg.DATA.DECODE_THREADS
    return 1 if cfg.DATA.NUM_WORKERS > 0 else 0


# Sample key: (video index, epoch, position of the sample within the epoch).
SampleKey = tuple[int, int, int]


class TrainingBatchSampler(Sampler[list[SampleKey]]):
    """Endless batches for one rank; epoch ``e`` is a permutation seeded by ``(seed, e)``.

    Each epoch the permutation is cut to a multiple of ``world_size * batch_size`` (the rest of
    the videos is dropped for that epoch, as ``drop_last`` does) and rank ``r`` takes every
    ``world_size``-th video from ``r``. ``start_iter`` skips the batches already consumed.

    Raises:
        ConfigError: the videos cannot fill one batch (``SOLVER.IMS_PER_BATCH`` too large).
    """

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start_iter: int = 0,
    ) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle = shuffle
        self.start_iter = start_iter
        self.iters_per_epoch = len(self.indices) // (world_size * batch_size)
        require(
            self.iters_per_epoch > 0,
            "SOLVER.IMS_PER_BATCH",
            f"{len(self.indices)} usable videos cannot fill one batch of {batch_size} on each "
            f"of {world_size} processes; lower SOLVER.IMS_PER_BATCH or use more data",
        )

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's video indices for ``epoch``, in order: ``[iters_per_epoch * batch_size]``."""
        order = self.indices
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, epoch]).permutation(len(order))]
        used = self.iters_per_epoch * self.batch_size * self.world_size
        return order[:used][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        iteration = self.start_iter
        epoch, order = -1, self.indices
        while True:
            batch_epoch, step = divmod(iteration, self.iters_per_epoch)
            if batch_epoch != epoch:
                epoch, order = batch_epoch, self.epoch_order(batch_epoch)
            first = step * self.batch_size
            yield [
                (int(order[first + k]), epoch, self.rank + (first + k) * self.world_size)
                for k in range(self.batch_size)
            ]
            iteration += 1

    def __len__(self) -> int:
        return self.iters_per_epoch


class WindowClips(Dataset):
    """Training samples: ``num_windows`` random windows of a video with the requested views.

    A sample is a dict:

    - ``global``: ``[W, 3, T, S, S]`` uint8, ``global_box``: ``[W, 4]`` (W = ``num_windows``);
    - ``local`` (if asked): ``[W, 2, 3, T, S, S]`` uint8, the two halves of each window;
    - ``label``, ``index``: the video's label and dataset index;
    - ``bad_videos``: ``[(path, reason), ...]`` skipped while producing this sample.

    After ``max_replacements`` videos in a row that cannot be decoded, the sample is only
    ``{"bad_videos": [...]}``: the loader counts them and stops the run with
    :class:`~fima.data.bad_videos.TooManyBadVideosError` (raising in a data-loader worker
    would end the run with the worker's traceback and leave them out of ``bad_videos.txt``).
    """

    max_replacements = 10

    def __init__(
        self,
        dataset: VideoDataset,
        infos: list[VideoInfo | None],
        cfg: CfgNode,
        views: Sequence[str],
        num_windows: int,
        seed: int,
    ) -> None:
        self.dataset, self.infos = dataset, infos
        self.views = tuple(views)
        self.num_windows = num_windows
        self.seed = seed
        self.cfg = cfg
        self.num_frames = cfg.INPUT.NUM_FRAMES
        self.sampling_rate = cfg.INPUT.SAMPLING_RATE
        self.window = self.num_frames * self.sampling_rate
        self.retries = cfg.DATA.DECODE_RETRIES
        self.short_side = cfg.INPUT.TRAIN_SHORT_SIDE
        self.threads = decode_threads(cfg)
        self.valid = np.array([i for i, info in enumerate(infos) if info is not None])
        self.positions = {v: view_positions(v, self.num_frames, self.sampling_rate) for v in views}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        index, epoch, position = key
        rng = np.random.default_rng([self.seed, epoch, position])
        bad: list[tuple[str, str]] = []
        for replacement in range(self.max_replacements):
            if replacement:
                index = int(self.valid[rng.integers(len(self.valid))])
            path = self.dataset[index].path
            reason = ""
            for _ in range(1 + self.retries):
                try:
                    sample = self._load(index, rng)
                except DecodeError as err:
                    reason = str(err)
                    continue
                sample["bad_videos"] = bad
                return sample
            bad.append((path, reason))
        return {"bad_videos": bad}

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record, info = self.dataset[index], self.infos[index]
        assert info is not None
        windows = [
            window_indices(
                random_window_start(info.num_frames, self.window, rng),
                self.window,
                info.num_frames,
            )
            for _ in range(self.num_windows)
        ]
        # Decode only the frames that the requested views use (MoCo's global views need every
        # SAMPLING_RATE-th frame; FIMA's local views need them all).
        wanted = {
            (view, w, c): windows[w][positions]
            for view, clips in self.positions.items()
            for w in range(self.num_windows)
            for c, positions in enumerate(clips)
        }
        needed = np.unique(np.concatenate(list(wanted.values())))
        frames = decode_frames(
            record.path, needed.tolist(), threads=self.threads, short_side=self.short_side
        )
        sample: dict[str, Any] = {
            "label": torch.tensor(record.label),
            "index": torch.tensor(index),
        }
        for view, clips in self.positions.items():
            crops, boxes = [], []
            for w in range(self.num_windows):
                for c in range(len(clips)):
                    rows = np.searchsorted(needed, wanted[view, w, c])
                    crop, box = random_crop_flip(_take(frames, rows), self.cfg, rng)
                    crops.append(crop)
                    boxes.append(box)
            shape = (self.num_windows, len(clips)) if view == "local" else (self.num_windows,)
            sample[view] = torch.stack(crops).view(*shape, *crops[0].shape)
            sample[f"{view}_box"] = torch.stack(boxes).view(*shape, 4)
        return sample


def _take(frames: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """``frames[rows]``, as a view when the rows are evenly spaced (the usual case: a view's
    frames are every k-th decoded frame), which saves copying whole frames before the crop."""
    step = int(rows[1] - rows[0]) if len(rows) > 1 else 1
    if step > 0 and np.array_equal(rows, rows[0] + step * np.arange(len(rows))):
        return frames[int(rows[0]) : int(rows[-1]) + 1 : step]
    return frames[torch.from_numpy(rows)]


class TestClips(Dataset):
    """Test samples: ``TEST.NUM_CLIPS`` uniformly spaced clips of a video, each as
    ``TEST.NUM_SPATIAL_CROPS`` crops.

    Frames are decoded with their short side at most ``INPUT.TEST_SHORT_SIDE``, then
    :func:`~fima.data.transforms.spatial_crops` takes squares of ``TEST_CROP_FRACTION`` of the short
    side (the centre one, or also both ends of the long side).

    ``global`` is ``[K, 3, T, S, S]`` uint8, ``K = NUM_CLIPS * NUM_SPATIAL_CROPS`` views, clip by
    clip (a clip's crops are adjacent); ``valid`` is False (and ``global`` zeros) for a video
    that could not be decoded, which evaluators list and leave out of their denominators;
    ``bad_videos`` then holds its ``(path, reason)``.

    Args:
        errors: ``{path: reason}`` of the videos whose header was unusable (``infos[i]`` None).
    """

    def __init__(
        self,
        dataset: VideoDataset,
        infos: list[VideoInfo | None],
        cfg: CfgNode,
        errors: dict[str, str] | None = None,
    ) -> None:
        self.dataset, self.infos, self.cfg = dataset, infos, cfg
        self.errors = errors or {}
        self.num_clips = cfg.TEST.NUM_CLIPS
        self.num_crops = cfg.TEST.NUM_SPATIAL_CROPS
        self.retries = cfg.DATA.DECODE_RETRIES
        self.threads = decode_threads(cfg)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, info = self.dataset[index], self.infos[index]
        sample: dict[str, Any] = {"label": torch.tensor(record.label), "index": torch.tensor(index)}
        reason = self.errors.get(record.path, "header unusable")
        for _ in range(1 + self.retries if info is not None else 0):
            try:
                sample["global"] = self._load(record.path, info)
                sample["valid"] = torch.tensor(True)
                sample["bad_videos"] = []
                return sample
            except DecodeError as err:
                reason = str(err)
        size = self.cfg.INPUT.CROP_SIZE
        views = self.num_clips * self.num_crops
        sample["global"] = torch.zeros(
            views, 3, self.cfg.INPUT.NUM_FRAMES, size, size, dtype=torch.uint8
        )
        sample["valid"] = torch.tensor(False)
        sample["bad_videos"] = [(record.path, reason)]
        return sample

    def _load(self, path: str, info: VideoInfo) -> torch.Tensor:
        return load_test_clips(
            path, info.num_frames, self.cfg, self.num_clips, self.threads, self.num_crops
        )


def load_test_clips(
    path: str,
    num_frames: int,
    cfg: CfgNode,
    num_clips: int,
    threads: int = 0,
    num_crops: int = 1,
) -> torch.Tensor:
    """The test views of a video: ``num_clips`` uniformly spaced windows, each subsampled to
    ``INPUT.NUM_FRAMES`` frames, decoded at ``INPUT.TEST_SHORT_SIDE`` and cropped
    (:func:`~fima.data.transforms.spatial_crops`: the centre, or both ends and the centre).

    Args:
        path: the video file.
        num_frames: its frame count (from the header, :func:`~fima.data.decoder.probe_video`).
        cfg: uses ``INPUT.NUM_FRAMES``, ``SAMPLING_RATE``, ``TEST_SHORT_SIDE``, the crop keys.
        num_clips: how many clips.
        threads: decoder threads (see :func:`~fima.data.decoder.decode_frames`).
        num_crops: crops per clip, 1 or 3.

    Returns:
        ``[num_clips * num_crops, 3, T, S, S]`` uint8, clip by clip.

    Raises:
        DecodeError: the video cannot be decoded.
    """
    window = cfg.INPUT.NUM_FRAMES * cfg.INPUT.SAMPLING_RATE
    positions = view_positions("global", cfg.INPUT.NUM_FRAMES, cfg.INPUT.SAMPLING_RATE)[0]
    starts = uniform_clip_starts(num_frames, window, num_clips)
    indices = np.concatenate([window_indices(s, window, num_frames)[positions] for s in starts])
    frames = decode_frames(
        path, indices.tolist(), threads=threads, short_side=cfg.INPUT.TEST_SHORT_SIDE
    )
    frames = frames.view(num_clips, len(positions), *frames.shape[1:])
    return torch.cat([spatial_crops(clip, cfg, num_crops) for clip in frames])


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal keys along a new batch dim; concatenate the ``bad_videos`` lists.

    If a sample could not be filled (only ``bad_videos``, see :class:`WindowClips`), the batch
    is ``{"bad_videos": [...], "unfilled": <number of such samples>}``.
    """
    unfilled = sum(s.keys() == {"bad_videos"} for s in samples)
    if unfilled:
        return {
            "bad_videos": [item for s in samples for item in s["bad_videos"]],
            "unfilled": unfilled,
        }
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "bad_videos":
            batch[key] = [item for v in values for item in v]
        else:
            batch[key] = torch.stack(values)
    return batch


# Batches between two checks of the bad-video budget while training (TrainLoader).
BAD_VIDEO_CHECK_PERIOD = 10


class TrainLoader:
    """An endless iterable of training batches that knows its position, for exact resume.

    Checkpointable: ``state_dict()`` holds the sampler seed and the number of batches handed
    out. Batches that workers prefetched but the trainer never took are not counted, so a
    resumed run re-creates exactly the batches that followed.
    """

    def __init__(
        self,
        dataset: WindowClips,
        batch_size: int,
        *,
        seed: int,
        num_workers: int,
        tracker: BadVideoTracker,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.tracker = tracker
        self.pin_memory = pin_memory
        self.position = 0
        self._fingerprint: str | None = None
        self._sampler = self._make_sampler()

    def _make_sampler(self) -> TrainingBatchSampler:
        return TrainingBatchSampler(
            self.dataset.valid,
            self.batch_size,
            seed=self.seed,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            start_iter=self.position,
        )

    @property
    def iters_per_epoch(self) -> int:
        return self._sampler.iters_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.seed = self.seed
        self._sampler = self._make_sampler()
        if self.num_workers == 0:
            retain_freed_memory()
        loader = DataLoader(
            self.dataset,
            batch_sampler=self._sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            # A generator of its own keeps the loader from drawing on the global torch RNG.
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=_worker_init,
        )
        for batch in loader:
            self.position += 1
            bad = batch.pop("bad_videos")
            unfilled = batch.pop("unfilled", 0)
            # Each replaced video was one more read.
            self.tracker.record(self.batch_size - unfilled + len(bad), bad)
            if unfilled:
                self.tracker.write()
                raise TooManyBadVideosError(
                    f"{self.dataset.max_replacements} videos in a row could not be decoded "
                    f"({self.tracker.bad_events} of {self.tracker.seen} videos read were bad); "
                    f"see {self.tracker.output_file or 'the log'}"
                )
            # The share of all ranks, a collective (every rank takes the same batches): not at
            # every batch, where it cost 0.3 ms a step with 2 local processes, more across
            # machines; a run past the budget takes at most that many batches more.
            if self.position % BAD_VIDEO_CHECK_PERIOD == 0:
                self.tracker.check(all_ranks=True)
            yield batch

    def restarted(self) -> TrainLoader:
        """A loader of the same batches from the start of the data order, with a position of its
        own (this one's is left as it is): extra passes, such as precise BatchNorm statistics,
        that must see the same batches whenever they run."""
        return TrainLoader(
            self.dataset,
            self.batch_size,
            seed=self.seed,
            num_workers=self.num_workers,
            tracker=self.tracker,
            pin_memory=self.pin_memory,
        )

    def _clips_per_batch(self) -> int:
        """Clips that one batch of every rank takes from the data order together."""
        return self.batch_size * comm.get_world_size()

    def data_fingerprint(self) -> str:
        """What the data order and the windows are drawn from: the usable training videos in
        the dataset's order, by their paths below its root and their lengths (a SHA-1; another
        ``DATA.ROOT`` holding the same tree has the same one). Computed once."""
        if self._fingerprint is None:
            records = self.dataset.dataset.records
            root = self.dataset.dataset.root
            digest = hashlib.sha1()
            for index in self.dataset.valid:
                path = records[index].path
                info = self.dataset.infos[index]
                digest.update(os.path.relpath(path, root).encode() if root else path.encode())
                digest.update(f"\0{info.num_frames if info else 0}\0".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def state_dict(self) -> dict[str, int | str]:
        """The seed, the batches handed out, the clips they took from the data order (all
        ranks), by which a resumed run with another batch per process finds its place, and the
        usable videos the order was drawn from (their number and :meth:`data_fingerprint`)."""
        return {
            "seed": self.seed,
            "position": self.position,
            "clips": self.position * self._clips_per_batch(),
            "videos": len(self.dataset.valid),
            "data": self.data_fingerprint(),
        }

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        """Continue after the clips that the saved loader handed out.

        The position is counted in clips, not batches: a run resumed with another
        ``SOLVER.ACCUM_STEPS`` (or number of processes, or ``IMS_PER_BATCH``) takes batches of
        another size and continues where the data order stopped instead of skipping or
        repeating part of an epoch. Training videos that differ from those the saved loader
        drew from (added, removed, renamed, become unreadable or of another length) are warned
        about: the run goes on, with batches that an uninterrupted run would not have taken.
        """
        saved = state.get("data")
        if saved is not None and saved != self.data_fingerprint():
            logger.warning(
                "The training data differ from those of the checkpoint's run (%d usable videos "
                "then, %d now%s): the batches from here on are not those an uninterrupted run "
                "would have taken, and where videos were added or removed, some of the current "
                "epoch's may be seen twice or not at all",
                int(state["videos"]),
                len(self.dataset.valid),
                ", other paths or lengths, or other videos unreadable"
                if int(state["videos"]) == len(self.dataset.valid)
                else "",
            )
        self.seed = int(state["seed"])
        if "clips" not in state:  # a checkpoint written before positions were counted in clips
            self.position = int(state["position"])
        else:
            self.position, rest = divmod(int(state["clips"]), self._clips_per_batch())
            if rest:
                logger.warning(
                    "The checkpoint's loader had handed out %d clips, not a whole number of "
                    "this run's batches of %d clips (all processes): %d clips of the data order "
                    "are skipped",
                    state["clips"],
                    self._clips_per_batch(),
                    self._clips_per_batch() - rest,
                )
                self.position += 1
        self._sampler = self._make_sampler()


class TestLoader(DataLoader):
    """The DataLoader of :func:`build_test_loader`, which also accounts for bad videos.

    Batches pass through unchanged (``bad_videos`` stays in them). Each pass counts the videos
    read and the bad ones; at its end the bad ones are merged into ``OUTPUT_DIR/bad_videos.txt``
    (by every rank that has some, without a collective) and ``DATA.MAX_BAD_FRACTION`` is checked.
    """

    def __init__(self, *args: Any, tracker: BadVideoTracker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracker = tracker

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        if self.num_workers == 0:
            retain_freed_memory()
        for batch in super().__iter__():
            self.tracker.record(len(batch["index"]), batch["bad_videos"])
            yield batch
        self.tracker.write()
        # A pass reads every video of the ranks' shares, and every rank makes each pass.
        self.tracker.check(complete=True, all_ranks=True)


def _worker_init(worker_id: int) -> None:
    retain_freed_memory()
    # Decoding and resizing in a worker should not fight the trainer for cores.
    torch.set_num_threads(1)
    # The DataLoader seeded this worker's torch RNG (its generator's seed + worker id); NumPy
    # and Python follow it, so that user code drawing from them differs between workers.
    seed = torch.initial_seed()
    np.random.seed(seed % 2**32)
    random.seed(seed)


def load_index(
    cfg: CfgNode, dataset: VideoDataset
) -> tuple[list[VideoInfo | None], dict[str, str]]:
    """The header index of ``dataset`` (cached; call on all ranks together).

    Returns:
        ``infos[i]`` of record ``i``, None for a bad video (unreadable header, or fewer frames
        than ``DATA.MIN_VIDEO_FRAMES``), and ``{path: reason}`` of the bad ones.

    Raises:
        TooManyBadVideosError: no video of the dataset is usable.
    """
    infos, bad = build_index(dataset, index_cache_file(dataset, cfg.OUTPUT_DIR))
    min_frames = cfg.DATA.MIN_VIDEO_FRAMES
    for i, info in enumerate(infos):
        if info is not None and info.num_frames < min_frames:
            bad[dataset[i].path] = (
                f"{info.num_frames} frame(s), fewer than DATA.MIN_VIDEO_FRAMES={min_frames}"
            )
            infos[i] = None
    if infos and all(info is None for info in infos):
        path, reason = next(iter(bad.items()))
        raise TooManyBadVideosError(f"No usable video in {dataset!r}; e.g. {path}: {reason}")
    return infos, bad


def _tracker(cfg: CfgNode) -> BadVideoTracker:
    return BadVideoTracker(
        cfg.DATA.MAX_BAD_FRACTION, os.path.join(cfg.OUTPUT_DIR, "bad_videos.txt")
    )


def _pin_memory(cfg: CfgNode) -> bool:
    """Page-locked batches copy to the GPU faster (and asynchronously); on CPU they only cost."""
    return runs_on_gpu(cfg)


def _batch_per_rank(cfg: CfgNode) -> int:
    """Clips per process per micro-batch: IMS_PER_BATCH / (world size x ACCUM_STEPS)."""
    total, accum, world = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUM_STEPS, comm.get_world_size()
    if total % (world * accum):
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total} must be divisible by the world size {world} times "
            f"SOLVER.ACCUM_STEPS={accum}"
        )
    return total // (world * accum)


def build_window_loader(
    cfg: CfgNode, views: Sequence[str], num_windows: int, split: str | None = None
) -> TrainLoader:
    """An endless training loader of ``num_windows`` windows per video with ``views``."""
    dataset = build_dataset(cfg, split or cfg.DATA.TRAIN_SPLIT)
    infos, bad = load_index(cfg, dataset)
    tracker = _tracker(cfg)
    tracker.record(len(dataset), bad.items())
    tracker.write()
    tracker.check(complete=True)
    logger.info("Training on %r (%d usable)", dataset, sum(i is not None for i in infos))
    seed = shared_seed(cfg.SEED)
    clips = WindowClips(dataset, infos, cfg, views, num_windows, seed=seed)
    return TrainLoader(
        clips,
        _batch_per_rank(cfg),
        seed=seed,
        num_workers=cfg.DATA.NUM_WORKERS,
        tracker=tracker,
        pin_memory=_pin_memory(cfg),
    )


def build_pretrain_loader(cfg: CfgNode, views: Sequence[str] | None = None) -> TrainLoader:
    """Two random windows per video per epoch with the views the SSL method asks for.

    Args:
        cfg: the finished config.
        views: the views to produce (``"global"``, ``"local"``); by default those that
            ``cfg.MODEL.META_ARCHITECTURE`` declares in its ``input_views(cfg)``.
    """
    if views is None:
        from fima.modeling.ssl.build import SSL_METHOD_REGISTRY  # data does not import modeling

        views = SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE).input_views(cfg)
    return build_window_loader(cfg, views, num_windows=2)


def build_train_loader(cfg: CfgNode) -> TrainLoader:
    """One random window per video per epoch (supervised fine-tuning / linear probing)."""
    return build_window_loader(cfg, ("global",), num_windows=1)


def build_test_loader(cfg: CfgNode, split: str | None = None) -> TestLoader:
    """Every video of ``split`` once, as ``TEST.NUM_CLIPS`` clips of ``TEST.NUM_SPATIAL_CROPS``
    crops each, in order.

    Call it on all ranks together. Under DDP each rank gets an interleaved share and every video
    goes to exactly one rank (no padding, so no duplicates); evaluators gather by ``index``.
    Batches: ``global`` ``[B, K, 3, T, S, S]`` uint8, ``label``, ``index``, ``valid`` and the
    list ``bad_videos`` (see :class:`TestClips`).
    """
    dataset = build_dataset(cfg, split or cfg.DATA.TEST_SPLIT)
    infos, bad = load_index(cfg, dataset)
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = list(range(rank, len(dataset), world))
    workers = cfg.DATA.NUM_WORKERS
    return TestLoader(
        torch.utils.data.Subset(TestClips(dataset, infos, cfg, bad), shard),
        batch_size=max(cfg.TEST.IMS_PER_BATCH // world, 1),
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=_worker_init,
        pin_memory=_pin_memory(cfg),
        persistent_workers=workers > 0 and cfg.DATA.PERSISTENT_WORKERS,
        tracker=_tracker(cfg),
    )
