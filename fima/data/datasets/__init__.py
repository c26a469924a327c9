"""Datasets: ``DATASET_REGISTRY`` and its entries."""

from fima.data.datasets.build import DATASET_REGISTRY, VideoDataset, VideoRecord, build_dataset
from fima.data.datasets.synthetic import SyntheticMotion, add_synthetic_config
from fima.data.datasets.ucf101 import UCF101

__all__ = [
    "DATASET_REGISTRY",
    "UCF101",
    "SyntheticMotion",
    "VideoDataset",
    "VideoRecord",
    "add_synthetic_config",
    "build_dataset",
]
