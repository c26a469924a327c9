"""Decoding: frame-exact against a full decode in common containers, clamping, downscaling,
pass planning, and bad files."""

from __future__ import annotations

import os
import random
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fima.data import decoder
from fima.data.decoder import DecodeError, decode_frames, plan_passes, probe_video
from fima.data.transforms import short_side_size
from tests.conftest import write_test_video
from tests.data.layouts import mux_silence, write_bad


def full_decode(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack(
            [f.reformat(format="rgb24").to_ndarray() for f in container.decode(video=0)]
        )


# MP4 and AVI index every frame; MKV/WebM have cues; MPEG-TS has no index and a start time
# after zero, and its demuxer's seeks overshoot (the decoder must step back).
@pytest.fixture(
    scope="module",
    params=[
        ("libx264", 10, "mp4"),
        ("libx264", 50, "mp4"),
        ("mpeg4", 12, "avi"),
        ("libx264", 25, "mkv"),
        ("libx264", 25, "ts"),
        ("libvpx", 30, "webm"),
    ],
)
def video(request, tmp_path_factory) -> str:
    codec, gop, ext = request.param
    path = tmp_path_factory.mktemp("videos") / f"v_{codec}_{gop}.{ext}"
    return write_test_video(str(path), num_frames=90, codec=codec, gop=gop)


def test_probe_reads_the_header(video: str) -> None:
    info = probe_video(video)
    assert info.num_frames == 90 and info.fps == 25
    assert (info.height, info.width) == (48, 64)


@pytest.mark.parametrize("seed", range(4))
def test_decoded_frames_match_a_full_decode(video: str, seed: int) -> None:
    reference = full_decode(video)
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, 58))
    other = int(rng.integers(0, 58))
    indices = list(range(start, start + 32)) + list(range(other, other + 32, 2))
    frames = decode_frames(video, indices)
    assert frames.dtype == torch.uint8 and frames.shape == (len(indices), 48, 64, 3)
    np.testing.assert_array_equal(frames.numpy(), reference[indices])


def test_indices_past_the_end_clamp_to_the_last_frame(video: str) -> None:
    reference = full_decode(video)
    frames = decode_frames(video, [85, 89, 95, 200])
    np.testing.assert_array_equal(frames.numpy(), reference[[85, 89, 89, 89]])


@pytest.mark.parametrize(
    ("content", "reason"),
    # Seeded garbage: the same test ids in every process (pytest-xdist compares collections).
    [(b"", "cannot open"), (random.Random(0).randbytes(4096), "cannot open")],
    ids=["empty", "random-bytes"],
)
def test_unreadable_files_raise_decode_error(tmp_path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.avi"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason) as info:
        probe_video(str(path))
    # FFmpeg's words alone: no errno tag ("[Errno 1094995529]") and no path.
    assert "Errno" not in str(info.value) and str(path) not in str(info.value)
    with pytest.raises(DecodeError):
        decode_frames(str(path), [0])


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DecodeError, match="not found"):
        decode_frames(str(tmp_path / "nope.mp4"), [0])


def test_downscaling_while_converting(video: str) -> None:
    reference = torch.from_numpy(full_decode(video)[[3, 40]]).permute(0, 3, 1, 2).float()
    frames = decode_frames(video, [3, 40], short_side=24)
    assert frames.shape == (2, 24, 32, 3)
    expected = F.interpolate(reference, size=(24, 32), mode="bilinear", antialias=True)
    error = (frames.permute(0, 3, 1, 2).float() - expected).abs().mean()
    assert error < 4  # swscale's and torch's bilinear filters differ only in rounding and edges
    assert decode_frames(video, [3], short_side=64).shape == (1, 48, 64, 3)  # never upscales


def test_short_side_size() -> None:
    assert short_side_size(1080, 1920, 256) == (256, 455)
    assert short_side_size(1920, 1080, 256) == (455, 256)
    assert short_side_size(240, 320, 256) == (240, 320)
    assert short_side_size(240, 320, 0) == (240, 320)


def test_plan_passes_uses_keyframes_to_avoid_reseeking() -> None:
    wanted = [10, 11, 200, 201, 500]
    # Without an index: any gap longer than max_gap is a new pass.
    assert plan_passes(wanted, None, 25) == [[10, 11], [200, 201], [500]]
    # One keyframe at 0 before 10 and 200 (a long GOP): decoding on beats seeking back to 0.
    long_gop = {200: 0, 500: 250}
    assert plan_passes(wanted, long_gop.__getitem__, 25) == [[10, 11, 200, 201], [500]]
    # A keyframe between them: seek.
    assert plan_passes(wanted, {200: 150, 500: 500}.__getitem__, 25) == [
        [10, 11],
        [200, 201],
        [500],
    ]
    # Close frames never get a pass of their own (nor a look-up), keyframes or not.
    assert plan_passes([1, 2, 3], {}.__getitem__, 25) == [[1, 2, 3]]


@pytest.mark.parametrize(("gop", "passes"), [(250, 1), (25, 2)])
def test_two_windows_in_one_gop_are_decoded_in_one_pass(
    tmp_path, monkeypatch, gop: int, passes: int
) -> None:
    path = write_test_video(str(tmp_path / "v.mp4"), num_frames=90, gop=gop)
    calls = []
    real = decoder._decode_pass
    monkeypatch.setattr(decoder, "_decode_pass", lambda *args: calls.append(args[3]) or real(*args))
    indices = [*range(0, 16, 2), *range(60, 76, 2)]
    frames = decode_frames(path, indices)
    np.testing.assert_array_equal(frames.numpy(), full_decode(path)[indices])
    # Frames 14 and 60 are more than a second apart: with a keyframe between them (every 25
    # frames) a seek pays off; without one (every 250), decoding on does.
    assert len(calls) == passes


def test_decoding_a_header_first_mp4_that_is_cut_fails(tmp_path) -> None:
    path = write_bad(str(tmp_path / "cut.mp4"), "cut_payload", str(tmp_path))
    assert probe_video(path).num_frames == 90  # the header is intact
    with pytest.raises(DecodeError, match="decoding failed|truncated"):
        decode_frames(path, list(range(50, 82)))


def test_audio_only_and_one_frame_files(tmp_path) -> None:
    with pytest.raises(DecodeError, match="no video stream"):
        probe_video(write_bad(str(tmp_path / "a.mp4"), "audio", str(tmp_path)))
    one = write_bad(str(tmp_path / "one.mp4"), "one_frame", str(tmp_path))
    assert probe_video(one).num_frames == 1
    assert decode_frames(one, [0, 5]).shape == (2, 48, 64, 3)


def test_truncated_file_decodes_what_is_there_or_fails_cleanly(video: str, tmp_path) -> None:
    with open(video, "rb") as f:
        data = f.read()
    path = tmp_path / ("cut" + os.path.splitext(video)[1])
    path.write_bytes(data[: len(data) // 2])
    indices = list(range(0, 90, 10))
    try:
        frames = decode_frames(str(path), indices)
    except DecodeError:
        return
    # What is there (an MPEG-TS file has no header that promises more): each frame as a full
    # decode of the cut file gives it, an index past its end the last frame it has.
    there = full_decode(str(path))
    np.testing.assert_array_equal(frames.numpy(), there[np.minimum(indices, len(there) - 1)])


@pytest.mark.parametrize(
    ("codec", "options"),
    [
        ("mpeg4", {"bf": "2"}),  # Xvid/DivX style
        ("libx264", {}),  # B-frames (pyramid)
        ("libx264", {"x264-params": "open-gop=1"}),  # leading B-frames before a keyframe
        ("libx264", {"bf": "0"}),
    ],
    ids=["mpeg4-bframes", "h264-bframes", "h264-open-gop", "h264"],
)
def test_avi_with_b_frames_is_frame_exact(tmp_path, codec: str, options: dict[str, str]) -> None:
    """AVI stores decoding times only; the presentation times the parser guesses were used as
    if they were real. With MPEG-4 Part 2 B-frames (Xvid/DivX) they start at 1, so index k gave
    frame k - 1 (0 twice, the last never); for H.264 they are not even in order, so frames came
    out shuffled. Before that, such AVIs failed with 'Operation not permitted' (seeks before
    timestamp 0, which the AVI demuxer refuses, as a step back from an overshot seek does)."""
    # 61 frames: the last packet is a keyframe (every 12th), whose frames the decoder gives out
    # only when flushed, without a decoding time.
    path = write_test_video(
        str(tmp_path / "v.avi"), num_frames=61, codec=codec, gop=12, options=options
    )
    reference = full_decode(path)
    assert len(reference) == 61
    windows = [list(range(start, min(start + 16, 61))) for start in (0, 5, 7, 11, 20, 40, 45)]
    spread = [list(range(start, start + 32, 2)) for start in (0, 1, 13, 27)]
    for indices in [*windows, *spread, [58], [59], [60], [23], [50, 3, 20, 20, 7], [*range(61)]]:
        np.testing.assert_array_equal(decode_frames(path, indices).numpy(), reference[indices])
    # Fewer frames than the reorder delay: all of them come out when the decoder is flushed.
    short = write_test_video(
        str(tmp_path / "short.avi"), num_frames=2, codec=codec, gop=12, options=options
    )
    np.testing.assert_array_equal(
        decode_frames(short, [0, 1, 5]).numpy(), full_decode(short)[[0, 1, 1]]
    )


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_videos_are_decoded_upright(tmp_path, rotation: int) -> None:
    """A phone's portrait video is stored landscape with a display rotation, which players
    apply; frames once came out sideways (or upside down), unlike the video the user sees."""
    path = str(tmp_path / "phone.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(rotation)
        for i in range(12):
            frame = np.full((48, 64, 3), 30, dtype=np.uint8)
            frame[:12, :16] = 230  # a mark in the stored frame's top-left corner
            frame[:, 40 + i] = 120
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    # np.rot90 turns counterclockwise, as the display matrix's angle counts.
    expected = np.rot90(full_decode(path), rotation // 90, axes=(1, 2))
    frames = decode_frames(path, [0, 5, 11])
    assert frames.is_contiguous()
    np.testing.assert_array_equal(frames.numpy(), expected[[0, 5, 11]])
    small = decode_frames(path, [0], short_side=24)
    assert small.shape == ((1, 32, 24, 3) if rotation % 180 else (1, 24, 32, 3))


def test_a_webm_written_live_without_length_in_its_header(tmp_path) -> None:
    """Browsers' MediaRecorder and streaming software write WebM without a duration or frame
    count: such a video was a bad video ('the header gives no frame count or duration')."""
    source = write_test_video(str(tmp_path / "v.webm"), num_frames=50, codec="libvpx", gop=20)
    path = str(tmp_path / "recorded.webm")
    with av.open(source) as src, av.open(path, "w", options={"live": "1"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with av.open(path) as container:  # what makes it hard: no length anywhere in the header
        assert not container.streams.video[0].frames and container.duration is None
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (50, 25, 64, 48)
    indices = [0, 7, 20, 21, 35, 49]
    np.testing.assert_array_equal(decode_frames(path, indices).numpy(), full_decode(path)[indices])


def test_indices_in_a_gap_of_variable_frame_rate_take_the_frame_before_it(tmp_path) -> None:
    """A phone's variable-frame-rate video leaves indices that no timestamp maps to. Such an
    index took the closest earlier frame that the clip happened to want (in a clip of every
    other frame: one a whole step back), not the one shown at that time."""
    source = write_test_video(str(tmp_path / "cfr.mp4"), num_frames=60, gop=30)
    path = str(tmp_path / "vfr.mp4")
    with av.open(source) as src, av.open(path, "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        tick = int(1 / (25 * src.streams.video[0].time_base))
        for packet in src.demux(video=0):
            if packet.dts is not None:
                # Every 10th frame the camera stalls for 3 frame periods.
                packet.pts += (packet.pts // (10 * tick)) * 3 * tick
                packet.dts += max(packet.dts, 0) // (10 * tick) * 3 * tick
                packet.stream = stream
                dst.mux(packet)
    # The frame shown at index i: the last one whose timestamp maps to i or earlier.
    with av.open(path) as container:
        clock = decoder._FrameClock(container.streams.video[0])
        shown = [
            (clock.index(frame), frame.reformat(format="rgb24").to_ndarray())
            for frame in container.decode(video=0)
        ]
    mapped = [index for index, _ in shown]
    gaps = sorted(set(range(max(mapped))) - set(mapped))
    assert gaps  # the stalls did leave indices without a frame
    unique = [i for i in range(max(mapped)) if mapped.count(i) <= 1]
    for start in (0, 6, 20, 31):
        indices = [i for i in range(start, start + 16, 2) if i in unique]
        expected = [next(img for index, img in reversed(shown) if index <= i) for i in indices]
        np.testing.assert_array_equal(decode_frames(path, indices).numpy(), np.stack(expected))


def _write_with_audio(path: str, codec: str, audio: str, start: int, audio_seconds: float) -> str:
    """24 video frames from frame ``start`` on, then ``audio_seconds`` of silence in a second
    stream (written after the video, as a recording's audio that runs on)."""
    with av.open(path, "w") as container:
        video = container.add_stream(codec, rate=25)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream(audio, rate=48000)
        for i in range(24):
            image = np.full((32, 32, 3), 40, dtype=np.uint8)
            image[:, i : i + 4] = 220
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = start + i, Fraction(1, 25)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        mux_silence(container, sound, frames=int(audio_seconds * 50), samples_per_frame=960)
    return path


@pytest.mark.parametrize("delays", [40, [20, 200, 40, 40, 500] + [40] * 25, 0])
def test_an_animated_gif_is_read_image_by_image(tmp_path, delays) -> None:
    """A GIF as Pillow writes it (a palette of its own per frame, a delay per frame): frame i is
    its i-th image, also where the delays vary or are 0 (which time-based indices lost and
    repeated images of)."""
    rng = np.random.default_rng(0)
    frames = [(rng.random((24, 32, 3)) * 255).astype(np.uint8) for _ in range(30)]
    path = str(tmp_path / "motion.gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=delays, loop=0)
    assert probe_video(path).num_frames == 30
    with Image.open(path) as gif:
        expected = []
        for index in range(30):
            gif.seek(index)
            expected.append(np.array(gif.convert("RGB")))
    indices = [0, 1, 2, 3, 4, 5, 13, 14, 27, 29, 29]
    torch.testing.assert_close(
        decode_frames(path, indices), torch.from_numpy(np.stack([expected[i] for i in indices]))
    )
    # Past the last image: the last image.
    assert torch.equal(decode_frames(path, [35])[0], torch.from_numpy(expected[29]))


def test_a_gif_cut_short_is_no_video(tmp_path) -> None:
    """FFmpeg reads a GIF cut anywhere as a good, shorter one, its last image part drawn."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)) for _ in range(8)]
    path = tmp_path / "whole.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    assert probe_video(str(path)).num_frames == 8
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 30):
        cut = tmp_path / f"cut_{keep}.gif"
        cut.write_bytes(data[:keep])
        with pytest.raises(DecodeError, match="truncated: the GIF does not end in its trailer"):
            probe_video(str(cut))


@pytest.mark.parametrize(
    ("name", "codec", "audio", "start", "audio_seconds"),
    [
        ("long_audio.mkv", "libx264", "aac", 0, 3.0),
        ("long_audio.webm", "libvpx", "libopus", 0, 3.0),
        ("long_audio.flv", "libx264", "aac", 0, 3.0),
        ("late_video.mkv", "libx264", "aac", 50, 0.5),
    ],
)
def test_matroska_and_flv_count_the_video_not_the_file(
    tmp_path, name: str, codec: str, audio: str, start: int, audio_seconds: float
) -> None:
    """Matroska/WebM and FLV headers give only the file's duration: its longest stream's, and
    in Matroska from time 0, not from where the video starts. A recording whose audio runs on
    (or whose video starts late) had frames counted that are not there: windows showed the last
    frame repeated, and past a second more the intact video was a bad video ('truncated')."""
    path = _write_with_audio(str(tmp_path / name), codec, audio, start, audio_seconds)
    reference = full_decode(path)
    assert len(reference) == 24
    assert probe_video(path).num_frames == 24
    indices = list(range(8, 24))
    np.testing.assert_array_equal(decode_frames(path, indices).numpy(), reference[indices])


def test_an_mp4_cut_between_keyframes_counts_the_frames_it_shows(tmp_path) -> None:
    """Cutting without re-encoding (``ffmpeg -ss 1.4 -c copy``) keeps the frames from the
    keyframe before the cut and writes an edit list that hides them. The header's frame count
    includes the hidden frames: windows near the end repeated the last frame, and with more
    than a second hidden, decoding raised 'truncated' and the intact clip was a bad video."""
    source = write_test_video(str(tmp_path / "full.mp4"), num_frames=60, size=(32, 32), gop=50)
    path = str(tmp_path / "cut.mp4")
    with av.open(source) as src, av.open(path, "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        hidden = 35 * int(1 / (25 * src.streams.video[0].time_base))  # 1.4 s after the keyframe
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = (
                    packet.pts - hidden,
                    packet.dts - hidden,
                    stream,
                )
                dst.mux(packet)
    reference = full_decode(path)
    np.testing.assert_array_equal(reference[0], full_decode(source)[35])  # the edit list works
    assert probe_video(path).num_frames == len(reference) == 25
    indices = list(range(9, 25))
    np.testing.assert_array_equal(decode_frames(path, indices).numpy(), reference[indices])
