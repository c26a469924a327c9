"""Kinetics-400 from its official CSVs (see DATASETS.md).

::

    ROOT/annotations/{train,val,test}.csv   "label,youtube_id,time_start,time_end,split"
    ROOT/<split>/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4

``<split>`` is the CSV's split column (``train``, ``val``, ``test``); the validation CSV may
also be named ``validate.csv``, as in DeepMind's archive. A label folder may be spelled with
underscores for spaces, as several download scripts do, and a split whose videos were never
sorted into label folders (the CVDF mirror's archives) is read flat: ``ROOT/<split>/<video>``.
The classes are the labels of ``train.csv``, sorted; a label is the index of its class in that
order, for every split.

Kinetics videos come from YouTube and some always fail to download: rows whose video is absent
are skipped, counted and logged (``dataset.missing``), not reported as bad videos.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re

from fima.config.config import CfgNode
from fima.data.datasets.build import (
    DATASET_REGISTRY,
    AnnotationError,
    VideoDataset,
    VideoRecord,
    read_text,
    require_file,
    require_root,
    require_splits,
)
from fima.utils.logger import log_once

logger = logging.getLogger(__name__)

LAYOUT = (
    "expected ROOT/annotations/{train,val,test}.csv (label,youtube_id,time_start,time_end,split) "
    "and ROOT/<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4; see DATASETS.md"
)
CSV_FILES = {"train": ("train.csv",), "val": ("val.csv", "validate.csv"), "test": ("test.csv",)}
COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def read_kinetics_csv(
    path: str, labels_required: bool = True
) -> list[tuple[int, dict[str, str | int]]]:
    """The rows of an official Kinetics CSV with their line numbers.

    Args:
        path: the CSV file.
        labels_required: whether the ``label`` column must be there. Without it (the original
            release's ``test.csv``, whose labels were held out) every row's label is ``""``.

    Returns:
        ``(line number, row)`` with ``row`` holding the :data:`COLUMNS`, times as ints.

    Raises:
        AnnotationError: a file that is not UTF-8, a missing column, a row of the wrong length, a
            time that is not a number or an empty label/id (the message names the file and line
            number).
    """
    rows = []
    # Decoded as the other annotation files are, so that a file in another encoding is a
    # one-line error naming its line rather than a UnicodeDecodeError from inside the reader.
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        needed = COLUMNS if labels_required else tuple(c for c in COLUMNS if c != "label")
        if any(name not in header for name in needed):
            optional = "" if labels_required else " (label may be left out)"
            raise AnnotationError(
                f"{path}:1: expected the header {','.join(COLUMNS)}{optional}, got {header}"
            )
        column = {name: header.index(name) for name in COLUMNS if name in header}
        for fields in reader:
            number = reader.line_num
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != len(header):
                raise AnnotationError(
                    f"{path}:{number}: expected {len(header)} comma-separated fields "
                    f"({','.join(header)}), got {len(fields)}"
                )
            row: dict[str, str | int] = {
                name: fields[column[name]].strip() if name in column else "" for name in COLUMNS
            }
            try:
                row["time_start"] = _seconds(str(row["time_start"]))
                row["time_end"] = _seconds(str(row["time_end"]))
            except ValueError:
                raise AnnotationError(
                    f"{path}:{number}: time_start and time_end must be whole seconds, got "
                    f"{fields[column['time_start']]!r}, {fields[column['time_end']]!r}"
                ) from None
            empty_label = "label" in column and not row["label"]
            if empty_label or not row["youtube_id"] or not row["split"]:
                raise AnnotationError(f"{path}:{number}: empty label, youtube_id or split")
            rows.append((number, row))
    return rows


def _seconds(text: str) -> int:
    value = float(text)
    if value != int(value) or value < 0:
        raise ValueError(text)
    return int(value)


# A trimmed clip's name without its extension: <youtube_id>_<start:06d>_<end:06d>.
_CLIP_NAME = re.compile(r"_\d{6}_\d{6}$")


class _VideoFolders:
    """Which video files exist, listing each folder once (240k ``exists`` calls would not do)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._files: dict[tuple[str, str], tuple[str, set[str]]] = {}

    def folder(self, split: str, label: str) -> tuple[str, set[str]]:
        """The folder that holds ``label``'s videos of ``split`` and the names in it."""
        key = (split, label)
        if key not in self._files:
            candidates = [os.path.join(self.root, split, label)]
            if " " in label:
                candidates.append(os.path.join(self.root, split, label.replace(" ", "_")))
            found = next((c for c in candidates if os.path.isdir(c)), None)
            self._files[key] = (
                (found, set(os.listdir(found))) if found else self._flat(split, candidates[0])
            )
        return self._files[key]

    def _flat(self, split: str, missing: str) -> tuple[str, set[str]]:
        folder = os.path.join(self.root, split)
        if (split, "") not in self._files:
            names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            self._files[split, ""] = (folder, names)
        folder, names = self._files[split, ""]
        # Without label folders the videos (or folders of their frames) lie flat in the split's
        # folder, if anywhere.
        flat = any(name.endswith(".mp4") or _CLIP_NAME.search(name) for name in names)
        return (folder, names) if flat else (missing, set())


def _csv_file(root: str, split: str) -> str:
    annotations = os.path.join(root, "annotations")
    for name in CSV_FILES[split]:
        if os.path.isfile(os.path.join(annotations, name)):
            return os.path.join(annotations, name)
    hint = ""
    if split == "test":
        hint = " (without it, evaluate on the val split: DATA.TEST_SPLIT val)"
    return require_file(os.path.join(annotations, CSV_FILES[split][0]), LAYOUT + hint)


@DATASET_REGISTRY.register()
class Kinetics400(VideoDataset):
    """Kinetics-400 (400 classes); splits ``train``, ``val`` and ``test``."""

    LAYOUT = LAYOUT
    ROOT_REQUIRED = True

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        require_splits(cfg, "Kinetics400", tuple(sorted(CSV_FILES)))

    def __init__(self, cfg: CfgNode, split: str) -> None:
        if split not in CSV_FILES:
            raise ValueError(f"Kinetics400 has splits {sorted(CSV_FILES)}, not {split!r}")
        root = require_root(cfg.DATA.ROOT, "Kinetics400", LAYOUT)
        train_csv = _csv_file(root, "train")
        split_csv = _csv_file(root, split)
        train_rows = read_kinetics_csv(train_csv)
        class_names = sorted({str(row["label"]) for _, row in train_rows})
        label_of = {name: i for i, name in enumerate(class_names)}
        # An evaluation split may come without labels (the original test.csv): unlabelled
        # videos (-1), found flat in the split's folder; an evaluation that needs labels says so
        # at start-up.
        rows = train_rows if split == "train" else read_kinetics_csv(split_csv, False)
        folders = _VideoFolders(root)
        records, missing = [], []
        for number, row in rows:
            label = str(row["label"])
            if label and label not in label_of:
                raise AnnotationError(
                    f"{split_csv}:{number}: label {label!r} is not a class of {train_csv}"
                )
            folder, files = folders.folder(str(row["split"]), label)
            stem = f"{row['youtube_id']}_{row['time_start']:06d}_{row['time_end']:06d}"
            path = os.path.join(folder, stem + ".mp4")
            # The video, or the folder of its frames where the video is absent (mmaction2's
            # rawframes): one listing of the folder tells both.
            if stem + ".mp4" in files or stem in files:
                if stem + ".mp4" not in files:
                    path = os.path.join(folder, stem)
                index = label_of[label] if label else -1
                records.append(VideoRecord(path, index, group=str(row["youtube_id"])))
            else:
                missing.append(path)
        if missing:  # once, not at every build of the split
            log_once(
                logger,
                logging.WARNING,
                ("kinetics missing", split_csv, len(missing)),
                "Kinetics400 %s: %d of the %d videos that %s lists are missing and were "
                "skipped (first: %s)",
                split,
                len(missing),
                len(rows),
                split_csv,
                missing[0],
            )
        super().__init__(
            records, class_names, name="Kinetics400", split=split, root=root, missing=missing
        )
