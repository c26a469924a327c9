"""Datasets: ``DATASET_REGISTRY`` and its entries (layouts and preparation in DATASETS.md)."""

from fima.data.datasets.build import (
    DATASET_REGISTRY,
    AnnotationError,
    VideoDataset,
    VideoRecord,
    build_dataset,
)
from fima.data.datasets.hmdb51 import HMDB51
from fima.data.datasets.kinetics import Kinetics400
from fima.data.datasets.synthetic import SyntheticMotion, add_synthetic_config
from fima.data.datasets.ucf101 import UCF101
from fima.data.datasets.video_list import VideoList, add_video_list_config

__all__ = [
    "DATASET_REGISTRY",
    "HMDB51",
    "UCF101",
    "AnnotationError",
    "Kinetics400",
    "SyntheticMotion",
    "VideoDataset",
    "VideoList",
    "VideoRecord",
    "add_synthetic_config",
    "add_video_list_config",
    "build_dataset",
]
