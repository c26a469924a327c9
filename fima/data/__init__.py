"""Data: datasets, decoding, clip sampling, transforms and loaders."""

from fima.data.build import build_pretrain_loader, build_test_loader, build_train_loader
from fima.data.datasets import DATASET_REGISTRY, build_dataset

__all__ = [
    "DATASET_REGISTRY",
    "build_dataset",
    "build_pretrain_loader",
    "build_test_loader",
    "build_train_loader",
]
