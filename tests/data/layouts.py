"""Mini datasets in each official layout, made of real encoded videos, with bad files mixed in."""

from __future__ import annotations

import os
from collections.abc import Callable

import av
import numpy as np
from PIL import Image

from tests.conftest import write_test_video

# What each kind of bad file is expected to be reported as (a fragment of the reason).
BAD_KINDS = {
    "empty": "cannot open",
    "random": "cannot open",
    "truncated": "cannot open",
    "audio": "no video stream",
    "one_frame": "DATA.MIN_VIDEO_FRAMES",
    "missing": "not found",
    "cut_payload": "decoding failed|truncated",
}


def write_audio_only(path: str) -> str:
    """An MP4 that holds a short AAC track and no video stream."""
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        mux_silence(container, stream, frames=8, samples_per_frame=1024)
    return path


def mux_silence(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    frames: int,
    samples_per_frame: int,
) -> None:
    """Encode ``frames`` frames of mono silence into the audio ``stream`` (at its rate) and mux
    them, then flush the encoder."""
    for i in range(frames):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, samples_per_frame), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = stream.rate, i * samples_per_frame
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_faststart(source: str, path: str) -> str:
    """Remux an MP4 with its header (moov) first, as streaming sites serve them."""
    with av.open(source) as src, av.open(path, "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path


def write_bad(path: str, kind: str, scratch: str) -> str:
    """Write a bad file of ``kind`` (a key of :data:`BAD_KINDS`) at ``path``.

    ``missing`` writes nothing; ``truncated`` cuts an MP4 whose header is at its end (it cannot be
    opened); ``cut_payload`` cuts one whose header comes first (it opens, decoding fails).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "random":
        with open(path, "wb") as f:
            f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind in ("truncated", "cut_payload"):
        source = write_test_video(os.path.join(scratch, f"{kind}.mp4"), num_frames=90)
        if kind == "cut_payload":
            source = write_faststart(source, os.path.join(scratch, "faststart.mp4"))
        with open(source, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif kind == "audio":
        write_audio_only(path)
    elif kind == "one_frame":
        write_test_video(path, num_frames=1)
    elif kind != "missing":
        raise ValueError(kind)
    return path


def _good(path: str, index: int) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    codec = "mpeg4" if path.endswith(".avi") else "libx264"
    return write_test_video(path, num_frames=24 + 4 * (index % 3), codec=codec)


def make_ucf101(root: str, classes: list[str], per_class: int, bad: dict[str, str]) -> None:
    """UCF101 layout: ``per_class`` good videos per class (groups 1..per_class; the last group
    is the test split of fold 1), plus bad files ``{kind: class}`` in group 90+ (train)."""
    lists = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {name}\n" for i, name in enumerate(classes))
    train, test = [], []
    for label, name in enumerate(classes):
        for group in range(1, per_class + 1):
            rel = f"{name}/v_{name}_g{group:02d}_c01.avi"
            _good(os.path.join(root, "UCF-101", rel), group)
            (test if group == per_class else train).append((rel, label))
    for n, (kind, name) in enumerate(sorted(bad.items())):
        rel = f"{name}/v_{name}_bad_{kind}_g{90 + n}_c01.avi"
        write_bad(os.path.join(root, "UCF-101", rel), kind, root)
        train.append((rel, classes.index(name)))
    with open(os.path.join(lists, "trainlist01.txt"), "w") as f:
        f.writelines(f"{rel} {label + 1}\n" for rel, label in train)
    with open(os.path.join(lists, "testlist01.txt"), "w") as f:
        f.writelines(f"{rel}\n" for rel, _ in test)


def make_hmdb51(root: str, classes: list[str], per_class: int, bad: dict[str, str]) -> None:
    """HMDB51 layout: per class, ``per_class`` videos marked 1 (train) except the last (2, test)
    and one unused (0); bad files ``{kind: class}`` are marked 1 (train)."""
    lists = os.path.join(root, "testTrainMulti_7030_splits")
    os.makedirs(lists, exist_ok=True)
    for name in classes:
        lines = []
        for i in range(per_class + 1):
            video = f"{name}_clip_{i}.avi"
            _good(os.path.join(root, name, video), i)
            lines.append(f"{video} {0 if i == per_class else 2 if i == per_class - 1 else 1} \n")
        for kind, owner in sorted(bad.items()):
            if owner == name:
                video = f"{name}_bad_{kind}_0.avi"
                write_bad(os.path.join(root, name, video), kind, root)
                lines.append(f"{video} 1\n")
        for fold in (1, 2, 3):
            with open(os.path.join(lists, f"{name}_test_split{fold}.txt"), "w") as f:
                f.writelines(lines)


def make_kinetics(root: str, classes: list[str], per_class: int, bad: dict[str, str]) -> None:
    """Kinetics-400 layout with ``annotations/{train,validate}.csv``; ``per_class`` videos per
    class, the last in val; bad files ``{kind: class}`` in train (``missing`` rows stay absent).
    Label folders spell spaces as underscores, as several download scripts do."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "val": []}
    for name in classes:
        folder = name.replace(" ", "_")
        for i in range(per_class):
            split = "val" if i == per_class - 1 else "train"
            youtube_id, start = f"{folder[:3]}{i:08d}", 10 * i
            video = f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4"
            _good(os.path.join(root, split, folder, video), i)
            rows[split].append(f'"{name}",{youtube_id},{start},{start + 10},{split}\n')
    for kind, name in sorted(bad.items()):
        youtube_id = f"bad_{kind}"
        video = f"{youtube_id}_000000_000010.mp4"
        write_bad(os.path.join(root, "train", name.replace(" ", "_"), video), kind, root)
        rows["train"].append(f'"{name}",{youtube_id},0,10,train\n')
    for split, csv_name in (("train", "train.csv"), ("val", "validate.csv")):
        with open(os.path.join(root, "annotations", csv_name), "w") as f:
            f.write("label,youtube_id,time_start,time_end,split\n")
            f.writelines(rows[split])


def make_video_list(root: str, classes: list[str], per_class: int, bad: dict[str, str]) -> None:
    """``train.csv`` (with header, class names) and ``test.txt`` (space-separated) under ``root``,
    relative paths; bad files ``{kind: class}`` in the training list."""
    train, test = [], []
    for name in classes:
        for i in range(per_class):
            rel = f"videos/{name}/{i}.mp4"
            _good(os.path.join(root, rel), i)
            (test if i == per_class - 1 else train).append((rel, name))
    for kind, name in sorted(bad.items()):
        rel = f"videos/{name}/bad_{kind}.mp4"
        write_bad(os.path.join(root, rel), kind, root)
        train.append((rel, name))
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("path,label\n")
        f.writelines(f"{rel},{name}\n" for rel, name in train)
    with open(os.path.join(root, "test.txt"), "w") as f:
        f.writelines(f"{rel} {name}\n" for rel, name in test)


LAYOUTS: dict[str, Callable[[str, list[str], int, dict[str, str]], None]] = {
    "UCF101": make_ucf101,
    "HMDB51": make_hmdb51,
    "Kinetics400": make_kinetics,
    "VideoList": make_video_list,
}


def write_frames(
    folder, count: int, name: str = "img_{:05d}.png", size: tuple[int, int] = (24, 32), seed=0
) -> list[np.ndarray]:
    """``count`` random RGB frames of ``size`` (H, W), saved losslessly; returns them."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(count)]
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, name.format(index + 1)))
    return frames
