"""Reading the files of one case, including 4D multi-channel NIfTI images.

``io.volume.read_volume`` reads 3D scalar and 3D vector images. Decathlon images with several
channels are 4D scalar NIfTI files instead (x, y, z, channel), which it refuses; this module
reads those by splitting the 4th axis into channels, with the same checks (NaN/inf, grids).
Everything else goes through the ``io.volume`` readers unchanged.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..io import volume as _vol
from ..io.file_checks import check_volume_file
from ..io.volume import Volume, VolumeError, read_images, read_label, read_volume
from .dataset import CaseSpec, DataError

__all__ = ["read_4d_channels", "read_case_images", "read_case"]


def _file_dimension(path: str) -> Tuple[int, Tuple[int, ...], int]:
    """(dimension, size, components per pixel) from the header only; (0, (), 0) if unknown."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        return (int(reader.GetDimension()), tuple(int(s) for s in reader.GetSize()),
                int(reader.GetNumberOfComponents()))
    except Exception:  # let read_volume produce its usual message
        return 0, (), 0


def _is_4d_channels(path: str) -> bool:
    dim, size, comps = _file_dimension(path)
    return dim == 4 and comps == 1 and size[3] > 1


def read_4d_channels(path) -> Volume:
    """Read a 4D scalar image ``(x, y, z, c)`` as float32 ``(C, Z, Y, X)``.

    The grid is the first three axes' spacing and origin and the upper-left 3x3 of the
    direction matrix. Raises :class:`VolumeError` (naming the file) for NaN or inf values, a
    vector pixel type, or another dimension than 4.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VolumeError(path, "file does not exist")
    check_volume_file(path, "image")  # the memory budget and a complete payload, first
    try:
        image = sitk.ReadImage(path)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:400]
        raise VolumeError(path, f"SimpleITK could not read the file ({detail})") from exc
    if image.GetDimension() != 4 or image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(path, f"expected a 4D scalar image (x, y, z, channel), got a "
                                f"{image.GetDimension()}D image with "
                                f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    size = image.GetSize()
    if min(size[:3]) < 2:
        raise VolumeError(path, f"has size {tuple(size)} (x, y, z, channel): a 3D volume per "
                                "channel is needed")
    arr = sitk.GetArrayFromImage(image)  # (c, z, y, x)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise VolumeError(path, f"contains {bad} non-finite voxel value(s) out of {arr.size}")
        raw_check = getattr(_vol, "_nifti_nonfinite", None)  # ITK turns NIfTI NaN into 0
        raw = raw_check(path) if raw_check is not None else None
        if raw is not None and raw[0] + raw[1]:
            raise VolumeError(path, f"contains {raw[0] + raw[1]} non-finite voxel value(s) out "
                                    f"of {raw[2]} ({raw[0]} NaN, {raw[1]} inf)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise VolumeError(path, "voxel values overflow float32")
    d = image.GetDirection()  # 16 values, row major
    direction = tuple(float(d[r * 4 + c]) + 0.0 for r in range(3) for c in range(3))
    spacing = tuple(float(v) + 0.0 for v in image.GetSpacing()[:3])
    origin = tuple(float(v) + 0.0 for v in image.GetOrigin()[:3])
    return Volume(arr, spacing, origin, direction, path, tuple([path] * arr.shape[0]))


def read_case_images(paths: Sequence[str]) -> Volume:
    """Like ``io.volume.read_images`` (one file per channel, or one vector file), but a file may
    also be a 4D NIfTI whose 4th axis holds channels. All files must share one grid."""
    paths = [os.fspath(p) for p in paths]
    if not any(_is_4d_channels(p) for p in paths):
        return read_images(paths)
    vols = [read_4d_channels(p) if _is_4d_channels(p) else read_volume(p) for p in paths]
    first = vols[0]
    for v in vols[1:]:
        _vol._check_same_grid(v.path, v, first)
    channel_paths = tuple(p for v in vols for p in (v.channel_paths or (v.path,) * v.num_channels))
    array = first.array if len(vols) == 1 else np.concatenate([v.array for v in vols], 0)
    return Volume(array, first.spacing, first.origin, first.direction, first.path, channel_paths)


def read_case(spec: CaseSpec) -> Tuple[Volume, Volume, Optional[Volume]]:
    """Read and check a case's images, label and ROI: ``(image, label, roi)``.

    Raises :class:`DataError` naming the case for every problem: a missing or unreadable file,
    a 2D or unsupported 4D file, NaN/inf voxels, a label or ROI whose grid differs from the
    images', non-integer or negative labels, a label map with no foreground voxel, an empty ROI.
    """
    cid = spec.case_id
    if spec.label is None:
        raise DataError(f"case '{cid}' has no label map (\"label\": null); only a test case may "
                        f"be unlabelled: give its label, or move it to the test split")
    for p in spec.files():
        if not os.path.exists(p):
            raise DataError(f"case '{cid}': file {p} does not exist")
    try:
        image = read_case_images(spec.images)
        label = read_label(spec.label, reference=image)
        roi = read_label(spec.roi, reference=image) if spec.roi else None
    except VolumeError as exc:
        raise DataError(f"case '{cid}': {exc}") from exc
    if not np.any(label.array):
        raise DataError(f"case '{cid}': label map {spec.label} has no foreground voxel (every "
                        "value is 0); a training case needs at least one labelled voxel")
    if roi is not None and not np.any(roi.array):
        raise DataError(f"case '{cid}': ROI {spec.roi} is empty (every value is 0)")
    return image, label, roi
