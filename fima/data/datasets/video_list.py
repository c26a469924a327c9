"""VideoList: any videos, listed one per line as ``path label`` (see DATASETS.md).

A list is a CSV file (``.csv``: ``path,label``, an optional header ``path,label``, quoting as
usual) or a text file of whitespace-separated ``path label`` (paths without spaces). Every line of
a file has a label or none does (an unlabelled list, for pretraining; labels are then -1).

Labels: if every label of the dataset's lists is a non-negative integer, it is the class index
and the classes are named ``"0" .. "K-1"``; otherwise the labels are class names, sorted, and a
label is the index of its name. Both list files (train and test) decide, so indices agree.

Relative paths are relative to ``DATA.ROOT``, or to the list file's folder if ``DATA.ROOT`` is
empty.
"""

from __future__ import annotations

import csv
import os

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.data.datasets.build import (
    DATASET_REGISTRY,
    AnnotationError,
    VideoDataset,
    VideoRecord,
    read_lines,
    require_root,
)

LAYOUT = (
    "expected list files DATA.VIDEO_LIST.TRAIN / TEST, or DATA.ROOT/<split>.csv or "
    "DATA.ROOT/<split>.txt, of 'path label' lines; see DATASETS.md"
)
_HEADERS = (["path"], ["path", "label"])


def add_video_list_config(cfg: CfgNode) -> None:
    """``DATA.VIDEO_LIST``: the list files of the VideoList dataset."""
    cfg.DATA.VIDEO_LIST = CN()
    # The list of each split. Empty: DATA.ROOT/<split>.csv, else DATA.ROOT/<split>.txt.
    cfg.DATA.VIDEO_LIST.TRAIN = ""
    cfg.DATA.VIDEO_LIST.TEST = ""


def list_file(cfg: CfgNode, split: str) -> str | None:
    """The list file of ``split``, or None if there is none."""
    configured = cfg.DATA.VIDEO_LIST.get(split.upper(), "")
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


def read_video_list(path: str) -> list[tuple[int, str, str | None]]:
    """``(line number, video path as written, label or None)`` for every entry of a list file.

    Raises:
        AnnotationError: a line with the wrong number of fields, an empty path, or a line with a
            label in a file whose first line has none (or the reverse).
    """
    if path.endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, [field.strip() for field in row]) for row in reader]
        lines = [(n, fields) for n, fields in lines if any(fields)]
        if lines and [field.lower() for field in lines[0][1]] in _HEADERS:
            lines = lines[1:]
        expected = "'path,label' (or 'path')"
    else:
        lines = [(number, line.split()) for number, line in read_lines(path)]
        expected = "'path label' (or 'path'), separated by whitespace; use a .csv for paths "
        expected += "with spaces"
    entries: list[tuple[int, str, str | None]] = []
    width = len(lines[0][1]) if lines else 0
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


def class_names_of(labels: list[str]) -> list[str]:
    """``"0" .. "K-1"`` if every label is a non-negative integer, else the sorted names."""
    if labels and all(label.isdigit() for label in labels):
        return [str(i) for i in range(max(int(label) for label in labels) + 1)]
    return sorted(set(labels))


@DATASET_REGISTRY.register()
class VideoList(VideoDataset):
    """Videos from list files of ``path label`` lines (module doc)."""

    LAYOUT = LAYOUT

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        from fima.config.validation import require

        for key in ("TRAIN", "TEST"):
            path = cfg.DATA.VIDEO_LIST[key]
            require(
                not path or os.path.isfile(os.path.expanduser(path)),
                f"DATA.VIDEO_LIST.{key}",
                f"list file {path!r} does not exist",
            )

    def __init__(self, cfg: CfgNode, split: str) -> None:
        path = list_file(cfg, split)
        if path is None:
            if cfg.DATA.ROOT:
                require_root(cfg.DATA.ROOT, "VideoList", LAYOUT)
            raise FileNotFoundError(f"No list file for split {split!r}: {LAYOUT}")
        lists = {s: list_file(cfg, s) for s in ("train", "test")}
        lists[split] = path
        entries = {s: read_video_list(p) for s, p in lists.items() if p is not None}
        class_names = class_names_of(
            [label for rows in entries.values() for _, _, label in rows if label is not None]
        )
        label_of = {name: i for i, name in enumerate(class_names)}
        root = (
            os.path.abspath(os.path.expanduser(cfg.DATA.ROOT))
            if cfg.DATA.ROOT
            else os.path.dirname(os.path.abspath(path))
        )
        records = []
        for _, video, label in entries[split]:
            full = os.path.normpath(os.path.join(root, os.path.expanduser(video)))
            records.append(VideoRecord(full, -1 if label is None else label_of[label], full))
        super().__init__(records, class_names, name="VideoList", split=split, root=root)
