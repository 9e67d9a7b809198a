"""Data: finding cases (nnU-Net v2, Decathlon, explicit lists), splits, preprocessing with a
resumable cache, and patch-centre sampling for training.

The names below are loaded from their modules on first use (PEP 562), so that the torch-free
parts (``dataset``, ``splits``) can be imported by the Slicer panel's GUI process without the
preprocessing and sampling modules, which import torch.
"""

import importlib

_WHERE = {
    "CaseSpec": "dataset", "DataError": "dataset", "DatasetSpec": "dataset",
    "dataset_from_list": "dataset", "discover_dataset": "dataset", "modality_of": "dataset",
    "Case": "preprocess", "PreprocessSettings": "preprocess", "SourceGeometry": "preprocess",
    "ct_statistics": "preprocess", "load_cached_case": "preprocess",
    "preprocess_case": "preprocess", "preprocess_dataset": "preprocess",
    "read_4d_channels": "reading", "read_case": "reading", "read_case_images": "reading",
    "PatchDraw": "sampler", "PatchSampler": "sampler",
    "SPLIT_NAMES": "splits", "load_splits": "splits", "make_splits": "splits",
}

__all__ = list(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
