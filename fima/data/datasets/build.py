"""The dataset registry, the video record type and ``build_dataset``."""

from __future__ import annotations

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
pretraining, fine-tuning and testing.
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
        class_names: ``class_names[label]`` is the class of a label; sorted, so labels are stable.
    """

    def __init__(
        self,
        records: list[VideoRecord],
        class_names: list[str],
        *,
        name: str,
        split: str,
        root: str,
    ) -> None:
        self.records = records
        self.class_names = class_names
        self.name = name
        self.split = split
        self.root = root

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> VideoRecord:
        return self.records[index]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, videos={len(self)}, "
            f"classes={self.num_classes}, root={self.root!r})"
        )


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
    return carve_validation_split(cfg, split, dataset) if carve else dataset
