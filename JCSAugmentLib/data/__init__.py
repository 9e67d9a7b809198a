"""Data: finding cases (nnU-Net v2, Decathlon, explicit lists), splits, preprocessing with a
resumable cache, and patch-centre sampling for training."""

from .dataset import (CaseSpec, DataError, DatasetSpec, dataset_from_list, discover_dataset,
                      modality_of)
from .preprocess import (Case, PreprocessSettings, SourceGeometry, ct_statistics,
                         load_cached_case, preprocess_case, preprocess_dataset)
from .reading import read_4d_channels, read_case, read_case_images
from .sampler import PatchDraw, PatchSampler
from .splits import SPLIT_NAMES, load_splits, make_splits

__all__ = [
    "CaseSpec", "DataError", "DatasetSpec", "dataset_from_list", "discover_dataset",
    "modality_of", "Case", "PreprocessSettings", "SourceGeometry", "ct_statistics",
    "load_cached_case", "preprocess_case", "preprocess_dataset", "read_4d_channels",
    "read_case", "read_case_images", "PatchDraw", "PatchSampler", "SPLIT_NAMES",
    "load_splits", "make_splits",
]
