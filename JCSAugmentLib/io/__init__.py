"""Reading image/label volumes and small volume helpers (SimpleITK + numpy)."""

from .volume import (
    SUPPORTED_EXTENSIONS,
    Volume,
    VolumeError,
    case_statistics,
    crop_with_padding,
    read_images,
    read_label,
    read_volume,
    sample_centres,
)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Volume",
    "VolumeError",
    "case_statistics",
    "crop_with_padding",
    "read_images",
    "read_label",
    "read_volume",
    "sample_centres",
]
