"""Folders of frames (one image per frame) as videos: frame order, decoding, bad folders, and
how VideoList finds them in class folders and in mmaction2's lists."""

from __future__ import annotations

import os
import shutil

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, JpegImagePlugin

from fima.data.datasets.build import AnnotationError, build_dataset
from fima.data.decoder import DecodeError, decode_frames, probe_video
from fima.data.index import build_index
from tests.conftest import tiny_cfg, write_test_video
from tests.data.layouts import LAYOUTS, write_frames


def test_frames_are_read_in_name_order_with_numbers_compared_as_numbers(tmp_path) -> None:
    # Unpadded numbers: text order would put 10 and 11 before 2.
    frames = write_frames(tmp_path / "v", 12, name="{}.png")
    Image.fromarray(frames[0]).save(tmp_path / "v" / ".hidden.png")
    (tmp_path / "v" / "notes.txt").write_text("not a frame")
    info = probe_video(str(tmp_path / "v"))
    assert (info.num_frames, info.width, info.height, info.fps) == (12, 32, 24, 0.0)
    indices = [0, 1, 9, 10, 11, 3, 3]
    expected = torch.from_numpy(np.stack([frames[i] for i in indices]))
    assert torch.equal(decode_frames(str(tmp_path / "v"), indices), expected)
    # Past the last frame: the last frame, as for a video file.
    assert torch.equal(decode_frames(str(tmp_path / "v"), [40])[0], torch.from_numpy(frames[11]))


def test_downscaled_frames_are_the_short_side_asked_for(tmp_path) -> None:
    write_frames(tmp_path / "v", 3, size=(48, 64))
    clip = decode_frames(str(tmp_path / "v"), [0, 2], short_side=24)
    assert clip.shape == (2, 24, 32, 3) and clip.dtype == torch.uint8


def test_large_jpeg_frames_are_decoded_at_a_reduced_scale_close_to_a_full_decode(
    tmp_path, monkeypatch
) -> None:
    os.makedirs(tmp_path / "v")
    rows, cols = np.mgrid[0:96, 0:128]
    for index in range(3):  # smooth frames: what the DCT's scaling keeps
        frame = np.stack([rows * 2 + index * 10, cols * 2, (rows + cols)], axis=2) % 256
        Image.fromarray(frame.astype(np.uint8)).save(tmp_path / "v" / f"{index}.jpg", quality=95)
    asked: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recorded_draft(image, mode, size):
        asked.append(size)
        return draft(image, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recorded_draft)
    reduced = decode_frames(str(tmp_path / "v"), [0, 2], short_side=24)
    assert reduced.shape == (2, 24, 32, 3) and asked == [(32, 24), (32, 24)]
    monkeypatch.undo()
    full = decode_frames(str(tmp_path / "v"), [0, 2])
    area = F.interpolate(full.permute(0, 3, 1, 2).float(), size=(24, 32), mode="area")
    assert (reduced.permute(0, 3, 1, 2).float() - area).abs().mean() < 2.0


def test_optical_flow_images_beside_the_frames_are_not_frames(tmp_path) -> None:
    # mmaction2's and TSN's rawframes: img_*, flow_x_*, flow_y_* in one folder.
    frames = write_frames(tmp_path / "v", 5, name="img_{:05d}.png")
    write_frames(tmp_path / "v", 4, name="flow_x_{:05d}.png", seed=1)
    write_frames(tmp_path / "v", 4, name="flow_y_{:05d}.png", seed=2)
    assert probe_video(str(tmp_path / "v")).num_frames == 5
    assert torch.equal(decode_frames(str(tmp_path / "v"), [4])[0], torch.from_numpy(frames[4]))


def test_the_exif_orientation_turns_frames_upright(tmp_path) -> None:
    frame = np.zeros((24, 32, 3), np.uint8)
    frame[:, :8] = 255  # a white band on the left of the stored image
    os.makedirs(tmp_path / "v")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: rotate 90 degrees clockwise to show
    Image.fromarray(frame).save(tmp_path / "v" / "1.jpg", exif=exif, quality=100)
    info = probe_video(str(tmp_path / "v"))
    assert (info.width, info.height) == (24, 32)
    upright = decode_frames(str(tmp_path / "v"), [0])[0]
    assert upright.shape == (32, 24, 3)
    # The band on the left is now at the top.
    assert upright[:4].float().mean() > 200 and upright[-4:].float().mean() < 50


def _write_text(folder: str, name: str) -> None:
    os.makedirs(folder)
    with open(os.path.join(folder, name), "w") as f:
        f.write("not a frame")


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda d: os.makedirs(d), "a folder without frame images"),
        (lambda d: _write_text(d, "1.txt"), "a folder without frame images"),
        (
            lambda d: (write_frames(d, 2, name="a_{}.png"), write_frames(d, 2, name="b_{}.png")),
            "images of 2 name patterns (a_#.png, b_#.png",
        ),
        (lambda d: None, "file not found"),
    ],
)
def test_folders_that_are_no_video_raise_decode_error(tmp_path, setup, reason: str) -> None:
    folder = str(tmp_path / "v")
    setup(folder)
    with pytest.raises(DecodeError, match=reason.replace("(", r"\(")):
        probe_video(folder)


def test_unreadable_and_odd_sized_frames_raise_decode_error_naming_the_image(tmp_path) -> None:
    write_frames(tmp_path / "v", 4)
    with open(tmp_path / "v" / "img_00003.png", "r+b") as f:
        f.truncate(40)
    folder = str(tmp_path / "v")
    assert probe_video(folder).num_frames == 4  # probing reads the first image only
    assert decode_frames(folder, [0, 1, 3]).shape[0] == 3
    with pytest.raises(DecodeError, match="img_00003.png: cannot read the image"):
        decode_frames(folder, [0, 2])
    write_frames(tmp_path / "w", 3)
    Image.new("RGB", (8, 8)).save(tmp_path / "w" / "img_00004.png")
    with pytest.raises(
        DecodeError, match="frames of different sizes: img_00001.png is 32x24, img_00004.png 8x8"
    ):
        decode_frames(str(tmp_path / "w"), [0, 3])


def test_16_bit_frames_keep_their_top_8_bits(tmp_path) -> None:
    os.makedirs(tmp_path / "v")
    values = np.array([[0, 255, 256, 32768], [40000, 65535, 512, 1000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "v" / "1.png")
    assert Image.open(tmp_path / "v" / "1.png").mode.startswith("I")
    frame = decode_frames(str(tmp_path / "v"), [0])[0]
    expected = torch.from_numpy((values >> 8).astype(np.uint8))
    assert torch.equal(frame, expected[..., None].expand(2, 4, 3))


@pytest.mark.parametrize("second", ["img_{:03d}.png", "IMG_{}.png"])
def test_two_frames_of_one_number_are_no_video(tmp_path, second: str) -> None:
    write_frames(tmp_path / "v", 3, name="img_{}.png")
    write_frames(tmp_path / "v", 1, name=second)
    with pytest.raises(
        DecodeError, match=r"two frames have one number \((img_001|IMG_1).png, img_1.png\)"
    ):
        probe_video(str(tmp_path / "v"))


def test_the_index_probes_a_folder_of_frames_again_when_its_first_frame_is_replaced(
    tmp_path,
) -> None:
    write_frames(tmp_path / "train" / "walk" / "v1", 3)
    first = tmp_path / "train" / "walk" / "v1" / "img_00001.png"
    good = first.read_bytes()
    first.write_bytes(b"")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    train = build_dataset(cfg, "train")
    cache = str(tmp_path / "index.json")
    infos, bad = build_index(train, cache)
    assert infos == [None] and "img_00001.png: cannot read the image" in bad[train[0].path]
    folder_time = os.stat(first.parent).st_mtime_ns
    first.write_bytes(good)  # in place: the folder's listing and time are as they were
    assert os.stat(first.parent).st_mtime_ns == folder_time
    infos, bad = build_index(train, cache)
    assert infos[0].num_frames == 3 and not bad


def test_video_list_finds_folders_of_frames_in_class_folders_and_mmaction2_lists(tmp_path) -> None:
    for relative in ("train/walk/v1", "train/walk/v2", "train/run/deep/v3", "test/run/v4"):
        write_frames(tmp_path / relative, 3)
    # A class folder's stray picture beside its videos is not a folder of frames.
    (tmp_path / "test" / "walk").mkdir(parents=True)
    write_frames(tmp_path / "test" / "walk" / "clip", 2)
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "walk" / "cover.png")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    train = build_dataset(cfg, "train")
    assert train.class_names == ["run", "walk"]
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in train] == [
        ("train/run/deep/v3", 0), ("train/walk/v1", 1), ("train/walk/v2", 1),
    ]  # fmt: skip
    test = build_dataset(cfg, "test")
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in test] == [
        ("test/run/v4", 0), ("test/walk/clip", 1),
    ]  # fmt: skip
    infos, _ = build_index(train, str(tmp_path / "index.json"))
    assert [info.num_frames for info in infos] == [3, 3, 3]
    # mmaction2's list of folders of frames: 'path frames label'.
    (tmp_path / "train.txt").write_text("train/walk/v1 3 1\ntrain/run/deep/v3 3 0\n")
    listed = build_dataset(cfg, "train")
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in listed] == [
        ("train/walk/v1", 1), ("train/run/deep/v3", 0),
    ]  # fmt: skip


def test_class_folders_with_links_flow_subfolders_and_stray_pictures(tmp_path, caplog) -> None:
    train = tmp_path / "train"
    # A frame folder with mmaction2's flow images in a subfolder of its own.
    write_frames(train / "walk" / "v1", 3)
    write_frames(train / "walk" / "v1" / "flow", 2, name="flow_x_{:05d}.png")
    # A class folder's picture beside videos two folders down is not a folder of frames.
    write_frames(train / "run" / "cam1" / "day1" / "v2", 3)
    Image.new("RGB", (4, 4)).save(train / "run" / "cover.png")
    # A link back up to the split folder, and a second link to a frame folder.
    os.symlink(train, train / "run" / "loop")
    os.symlink(train / "walk" / "v1", train / "walk" / "again")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    with caplog.at_level("INFO", logger="fima.data.datasets.video_list"):
        dataset = build_dataset(cfg, "train")
    # The folder itself wins over the link to it, found first in name order.
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in dataset] == [
        ("train/run/cam1/day1/v2", 0), ("train/walk/v1", 1),
    ]  # fmt: skip
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        "2 folder(s) or video file(s) reached again through a symbolic link were read once"
        in warning
    )


def test_a_link_to_another_class_folder_leaves_its_videos_in_their_class(tmp_path) -> None:
    for relative in ("train/a/a0", "train/c/c0"):
        write_frames(tmp_path / relative, 2)
    os.symlink(tmp_path / "train" / "c", tmp_path / "train" / "a" / "see_also")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    dataset = build_dataset(cfg, "train")
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in dataset] == [
        ("train/a/a0", 0), ("train/c/c0", 1),
    ]  # fmt: skip


def test_a_folder_of_frames_keeps_its_subfolders_and_says_so_of_videos_in_them(
    tmp_path, caplog
) -> None:
    write_frames(tmp_path / "train" / "walk" / "v1", 3)
    write_frames(tmp_path / "train" / "walk" / "v1" / "thumbs", 3, name="t_{:03d}.png")
    write_frames(tmp_path / "train" / "walk" / "v2", 3)
    os.makedirs(tmp_path / "train" / "walk" / "v2" / "clips")
    write_test_video(str(tmp_path / "train" / "walk" / "v2" / "clips" / "c1.mp4"))
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    with caplog.at_level("INFO", logger="fima.data.datasets.video_list"):
        dataset = build_dataset(cfg, "train")
    assert [os.path.relpath(r.path, tmp_path) for r in dataset] == [
        "train/walk/v1", "train/walk/v2",
    ]  # fmt: skip
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 folder(s) of frames have video files in folders below them" in warning
    assert warning.endswith("e.g. " + str(tmp_path / "train" / "walk" / "v2"))


def test_links_above_the_split_folder_and_second_links_to_a_video_are_read_once(
    tmp_path, caplog
) -> None:
    for split in ("train", "test"):
        for label in ("run", "walk"):
            (tmp_path / split / label).mkdir(parents=True)
            write_test_video(str(tmp_path / split / label / f"{split}_{label}.mp4"))
    # Up to the dataset root: the other split must not leak in.
    os.symlink(tmp_path, tmp_path / "test" / "walk" / "loop")
    # A second name for a video of another class.
    os.symlink(tmp_path / "test" / "run" / "test_run.mp4", tmp_path / "test" / "walk" / "alias.mp4")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    with caplog.at_level("INFO", logger="fima.data.datasets.video_list"):
        test = build_dataset(cfg, "test")
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in test] == [
        ("test/run/test_run.mp4", 0), ("test/walk/test_walk.mp4", 1),
    ]  # fmt: skip
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "2 folder(s) or video file(s) reached again" in warning


def test_class_folders_whose_pictures_are_fewer_than_their_videos_stay_class_folders(
    tmp_path,
) -> None:
    for label in ("run", "walk"):
        for video in ("a", "b"):
            write_frames(tmp_path / "train" / label / video, 3)
        write_frames(tmp_path / "train" / label, 2, name="cover_{}.png")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    dataset = build_dataset(cfg, "train")
    assert dataset.class_names == ["run", "walk"] and len(dataset) == 4


def test_a_video_file_wins_over_its_own_folder_of_frames_and_empty_folders_are_said(
    tmp_path, caplog
) -> None:
    walk = tmp_path / "train" / "walk"
    walk.mkdir(parents=True)
    write_test_video(str(walk / "both.mp4"))
    write_frames(walk / "both", 3)
    (walk / "failed_extraction").mkdir()
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    with caplog.at_level("INFO", logger="fima.data.datasets.video_list"):
        for _ in range(2):  # said once per process, not at every build
            dataset = build_dataset(cfg, "train")
    assert [os.path.relpath(r.path, tmp_path) for r in dataset] == ["train/walk/both.mp4"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "1 folder(s) of frames lie beside a video file of their name" in warnings[0]
    assert "1 empty folder(s) were left out" in warnings[1]


def test_numbered_pictures_in_a_class_folder_are_named_in_the_error(tmp_path) -> None:
    write_frames(tmp_path / "train" / "walk" / "v1", 2)
    write_frames(tmp_path / "train" / "run" / "v2", 2)
    write_frames(tmp_path / "train" / "run", 2, name="cover_{}.png")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    with pytest.raises(
        AnnotationError, match=r"numbered images in it \(cover_1.png, cover_2.png\)"
    ):
        build_dataset(cfg, "train")


def test_a_listed_video_file_that_is_absent_may_be_its_folder_of_frames(tmp_path) -> None:
    write_frames(tmp_path / "rawframes" / "jump" / "v_jump_0", 3)
    (tmp_path / "train.txt").write_text("rawframes/jump/v_jump_0.avi 0\n")
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    (record,) = build_dataset(cfg, "train").records
    assert record.path == str(tmp_path / "rawframes" / "jump" / "v_jump_0")


def test_unlabelled_folders_of_frames_directly_in_the_split_folder(tmp_path) -> None:
    write_frames(tmp_path / "train" / "a", 2)
    write_frames(tmp_path / "train" / "b", 2)
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    train = build_dataset(cfg, "train")
    assert [(os.path.basename(r.path), r.label) for r in train] == [("a", -1), ("b", -1)]


@pytest.mark.parametrize("dataset", ["UCF101", "HMDB51", "Kinetics400"])
def test_official_lists_take_a_videos_folder_of_frames_where_the_file_is_absent(
    tmp_path, dataset: str
) -> None:
    LAYOUTS[dataset](str(tmp_path), ["brush_hair", "yoyo"], 3, {})
    cfg = tiny_cfg(**{"DATA.DATASET": dataset, "DATA.ROOT": str(tmp_path)})
    video = build_dataset(cfg, "train").records[0].path
    with av.open(video) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    folder = os.path.splitext(video)[0]
    os.makedirs(folder)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"img_{index + 1:05d}.png"))
    # Beside the file, the file is read; without it, the folder.
    assert build_dataset(cfg, "train").records[0].path == video
    os.remove(video)
    records = build_dataset(cfg, "train").records
    assert records[0].path == folder and all(os.path.isfile(r.path) for r in records[1:])
    assert probe_video(folder).num_frames == len(frames)


def test_kinetics_folders_of_frames_left_flat_in_the_split_folder(tmp_path) -> None:
    LAYOUTS["Kinetics400"](str(tmp_path), ["a", "b"], 2, {})
    for label in ("a", "b"):  # every video's frames, flat in train/ as the CVDF archives unpack
        for name in os.listdir(tmp_path / "train" / label):
            write_frames(tmp_path / "train" / os.path.splitext(name)[0], 2)
        shutil.rmtree(tmp_path / "train" / label)
    cfg = tiny_cfg(**{"DATA.DATASET": "Kinetics400", "DATA.ROOT": str(tmp_path)})
    dataset = build_dataset(cfg, "train")
    assert len(dataset) == 2 and not dataset.missing
    assert all(os.path.dirname(r.path) == str(tmp_path / "train") for r in dataset)
    assert all(probe_video(r.path).num_frames == 2 for r in dataset)
