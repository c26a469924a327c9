"""Datasets in their official layouts: counts, labels, class order, and errors that help."""

from __future__ import annotations

import os
import re

import pytest

from fima.config import ConfigError, validate_cfg
from fima.data import build_dataset
from fima.data.datasets import AnnotationError
from tests.conftest import tiny_cfg, write_test_video
from tests.data.layouts import LAYOUTS

CLASSES = ["brush_hair", "Archery", "yoyo"]


def _cfg(dataset: str, root: str, **overrides: object):
    return tiny_cfg(**{"DATA.DATASET": dataset, "DATA.ROOT": root, **overrides})


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    """Each layout with 3 classes of 3 good videos (no bad files)."""
    out = {}
    for name, make in LAYOUTS.items():
        root = str(tmp_path_factory.mktemp(name))
        classes = ["playing cello", *CLASSES[1:]] if name == "Kinetics400" else CLASSES
        make(root, sorted(classes, key=str.lower) if name == "UCF101" else classes, 3, {})
        out[name] = root
    return out


def test_ucf101_official_order_and_folds(roots) -> None:
    train = build_dataset(_cfg("UCF101", roots["UCF101"]), "train")
    test = build_dataset(_cfg("UCF101", roots["UCF101"]), "test")
    # classInd.txt's order: alphabetical without regard to case.
    assert train.class_names == ["Archery", "brush_hair", "yoyo"]
    assert (len(train), len(test)) == (6, 3)
    assert {r.label for r in test} == {0, 1, 2}
    for record in train:
        assert os.path.isfile(record.path)
        assert f"/{train.class_names[record.label]}/" in record.path
    assert {r.group for r in train}.isdisjoint({r.group for r in test})


def test_hmdb51_marks_and_sorted_classes(roots) -> None:
    train = build_dataset(_cfg("HMDB51", roots["HMDB51"]), "train")
    test = build_dataset(_cfg("HMDB51", roots["HMDB51"]), "test")
    assert train.class_names == sorted(CLASSES) == test.class_names
    # Per class: marks 1, 1, 2 and 0 (unused).
    assert (len(train), len(test)) == (6, 3)
    assert all(record.path.endswith("_2.avi") for record in test)
    for record in train:
        assert os.path.basename(os.path.dirname(record.path)) == train.class_names[record.label]


def test_kinetics_labels_from_train_csv_and_underscore_folders(roots) -> None:
    train = build_dataset(_cfg("Kinetics400", roots["Kinetics400"]), "train")
    val = build_dataset(_cfg("Kinetics400", roots["Kinetics400"]), "val")
    assert train.class_names == sorted(["playing cello", "Archery", "yoyo"])
    assert (len(train), len(val), train.missing) == (6, 3, [])
    cello = train.class_names.index("playing cello")
    assert all("/train/playing_cello/" in r.path for r in train if r.label == cello)
    assert all("/val/" in r.path and os.path.isfile(r.path) for r in val)


def test_kinetics_skips_and_counts_missing_videos(roots, tmp_path) -> None:
    root = tmp_path / "k400"
    LAYOUTS["Kinetics400"](str(root), ["a", "b"], 3, {"missing": "a"})
    dataset = build_dataset(_cfg("Kinetics400", str(root)), "train")
    assert len(dataset) == 4
    assert [os.path.basename(p) for p in dataset.missing] == ["bad_missing_000000_000010.mp4"]


def test_kinetics_flat_split_folders_and_val_csv(tmp_path) -> None:
    # The CVDF mirror's archives: videos not sorted into label folders, annotations/val.csv.
    root = tmp_path / "k400"
    LAYOUTS["Kinetics400"](str(root), ["a b", "c"], 3, {})
    for folder in (root / "train").iterdir():
        for video in folder.iterdir():
            video.rename(root / "train" / video.name)
        folder.rmdir()
    (root / "annotations" / "validate.csv").rename(root / "annotations" / "val.csv")
    train = build_dataset(_cfg("Kinetics400", str(root)), "train")
    assert len(train) == 4 and not train.missing
    assert all(os.path.dirname(r.path) == str(root / "train") for r in train)
    assert len(build_dataset(_cfg("Kinetics400", str(root)), "val")) == 2


def test_video_list_csv_and_text_with_names(roots) -> None:
    cfg = _cfg("VideoList", roots["VideoList"])
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_names == sorted(CLASSES) == test.class_names
    assert (len(train), len(test)) == (6, 3)
    for dataset in (train, test):
        for record in dataset:
            assert os.path.isfile(record.path)
            assert f"/{dataset.class_names[record.label]}/" in record.path


def test_video_list_integer_labels_unlabelled_lists_and_explicit_files(tmp_path) -> None:
    (tmp_path / "a b.mp4").touch()
    (tmp_path / "train.txt").write_text("x/1.mp4 2\n/abs/2.mp4 0\n")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "pretrain.csv").write_text('"../a b.mp4"\nc.mp4\n')
    cfg = _cfg("VideoList", str(tmp_path))
    train = build_dataset(cfg, "train")
    assert train.class_names == ["0", "1", "2"]
    assert [r.label for r in train] == [2, 0]
    assert [r.path for r in train] == [str(tmp_path / "x" / "1.mp4"), "/abs/2.mp4"]
    cfg = _cfg("VideoList", "", **{"DATA.VIDEO_LIST.TRAIN": str(tmp_path / "lists/pretrain.csv")})
    unlabelled = build_dataset(cfg, "train")
    assert [r.label for r in unlabelled] == [-1, -1]
    assert unlabelled[0].path == str(tmp_path / "a b.mp4")  # relative to the list's folder


@pytest.mark.parametrize(
    ("name", "text", "second"),
    [
        # SlowFast's train.csv: whitespace-separated, no header; the path may hold spaces.
        ("train.csv", "x/1.mp4 2\nmy videos/2.mp4 0\n", "my videos/2.mp4"),
        ("train.csv", '"Video","Class"\nx/1.mp4,2\n"my videos/2.mp4",0\n', "my videos/2.mp4"),
        ("train.txt", "path label\nx/1.mp4 2\nmy_videos/2.mp4 0\n", "my_videos/2.mp4"),
    ],
)
def test_video_list_slowfast_csv_and_named_columns(
    tmp_path, name: str, text: str, second: str
) -> None:
    (tmp_path / name).write_text(text)
    train = build_dataset(_cfg("VideoList", str(tmp_path)), "train")
    assert train.class_names == ["0", "1", "2"]
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in train] == [
        ("x/1.mp4", 2), (second, 0),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "second"),
    [
        ("path,label\nx/1.mp4,2\nmy videos/2.mp4,0\n", "my videos/2.mp4"),
        ("x/1.mp4 2\nmy videos/2.mp4 0\n", "my videos/2.mp4"),
    ],
)
def test_video_list_csv_extension_in_any_case(tmp_path, text: str, second: str) -> None:
    """A list exported as TRAIN.CSV is read as CSV (or SlowFast's lines), as train.csv is."""
    (tmp_path / "TRAIN.CSV").write_text(text)
    cfg = _cfg("VideoList", "", **{"DATA.VIDEO_LIST.TRAIN": str(tmp_path / "TRAIN.CSV")})
    train = build_dataset(cfg, "train")
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in train] == [
        ("x/1.mp4", 2), (second, 0),
    ]  # fmt: skip


def test_video_list_files_are_those_of_the_train_and_test_splits_whatever_their_names(
    tmp_path,
) -> None:
    (tmp_path / "mine.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (tmp_path / "held_out.txt").write_text("c.mp4 0\nd.mp4 1\ne.mp4 2\n")
    # A val.csv beside them is not what the config names.
    (tmp_path / "val.csv").write_text("f.mp4,0\n")
    lists = {"DATA.VIDEO_LIST.TRAIN": str(tmp_path / "mine.txt"),
             "DATA.VIDEO_LIST.TEST": str(tmp_path / "held_out.txt")}  # fmt: skip
    cfg = _cfg("VideoList", str(tmp_path), **lists, **{"DATA.TRAIN_SPLIT": "pretrain",
                                                      "DATA.TEST_SPLIT": "val"})  # fmt: skip
    train, test = build_dataset(cfg, "pretrain"), build_dataset(cfg, "val")
    assert [os.path.basename(r.path) for r in train] == ["a.mp4", "b.mp4"]
    assert [os.path.basename(r.path) for r in test] == ["c.mp4", "d.mp4", "e.mp4"]
    assert train.class_names == test.class_names == ["0", "1", "2"]
    # One split for training and evaluation: one list, not two.
    cfg = _cfg("VideoList", "", **lists, **{"DATA.TEST_SPLIT": "train"})
    with pytest.raises(ConfigError, match="DATA.VIDEO_LIST.TEST: .*both 'train'"):
        validate_cfg(cfg)
    cfg = _cfg("VideoList", "", **{"DATA.VIDEO_LIST.TEST": lists["DATA.VIDEO_LIST.TEST"],
                                   "DATA.TRAIN_SPLIT": "test"})  # fmt: skip
    assert len(build_dataset(cfg, "test")) == 3


def _touch(root, *relatives: str) -> None:
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_video_list_class_folders_share_class_indices_across_splits(tmp_path, caplog) -> None:
    _touch(
        tmp_path,
        "train/walk/a.mp4", "train/walk/b.AVI", "train/run/deep/c.mkv", "train/run/notes.txt",
        "train/run/g.gif",
        "train/run/.hidden.mp4", "train/.cache/d.mp4", "test/walk/e.webm", "test/jump/f.mp4",
        "test/jump/thumbs.db",
    )  # fmt: skip
    cfg = _cfg("VideoList", str(tmp_path))
    with caplog.at_level("INFO", logger="fima.data.datasets.video_list"):
        train = build_dataset(cfg, "train")
    # Logged for the split being built only.
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 2 and "train: 1 file(s) that are not videos (" in left_out[0]
    # A hidden video is not called a file that is not a video.
    assert "train: 1 hidden file(s) (names starting with '.') were left out, e.g." in left_out[1]
    assert left_out[1].endswith(".hidden.mp4")
    test = build_dataset(cfg, "test")
    # The classes of both splits, sorted: "jump" has test videos only and still has index 0.
    assert train.class_names == ["jump", "run", "walk"] == test.class_names
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in train] == [
        ("train/run/g.gif", 1), ("train/run/deep/c.mkv", 1), ("train/walk/a.mp4", 2),
        ("train/walk/b.AVI", 2),
    ]  # fmt: skip
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in test] == [
        ("test/jump/f.mp4", 0), ("test/walk/e.webm", 2),
    ]  # fmt: skip


def test_video_list_folders_unlabelled_and_beside_list_files(tmp_path) -> None:
    _touch(tmp_path, "train/1.mp4", "train/2.mp4", "test/x/3.mp4")
    cfg = _cfg("VideoList", str(tmp_path))
    assert [r.label for r in build_dataset(cfg, "train")] == [-1, -1]
    # A split's list file wins over its folder, and its labels share the folders' indices.
    (tmp_path / "train.csv").write_text("train/1.mp4,y\n")
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_names == ["x", "y"] == test.class_names
    assert [(r.path, r.label) for r in train] == [(str(tmp_path / "train" / "1.mp4"), 1)]
    assert [r.label for r in test] == [0]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("train/1.mp4", "train/walk/2.mp4"), r"directly in it \(e.g. .*1.mp4\) and in class"),
        (("train/walk/readme.md",), r"train: no videos in it or in class folders"),
    ],
)
def test_video_list_bad_folders_say_what_is_wrong(tmp_path, files, message: str) -> None:
    _touch(tmp_path, *files)
    with pytest.raises(AnnotationError, match=message):
        build_dataset(_cfg("VideoList", str(tmp_path)), "train")


@pytest.mark.parametrize(
    ("dataset", "relative", "text", "line"),
    [
        ("UCF101", "ucfTrainTestlist/trainlist01.txt", "Archery/v.avi 2\nArchery/w.avi x\n", 2),
        ("UCF101", "ucfTrainTestlist/classInd.txt", "1 Archery\n3 yoyo\n", 2),
        ("HMDB51", "testTrainMulti_7030_splits/yoyo_test_split1.txt", "a.avi 1\nb.avi 7\n", 2),
        (
            "Kinetics400",
            "annotations/train.csv",
            'label,youtube_id,time_start,time_end,split\na,x,0,10,train\n\n"b",y,zero,10,train\n',
            4,
        ),  # fmt: skip
        ("Kinetics400", "annotations/train.csv", "label,youtube_id,start,end\n", 1),
        ("VideoList", "train.csv", "path,label\na.mp4,x\nb.mp4,y,z\n", 3),
        # An unbalanced quote must not swallow the next lines into one unlabelled path.
        ("VideoList", "train.csv", 'path,label\n"a.mp4,x\nb.mp4,y\n', 2),
        ("VideoList", "train.txt", "a.mp4 x\nb.mp4\n", 2),
    ],
)
def test_malformed_lines_name_file_and_line(
    roots, tmp_path, dataset: str, relative: str, text: str, line: int
) -> None:
    root = tmp_path / dataset
    LAYOUTS[dataset](str(root), CLASSES, 1, {})
    path = root / relative
    if dataset == "VideoList":
        os.remove(root / "train.csv")
    path.write_text(text)
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:{line}: ")):
        build_dataset(_cfg(dataset, str(root)), "train")


@pytest.mark.parametrize("dataset", ["UCF101", "HMDB51", "Kinetics400", "VideoList"])
def test_missing_root_states_the_layout(tmp_path, dataset: str) -> None:
    cfg = _cfg(dataset, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"DATA.ROOT: .*nowhere.*expected .*DATASETS.md"):
        validate_cfg(cfg)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*expected .*DATASETS.md"):
        build_dataset(cfg, "train")


def test_missing_list_files_state_the_layout(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"classInd.txt: expected .*DATASETS.md"):
        build_dataset(_cfg("UCF101", str(tmp_path)), "train")
    with pytest.raises(FileNotFoundError, match=r"testTrainMulti_7030_splits: expected"):
        build_dataset(_cfg("HMDB51", str(tmp_path)), "train")
    with pytest.raises(FileNotFoundError, match=r"annotations/train.csv: expected"):
        build_dataset(_cfg("Kinetics400", str(tmp_path)), "train")
    with pytest.raises(FileNotFoundError, match=r"No list file or folder for split 'test'"):
        build_dataset(_cfg("VideoList", str(tmp_path)), "test")
    cfg = _cfg("VideoList", "", **{"DATA.VIDEO_LIST.TEST": str(tmp_path / "none.csv")})
    with pytest.raises(ConfigError, match="DATA.VIDEO_LIST.TEST: list file .*none.csv"):
        validate_cfg(cfg)
    cfg = _cfg("VideoList", "", **{"DATA.VIDEO_LIST.TRAIN": str(tmp_path)})
    with pytest.raises(ConfigError, match="DATA.VIDEO_LIST.TRAIN: .* is a folder: name a list"):
        validate_cfg(cfg)


def test_video_list_class_indices_agree_for_any_configured_splits(tmp_path) -> None:
    # A class only in the evaluation split (DATA.TEST_SPLIT "val", not "test") still takes
    # its place among the training split's classes, so both splits give "b" the same index.
    _touch(tmp_path, "train/b/1.mp4", "train/c/2.mp4", "val/a/3.mp4", "val/b/4.mp4")
    cfg = _cfg("VideoList", str(tmp_path), **{"DATA.TEST_SPLIT": "val"})
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train.class_names == ["a", "b", "c"] == val.class_names
    assert [r.label for r in train] == [1, 2] and [r.label for r in val] == [0, 1]


def test_video_list_integer_labels_keep_their_value(tmp_path, caplog) -> None:
    # A header of unknown column names is told apart from a video by its label; zero-padded
    # labels and class folders are their integer.
    (tmp_path / "train.csv").write_text("video_id,label\nx/1.mp4,2\nx/2.mp4,10\nx/3.mp4,01\n")
    with caplog.at_level("INFO", logger="fima.data.datasets.video_list"):
        train = build_dataset(_cfg("VideoList", str(tmp_path)), "train")
    assert "train.csv:1: read as a header line" in caplog.text
    assert train.class_names == [str(i) for i in range(11)]
    assert [r.label for r in train] == [2, 10, 1]
    _touch(tmp_path / "folders", "train/001/a.mp4", "train/002/b.mp4")
    train = build_dataset(_cfg("VideoList", str(tmp_path / "folders")), "train")
    assert [r.label for r in train] == [1, 2]


def test_video_list_warns_when_integer_labels_become_names(tmp_path, caplog, monkeypatch) -> None:
    from fima.utils import logger as fima_logger

    monkeypatch.setattr(fima_logger, "_said_once", set())  # as in a fresh process
    (tmp_path / "train.txt").write_text("a.mp4 2\nb.mp4 10\nc.mp4 walk\n")
    with caplog.at_level("WARNING", logger="fima.data.datasets.video_list"):
        train = build_dataset(_cfg("VideoList", str(tmp_path)), "train")
        build_dataset(_cfg("VideoList", str(tmp_path)), "train")  # said once, not per build
    assert train.class_names == ["10", "2", "walk"]
    said = "2 label(s) are integers (e.g. '2') and others are not (e.g. 'walk')"
    assert caplog.text.count(said) == 1


@pytest.mark.parametrize("text", ["", "\n\n", "path,label\n"])
def test_video_list_without_a_video_names_its_file(tmp_path, text: str) -> None:
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(AnnotationError, match=re.escape(f"{tmp_path / 'train.csv'}: lists no")):
        build_dataset(_cfg("VideoList", str(tmp_path)), "train")


@pytest.mark.parametrize(
    ("dataset", "relative", "text"),
    [
        ("VideoList", "train.csv", "a.mp4,walk\nb\u00e4.mp4,run\n"),
        ("Kinetics400", "annotations/train.csv", "label,youtube_id,time_start,time_end,split\n"
         "caf\u00e9,x,0,10,train\n"),
    ],
)  # fmt: skip
def test_a_list_that_is_not_utf8_names_file_and_line(
    tmp_path, dataset: str, relative: str, text: str
) -> None:
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:2: not UTF-8")):
        build_dataset(_cfg(dataset, str(tmp_path)), "train")


def test_kinetics_without_any_listed_video_says_so(tmp_path) -> None:
    root = tmp_path / "k400"
    LAYOUTS["Kinetics400"](str(root), ["a", "b"], 2, {})
    for video in (root / "train").rglob("*.mp4"):
        video.rename(video.with_suffix(".mkv"))
    with pytest.raises(FileNotFoundError, match=r"all 2 videos it lists are missing \(first: "):
        build_dataset(_cfg("Kinetics400", str(root)), "train")


def test_hmdb51_missing_fold_file_is_named_not_a_label_shift(tmp_path) -> None:
    root = tmp_path / "hmdb51"
    LAYOUTS["HMDB51"](str(root), CLASSES, 3, {})
    missing = root / "testTrainMulti_7030_splits" / "brush_hair_test_split2.txt"
    os.remove(missing)
    assert build_dataset(_cfg("HMDB51", str(root)), "train").num_classes == 3  # fold 1 is whole
    with pytest.raises(FileNotFoundError, match=re.escape(f"Missing {missing} (1 of the 3")):
        build_dataset(_cfg("HMDB51", str(root), **{"DATA.SPLIT": 2}), "train")


def test_hmdb51_hidden_files_beside_the_split_files_are_not_classes(tmp_path) -> None:
    # A folder copied from a Mac: "._brush_hair_test_split1.txt" was read as a 4th class's file.
    root = tmp_path / "hmdb51"
    LAYOUTS["HMDB51"](str(root), CLASSES, 3, {})
    lists = root / "testTrainMulti_7030_splits"
    (lists / "._brush_hair_test_split1.txt").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (lists / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    dataset = build_dataset(_cfg("HMDB51", str(root)), "train")
    assert dataset.class_names == sorted(CLASSES)


@pytest.mark.parametrize(
    ("dataset", "overrides", "message"),
    [
        ("UCF101", {"DATA.SPLIT": 4}, "DATA.SPLIT: UCF101's official folds are 1, 2, 3, got 4"),
        ("HMDB51", {"DATA.SPLIT": 0}, "DATA.SPLIT: HMDB51's official folds are 1, 2, 3, got 0"),
        ("UCF101", {"DATA.TEST_SPLIT": "val"}, "DATA.TEST_SPLIT: UCF101 has splits 'train', "),
        ("Kinetics400", {"DATA.TRAIN_SPLIT": "trainval"}, "Kinetics400 has splits 'test', "),
    ],
)
def test_splits_an_official_dataset_does_not_have_are_refused_at_start_up(
    roots, dataset: str, overrides: dict, message: str
) -> None:
    # They stopped the run in a traceback from inside the dataset, after config.yaml was written.
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_cfg(_cfg(dataset, roots[dataset], **overrides))
    validate_cfg(_cfg(dataset, roots[dataset]))


def test_kinetics_missing_videos_are_warned_about_once(tmp_path, caplog, monkeypatch) -> None:
    from fima.utils import logger as fima_logger

    monkeypatch.setattr(fima_logger, "_said_once", set())
    root = tmp_path / "k400"
    LAYOUTS["Kinetics400"](str(root), ["a", "b"], 3, {"missing": "a"})
    with caplog.at_level("WARNING"):
        for _ in range(3):  # as training, its evaluation and the start-up checks build it
            build_dataset(_cfg("Kinetics400", str(root)), "train")
    said = [r for r in caplog.records if "are missing and were skipped" in r.getMessage()]
    assert len(said) == 1


def test_kinetics_test_csv_without_labels_gives_unlabelled_videos(tmp_path) -> None:
    # The original release's test.csv held its labels out; its videos lie flat in test/.
    LAYOUTS["Kinetics400"](str(tmp_path), ["a", "b"], 2, {})
    (tmp_path / "test").mkdir()
    write_test_video(str(tmp_path / "test" / "xyz00000001_000000_000010.mp4"))
    (tmp_path / "annotations" / "test.csv").write_text(
        "youtube_id,time_start,time_end,split\nxyz00000001,0,10,test\nabsent00001,0,10,test\n"
    )
    cfg = _cfg("Kinetics400", str(tmp_path))
    test = build_dataset(cfg, "test")
    assert [(os.path.basename(r.path), r.label) for r in test] == [
        ("xyz00000001_000000_000010.mp4", -1)
    ]
    assert test.class_names == ["a", "b"] and len(test.missing) == 1
    # The training split's labels are still required.
    (tmp_path / "annotations" / "train.csv").write_text(
        "youtube_id,time_start,time_end,split\nxyz00000001,0,10,train\n"
    )
    with pytest.raises(AnnotationError, match="expected the header label,youtube_id"):
        build_dataset(cfg, "train")


def test_kinetics_without_a_test_csv_suggests_the_val_split(tmp_path) -> None:
    LAYOUTS["Kinetics400"](str(tmp_path), ["a"], 2, {})
    with pytest.raises(FileNotFoundError, match="DATA.TEST_SPLIT val"):
        build_dataset(_cfg("Kinetics400", str(tmp_path)), "test")
