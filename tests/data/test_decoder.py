"""Decoding: frame-exact against a full decode, clamping, and bad files."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch

from fima.data.decoder import DecodeError, decode_frames, probe_video
from tests.conftest import write_test_video


def full_decode(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack(
            [f.reformat(format="rgb24").to_ndarray() for f in container.decode(video=0)]
        )


@pytest.fixture(
    scope="module", params=[("libx264", 10, "mp4"), ("libx264", 50, "mp4"), ("mpeg4", 12, "avi")]
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
    [(b"", "cannot open"), (os.urandom(4096), "cannot open")],
)
def test_unreadable_files_raise_decode_error(tmp_path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.avi"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        probe_video(str(path))
    with pytest.raises(DecodeError):
        decode_frames(str(path), [0])


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DecodeError, match="not found"):
        decode_frames(str(tmp_path / "nope.mp4"), [0])


def test_truncated_file_decodes_what_is_there_or_fails_cleanly(video: str, tmp_path) -> None:
    with open(video, "rb") as f:
        data = f.read()
    path = tmp_path / ("cut" + os.path.splitext(video)[1])
    path.write_bytes(data[: len(data) // 2])
    try:
        frames = decode_frames(str(path), list(range(0, 90, 10)))
    except DecodeError:
        return
    assert frames.shape[0] == 9
