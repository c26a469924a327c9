"""VideoList: any videos, listed one per line as ``path label``, or in class folders (see
DATASETS.md).

A list is a CSV file (``.csv``, in any case: ``path,label``, quoting as usual; or, without
commas, SlowFast's ``path label``) or a text file of whitespace-separated ``path label`` (paths
without spaces), with an optional header line naming the columns. Every line of a file has a
label or none does (an unlabelled list, for pretraining; labels are then -1).

A split without a list file may be a folder ``DATA.ROOT/<split>/``: ``<class>/<video>`` (videos
anywhere below a class folder), or only videos directly in it (unlabelled). A video may be a
folder of frames (one image per frame) wherever a video file may be, in a list or a folder.
Files whose extension is not a video container's (:data:`VIDEO_EXTENSIONS`) and hidden entries
are left out, counted and logged.

Labels: if every label of the dataset's splits is a non-negative integer, it is the class index
and the classes are named ``"0" .. "K-1"``; otherwise the labels are class names, sorted, and a
label is the index of its name. Both splits (train and test) decide, so indices agree.

Relative paths are relative to ``DATA.ROOT``, or to the list file's folder if ``DATA.ROOT`` is
empty.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.data.datasets.build import (
    DATASET_REGISTRY,
    AnnotationError,
    VideoDataset,
    VideoRecord,
    read_lines,
    require_root,
    video_or_frames,
)
from fima.data.decoder import is_frame_name
from fima.utils.logger import log_once

logger = logging.getLogger(__name__)

LAYOUT = (
    "expected list files DATA.VIDEO_LIST.TRAIN / TEST (of DATA.TRAIN_SPLIT / TEST_SPLIT), or "
    "DATA.ROOT/<split>.csv or DATA.ROOT/<split>.txt, of 'path label' lines, or class folders "
    "DATA.ROOT/<split>/<class>/<video>; see DATASETS.md"
)
# Column names a list's first line may carry instead of a video (compared in lower case).
_PATH_COLUMNS = ("path", "video", "video_path", "filename", "file", "clip")
_LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "action", "label_name")
# Containers PyAV (FFmpeg) reads and videos commonly come in; compared in lower case.
VIDEO_EXTENSIONS = (
    ".3gp", ".avi", ".flv", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ogv",
    ".webm", ".wmv",
)  # fmt: skip


def add_video_list_config(cfg: CfgNode) -> None:
    """``DATA.VIDEO_LIST``: the list files of the VideoList dataset."""
    cfg.DATA.VIDEO_LIST = CN()
    # The list of the training split (whatever DATA.TRAIN_SPLIT names it) and of the evaluation
    # split (DATA.TEST_SPLIT: test, val, ...). Empty: DATA.ROOT/<split>.csv, else .txt.
    cfg.DATA.VIDEO_LIST.TRAIN = ""
    cfg.DATA.VIDEO_LIST.TEST = ""


def configured_list(cfg: CfgNode, split: str) -> str:
    """The list file that ``DATA.VIDEO_LIST`` gives ``split``, as written, or ``""``:
    ``TRAIN`` is the list of ``DATA.TRAIN_SPLIT``, ``TEST`` that of ``DATA.TEST_SPLIT`` (also
    when they are not named ``train`` and ``test``); a split that both name takes the one set."""
    lists = cfg.DATA.VIDEO_LIST
    return (split == cfg.DATA.TRAIN_SPLIT and lists.TRAIN) or (
        split == cfg.DATA.TEST_SPLIT and lists.TEST
    )


def list_file(cfg: CfgNode, split: str) -> str | None:
    """The list file of ``split``, or None if there is none."""
    configured = configured_list(cfg, split)
    if configured:
        path = os.path.expanduser(configured)
        return path if os.path.isfile(path) else None
    if not cfg.DATA.ROOT:
        return None
    for extension in (".csv", ".txt"):
        path = os.path.join(os.path.expanduser(cfg.DATA.ROOT), split + extension)
        if os.path.isfile(path):
            return path
    return None


def _is_header(fields: list[str]) -> bool:
    """Whether a list's first line names its columns (``path,label``, ``video,class``, ...)."""
    names = [field.lower() for field in fields]
    return (
        len(names) in (1, 2)
        and names[0] in _PATH_COLUMNS
        and (len(names) == 1 or names[1] in _LABEL_COLUMNS)
    )


def _space_separated(lines: list[tuple[int, str]]) -> bool:
    """Whether a ``.csv`` file's lines are ``path label`` separated by whitespace, without a
    comma (SlowFast's ``train.csv``): every line ends in a whitespace-separated integer label."""
    return bool(lines) and all(
        "," not in line and len(line.split()) >= 2 and line.split()[-1].isdigit()
        for _, line in lines
    )


def _csv_fields(path: str, number: int, line: str, expected: str) -> list[str]:
    """The stripped fields of one CSV line, read on its own and strictly: an unbalanced quote
    would otherwise swallow the following lines into one path without a label.

    Raises:
        AnnotationError: a quote that is not closed, or text after a closing quote.
    """
    try:
        return [field.strip() for field in next(csv.reader([line], strict=True))]
    except csv.Error as err:
        raise AnnotationError(
            f"{path}:{number}: {err} (a quote must enclose a whole field); expected {expected}, "
            f"got {line!r}"
        ) from None


def read_video_list(path: str) -> list[tuple[int, str, str | None]]:
    """``(line number, video path as written, label or None)`` for every entry of a list file.

    A first line that names the columns is skipped: one with known column names
    (:func:`_is_header`), or one whose label is not an integer while every other line's is (a
    header with other names, ``video_id,label``). A ``.csv`` file whose lines hold no comma and
    end in an integer label after whitespace is read as SlowFast's ``path label`` lines (the path
    may hold spaces). A whitespace-separated list whose every line is ``path N label`` with
    integers ``N`` and ``label`` is mmaction2's list of folders of frames; ``N`` (its frame
    count) is not used.

    Raises:
        AnnotationError: no entry, a line with the wrong number of fields, an empty path, a CSV
            line with unbalanced quotes, or a line with a label in a file whose first line has
            none (or the reverse).
    """
    text_lines = read_lines(path)
    if text_lines and _is_header(
        [field.strip("'\"") for field in re.split(r"[,\s]+", text_lines[0][1])]
    ):
        text_lines = text_lines[1:]
    # The format is told from the lines after the first, which may be a header of other names.
    # The extension in any case: a list exported as LIST.CSV is a CSV file all the same.
    is_csv = path.lower().endswith(".csv")
    if is_csv and not _space_separated(text_lines[1:] or text_lines):
        expected = "'path,label' (or 'path')"
        lines = [(number, _csv_fields(path, number, line, expected)) for number, line in text_lines]
    else:
        split = (lambda line: line.rsplit(maxsplit=1)) if is_csv else str.split
        lines = [(number, split(line)) for number, line in text_lines]
        expected = "'path label' (or 'path'), separated by whitespace; use a .csv for paths "
        expected += "with spaces"
        if lines and all(
            len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit() for _, fields in lines
        ):
            # mmaction2's lists of folders of frames: 'path frames label'. The frames are
            # counted from the folder, as for any video.
            log_once(
                logger, logging.INFO, ("mmaction2 list", path),
                "%s: read as 'path frames label' lines (mmaction2's)", path,
            )  # fmt: skip
            lines = [(number, [fields[0], fields[2]]) for number, fields in lines]
    if (
        len(lines) >= 2
        and len(lines[0][1]) == 2
        and not lines[0][1][1].isdigit()
        and all(len(fields) == 2 and fields[1].isdigit() for _, fields in lines[1:])
    ):
        logger.info("%s:%d: read as a header line: %s", path, lines[0][0], lines[0][1])
        lines = lines[1:]
    if not lines:
        raise AnnotationError(f"{path}: lists no video; expected lines of {expected}")
    entries: list[tuple[int, str, str | None]] = []
    width = len(lines[0][1])
    for number, fields in lines:
        if len(fields) not in (1, 2) or not fields[0] or (len(fields) == 2 and not fields[1]):
            raise AnnotationError(f"{path}:{number}: expected {expected}, got {fields}")
        if len(fields) != width:
            raise AnnotationError(
                f"{path}:{number}: {'a label' if len(fields) == 2 else 'no label'} here, but the "
                f"first line {'has none' if width == 1 else 'has one'}; label every line or none"
            )
        entries.append((number, fields[0], fields[1] if len(fields) == 2 else None))
    return entries


def split_folder(cfg: CfgNode, split: str) -> str | None:
    """``DATA.ROOT/<split>`` if it is a folder (read when the split has no list file)."""
    if not cfg.DATA.ROOT:
        return None
    folder = os.path.join(os.path.expanduser(cfg.DATA.ROOT), split)
    return folder if os.path.isdir(folder) else None


@dataclass
class VideoScan:
    """What :func:`scan_videos` found below a folder.

    Attributes:
        videos: ``(absolute path, folders between the scanned folder and it)``: those of the
            folders themselves first, in walk order (folders and files sorted by name), then
            those reached through symbolic links, in the order the links were found.
        ignored: files that are not videos.
        hidden: hidden files (names starting with ``.``).
        revisited: folders and video files reached again (through a link that loops back or
            leads above the folder, or a second way to one), read once.
        inside_frames: folders of frames with video files in folders below them, which are
            taken for the folder's own (left out).
        beside_video: folders of frames beside a video file of their name (``clip/`` beside
            ``clip.mp4``), left out for the file.
        empty: empty folders (left out).
    """

    videos: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    revisited: list[str] = field(default_factory=list)
    inside_frames: list[str] = field(default_factory=list)
    beside_video: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def scan_videos(folder: str, folder_may_be_video: bool = False) -> VideoScan:
    """The videos below ``folder``, and what was left out: video files
    (:data:`VIDEO_EXTENSIONS`) and folders of frames (:func:`is_folder_of_frames`).

    Symbolic links to folders are followed after the folders themselves, so that a folder
    reached both directly and through a link is read where it is (its class is its own); each
    folder is read once. Hidden entries are left out.

    Args:
        folder: the folder to search.
        folder_may_be_video: ``folder`` itself may be a folder of frames (one video), as a
            tool's input may; a dataset's split folder may not.

    Returns:
        The videos, and the files and folders left out.
    """
    folder = os.path.abspath(folder)
    real_folder = os.path.realpath(folder)
    scan = VideoScan()
    seen: set[tuple[int, int]] = set()
    pending = [folder]  # the folder, then the links found below it, in order
    linked_files: list[tuple[str, tuple[str, ...]]] = []  # video files that are links
    seen_files: set[tuple[int, int]] = set()
    while pending:
        top = pending.pop(0)
        if top != folder:
            # A link up to the folder or above it is a loop, whatever else it reaches (the
            # other split, from one split's class folder). Only a link's target can contain
            # the folder: what lies below it was reached without a link.
            target = os.path.realpath(top)
            if real_folder == target or real_folder.startswith(target.rstrip(os.sep) + os.sep):
                scan.revisited.append(top)
                continue
        for parent, dirs, files in os.walk(top):
            identity = _folder_identity(parent)
            if identity in seen:
                scan.revisited.append(parent)
                dirs[:] = []
                continue
            seen.add(identity)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            relative = os.path.relpath(parent, folder)
            parts = () if relative == os.curdir else tuple(relative.split(os.sep))
            if parts and not dirs and not files:
                scan.empty.append(parent)  # a failed extraction leaves one
                continue
            # A video file wins over the folder of its own frames beside it (clip.mp4, clip/),
            # as the official datasets' lists take the file.
            stems = {os.path.splitext(n)[0] for n in files if n.lower().endswith(VIDEO_EXTENSIONS)}
            for name in [d for d in dirs if d in stems]:
                if _is_folder_of_frames_at(os.path.join(parent, name)):
                    scan.beside_video.append(os.path.join(parent, name))
                    dirs.remove(name)
            if (parts or folder_may_be_video) and is_folder_of_frames(files, dirs):
                # One video; the files and folders beside its frames are its own.
                if dirs and _video_files_below(parent):
                    scan.inside_frames.append(parent)
                scan.videos.append((parent, parts[:-1]))
                dirs[:] = []
                continue
            linked = [d for d in dirs if os.path.islink(os.path.join(parent, d))]
            pending.extend(os.path.join(parent, d) for d in linked)
            dirs[:] = [d for d in dirs if d not in linked]
            for name in sorted(files):
                path = os.path.join(parent, name)
                if name.startswith("."):
                    scan.hidden.append(path)
                elif not name.lower().endswith(VIDEO_EXTENSIONS):
                    scan.ignored.append(path)
                elif os.path.islink(path):
                    linked_files.append((path, parts))  # after the files themselves
                else:
                    seen_files.add(_folder_identity(path))
                    scan.videos.append((path, parts))
    for path, parts in linked_files:
        try:
            identity = _folder_identity(path)
        except OSError:  # a broken link: a missing video, reported as a bad one
            scan.videos.append((path, parts))
            continue
        if identity in seen_files:
            scan.revisited.append(path)
        else:
            seen_files.add(identity)
            scan.videos.append((path, parts))
    return scan


def is_folder_of_frames(files: list[str], folders: list[str]) -> bool:
    """Whether a folder of these files and (not hidden) subfolders is a folder of frames: it
    holds frame images and no video (:func:`holds_frames`), and either no subfolder or more
    numbered frames (``img_00001.jpg``) than subfolders, and at least two: a class folder's stray
    pictures (``cover.jpg``, ``cover_1.jpg`` and ``cover_2.jpg``) beside its folders of videos
    do not make it one, while a folder of frames with a subfolder or two of its own (optical
    flow, thumbnails) stays one."""
    if not holds_frames(files):
        return False
    return not folders or len(_numbered_frames(files)) > max(len(folders), 1)


def _is_folder_of_frames_at(path: str) -> bool:
    """:func:`is_folder_of_frames` of the folder at ``path``."""
    with os.scandir(path) as scan:
        entries = [entry for entry in scan if not entry.name.startswith(".")]
    files = [entry.name for entry in entries if not entry.is_dir()]
    return is_folder_of_frames(files, [entry.name for entry in entries if entry.is_dir()])


def _folder_identity(path: str) -> tuple[int, int]:
    """A folder's or file's identity on its file system, whatever link reached it."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _video_files_below(folder: str) -> bool:
    """Whether any folder below ``folder`` holds a video file (images below a folder of frames
    are its own: optical flow, thumbnails). Links are not followed: one may loop back."""
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(not n.startswith(".") and n.lower().endswith(VIDEO_EXTENSIONS) for n in files):
            return True
    return False


def read_video_folder(folder: str, log: bool = True) -> list[tuple[str, str | None]]:
    """``(absolute video path, class name or None)`` for every video under ``folder``, sorted.

    A video below a subfolder of ``folder`` has that subfolder's name as its class (at any depth
    below it); a video directly in ``folder`` has none. Videos are found by :func:`scan_videos`
    (video files and folders of frames); hidden entries and files that are not videos
    (:data:`VIDEO_EXTENSIONS`) are left out, and counted in the log if ``log``, as are folders
    that symbolic links reach twice (read once, with a warning).

    Raises:
        AnnotationError: the folder holds videos both directly and in class folders, or no video.
    """
    folder = os.path.abspath(folder)
    scan = scan_videos(folder)
    videos = [(path, parts[0] if parts else None) for path, parts in scan.videos]
    if log:
        report_scan(scan, f"VideoList {folder}")
    if not videos:
        raise AnnotationError(f"{folder}: no videos in it or in class folders below it ({LAYOUT})")
    unlabelled = [path for path, label in videos if label is None]
    if unlabelled and len(unlabelled) < len(videos):
        why = ""
        if os.path.isdir(unlabelled[0]):
            # A class folder with numbered pictures of its own is read as a folder of frames.
            pictures = sorted(_numbered_frames(os.listdir(unlabelled[0])))[:3]
            why = (
                f", a folder read as a folder of frames for the numbered images in it "
                f"({', '.join(pictures)}): a class folder's own pictures belong elsewhere, and a "
                "video in its class folder"
            )
        raise AnnotationError(
            f"{folder}: videos directly in it (e.g. {unlabelled[0]}{why}) and in class folders; "
            "put every video in its class folder, or all of them directly in it (unlabelled)"
        )
    return videos


def report_scan(scan: VideoScan, source: str) -> None:
    """Log, once per process and source, what :func:`scan_videos` left out or read once: the
    files that are not videos and the hidden ones at INFO, the rest, which a user would not
    expect, as warnings."""
    said = {
        "ignored": f"file(s) that are not videos ({', '.join(VIDEO_EXTENSIONS)}) were left out",
        "hidden": "hidden file(s) (names starting with '.') were left out",
        "revisited": "folder(s) or video file(s) reached again through a symbolic link were "
        "read once (a link that loops back or leads above the searched folder, or a second way "
        "to one)",
        "inside_frames": "folder(s) of frames have video files in folders below them, which are "
        "read as the folder's own and left out (move such videos out of folders of frames)",
        "beside_video": "folder(s) of frames lie beside a video file of their name "
        "(clip/ beside clip.mp4) and were left out for the file",
        "empty": "empty folder(s) were left out (a failed frame extraction leaves one)",
    }
    for kind, words in said.items():
        found = getattr(scan, kind)
        if found:
            level = logging.INFO if kind in ("ignored", "hidden") else logging.WARNING
            log_once(
                logger, level, ("scan", source, kind, len(found)),
                "%s: %d %s, e.g. %s", source, len(found), words, found[0],
            )  # fmt: skip


def holds_frames(files: list[str]) -> bool:
    """Whether a folder's files make it a folder of frames: frame images
    (:func:`~fima.data.decoder.is_frame_name`) and no video file."""
    return any(is_frame_name(name) for name in files) and not any(
        not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS) for name in files
    )


def _numbered_frames(files: list[str]) -> list[str]:
    """The frame images whose names hold a number (``img_00001.jpg``, ``cover_1.jpg``)."""
    return [name for name in files if is_frame_name(name) and any(c.isdigit() for c in name)]


def class_names_of(labels: list[str]) -> list[str]:
    """``"0" .. "K-1"`` if every label is a non-negative integer (``"007"`` is 7), else the
    sorted names (logging a warning if some of them are integers, which then sort as text)."""
    if labels and all(label.isdigit() for label in labels):
        return [str(i) for i in range(max(int(label) for label in labels) + 1)]
    numbers = sorted({label for label in labels if label.isdigit()}, key=int)
    if numbers:
        name = next(label for label in labels if not label.isdigit())
        log_once(
            logger, logging.WARNING, ("mixed labels", len(numbers), numbers[0], name),
            "VideoList: %d label(s) are integers (e.g. %r) and others are not (e.g. %r), so every "
            "label is read as a class name and the classes are sorted as text; label every video "
            "with an integer, or every one with a name",
            len(numbers), numbers[0], name,
        )  # fmt: skip
    return sorted(set(labels))


@DATASET_REGISTRY.register()
class VideoList(VideoDataset):
    """Videos from list files of ``path label`` lines, or from class folders (module doc)."""

    LAYOUT = LAYOUT

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        from fima.config.validation import require

        lists = cfg.DATA.VIDEO_LIST
        for key in ("TRAIN", "TEST"):
            path = lists[key]
            require(
                not path or os.path.isfile(os.path.expanduser(path)),
                f"DATA.VIDEO_LIST.{key}",
                f"{path!r} is a folder: name a list file, or put the split's class folders in "
                "DATA.ROOT/<split>/ and leave this key empty"
                if os.path.isdir(os.path.expanduser(path))
                else f"list file {path!r} does not exist",
            )
        # Training and evaluation read one split: one list file, not two.
        require(
            cfg.DATA.TRAIN_SPLIT != cfg.DATA.TEST_SPLIT
            or not (lists.TRAIN and lists.TEST)
            or os.path.realpath(os.path.expanduser(lists.TRAIN))
            == os.path.realpath(os.path.expanduser(lists.TEST)),
            "DATA.VIDEO_LIST.TEST",
            f"{lists.TEST!r}, but DATA.TEST_SPLIT and DATA.TRAIN_SPLIT are both "
            f"{cfg.DATA.TEST_SPLIT!r}, whose list is DATA.VIDEO_LIST.TRAIN {lists.TRAIN!r}: "
            "give the split one list, or name the splits differently",
        )

    def __init__(self, cfg: CfgNode, split: str) -> None:
        list_path = list_file(cfg, split)
        if list_path is None and split_folder(cfg, split) is None:
            if cfg.DATA.ROOT:
                require_root(cfg.DATA.ROOT, "VideoList", LAYOUT)
            raise FileNotFoundError(f"No list file or folder for split {split!r}: {LAYOUT}")
        # The labels of every split a run reads decide the class indices, so that they agree
        # between training and evaluation whatever DATA.TRAIN_SPLIT and TEST_SPLIT name.
        splits = ("train", "test", cfg.DATA.TRAIN_SPLIT, cfg.DATA.TEST_SPLIT, split)
        videos = {s: self._read_split(cfg, s, log=s == split) for s in dict.fromkeys(splits)}
        class_names = class_names_of(
            [label for rows in videos.values() if rows for _, label in rows if label is not None]
        )
        index_of = {name: i for i, name in enumerate(class_names)}

        def index(label: str | None) -> int:
            # Unlabelled is -1; names are looked up; integer labels are their own index ("007").
            if label is None:
                return -1
            return index_of[label] if label in index_of else int(label)

        records = [VideoRecord(video, index(label), video) for video, label in videos[split] or []]
        # A split without DATA.ROOT has a list file (checked above): its folder is the root.
        root = os.path.expanduser(cfg.DATA.ROOT) or os.path.dirname(list_path or "")
        super().__init__(
            records, class_names, name="VideoList", split=split, root=os.path.abspath(root)
        )

    @staticmethod
    def _read_split(cfg: CfgNode, split: str, log: bool) -> list[tuple[str, str | None]] | None:
        """``(absolute video path, label or None)`` of a split: from its list file if it has
        one, else from its folder (logging what it leaves out if ``log``); None if neither."""
        path = list_file(cfg, split)
        if path is None:
            folder = split_folder(cfg, split)
            return None if folder is None else read_video_folder(folder, log)
        # List paths are relative to DATA.ROOT, or to the list's folder if it is empty.
        base = os.path.abspath(os.path.expanduser(cfg.DATA.ROOT) or os.path.dirname(path))
        # A listed video file that is absent may be the folder of its frames beside it, as in
        # the official datasets' lists.
        return [
            (video_or_frames(os.path.normpath(os.path.join(base, os.path.expanduser(p)))), label)
            for _, p, label in read_video_list(path)
        ]
