"""The dataset registry, the video record type, ``build_dataset`` and annotation-file helpers."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

from torch.utils.data import Dataset

from fima.config.config import CfgNode
from fima.utils.registry import Registry

DATASET_REGISTRY = Registry("DATASET")
DATASET_REGISTRY.__doc__ = """
Registry of video datasets.

An entry is called as ``cls(cfg, split)`` with ``split`` in ``{"train", "test"}`` (some datasets
accept more) and returns a :class:`VideoDataset`: the list of videos of that split with their
labels. Decoding, clip sampling and augmentation are the loaders' business, so one dataset serves
pretraining, fine-tuning and testing. A class attribute ``LAYOUT`` says what ``DATA.ROOT`` must
hold, for error messages, and ``ROOT_REQUIRED = True`` makes an empty ``DATA.ROOT`` a start-up
error. DATASETS.md describes each entry's layout and preparation.
"""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset.

    Attributes:
        path: absolute path of the video file.
        label: 0-based class index, or -1 when the split carries no label.
        group: videos sharing a group come from one source (UCF101's ``gXX``); validation splits
            are carved by group so that near-duplicates never straddle them.
    """

    path: str
    label: int
    group: str = ""


class VideoDataset(Dataset):
    """The videos of one split: ``dataset[i]`` is a :class:`VideoRecord`.

    Attributes:
        name: registry name of the dataset.
        split: the split it holds.
        root: dataset root directory.
        class_names: ``class_names[label]`` is the class of a label; in a fixed documented order
            (sorted, or the official one), so labels are stable.
        missing: videos that the annotations list but that are absent and were left out (only
            datasets that are commonly incomplete, as Kinetics-400, skip them; the others keep
            them and the loaders report them as bad videos).
    """

    LAYOUT = "see DATASETS.md"
    # Whether the dataset reads nothing without DATA.ROOT (start-up validation checks it).
    ROOT_REQUIRED = False

    def __init__(
        self,
        records: list[VideoRecord],
        class_names: list[str],
        *,
        name: str,
        split: str,
        root: str,
        missing: list[str] | None = None,
    ) -> None:
        self.records = records
        self.class_names = class_names
        self.name = name
        self.split = split
        self.root = root
        self.missing = missing or []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> VideoRecord:
        return self.records[index]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"{self.name}(split={self.split!r}, videos={len(self)}, "
            f"classes={self.num_classes}, root={self.root!r})"
        )


def video_or_frames(path: str) -> str:
    """The video file ``path`` of an official split list, or, where that file is absent, the
    folder of its frames beside it: its name without the extension (``v_X_g01_c01.avi`` ->
    ``v_X_g01_c01/``), as mmaction2 names extracted ``rawframes``. The path as given if neither
    exists (a missing video, reported as a bad one)."""
    if os.path.exists(path):
        return path
    frames = os.path.splitext(path)[0]
    return frames if os.path.isdir(frames) else path


def build_dataset(cfg: CfgNode, split: str) -> VideoDataset:
    """Build ``cfg.DATA.DATASET`` for ``split``.

    With ``DATA.VALIDATION.FRACTION > 0`` the training split is divided by group into the
    ``"val"`` split and the rest (see :mod:`fima.data.datasets.validation`).

    Raises:
        KeyError: the dataset name is unknown (the message lists the registered ones).
    """
    # Imported here: the validation module builds on VideoDataset, defined above.
    from fima.data.datasets.validation import carve_validation_split, uses_validation_split

    carve = uses_validation_split(cfg, split)
    dataset = DATASET_REGISTRY.get(cfg.DATA.DATASET)(cfg, cfg.DATA.TRAIN_SPLIT if carve else split)
    if not isinstance(dataset, VideoDataset):
        raise TypeError(f"Dataset {cfg.DATA.DATASET!r} must return a VideoDataset")
    if not dataset.records:
        found = (
            f": all {len(dataset.missing)} videos it lists are missing (first: "
            f"{dataset.missing[0]})"
            if dataset.missing
            else ""
        )
        raise FileNotFoundError(f"{dataset!r} holds no video{found}; {type(dataset).LAYOUT}")
    return carve_validation_split(cfg, split, dataset) if carve else dataset


class AnnotationError(ValueError):
    """A malformed line in a split, list or CSV file; the message names the file and line."""


def read_text(path: str) -> str:
    """The text of an annotation file (UTF-8, with or without a byte-order mark).

    Raises:
        AnnotationError: the file is not UTF-8 (the message names the line).
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        number = raw.count(b"\n", 0, err.start) + 1
        raise AnnotationError(
            f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start}); save the file "
            "as UTF-8"
        ) from None


def read_lines(path: str) -> list[tuple[int, str]]:
    """Non-empty lines of a text file (UTF-8, with or without a byte-order mark), stripped, with
    their 1-based line numbers.

    Raises:
        AnnotationError: the file is not UTF-8 (the message names the line).
    """
    # Universal newlines, as open() reads text: "\r\n", "\r" and "\n" end a line.
    lines = enumerate(io.StringIO(read_text(path), newline=None), 1)
    return [(number, line.strip()) for number, line in lines if line.strip()]


def require_root(root: str, dataset: str, layout: str) -> str:
    """Return ``root`` made absolute, or fail with the layout that was expected there.

    Raises:
        FileNotFoundError: ``root`` is empty or not a directory.
    """
    if not root:
        raise FileNotFoundError(f"DATA.ROOT is empty: set it to the {dataset} root ({layout})")
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset} root {root!r} does not exist: {layout}")
    return os.path.abspath(root)


def require_splits(
    cfg: CfgNode, dataset: str, splits: Sequence[str], folds: Sequence[int] = ()
) -> None:
    """Start-up check that ``DATA.TRAIN_SPLIT`` and ``DATA.TEST_SPLIT`` name splits of an
    official dataset, and that ``DATA.SPLIT`` is one of its ``folds`` (if it has any).

    Raises:
        ConfigError: naming the key and the dataset's own values.
    """
    from fima.config.validation import require

    for key in ("TRAIN_SPLIT", "TEST_SPLIT"):
        require(
            cfg.DATA[key] in splits,
            f"DATA.{key}",
            f"{dataset} has splits {', '.join(map(repr, splits))}, not {cfg.DATA[key]!r}",
        )
    if folds:
        require(
            cfg.DATA.SPLIT in folds,
            "DATA.SPLIT",
            f"{dataset}'s official folds are {', '.join(map(str, folds))}, got {cfg.DATA.SPLIT}",
        )


def require_file(path: str, layout: str) -> str:
    """Return ``path``, or fail naming it and the layout it belongs to."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing {path}: {layout}")
    return path
