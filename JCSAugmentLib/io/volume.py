"""Reading image and label volumes with SimpleITK, plus small array helpers.

Conventions
-----------
* Arrays are in numpy order: ``(C, Z, Y, X)`` -- the spatial axes are the
  reverse of SimpleITK's ``(x, y, z)`` index order, exactly as
  ``SimpleITK.GetArrayFromImage`` returns them, with a channel axis in front.
* ``Volume.spacing``, ``Volume.origin`` and ``Volume.direction`` keep
  SimpleITK's physical order ``(x, y, z)`` (direction: 9 values, row major),
  so they can be handed straight back to ``SetSpacing`` etc.
* Images are float32 ``(C, Z, Y, X)``; scalar images get ``C = 1``, vector
  images (SimpleITK vector pixel types) have their components as channels.
* Labels are int64 ``(1, Z, Y, X)``.

Every problem with a file raises :class:`VolumeError`, whose message starts
with the file path and then says what is wrong.  Every reader here first
checks the file (``io/file_checks.py``): a header claiming more than the
memory budget (``JCSAUGMENT_MAX_VOLUME_GB``) and an incomplete or corrupt
payload are refused before a voxel is decoded.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..image_files import GRID_TOLERANCE, IMAGE_EXTENSIONS, is_image_file
from .file_checks import check_volume_file, nifti_layout

__all__ = [
    "VolumeError",
    "Volume",
    "SUPPORTED_EXTENSIONS",
    "read_volume",
    "read_label",
    "read_images",
    "case_statistics",
    "crop_with_padding",
    "sample_centres",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings this module reads (checked case-insensitively; see image_files.py).
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS

#: Quantiles are computed on at most this many voxels (random subsample).
MAX_QUANTILE_VOXELS = 2_000_000

_COMPLEX_PIXEL_IDS = {
    getattr(sitk, name)
    for name in (
        "sitkComplexFloat32",
        "sitkComplexFloat64",
    )
    if hasattr(sitk, name)
}


class VolumeError(ValueError):
    """A volume file could not be used.  ``str(err)`` is ``"<path>: <problem>"``.

    Attributes ``path`` and ``problem`` hold the two parts separately.
    """

    def __init__(self, path: PathLike, problem: str):
        self.path = os.fspath(path) if not isinstance(path, str) else path
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep picklable (e.g. raised inside DataLoader workers)
        return (type(self), (self.path, self.problem))


@dataclass
class Volume:
    """An image or label volume and its physical grid.

    ``array`` is ``(C, Z, Y, X)``; ``spacing``/``origin`` are ``(x, y, z)``
    tuples and ``direction`` the 9 direction-cosine values, all in
    SimpleITK order.  ``path`` is the file the volume came from (the first
    file for :func:`read_images`; ``channel_paths`` then lists one file per
    channel).
    """

    array: np.ndarray
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]
    path: str
    channel_paths: Tuple[str, ...] = field(default=())

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        """Spatial shape in numpy order ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def size(self) -> Tuple[int, int, int]:
        """Spatial size in SimpleITK order ``(x, y, z)``."""
        return tuple(int(s) for s in self.array.shape[:0:-1])  # type: ignore[return-value]


# --------------------------------------------------------------------------
# reading helpers
# --------------------------------------------------------------------------


def _read_sitk(path: PathLike, kind: str = "image") -> Tuple[str, sitk.Image]:
    """Read ``path`` with SimpleITK and reduce it to a 3D image.  The file is checked first
    (:func:`~JCSAugmentLib.io.file_checks.check_volume_file`: the decoded size against the
    memory budget, and a complete payload), so no voxel of a refused file is decoded."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VolumeError(path, "file does not exist")
    if os.path.isdir(path):
        raise VolumeError(path, "is a directory, not a volume file")
    if not is_image_file(path):
        raise VolumeError(
            path,
            "unsupported file type; expected one of " + ", ".join(SUPPORTED_EXTENSIONS),
        )
    check_volume_file(path, kind)
    try:
        image = sitk.ReadImage(path)
    except Exception as exc:  # SimpleITK raises RuntimeError with a long ITK trace
        detail = " ".join(str(exc).split())
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise VolumeError(path, f"SimpleITK could not read the file ({detail})") from exc

    if image.GetPixelID() in _COMPLEX_PIXEL_IDS:
        raise VolumeError(path, "complex-valued pixels are not supported")

    dim = image.GetDimension()
    size = image.GetSize()
    if dim < 3:
        raise VolumeError(
            path, f"is a {dim}D image of size {tuple(size)}; a 3D volume is needed"
        )
    if dim > 3:
        extra = tuple(size[3:])
        if all(s == 1 for s in extra):
            # trailing singleton axes (e.g. a 4D NIfTI with one time point): drop them
            image = sitk.Extract(image, list(size[:3]) + [0] * (dim - 3), [0] * dim)
        else:
            raise VolumeError(
                path,
                f"is a {dim}D image of size {tuple(size)} that is not a vector image; "
                "only 3D scalar or 3D vector (multi-component) images are supported",
            )
    if min(image.GetSize()) < 2:
        raise VolumeError(
            path,
            f"has size {tuple(image.GetSize())} (x, y, z): a single slice is a 2D image; "
            "a 3D volume is needed",
        )
    return path, image


def _grid_of(image: sitk.Image):
    # "+ 0.0" turns -0.0 (common in NIfTI direction cosines) into 0.0
    return (
        tuple(float(v) + 0.0 for v in image.GetSpacing()),
        tuple(float(v) + 0.0 for v in image.GetOrigin()),
        tuple(float(v) + 0.0 for v in image.GetDirection()),
    )


def _array_cz(image: sitk.Image) -> np.ndarray:
    """Array ``(C, Z, Y, X)`` of a 3D SimpleITK image (scalar or vector)."""
    arr = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        return np.moveaxis(arr, -1, 0)
    return arr[np.newaxis]


def _count_nonfinite(arr: np.ndarray) -> int:
    if not np.issubdtype(arr.dtype, np.floating):
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def _nonfinite_message(n_nan: int, n_inf: int, total: int) -> str:
    return (
        f"contains {n_nan + n_inf} non-finite voxel value(s) out of {total} "
        f"({n_nan} NaN, {n_inf} inf)"
    )


# NIfTI datatype codes of float pixels -> numpy base type
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}  # float32/64, complex64/128


def _nifti_nonfinite(path: str) -> Optional[Tuple[int, int, int]]:
    """Count NaN / inf values in the raw data of a float NIfTI file.

    ITK's NIfTI reader (``nifti_read_buffer``) silently replaces every NaN and
    +-inf with 0, so they cannot be seen in the array SimpleITK returns.  This
    reads the raw voxel bytes instead.  Returns ``(n_nan, n_inf, n_values)``,
    or ``None`` if the file is not a float NIfTI file this can parse.
    """
    lower = path.lower()
    if not (lower.endswith(".nii") or lower.endswith(".nii.gz")):
        return None
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            head = fh.read(540)
            layout = nifti_layout(head)
            if layout is None:
                return None
            base = _NIFTI_FLOAT_TYPES.get(layout.datatype)
            if base is None:
                return None
            datatype, endian = layout.datatype, layout.endian
            n_values = int(np.prod([max(d, 1) for d in layout.dims], dtype=np.int64))
            if datatype in (32, 1792):
                n_values *= 2  # real and imaginary parts
            dtype = np.dtype(endian + base)
            consumed = len(head)
            skip = layout.data_offset - consumed
            if skip < 0:
                pending = head[layout.data_offset:]
            else:
                pending = b""
                while skip > 0:
                    chunk = fh.read(min(skip, 1 << 20))
                    if not chunk:
                        return None
                    skip -= len(chunk)
            n_nan = n_inf = 0
            remaining = n_values * dtype.itemsize
            block = (1 << 22) * dtype.itemsize  # read a few MiB at a time
            while remaining > 0:
                need = min(block, remaining) - len(pending)
                data = pending + (fh.read(need) if need > 0 else b"")
                pending = b""
                if not data:
                    break
                usable = len(data) - len(data) % dtype.itemsize
                values = np.frombuffer(data[:usable], dtype=dtype)
                n_nan += int(np.count_nonzero(np.isnan(values)))
                n_inf += int(np.count_nonzero(np.isinf(values)))
                remaining -= usable
                if usable < len(data) or usable == 0:
                    break
            return n_nan, n_inf, n_values
    except (OSError, EOFError, struct.error, ValueError):
        return None


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _check_same_grid(path: str, vol: Volume, reference: Volume) -> None:
    """Raise VolumeError (naming ``path``) if ``vol``'s grid differs from ``reference``'s."""
    ref_name = reference.path
    if vol.size != reference.size:
        raise VolumeError(
            path,
            f"grid differs from {ref_name}: size (x, y, z) is {vol.size} "
            f"but the reference has {reference.size}",
        )
    tol = GRID_TOLERANCE
    spacing_a = np.asarray(vol.spacing, float)
    spacing_b = np.asarray(reference.spacing, float)
    scale = float(max(np.max(np.abs(spacing_b)), 1e-12))
    checks = (
        # name, value, reference value, absolute tolerance
        ("spacing", spacing_a, spacing_b, tol * np.abs(spacing_b)),
        # an origin can be 0, so tolerate 1e-4 of a voxel (or of the value) there
        (
            "origin",
            np.asarray(vol.origin, float),
            np.asarray(reference.origin, float),
            tol * np.maximum(np.abs(np.asarray(reference.origin, float)), scale),
        ),
        # direction cosines are unit vectors: 1e-4 absolute
        (
            "direction",
            np.asarray(vol.direction, float),
            np.asarray(reference.direction, float),
            np.full(len(reference.direction), tol),
        ),
    )
    for name, a, b, atol in checks:
        if a.shape != b.shape or np.any(np.abs(a - b) > atol):
            raise VolumeError(
                path,
                f"grid differs from {ref_name}: {name} is {_fmt(a)} "
                f"but the reference has {_fmt(b)}",
            )


# --------------------------------------------------------------------------
# public readers
# --------------------------------------------------------------------------


def read_volume(path: PathLike) -> Volume:
    """Read an image volume as float32 ``(C, Z, Y, X)``.

    Supports NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and
    MetaImage (``.mha``, ``.mhd``).  Scalar images get ``C = 1``; vector
    images have their components as channels.  Raises :class:`VolumeError`
    for a missing/unreadable file, a 2D image, a 4D+ non-vector image and
    for NaN/inf voxels.
    """
    path, image = _read_sitk(path)
    arr = _array_cz(image)
    bad = _count_nonfinite(arr)
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        raise VolumeError(path, _nonfinite_message(n_nan, bad - n_nan, arr.size))
    if np.issubdtype(arr.dtype, np.floating):
        raw = _nifti_nonfinite(path)  # ITK turns NaN/inf in NIfTI files into 0
        if raw is not None and raw[0] + raw[1]:
            raise VolumeError(path, _nonfinite_message(raw[0], raw[1], raw[2]))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):  # e.g. float64 values too large for float32
        bad = _count_nonfinite(arr)
        raise VolumeError(
            path, f"{bad} voxel value(s) overflow float32 (become inf) out of {arr.size}"
        )
    spacing, origin, direction = _grid_of(image)
    return Volume(arr, spacing, origin, direction, path)  # type: ignore[arg-type]


def read_label(path: PathLike, reference: Optional[Volume] = None) -> Volume:
    """Read a label map as int64 ``(1, Z, Y, X)``.

    Labels may be stored with any pixel type, but every value must be a
    non-negative integer.  If ``reference`` is given, the label grid (size,
    spacing, origin, direction; relative tolerance 1e-4) must match it.
    """
    path, image = _read_sitk(path, "label")
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise VolumeError(
            path,
            f"label map has {image.GetNumberOfComponentsPerPixel()} components per "
            "voxel; a label map must be a scalar image",
        )
    arr = sitk.GetArrayFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = _count_nonfinite(arr)
        if bad:
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            raise VolumeError(path, "label map " + _nonfinite_message(n_nan, bad - n_nan, arr.size))
        raw = _nifti_nonfinite(path)  # ITK turns NaN/inf in NIfTI files into 0
        if raw is not None and raw[0] + raw[1]:
            raise VolumeError(path, "label map " + _nonfinite_message(raw[0], raw[1], raw[2]))
        frac = arr != np.round(arr)
        n_frac = int(np.count_nonzero(frac))
        if n_frac:
            examples = np.unique(arr[frac])[:5]
            raise VolumeError(
                path,
                f"label map has {n_frac} non-integer voxel value(s), e.g. "
                + ", ".join(f"{v:g}" for v in examples),
            )
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise VolumeError(path, f"label map has unsupported pixel type {arr.dtype}")
    if arr.size and arr.min() < 0:
        neg = arr < 0
        raise VolumeError(
            path,
            f"label map has {int(np.count_nonzero(neg))} negative voxel value(s) "
            f"(smallest {arr.min():g}); labels must be >= 0",
        )
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise VolumeError(path, "label values too large for int64")
    labels = np.ascontiguousarray(arr, dtype=np.int64)[np.newaxis]
    spacing, origin, direction = _grid_of(image)
    vol = Volume(labels, spacing, origin, direction, path)  # type: ignore[arg-type]
    if reference is not None:
        _check_same_grid(path, vol, reference)
    return vol


def read_images(paths: Sequence[PathLike]) -> Volume:
    """Read several image files (e.g. T1c + FLAIR) and stack them as channels.

    All files must share the grid of the first one (same checks as
    :func:`read_label`).  Returns float32 ``(C, Z, Y, X)`` with ``path`` set
    to the first file and ``channel_paths`` to one file per channel.
    """
    if isinstance(paths, (str, bytes)) or isinstance(paths, os.PathLike):
        paths = [paths]  # type: ignore[list-item]
    paths = list(paths)
    if not paths:
        raise VolumeError("<no files>", "read_images needs at least one image file")
    volumes = []
    channel_paths = []
    for p in paths:
        vol = read_volume(p)
        if volumes:
            _check_same_grid(vol.path, vol, volumes[0])
        volumes.append(vol)
        channel_paths.extend([vol.path] * vol.num_channels)
    first = volumes[0]
    if len(volumes) == 1:
        array = first.array
    else:
        array = np.concatenate([v.array for v in volumes], axis=0)
    return Volume(
        array, first.spacing, first.origin, first.direction, first.path, tuple(channel_paths)
    )


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------


def case_statistics(
    image: np.ndarray, mask: Optional[np.ndarray] = None, quantiles: int = 101
) -> dict:
    """Per-channel intensity statistics of a ``(C, Z, Y, X)`` image.

    Returns a dict with per-channel float lists ``'mean'``, ``'std'``
    (population std), ``'min'``, ``'max'``, ``'quantiles'`` (``C`` lists of
    ``quantiles`` values at ``linspace(0, 1, quantiles)``) and
    ``'n_voxels'`` (voxels used per channel).  Statistics are computed inside
    ``mask`` (shape ``(Z, Y, X)``, nonzero = inside) or over the whole
    volume.  Above 2e6 voxels the quantiles are estimated on a seeded,
    deterministic random subsample (their 0 and 1 ends are still the exact
    min and max).
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[np.newaxis]
    if image.ndim != 4:
        raise ValueError(f"case_statistics: image must be (C, Z, Y, X), got shape {image.shape}")
    quantiles = int(quantiles)
    if quantiles < 1:
        raise ValueError(f"case_statistics: quantiles must be >= 1, got {quantiles}")
    spatial = image.shape[1:]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == 4 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.shape != spatial:
            raise ValueError(
                f"case_statistics: mask shape {mask.shape} does not match image shape {spatial}"
            )
        flat_idx = np.flatnonzero(mask.astype(bool, copy=False))
        if flat_idx.size == 0:
            raise ValueError("case_statistics: the mask is empty (no voxel inside)")
        n = int(flat_idx.size)
    else:
        flat_idx = None
        n = int(np.prod(spatial))
        if n == 0:
            raise ValueError("case_statistics: the image has no voxels")

    if n > MAX_QUANTILE_VOXELS:
        rng = np.random.default_rng(0)
        sub = np.sort(rng.choice(n, size=MAX_QUANTILE_VOXELS, replace=False))
    else:
        sub = None
    qs = np.linspace(0.0, 1.0, quantiles)

    out = {"mean": [], "std": [], "min": [], "max": [], "quantiles": [], "n_voxels": n}
    for c in range(image.shape[0]):
        chan = image[c].reshape(-1)
        values = chan if flat_idx is None else chan[flat_idx]
        values64 = values.astype(np.float64, copy=False)
        mean = float(values64.mean())
        std = float(values64.std())
        vmin = float(values64.min())
        vmax = float(values64.max())
        q_values = values64 if sub is None else values64[sub]
        q = np.quantile(q_values, qs)
        if sub is not None and quantiles > 1:
            q[0], q[-1] = vmin, vmax  # keep the ends exact despite subsampling
        out["mean"].append(mean)
        out["std"].append(std)
        out["min"].append(vmin)
        out["max"].append(vmax)
        out["quantiles"].append([float(v) for v in q])
    return out


# --------------------------------------------------------------------------
# patches
# --------------------------------------------------------------------------


def _three_ints(name: str, values) -> Tuple[int, int, int]:
    vals = tuple(int(v) for v in np.asarray(values).reshape(-1))
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 values (z, y, x), got {values!r}")
    return vals  # type: ignore[return-value]


def crop_with_padding(array: np.ndarray, centre, size, pad_value=0) -> np.ndarray:
    """Crop ``array`` ``(C, Z, Y, X)`` to ``size`` around voxel ``centre``.

    The crop spans ``centre - size // 2`` to ``centre - size // 2 + size``
    on each spatial axis (``centre``/``size`` in ``(z, y, x)`` order).  Parts
    outside the volume are filled with ``pad_value`` -- a scalar or one value
    per channel.  A 3D ``(Z, Y, X)`` array is also accepted (scalar pad
    only) and gives a 3D result.  Always returns a new array (never a view).
    """
    arr = np.asarray(array)
    squeeze = False
    if arr.ndim == 3:
        arr = arr[np.newaxis]
        squeeze = True
    if arr.ndim != 4:
        raise ValueError(f"crop_with_padding: array must be (C, Z, Y, X), got shape {arr.shape}")
    centre = _three_ints("centre", centre)
    size = _three_ints("size", size)
    if any(s <= 0 for s in size):
        raise ValueError(f"crop_with_padding: size must be positive, got {size}")
    n_chan = arr.shape[0]
    spatial = arr.shape[1:]

    start = [c - s // 2 for c, s in zip(centre, size)]
    stop = [b + s for b, s in zip(start, size)]
    src = tuple(slice(max(b, 0), min(e, n)) for b, e, n in zip(start, stop, spatial))
    inside = all(b >= 0 and e <= n for b, e, n in zip(start, stop, spatial))
    pad = np.asarray(pad_value)
    if pad.ndim == 0:
        pad_values = [pad.item()] * n_chan
    else:
        pad = pad.reshape(-1)
        if pad.size != n_chan:
            raise ValueError(
                f"crop_with_padding: pad_value has {pad.size} values but the array has "
                f"{n_chan} channel(s)"
            )
        pad_values = [v.item() for v in pad]

    if inside:
        out = arr[(slice(None),) + src].copy()
        return out[0] if squeeze else out

    overlap = all(s.start < s.stop for s in src)
    if overlap:
        piece = arr[(slice(None),) + src]
        pad_width = [(0, 0)] + [
            (max(0, -b), max(0, e - n)) for b, e, n in zip(start, stop, spatial)
        ]
        if all(v == pad_values[0] for v in pad_values):
            out = np.pad(piece, pad_width, mode="constant", constant_values=pad_values[0])
        else:
            out = np.empty((n_chan,) + size, dtype=arr.dtype)
            for c, v in enumerate(pad_values):
                out[c] = v
            dst = tuple(
                slice(lo, lo + (s.stop - s.start)) for (lo, _), s in zip(pad_width[1:], src)
            )
            out[(slice(None),) + dst] = piece
    else:  # the crop lies entirely outside the volume
        out = np.empty((n_chan,) + size, dtype=arr.dtype)
        for c, v in enumerate(pad_values):
            out[c] = v
    return out[0] if squeeze else out


def sample_centres(
    label: np.ndarray,
    n_fg: int,
    n_bg: int,
    rng: np.random.Generator,
    roi: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw patch centres uniformly from foreground and background voxels.

    ``label`` is ``(Z, Y, X)`` (a leading channel axis of 1 is accepted).
    Foreground is ``label > 0``; background is ``label == 0`` and, if
    ``roi`` is given, inside ``roi`` (nonzero).  Voxels are drawn with
    replacement.  Returns ``(fg_centres, bg_centres)``, int64 arrays of
    shape ``(n_fg, 3)`` and ``(n_bg, 3)`` in ``(z, y, x)`` order.  Raises
    ``ValueError`` if centres of a class are requested but the label has no
    voxel of that class.
    """
    label = np.asarray(label)
    if label.ndim == 4 and label.shape[0] == 1:
        label = label[0]
    if label.ndim != 3:
        raise ValueError(f"sample_centres: label must be (Z, Y, X), got shape {label.shape}")
    n_fg = int(n_fg)
    n_bg = int(n_bg)
    if n_fg < 0 or n_bg < 0:
        raise ValueError(f"sample_centres: n_fg and n_bg must be >= 0, got {n_fg}, {n_bg}")
    if roi is not None:
        roi = np.asarray(roi)
        if roi.ndim == 4 and roi.shape[0] == 1:
            roi = roi[0]
        if roi.shape != label.shape:
            raise ValueError(
                f"sample_centres: roi shape {roi.shape} does not match label shape {label.shape}"
            )

    def draw(mask: np.ndarray, n: int, what: str) -> np.ndarray:
        if n == 0:
            return np.zeros((0, 3), dtype=np.int64)
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            raise ValueError(f"sample_centres: the label has no {what} voxel")
        chosen = idx[rng.integers(0, idx.size, size=n)]
        return np.stack(np.unravel_index(chosen, label.shape), axis=1).astype(np.int64)

    fg = draw(label > 0, n_fg, "foreground (label > 0)")
    bg_mask = label == 0
    what = "background (label == 0)"
    if roi is not None:
        bg_mask &= roi.astype(bool, copy=False)
        what = "background (label == 0) inside the ROI"
    bg = draw(bg_mask, n_bg, what)
    return fg, bg
