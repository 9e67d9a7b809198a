"""The image files the engine reads and writes, and what "the same grid" means: one place for
the file endings and the grid tolerance that reading, evaluation, prediction and the scene glue
share.  Plain Python (the GUI process imports it)."""

from __future__ import annotations

import os
from typing import Optional, Tuple

#: File endings read and written (case-insensitive), longest first so ``.nii.gz`` wins over
#: ``.nii``: NIfTI, NRRD (attached or detached header), MetaImage (attached or detached).
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Relative tolerance for "the same grid" (spacing, origin and direction of two images).
GRID_TOLERANCE = 1e-4


def image_extension(name: str) -> Optional[str]:
    """The ending of an image file name as listed in :data:`IMAGE_EXTENSIONS`, or None."""
    lower = os.fspath(name).lower()
    return next((e for e in IMAGE_EXTENSIONS if lower.endswith(e)), None)


def split_image_name(name: str) -> Tuple[str, Optional[str]]:
    """``("case_001", ".nii.gz")`` for ``"case_001.nii.gz"``; ``(name, None)`` for another
    file type."""
    name = os.path.basename(os.fspath(name))
    ext = image_extension(name)
    return (name[:-len(ext)], ext) if ext else (name, None)


def is_image_file(name: str) -> bool:
    return image_extension(name) is not None
