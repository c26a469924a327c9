"""PyAV decoding of just the frames a clip needs.

Frame ``i`` of a video is the frame whose presentation time is ``i / fps`` after the stream start;
indices come from the stream's time base, never from decoding everything. AVI stores decoding
times only: there a frame is shown the stream's reorder delay after the decoding time of the
packet that made the decoder give it out.

To read a set of frames the decoder plans *passes*: a pass seeks to the keyframe before its first
frame and decodes through its last one, converting only the frames asked for. Where the container
has a keyframe index (MP4, AVI, MKV with cues), a later frame starts a new pass only if a keyframe
lies between it and the previous frame, since decoding on is otherwise cheaper than seeking back
to the same keyframe; without an index, frames more than ``seek_gap_seconds`` apart get a pass
each. The conversion to RGB can downscale in the same swscale call (``short_side``), which costs
no more than the conversion alone and makes every later step (crops, resizes) cheaper.

Short videos: an index past the last frame that can be decoded takes that last frame (clamping,
as the samplers do with the header's frame count). A stream that ends more than a second before
the frame count its header promises is truncated, and decoding it raises :class:`DecodeError`.
An index that no frame's timestamp maps to (a gap in a variable frame rate) takes the frame
before the gap.

A *folder of frames* (one image per frame, as ``ffmpeg -i v.mp4 dir/%05d.jpg`` or mmaction2's
``rawframes`` extract them) is a video too: frame ``i`` is its ``i``-th image in name order,
numbers compared as numbers (``img_2.jpg`` before ``img_10.jpg``). See :func:`frame_files`.
So is an animated GIF's frame ``i`` its ``i``-th image, whatever the images' delays.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps

from fima.data.transforms import short_side_size

logger = logging.getLogger(__name__)

# A header may overstate the length a little (rounded durations); more than this is truncation.
_TRUNCATION_TOLERANCE_SECONDS = 1.0
_local = threading.local()


class DecodeError(RuntimeError):
    """A video that cannot be read; ``str(err)`` is the reason recorded in ``bad_videos.txt``."""


@dataclass(frozen=True)
class VideoInfo:
    """What a container header says about its first video stream.

    ``width`` and ``height`` are the stored frame size. A video with a display rotation (a
    phone's portrait video, stored landscape) has them swapped relative to the upright frames
    that :func:`decode_frames` returns: the rotation is side data that PyAV only exposes on
    decoded frames, and probing decodes nothing.
    """

    num_frames: int
    fps: float
    width: int
    height: int


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise DecodeError("the video stream has no frame rate")
    return Fraction(rate)


def _reason(err: Exception) -> str:
    """FFmpeg's or the OS's words for ``err``, without its errno (FFmpeg's are tags such as
    1094995529) or the path, which the caller records beside the reason."""
    return getattr(err, "strerror", None) or str(err)


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path, metadata_errors="ignore")
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise DecodeError(f"cannot open: {_reason(err)}") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream")
    return container


def _frame_count(container: av.container.InputContainer, fps: Fraction) -> int:
    """The video stream's frame count, read from the header where it gives the stream's own
    length (the fewer of its frame count and its duration times its frame rate), else from the
    timestamp of its last packet (0 if it has none).

    Matroska/WebM and FLV headers record only the whole file's duration: that of its longest
    stream (audio that runs on after the video) and, in Matroska, counted from time 0 rather
    than from where the video starts. Counting from it promised frames that are not there (the
    last frame repeated, or an intact video taken for a truncated one). The video track's own
    statistics tags, which ffmpeg and mkvmerge write, give its length; the file's duration is
    used only where the video is its one stream and starts at 0.
    """
    stream = container.streams.video[0]
    num_frames = int(stream.frames or 0)
    if stream.duration is not None and stream.time_base is not None:
        shown = int(round(float(stream.duration * stream.time_base) * float(fps)))
        # An MP4 cut without re-encoding keeps the frames from the keyframe before the cut,
        # which its edit list hides: they count as samples, not in the duration.
        num_frames = min(num_frames, shown) if num_frames > 0 and shown > 0 else num_frames or shown
    if num_frames > 0:
        return num_frames
    num_frames = _tagged_frames(stream, fps)
    if num_frames > 0:
        return num_frames
    if container.duration is not None and len(container.streams) == 1 and not stream.start_time:
        return int(round(container.duration / av.time_base * float(fps)))
    return _demuxed_frames(container)


def _tagged_frames(stream: av.video.stream.VideoStream, fps: Fraction) -> int:
    """The frame count from a Matroska track's statistics tags (0 if it has none).

    mkvmerge writes ``NUMBER_OF_FRAMES``; ffmpeg writes only ``DURATION`` (``HH:MM:SS.nnn``),
    which is the time the track ends. Tags in a language get it as a suffix (``-eng``).
    """
    tags = {key.split("-")[0].upper(): value for key, value in stream.metadata.items()}
    try:
        if "NUMBER_OF_FRAMES" in tags:
            return int(tags["NUMBER_OF_FRAMES"])
        if "DURATION" in tags:
            hours, minutes, seconds = tags["DURATION"].split(":")
            end = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            start = float((stream.start_time or 0) * stream.time_base)
            return max(int(round((end - start) * float(fps))), 0)
    except ValueError:
        pass  # not numbers: not the tags we know
    return 0


def _demuxed_frames(container: av.container.InputContainer) -> int:
    """The frame count from the video packets' timestamps, read without decoding anything.

    Demuxes from the last keyframe before the header's end of the file, which an indexed file
    (Matroska cues) seeks to directly; from the start where there is no end to seek to (WebM
    written live, as browsers' MediaRecorder and streaming software do) or nothing comes after
    it. A read error ends the count where it happened.
    """
    stream = container.streams.video[0]
    clock = _FrameClock(stream)
    last: int | None = None
    has_end = container.duration is not None and container.duration > 0
    for from_end in (True, False) if has_end else (False,):
        try:
            if from_end:
                end = container.duration / av.time_base
                container.seek(clock.start_pts + clock.ticks(end), stream=stream, backward=True)
            elif has_end:
                container.seek(0)  # back from the end, where nothing came
            for packet in container.demux(stream):
                timestamp = packet.pts if packet.pts is not None else packet.dts
                if timestamp is not None and (last is None or timestamp > last):
                    last = timestamp
        except (av.FFmpegError, OSError):
            pass
        if last is not None:
            break
    return 0 if last is None else clock.index_of(last) + 1


def probe_video(path: str) -> VideoInfo:
    """Read frame count, frame rate and size from the container header, decoding nothing.

    The count is the fewer of the stream's frame count and its duration times its frame rate
    (frames an MP4's edit list hides are counted, not shown), where the container records them;
    else (Matroska/WebM, FLV) the video track's statistics tags, or the index after the last
    video packet's timestamp, read by demuxing from the last keyframe (still decoding nothing).

    A folder of frames gives its number of frames, the size of its first, and ``fps`` 0; an
    animated GIF its number of images (counted from its packets).

    Raises:
        DecodeError: the file is missing, unreadable, has no video stream or no usable length.
    """
    if is_frame_folder(path):
        return _probe_frame_folder(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        if _in_image_order(container):
            _check_gif_trailer(path)
            fps = Fraction(stream.average_rate or 0)
            num_frames = sum(1 for packet in container.demux(stream) if packet.size)
        else:
            fps = _stream_fps(stream)
            num_frames = _frame_count(container, fps)
        if num_frames <= 0:
            raise DecodeError("neither the header nor the packets give a frame count")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise DecodeError("the header gives no frame size")
        return VideoInfo(num_frames=num_frames, fps=float(fps), width=width, height=height)


def _in_image_order(container: av.container.InputContainer) -> bool:
    """Whether frame ``i`` is the container's ``i``-th image, whatever its timestamps: an
    animated GIF, whose per-image delays are a slide show's (a GIF of a clip saved with uneven
    or zero delays would otherwise lose and repeat images)."""
    return container.format.name == "gif"


# The byte that ends every GIF file (GIF89a, "Trailer").
_GIF_TRAILER = b"\x3b"


def _check_gif_trailer(path: str) -> None:
    """A GIF cut short reads as a good, shorter one (FFmpeg decodes what is there, its last
    image part drawn, and reports nothing): refuse one that does not end in its trailer.

    Raises:
        DecodeError: the file does not end in the GIF trailer.
    """
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
    except OSError as err:
        raise DecodeError(f"cannot open: {_reason(err)}") from None
    if last != _GIF_TRAILER:
        raise DecodeError("truncated: the GIF does not end in its trailer (0x3B)")


def _decode_in_image_order(
    container: av.container.InputContainer, indices: Sequence[int], convert: _Converter
) -> torch.Tensor:
    """:func:`decode_frames` of a container read in image order (:func:`_in_image_order`),
    decoded from its start (a GIF has no keyframe index, and an image may draw on the one
    before it) through the last wanted one; an index past the last image takes that image.

    Raises:
        DecodeError: no image could be decoded.
    """
    wanted = {max(int(i), 0) for i in indices}
    frames: dict[int, np.ndarray] = {}
    last: tuple[int, av.VideoFrame] | None = None
    try:
        for number, frame in enumerate(container.decode(container.streams.video[0])):
            if number in wanted:
                frames[number] = convert(frame)
            last = number, frame
            if number >= max(wanted):
                break
    except (av.FFmpegError, OSError) as err:
        if last is None:
            raise DecodeError(f"decoding failed: {_reason(err)}") from None
    if last is None:
        raise DecodeError("no frame could be decoded")
    if last[0] not in frames:
        frames[last[0]] = convert(last[1])
    return torch.from_numpy(np.stack([_nearest(frames, max(int(i), 0)) for i in indices]))


# The images that make a folder a video of frames (compared in lower case).
FRAME_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
_DIGITS = re.compile(r"(\d+)")
# The EXIF orientation tag, and its values that show the stored image turned a quarter.
_EXIF_ORIENTATION = 0x0112
_QUARTER_TURN_ORIENTATIONS = (5, 6, 7, 8)
# What Pillow raises for a file that is no image it can read (truncated, corrupt, too large).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _name_template(name: str) -> str:
    """A frame's name with its numbers as ``#`` (``img_00012.jpg`` -> ``img_#.jpg``)."""
    return _DIGITS.sub("#", name.lower())


def _natural_key(name: str) -> list[str | int]:
    # re.split with a group alternates text and digits from text on, so keys compare in step.
    # In lower case: IMG_00004.jpg and img_00004.jpg are one frame number twice.
    return [int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name.lower()))]


def is_frame_name(name: str) -> bool:
    """Whether a file of this name can be a frame of a folder of frames: an image
    (:data:`FRAME_EXTENSIONS`), not hidden, not optical flow (``flow_x_00001.jpg``)."""
    lower = name.lower()
    return (
        not name.startswith(".")
        and lower.endswith(FRAME_EXTENSIONS)
        and not lower.startswith("flow")
    )


def frame_files(folder: str) -> list[str]:
    """The frames of a folder of frames, in order: its images (:data:`FRAME_EXTENSIONS`, not
    hidden) sorted by name with numbers compared as numbers.

    The frames are the images of one name pattern. Optical-flow images beside them (names
    starting with ``flow``, as mmaction2 and TSN extract ``flow_x_00001.jpg`` next to
    ``img_00001.jpg``) are not frames.

    Args:
        folder: the folder of frames.

    Returns:
        The frames' paths.

    Raises:
        DecodeError: the folder cannot be listed, holds no image, or holds images of several
            name patterns (other than optical flow).
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as err:
        raise DecodeError(f"cannot list the folder of frames: {_reason(err)}") from None
    images = [name for name in names if is_frame_name(name)]
    if not images:
        raise DecodeError(
            f"a folder without frame images ({', '.join(FRAME_EXTENSIONS)}) is not a video"
        )
    templates = sorted({_name_template(name) for name in images})
    if len(templates) > 1:
        raise DecodeError(
            f"the folder holds images of {len(templates)} name patterns ({', '.join(templates)}, "
            "# for a number): keep one video's frames, of one pattern, per folder"
        )
    keyed = sorted((_natural_key(name), name) for name in images)
    for (previous_key, previous), (key, name) in zip(keyed, keyed[1:]):
        if previous_key == key:
            raise DecodeError(
                f"two frames have one number ({previous}, {name}): their order is unknown"
            )
    return [os.path.join(folder, name) for _, name in keyed]


def is_frame_folder(path: str) -> bool:
    """Whether ``path`` names a folder (a video of frames) rather than a video file."""
    return os.path.isdir(path)


def _read_image(path: str, short_side: int = 0) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of one frame image, upright as its EXIF orientation says (as a
    viewer shows it, and as :func:`decode_frames` turns rotated videos).

    Args:
        path: the image.
        short_side: a JPEG larger than this short side is decoded at the smallest of its DCT
            scales (1/2, 1/4, 1/8) that keeps the short side at least this long (Pillow's
            ``draft``; a 1280x720 frame for a 256 short side: 3.7 against 7.7 ms); the caller
            scales the rest of the way. 0: full size.

    Raises:
        DecodeError: the image cannot be read (corrupt, truncated, not an image).
    """
    with _open_image(path) as image:
        if short_side and image.format == "JPEG":
            height, width = short_side_size(image.height, image.width, short_side)
            if (height, width) != (image.height, image.width):
                image.draft("RGB", (width, height))
        upright = ImageOps.exif_transpose(image)
        if upright.mode.startswith("I") or upright.mode == "F":
            return _high_depth_to_rgb(upright, path)
        return np.asarray(upright.convert("RGB"))


@contextlib.contextmanager
def _open_image(path: str) -> Iterator[Image.Image]:
    """Pillow's ``Image.open``, whose errors, there or in the ``with`` body that reads the
    image, become a :class:`DecodeError` naming the image."""
    try:
        with Image.open(path) as image:
            yield image
    except _IMAGE_ERRORS as err:
        raise DecodeError(f"{os.path.basename(path)}: cannot read the image: {err}") from None


def _high_depth_to_rgb(image: Image.Image, path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 of a 16-bit grayscale image (Pillow's modes ``I;16*``, and ``I`` as
    older Pillows open 16-bit PNGs): the top 8 bits of each value. Pillow's own conversion
    clips such values to 255, a white frame.

    Raises:
        DecodeError: floating-point values, or integers outside 16 bits, which have no one
            8-bit reading.
    """
    values = np.asarray(image)
    if image.mode == "F" or values.min() < 0 or values.max() > 65535:
        raise DecodeError(
            f"{os.path.basename(path)}: values of Pillow's mode {image.mode} that are not 16-bit "
            "grayscale; save frames as 8- or 16-bit images"
        )
    gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _probe_frame_folder(folder: str) -> VideoInfo:
    """A folder of frames' count and size (of its first image, upright); it has no frame rate,
    so ``fps`` is 0 (fima samples frames by index)."""
    files = frame_files(folder)
    with _open_image(files[0]) as image:  # reads the header, decodes nothing
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in _QUARTER_TURN_ORIENTATIONS:
            width, height = height, width
    return VideoInfo(num_frames=len(files), fps=0.0, width=width, height=height)


def _decode_frame_folder(folder: str, indices: Sequence[int], short_side: int) -> torch.Tensor:
    """:func:`decode_frames` of a folder of frames: each wanted image read once, an index past
    the last frame clamped to it.

    Raises:
        DecodeError: an image cannot be read, or is of another size than the first one read.
    """
    files = frame_files(folder)
    last = len(files) - 1
    convert = _Converter(short_side)
    frames: dict[int, np.ndarray] = {}
    first: tuple[str, tuple[int, int]] | None = None  # the first frame read: name, (H, W)
    for index in sorted({min(max(int(i), 0), last) for i in indices}):
        rgb = _read_image(files[index], short_side)
        name = os.path.basename(files[index])
        if first is None:
            first = name, rgb.shape[:2]
        elif rgb.shape[:2] != first[1]:
            raise DecodeError(
                f"frames of different sizes: {first[0]} is {first[1][1]}x{first[1][0]}, {name} "
                f"{rgb.shape[1]}x{rgb.shape[0]}"
            )
        frames[index] = convert(av.VideoFrame.from_ndarray(rgb, format="rgb24"))
    return torch.from_numpy(np.stack([frames[min(max(int(i), 0), last)] for i in indices]))


class _FrameClock:
    """Maps timestamps of the stream's time base to 0-based frame indices and back.

    Args:
        decoding_times: the container stores decoding times only (AVI). Its presentation times
            are the parser's guesses, which with B-frames are off by the reorder delay (MPEG-4
            Part 2: frame ``k`` has the time of ``k + 1``) or, for H.264, not even in order. A
            decoded frame's decoding time is that of the packet that made the decoder output
            it, which runs the stream's reorder delay (in frames, from the header) behind its
            presentation; the frames the decoder gives out when flushed, which have no
            decoding time, follow the one before.
    """

    def __init__(self, stream: av.video.stream.VideoStream, decoding_times: bool = False) -> None:
        self.fps = _stream_fps(stream)
        self.time_base = stream.time_base
        self.start_pts = stream.start_time or 0
        self.decoding_times = decoding_times
        self._frames_per_tick = float(self.time_base * self.fps)
        if decoding_times:
            self.start_pts += round(stream.codec_context.reorder_depth / self._frames_per_tick)

    @classmethod
    def of(cls, container: av.container.InputContainer) -> _FrameClock:
        """The clock of the container's first video stream."""
        return cls(container.streams.video[0], decoding_times=container.format.name == "avi")

    def index_of(self, timestamp: int) -> int:
        return int(round((timestamp - self.start_pts) * self._frames_per_tick))

    def index(self, frame: av.VideoFrame) -> int | None:
        if self.decoding_times:
            pts = frame.dts
        else:
            pts = frame.pts if frame.pts is not None else frame.dts
        return None if pts is None else self.index_of(pts)

    def pts(self, index: int) -> int:
        return self.start_pts + int(math.floor(index / self.fps / self.time_base))

    def ticks(self, seconds: float) -> int:
        return int(math.ceil(seconds / self.time_base))


class _KeyframeIndex:
    """The container's index of the stream: which keyframe precedes a frame, and its timestamp.

    Only used when the index reaches the last frame wanted, so that every keyframe before it is
    listed (MP4 and AVI index every frame; a growing index, as MPEG-TS builds while reading, or
    sparse cues are not trusted).
    """

    def __init__(self, stream: av.video.stream.VideoStream, clock: _FrameClock) -> None:
        self.entries = stream.index_entries
        self.clock = clock
        # Index timestamps are decoding times, which run ahead of presentation times by the
        # B-frame delay (MP4 from x264: the first frame is decoded at -2 frames).
        first = self.entries[0].timestamp if len(self.entries) else clock.start_pts
        self.delay = max(clock.start_pts - first, 0)

    def covers(self, index: int) -> bool:
        if not len(self.entries):
            return False
        return self.clock.index_of(self.entries[-1].timestamp + self.delay) >= index

    def frame_before(self, index: int) -> int:
        """The frame index of the last keyframe at or before ``index`` (0 if none is listed)."""
        keyframe = self.keyframe_before(index)
        return keyframe[0] if keyframe else 0

    def keyframe_before(self, index: int) -> tuple[int, int] | None:
        """``(frame index, index timestamp)`` of the last keyframe at or before ``index``.

        It only decides where a pass starts; which frame is which comes from decoded timestamps.
        """
        position = bisect.bisect_right(
            self.entries, self.clock.pts(index) - self.delay, key=lambda entry: entry.timestamp
        )
        for i in range(position - 1, -1, -1):
            entry = self.entries[i]
            if entry.is_keyframe:
                return max(self.clock.index_of(entry.timestamp + self.delay), 0), entry.timestamp
        return None


def plan_passes(
    wanted: Sequence[int], keyframe_before: Callable[[int], int] | None, max_gap: int
) -> list[list[int]]:
    """Split sorted frame indices into decoding passes (each is one seek, then decode on).

    Args:
        wanted: sorted, distinct frame indices.
        keyframe_before: the index of the keyframe at or before a frame; None if unknown. Only
            asked about frames that follow a gap longer than ``max_gap``.
        max_gap: a later frame closer than this to the previous one never gets a new pass.

    Returns:
        The passes, each a list of consecutive entries of ``wanted``.
    """
    passes: list[list[int]] = []
    for index in wanted:
        if passes:
            previous = passes[-1][-1]
            # A new pass only pays off if it starts after the frame where the last one stopped.
            if index - previous <= max_gap or (
                keyframe_before is not None and keyframe_before(index) <= previous
            ):
                passes[-1].append(index)
                continue
        passes.append([index])
    return passes


def _reformatter() -> VideoReformatter:
    """One reformatter per thread: it keeps its swscale context between frames of equal size,
    which makes converting a frame ~10x cheaper than ``frame.to_ndarray(format="rgb24")``.

    The context is single-threaded (see :class:`_Converter`), so a data-loader worker forked
    from this process can inherit and free it safely.
    """
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter


class _Converter:
    """RGB conversion, downscaled to ``short_side`` when the frame's short side is larger, and
    turned upright as the stream's display matrix says (a phone's portrait video is stored
    landscape with a 90-degree rotation, which players apply and so must training).

    Always one thread: a threaded swscale context owns a thread pool, which a forked worker
    inherits without its threads and then waits on forever; and converting the few frames a
    clip needs is a small share of decoding them.
    """

    def __init__(self, short_side: int) -> None:
        self.short_side = short_side
        self.size: tuple[int, int] | None = None  # (height, width), fixed by the first frame
        self.quarter_turns = 0  # counterclockwise, fixed by the first frame

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            self.size = short_side_size(frame.height, frame.width, self.short_side)
            # Only quarter turns occur in practice (what cameras and ffmpeg write).
            self.quarter_turns = round(frame.rotation / 90) % 4
        height, width = self.size
        # Area averaging: an antialiased downscale, and cheaper than swscale's default bilinear
        # (measured ~1.5x at 1080p to 256; with it, a 1080p clip costs less than converting at
        # full size and cropping from that, and holds 17x less memory).
        scaling = "AREA" if (height, width) != (frame.height, frame.width) else None
        rgb = (
            _reformatter()
            .reformat(
                frame,
                width=width,
                height=height,
                format="rgb24",
                interpolation=scaling,
                threads=1,
            )
            .to_ndarray()
        )
        # Contiguous, else np.stack keeps the turned strides and the clip is not contiguous.
        return (
            np.ascontiguousarray(np.rot90(rgb, self.quarter_turns)) if self.quarter_turns else rgb
        )


def decode_frames(
    path: str,
    indices: Sequence[int],
    *,
    threads: int = 0,
    short_side: int = 0,
    seek_gap_seconds: float = 1.0,
) -> torch.Tensor:
    """Decode the frames at ``indices`` (any order, repeats allowed).

    Args:
        path: the video file, or a folder of frames.
        indices: 0-based frame indices. An index past the last decodable frame takes the last
            frame (a video shorter than its header says by less than a second is clamped).
        threads: decoder threads; 0: FFmpeg's choice, 1: no threading (the right choice inside
            data-loader workers, which are the parallelism already).
        short_side: downscale frames whose short side is larger to this short side, keeping
            the aspect ratio; 0 keeps the source size.
        seek_gap_seconds: without a keyframe index, frames further apart than this are reached
            by a new seek; closer ones are decoded through.

    Returns:
        ``[len(indices), H, W, 3]`` uint8 RGB frames, upright (a rotation that the stream's
        display matrix gives is applied, so ``H`` and ``W`` are then the stored width and height).

    Raises:
        DecodeError: nothing could be decoded, or the stream is truncated.
    """
    if len(indices) == 0:
        raise ValueError("decode_frames needs at least one frame index")
    if is_frame_folder(path):
        return _decode_frame_folder(path, indices, short_side)
    wanted = sorted({max(int(i), 0) for i in indices})
    frames: dict[int, np.ndarray] = {}
    convert = _Converter(short_side)
    tail: tuple[int, av.VideoFrame] | None = None  # the furthest frame decoded, for clamping
    with _open(path) as container:
        if _in_image_order(container):
            return _decode_in_image_order(container, indices, convert)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        clock = _FrameClock.of(container)
        keyframes = _KeyframeIndex(stream, clock)
        if not keyframes.covers(wanted[-1]):
            keyframes = None
        max_gap = max(int(seek_gap_seconds * clock.fps), 1)
        try:
            for span in plan_passes(wanted, keyframes and keyframes.frame_before, max_gap):
                start = keyframes.keyframe_before(span[0]) if keyframes else None
                reached = _decode_pass(container, stream, clock, span, start, convert, frames)
                if reached is not None and (tail is None or reached[0] > tail[0]):
                    tail = reached
        except (av.FFmpegError, OSError) as err:
            if tail is None:
                raise DecodeError(f"decoding failed: {_reason(err)}") from None
            logger.debug("%s: decoding stopped early (%s); clamping to decoded frames", path, err)
        if tail is None:
            raise DecodeError("no frame could be decoded")
        if wanted[-1] > tail[0]:
            # Only then: without a length in the header, counting reads the file's end.
            promised = _frame_count(container, clock.fps)
            if promised - 1 - tail[0] > _TRUNCATION_TOLERANCE_SECONDS * float(clock.fps):
                raise DecodeError(
                    f"truncated: decoding ends at frame {tail[0] + 1} of the {promised} that "
                    "the header promises"
                )
        if tail[0] not in frames:
            frames[tail[0]] = convert(tail[1])
    return torch.from_numpy(np.stack([_nearest(frames, max(int(i), 0)) for i in indices]))


def _decode_pass(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    clock: _FrameClock,
    span: list[int],
    start: tuple[int, int] | None,
    convert: _Converter,
    frames: dict[int, np.ndarray],
) -> tuple[int, av.VideoFrame] | None:
    """Seek to the keyframe before ``span[0]`` and decode through ``span[-1]`` into ``frames``.

    Args:
        start: the keyframe from the container's index (its frame index and index timestamp),
            or None to let the demuxer find the keyframe before ``span[0]``'s timestamp.

    Returns:
        The last frame decoded (its index and the frame), or None if nothing was decoded.
    """
    needed, first, last = set(span), span[0], span[-1]
    last_frame: tuple[int, av.VideoFrame] | None = None
    second = clock.ticks(1.0)
    target = start[1] if start is not None else clock.pts(first)
    # Seeking with backward=True should land on the keyframe at or before the target, but some
    # demuxers (MPEG-TS seeks by byte position) overshoot. Then earlier targets are tried, and
    # last one before the stream start, which every demuxer reads from its beginning.
    floor = clock.start_pts - second
    targets = [t for t in (target, target - second, target - 10 * second) if t > floor]
    for seek_pts in [*targets, floor]:
        from_start = seek_pts == floor
        try:
            container.seek(seek_pts, stream=stream, backward=True)
        except av.FFmpegError:
            # The AVI demuxer refuses timestamps before zero (EPERM), as the earlier targets
            # and the floor of a stream that starts at 0 are: the next target is tried, and
            # for the floor 0, from where such a demuxer reads the stream from its beginning.
            if seek_pts >= 0:
                raise
            if not from_start:
                continue
            container.seek(0, stream=stream, backward=True)
        last_frame = None
        for frame in container.decode(stream):
            index = clock.index(frame)
            if index is None and clock.decoding_times:
                # Given out when the decoder was flushed at the stream's end: the frame after
                # the one before, or from the start the first (a video of no more frames than
                # the reorder delay). After a seek to within that delay of the end, which frame
                # comes first is unknown (with open GOPs, not the keyframe): an earlier one.
                index = last_frame[0] + 1 if last_frame is not None else 0 if from_start else None
            if index is None:
                continue
            if last_frame is None and index > first and not from_start:
                break
            if last_frame is not None and index > last_frame[0] + 1:
                # Wanted frames that the stream has none for (a gap in variable-frame-rate
                # timestamps, or frames lost before a cut) show the frame before the gap, as a
                # player would, rather than the closest earlier frame that happened to be wanted.
                lo = bisect.bisect_right(span, last_frame[0])
                hi = bisect.bisect_left(span, index)
                if lo < hi:
                    wanted_too = last_frame[0] in needed  # then converted already
                    image = frames[last_frame[0]] if wanted_too else convert(last_frame[1])
                    for skipped in span[lo:hi]:
                        frames[skipped] = image
            if index in needed:
                frames[index] = convert(frame)
            last_frame = (index, frame)
            if index >= last:
                return last_frame
        else:
            if last_frame is not None:
                return last_frame  # the stream ended before ``last``: a short video
            # Nothing after the seek point (a seek past the end of what can be decoded).
    return last_frame


def _nearest(frames: dict[int, np.ndarray], index: int) -> np.ndarray:
    """The frame at ``index``, else the closest earlier decoded one, else the first decoded one."""
    if index in frames:
        return frames[index]
    earlier = [i for i in frames if i <= index]
    return frames[max(earlier)] if earlier else frames[min(frames)]
