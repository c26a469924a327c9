"""PyAV decoding of just the frames a clip needs.

Frame ``i`` of a video is the frame whose presentation time is ``i / fps`` after the stream start;
indices come from the stream's time base, never from decoding everything. To read a set of frames
the decoder seeks to the keyframe before the first one and decodes until the last one; far-apart
groups of frames (the two pretraining windows) get a seek each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """A video that cannot be read; ``str(err)`` is the reason recorded in ``bad_videos.txt``."""


@dataclass(frozen=True)
class VideoInfo:
    """What a container header says about its first video stream."""

    num_frames: int
    fps: float
    width: int
    height: int


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise DecodeError("the video stream has no frame rate")
    return Fraction(rate)


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path, metadata_errors="ignore")
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise DecodeError(f"cannot open: {err}") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream")
    return container


def probe_video(path: str) -> VideoInfo:
    """Read frame count, frame rate and size from the container header, decoding nothing.

    The count is the stream's frame count where the container records it, else its duration
    times its frame rate.

    Raises:
        DecodeError: the file is missing, unreadable, has no video stream or no usable length.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        num_frames = int(stream.frames or 0)
        if num_frames <= 0:
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                seconds = 0.0
            num_frames = int(round(seconds * float(fps)))
        if num_frames <= 0:
            raise DecodeError("the header gives no frame count or duration")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise DecodeError("the header gives no frame size")
        return VideoInfo(num_frames=num_frames, fps=float(fps), width=width, height=height)


def _spans(indices: Sequence[int], max_gap: int) -> list[list[int]]:
    """Group sorted indices into runs whose neighbours are at most ``max_gap`` apart."""
    spans: list[list[int]] = []
    for index in indices:
        if spans and index - spans[-1][-1] <= max_gap:
            spans[-1].append(index)
        else:
            spans.append([index])
    return spans


def decode_frames(
    path: str, indices: Sequence[int], *, threads: int = 0, seek_gap_seconds: float = 1.0
) -> torch.Tensor:
    """Decode the frames at ``indices`` (any order, repeats allowed).

    Args:
        path: the video file.
        indices: 0-based frame indices. An index past the last decodable frame takes the last
            frame (a video shorter than its header says is clamped, not dropped).
        threads: decoder threads (0: FFmpeg's choice). Threading is frame and slice based.
        seek_gap_seconds: needed frames further apart than this are reached by a new seek;
            closer ones are decoded through, which is cheaper than a seek to a keyframe.

    Returns:
        ``[len(indices), H, W, 3]`` uint8 RGB frames.

    Raises:
        DecodeError: nothing could be decoded.
    """
    if len(indices) == 0:
        raise ValueError("decode_frames needs at least one frame index")
    wanted = sorted({max(int(i), 0) for i in indices})
    frames: dict[int, np.ndarray] = {}
    tail: tuple[int, av.VideoFrame] | None = None  # the furthest frame decoded, for clamping
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        clock = _FrameClock(stream)
        max_gap = max(int(seek_gap_seconds * clock.fps), 1)
        try:
            for span in _spans(wanted, max_gap):
                reached = _decode_span(container, stream, clock, span, frames)
                if reached is not None and (tail is None or reached[0] > tail[0]):
                    tail = reached
        except (av.FFmpegError, OSError) as err:
            if not frames and tail is None:
                raise DecodeError(f"decoding failed: {err}") from None
            logger.debug("%s: decoding stopped early (%s); clamping to decoded frames", path, err)
        if tail is not None and tail[0] not in frames:
            frames[tail[0]] = tail[1].reformat(format="rgb24").to_ndarray()
    if not frames:
        raise DecodeError("no frame could be decoded")
    return torch.from_numpy(np.stack([_nearest(frames, max(int(i), 0)) for i in indices]))


class _FrameClock:
    """Maps a frame's timestamp to its 0-based index through the stream's time base."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.fps = _stream_fps(stream)
        self.time_base = stream.time_base
        self.start_pts = stream.start_time or 0
        self._frames_per_tick = float(self.time_base * self.fps)

    def index(self, frame: av.VideoFrame) -> int | None:
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            return None
        return int(round((pts - self.start_pts) * self._frames_per_tick))

    def pts(self, index: int) -> int:
        return self.start_pts + int(math.floor(index / self.fps / self.time_base))


def _decode_span(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    clock: _FrameClock,
    span: list[int],
    frames: dict[int, np.ndarray],
) -> tuple[int, av.VideoFrame] | None:
    """Seek to the keyframe before ``span[0]`` and decode through ``span[-1]`` into ``frames``.

    Returns:
        The last frame decoded (its index and the frame), or None if nothing was decoded.
    """
    needed, first, last = set(span), span[0], span[-1]
    last_frame: tuple[int, av.VideoFrame] | None = None
    # Seeking to the frame's own timestamp with backward=True lands on the keyframe before it;
    # a container with a sparse index can overshoot, and then the second pass starts over.
    for seek_pts in (clock.pts(first), clock.start_pts):
        container.seek(seek_pts, stream=stream, backward=True)
        last_frame = None
        for frame in container.decode(stream):
            index = clock.index(frame)
            if index is None:
                continue
            if last_frame is None and index > first and seek_pts > clock.start_pts:
                break
            if index in needed:
                frames[index] = frame.reformat(format="rgb24").to_ndarray()
            last_frame = (index, frame)
            if index >= last:
                return last_frame
        else:
            return last_frame  # the stream ended before ``last``: a short video
    return last_frame


def _nearest(frames: dict[int, np.ndarray], index: int) -> np.ndarray:
    """The frame at ``index``, else the closest earlier decoded one, else the first decoded one."""
    if index in frames:
        return frames[index]
    earlier = [i for i in frames if i <= index]
    return frames[max(earlier)] if earlier else frames[min(frames)]
