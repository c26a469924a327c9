"""UCF101 in its official layout (see DATASETS.md).

::

    ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
    ROOT/ucfTrainTestlist/classInd.txt        "<1-based index> <Class>"
    ROOT/ucfTrainTestlist/trainlist0{1,2,3}.txt  "<Class>/v_..._gXX_cYY.avi <1-based index>"
    ROOT/ucfTrainTestlist/testlist0{1,2,3}.txt   "<Class>/v_..._gXX_cYY.avi"

Labels are ``classInd.txt``'s indices minus one: the official order, which is the class names
sorted alphabetically without regard to case.
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
    require_file,
    require_root,
    require_splits,
    video_or_frames,
)

_GROUP = re.compile(r"_g(\d+)_c\d+")
LAYOUT = (
    "expected ROOT/UCF-101/<Class>/<video>.avi and ROOT/ucfTrainTestlist/{classInd.txt,"
    "trainlist0N.txt,testlist0N.txt}; see DATASETS.md"
)


def read_ucf101_split(root: str, split: str, fold: int) -> tuple[list[VideoRecord], list[str]]:
    """Read fold ``fold`` (1..3) of ``split`` (``train``/``test``) of a UCF101-layout root.

    Raises:
        FileNotFoundError: a list file is missing.
        AnnotationError: a malformed line (the message names the file and line number).
    """
    if split not in ("train", "test"):
        raise ValueError(f"UCF101 has splits 'train' and 'test', not {split!r}")
    if fold not in (1, 2, 3):
        raise ValueError(f"DATA.SPLIT must be 1, 2 or 3 for UCF101, got {fold}")
    lists = os.path.join(root, "ucfTrainTestlist")
    class_file = require_file(os.path.join(lists, "classInd.txt"), LAYOUT)
    list_file = require_file(os.path.join(lists, f"{split}list0{fold}.txt"), LAYOUT)
    class_names: list[str] = []
    for number, line in read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(class_names) + 1:
            raise AnnotationError(
                f"{class_file}:{number}: expected '<{len(class_names) + 1}> <Class>', got {line!r}"
            )
        class_names.append(parts[1])
    label_of = {name: i for i, name in enumerate(class_names)}
    records = []
    for number, line in read_lines(list_file):
        parts = line.split()
        rel = parts[0] if parts else ""
        class_name = rel.split("/")[0]
        if len(parts) not in (1, 2) or "/" not in rel or class_name not in label_of:
            raise AnnotationError(
                f"{list_file}:{number}: expected '<Class>/<video>.avi [label]' with a class from "
                f"classInd.txt, got {line!r}"
            )
        label = label_of[class_name]
        if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
            raise AnnotationError(
                f"{list_file}:{number}: label {parts[1]!r} does not match class {class_name!r} "
                f"(classInd.txt gives {label + 1})"
            )
        group = _GROUP.search(rel)
        records.append(
            VideoRecord(
                path=video_or_frames(os.path.join(root, "UCF-101", rel)),
                label=label,
                group=f"{class_name}_g{group.group(1)}" if group else rel,
            )
        )
    return records, class_names


@DATASET_REGISTRY.register()
class UCF101(VideoDataset):
    """UCF101 (101 classes, 13,320 videos); ``DATA.SPLIT`` picks the official fold."""

    LAYOUT = LAYOUT
    ROOT_REQUIRED = True

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        require_splits(cfg, "UCF101", ("train", "test"), (1, 2, 3))

    def __init__(self, cfg: CfgNode, split: str) -> None:
        root = require_root(cfg.DATA.ROOT, "UCF101", LAYOUT)
        records, class_names = read_ucf101_split(root, split, cfg.DATA.SPLIT)
        super().__init__(records, class_names, name="UCF101", split=split, root=root)
