"""HMDB51 in its official layout (see DATASETS.md).

::

    ROOT/<class>/<name>.avi
    ROOT/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt   "<name>.avi <0|1|2>"

In the split files of fold N, 1 marks a training video, 2 a test video and 0 a video that fold
does not use. The classes are the names of fold N's split files, sorted; a label is the index of
its class in that order.
"""

from __future__ import annotations

import os
import re

from fima.config.config import CfgNode
from fima.data.datasets.build import (
    DATASET_REGISTRY,
    AnnotationError,
    VideoDataset,
    VideoRecord,
    read_lines,
    require_root,
    require_splits,
    video_or_frames,
)

LAYOUT = (
    "expected ROOT/<class>/<video>.avi and "
    "ROOT/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt; see DATASETS.md"
)
SPLIT_DIR = "testTrainMulti_7030_splits"
_SPLIT_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<fold>[123])\.txt$")
_MARK = {"train": "1", "test": "2"}
# HMDB51 clips of one source video share its name up to the clip number: <movie>_<class>_..._<n>.
_CLIP_NUMBER = re.compile(r"_\d+\.avi$")


def read_hmdb51_split(root: str, split: str, fold: int) -> tuple[list[VideoRecord], list[str]]:
    """Read fold ``fold`` (1..3) of ``split`` (``train``/``test``) of an HMDB51-layout root.

    Raises:
        FileNotFoundError: the split folder or fold ``fold``'s files are missing.
        AnnotationError: a malformed line (the message names the file and line number).
    """
    if split not in _MARK:
        raise ValueError(f"HMDB51 has splits 'train' and 'test', not {split!r}")
    if fold not in (1, 2, 3):
        raise ValueError(f"DATA.SPLIT must be 1, 2 or 3 for HMDB51, got {fold}")
    lists = os.path.join(root, SPLIT_DIR)
    if not os.path.isdir(lists):
        raise FileNotFoundError(f"Missing {lists}: {LAYOUT}")
    files, every_class = {}, set()
    for file_name in os.listdir(lists):
        # Hidden files (macOS's "._<name>" copies, .DS_Store) are not split files.
        match = None if file_name.startswith(".") else _SPLIT_FILE.match(file_name)
        if match:
            every_class.add(match["name"])
            if int(match["fold"]) == fold:
                files[match["name"]] = os.path.join(lists, file_name)
    if not files:
        raise FileNotFoundError(f"No <class>_test_split{fold}.txt in {lists}: {LAYOUT}")
    # The classes are those of every fold's files, so a missing file cannot shift the labels.
    class_names = sorted(every_class)
    absent = [name for name in class_names if name not in files]
    if absent:
        raise FileNotFoundError(
            f"Missing {os.path.join(lists, f'{absent[0]}_test_split{fold}.txt')} "
            f"({len(absent)} of the {len(class_names)} classes have no fold-{fold} file): {LAYOUT}"
        )
    records = []
    for label, class_name in enumerate(class_names):
        for number, line in read_lines(files[class_name]):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(
                    f"{files[class_name]}:{number}: expected '<video>.avi <0|1|2>', got {line!r}"
                )
            if parts[1] == _MARK[split]:
                records.append(
                    VideoRecord(
                        path=video_or_frames(os.path.join(root, class_name, parts[0])),
                        label=label,
                        group=_CLIP_NUMBER.sub("", parts[0]),
                    )
                )
    return records, class_names


@DATASET_REGISTRY.register()
class HMDB51(VideoDataset):
    """HMDB51 (51 classes, 6,766 videos; 3,570 train and 1,530 test per fold)."""

    LAYOUT = LAYOUT
    ROOT_REQUIRED = True

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        require_splits(cfg, "HMDB51", ("train", "test"), (1, 2, 3))

    def __init__(self, cfg: CfgNode, split: str) -> None:
        root = require_root(cfg.DATA.ROOT, "HMDB51", LAYOUT)
        records, class_names = read_hmdb51_split(root, split, cfg.DATA.SPLIT)
        super().__init__(records, class_names, name="HMDB51", split=split, root=root)
