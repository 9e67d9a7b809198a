"""Preprocessing: intensity normalisation, resampling to a common spacing, and a resumable cache.

Per channel (method.md section 9):

* MR (and any channel that is not CT): case-wise z-score, ``(x - mean) / std`` with the mean and
  std of the case's voxels inside the ROI when one is given, else of the whole volume. Voxels
  outside the ROI are transformed with the same numbers (not zeroed).
* CT: clip to the dataset's foreground 0.5 / 99.5 percentiles, then ``(x - mean) / std`` with
  the mean and std of the *clipped* foreground voxels of the training cases
  (:func:`ct_statistics`), so the same numbers apply to every case.
* ``none``: unchanged (nnU-Net's ``noNorm`` channels get this under ``auto``).

Normalisation happens on the source grid; then, if a target spacing is set, the image is
resampled linearly and the label and ROI with nearest neighbour (SimpleITK; voxels whose source
position falls just outside the source grid copy the nearest voxel). The resampled grid keeps
the source origin and direction, so a prediction maps back with ``Case.source``.

:func:`preprocess_dataset` caches each case as ``<cache_dir>/<case>.npz`` (arrays, no pickle)
plus ``<case>.json`` (metadata and a fingerprint of the input files' paths, sizes and
modification times and of the settings), both written atomically; a resumed run loads what is
still valid and redoes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..io.volume import case_statistics
from . import reading
from .dataset import CaseSpec, DataError, DatasetSpec

__all__ = [
    "NORMALISATIONS",
    "PreprocessSettings",
    "SourceGeometry",
    "Case",
    "ct_statistics",
    "preprocess_case",
    "preprocess_dataset",
    "load_cached_case",
    "cache_paths",
]

#: Normalisation names accepted by :class:`PreprocessSettings`.
NORMALISATIONS = ("auto", "zscore", "ct", "none")

#: Bumped whenever the cached arrays would change for the same inputs and settings.
CACHE_VERSION = 1

#: Foreground voxels per case and channel used by :func:`ct_statistics` (random subsample).
CT_MAX_VOXELS_PER_CASE = 1_000_000

_STD_FLOOR = 1e-8


@dataclass(frozen=True)
class PreprocessSettings:
    """How cases are preprocessed.

    ``target_spacing``: ``(z, y, x)`` in mm, or None to keep each case's own spacing.
    ``normalisation``: ``'auto'`` (``'ct'`` for CT channels, ``'none'`` for nnU-Net
    ``noNorm`` channels, ``'zscore'`` otherwise), ``'zscore'``, ``'ct'``, ``'none'``, or a
    tuple with one of these per channel. ``ct_clip``: the (low, high) percentiles of the
    dataset's foreground intensities that CT channels are clipped to.
    """

    target_spacing: Optional[Tuple[float, float, float]] = None
    normalisation: Union[str, Tuple[str, ...]] = "auto"
    ct_clip: Tuple[float, float] = (0.5, 99.5)

    def __post_init__(self):
        ts = self.target_spacing
        if ts is not None:
            try:
                ts = tuple(float(v) for v in ts)
            except (TypeError, ValueError) as exc:
                raise DataError(f"preprocessing: target_spacing must be 3 numbers (z, y, x) in "
                                f"mm or None, got {self.target_spacing!r}") from exc
            if len(ts) != 3 or not all(math.isfinite(v) and v > 0 for v in ts):
                raise DataError(f"preprocessing: target_spacing must be 3 positive numbers "
                                f"(z, y, x) in mm or None, got {self.target_spacing!r}")
            object.__setattr__(self, "target_spacing", ts)
        norm = self.normalisation
        names = (norm,) if isinstance(norm, str) else tuple(norm)
        if not names or any(n not in NORMALISATIONS for n in names):
            raise DataError(f"preprocessing: normalisation must be one of {list(NORMALISATIONS)}"
                            f" or a list of them (one per channel), got {norm!r}")
        object.__setattr__(self, "normalisation", norm if isinstance(norm, str) else names)
        try:
            lo, hi = (float(v) for v in self.ct_clip)
        except (TypeError, ValueError) as exc:
            raise DataError(f"preprocessing: ct_clip must be two percentiles (low, high), got "
                            f"{self.ct_clip!r}") from exc
        if not 0.0 <= lo < hi <= 100.0:
            raise DataError(f"preprocessing: ct_clip percentiles must satisfy 0 <= low < high "
                            f"<= 100, got {self.ct_clip!r}")
        object.__setattr__(self, "ct_clip", (lo, hi))

    def to_dict(self) -> dict:
        return {"target_spacing": None if self.target_spacing is None
                else list(self.target_spacing),
                "normalisation": self.normalisation if isinstance(self.normalisation, str)
                else list(self.normalisation),
                "ct_clip": list(self.ct_clip)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "PreprocessSettings":
        unknown = sorted(set(d) - {"target_spacing", "normalisation", "ct_clip"})
        if unknown:
            raise DataError(f"preprocessing: unknown setting(s) {unknown}; known: "
                            "target_spacing, normalisation, ct_clip")
        norm = d.get("normalisation", "auto")
        return cls(d.get("target_spacing"), norm if isinstance(norm, str) else tuple(norm),
                   tuple(d.get("ct_clip", (0.5, 99.5))))

    def channel_modes(self, num_channels: int, modality: Optional[Sequence[str]] = None,
                      case_id: str = "?") -> List[str]:
        """The normalisation of each channel: ``'zscore'``, ``'ct'`` or ``'none'``."""
        norm = self.normalisation
        if isinstance(norm, str):
            norm = (norm,) * num_channels
        elif len(norm) != num_channels:
            raise DataError(f"case '{case_id}': {num_channels} image channel(s) but "
                            f"normalisation lists {len(norm)}: {list(norm)}")
        if modality is not None and len(modality) != num_channels:
            raise DataError(f"case '{case_id}': {num_channels} image channel(s) but the dataset "
                            f"declares {len(modality)} ({list(modality)})")
        out = []
        for c, n in enumerate(norm):
            if n == "auto":
                m = "" if modality is None else str(modality[c])
                n = "ct" if m.upper() == "CT" else "none" if m.lower() == "nonorm" else "zscore"
            out.append(n)
        return out


@dataclass
class SourceGeometry:
    """The grid a case was read on, in SimpleITK order: ``spacing``, ``origin`` (x, y, z),
    ``direction`` (9 values, row major), ``size`` (x, y, z). Predictions are resampled back to
    it (nearest neighbour for labels) to be saved with the input's geometry."""

    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]
    size: Tuple[int, int, int]

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SourceGeometry":
        return cls(tuple(float(v) for v in d["spacing"]), tuple(float(v) for v in d["origin"]),
                   tuple(float(v) for v in d["direction"]), tuple(int(v) for v in d["size"]))


@dataclass(eq=False)
class Case:
    """A preprocessed case, ready for patch sampling.

    ``image`` float32 ``(C, Z, Y, X)``; ``label`` ``(Z, Y, X)``, uint8 (or int16 for label
    values above 255); ``roi`` bool ``(Z, Y, X)`` or None; ``spacing`` ``(z, y, x)`` mm of these
    arrays; ``stats`` per-channel statistics of the preprocessed image (``case_statistics``
    inside the ROI, or over the whole volume without one: mean, std, min, max, 101 quantiles);
    ``source`` the original grid. The arrays' grid has the source origin and direction.
    ``from_cache`` says whether this came from the cache.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    roi: Optional[np.ndarray]
    spacing: Tuple[float, float, float]
    stats: dict
    source: SourceGeometry
    from_cache: bool = field(default=False, compare=False)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """Spatial shape ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[0])

    def grid(self) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
        """The preprocessed grid as SimpleITK (spacing (x, y, z), origin, direction)."""
        return tuple(self.spacing[::-1]), self.source.origin, self.source.direction


# --------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------


def _foreground_values(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                       max_voxels: int) -> np.ndarray:
    """(C, n) foreground voxel values of one case (a random subsample above max_voxels)."""
    idx = np.flatnonzero(label.reshape(-1) > 0)
    if idx.size > max_voxels:
        idx = np.sort(rng.choice(idx, size=max_voxels, replace=False))
    flat = image.reshape(image.shape[0], -1)
    return flat[:, idx].astype(np.float64)


def ct_statistics(specs: Sequence[CaseSpec], ct_clip: Tuple[float, float] = (0.5, 99.5),
                  max_voxels_per_case: int = CT_MAX_VOXELS_PER_CASE) -> dict:
    """Dataset intensity statistics for CT normalisation, over the foreground voxels
    (label > 0) of ``specs`` -- pass the training cases only.

    Returns per-channel lists ``lo``/``hi`` (the ``ct_clip`` percentiles), ``mean``/``std``
    (of the foreground values clipped to ``[lo, hi]``), plus ``ct_clip`` and ``n_voxels``.
    Above ``max_voxels_per_case`` foreground voxels a case contributes a seeded random
    subsample. Reads every case (raises :class:`DataError` naming a bad case).
    """
    if not specs:
        raise DataError("ct_statistics: no case given (pass the training cases)")
    lo_p, hi_p = PreprocessSettings(ct_clip=ct_clip).ct_clip
    rng = np.random.default_rng(0)
    parts = []
    n_ch = None
    for spec in specs:
        image, label, _roi = reading.read_case(spec)
        if n_ch is not None and image.num_channels != n_ch:
            raise DataError(f"case '{spec.case_id}': {image.num_channels} channel(s), case "
                            f"'{specs[0].case_id}' has {n_ch}")
        n_ch = image.num_channels
        parts.append(_foreground_values(image.array, label.array[0], rng, max_voxels_per_case))
    values = np.concatenate(parts, axis=1)
    lo = np.percentile(values, lo_p, axis=1)
    hi = np.percentile(values, hi_p, axis=1)
    clipped = np.clip(values, lo[:, None], hi[:, None])
    return {"lo": lo.tolist(), "hi": hi.tolist(), "mean": clipped.mean(1).tolist(),
            "std": clipped.std(1).tolist(), "ct_clip": [lo_p, hi_p],
            "n_voxels": int(values.shape[1])}


def _check_ct_stats(stats: Mapping, n_ch: int, case_id: str) -> None:
    for k in ("lo", "hi", "mean", "std"):
        v = stats.get(k) if isinstance(stats, Mapping) else None
        if v is None or len(v) != n_ch:
            raise DataError(f"case '{case_id}': CT statistics need '{k}' with one value per "
                            f"channel ({n_ch}); compute them with ct_statistics(training cases)")


def _normalise(image: np.ndarray, modes: Sequence[str], roi: Optional[np.ndarray],
               ct_stats: Optional[Mapping]) -> np.ndarray:
    out = np.empty_like(image, dtype=np.float32)
    inside = None if roi is None else roi.reshape(-1)
    for c, mode in enumerate(modes):
        x = image[c]
        if mode == "none":
            out[c] = x
        elif mode == "zscore":
            vals = x.reshape(-1) if inside is None else x.reshape(-1)[inside]
            v64 = vals.astype(np.float64)
            mean, std = float(v64.mean()), float(v64.std())
            out[c] = (x - mean) / max(std, _STD_FLOOR)
        else:  # ct
            lo, hi = float(ct_stats["lo"][c]), float(ct_stats["hi"][c])
            mean, std = float(ct_stats["mean"][c]), float(ct_stats["std"][c])
            out[c] = (np.clip(x, lo, hi) - mean) / max(std, _STD_FLOOR)
    return out


# --------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------


def _resample(array: np.ndarray, geom: SourceGeometry, new_spacing_xyz, new_size_xyz,
              interpolator) -> np.ndarray:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geom.spacing)
    img.SetOrigin(geom.origin)
    img.SetDirection(geom.direction)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in new_size_xyz])
    f.SetOutputSpacing([float(s) for s in new_spacing_xyz])
    f.SetOutputOrigin(geom.origin)
    f.SetOutputDirection(geom.direction)
    f.SetInterpolator(interpolator)
    f.SetUseNearestNeighborExtrapolator(True)
    f.SetTransform(sitk.Transform())
    return sitk.GetArrayFromImage(f.Execute(img))


def _target_size(geom: SourceGeometry, target_xyz) -> List[int]:
    return [max(1, int(round(n * s / t))) for n, s, t in zip(geom.size, geom.spacing, target_xyz)]


# --------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------


def _label_dtype(max_value: int, case_id: str):
    if max_value <= np.iinfo(np.uint8).max:
        return np.uint8
    if max_value <= np.iinfo(np.int16).max:
        return np.int16
    raise DataError(f"case '{case_id}': label value {max_value} is too large (at most "
                    f"{np.iinfo(np.int16).max} supported)")


def _check_modes(settings, n_ch, modality, ct_dataset_stats, case_id):
    modes = settings.channel_modes(n_ch, modality, case_id)
    if "ct" in modes:
        if ct_dataset_stats is None:
            ct_channels = [c for c, m in enumerate(modes) if m == "ct"]
            raise DataError(f"case '{case_id}': channel(s) {ct_channels} are CT-normalised but "
                            "no dataset statistics were given; compute them with "
                            "ct_statistics(training cases)")
        _check_ct_stats(ct_dataset_stats, n_ch, case_id)
    return modes


def _resampling_target(settings, spacing_zyx, geom):
    """(target spacing x, y, z; target size) when the case must be resampled, else None."""
    if settings.target_spacing is None or np.allclose(settings.target_spacing, spacing_zyx,
                                                      rtol=1e-6, atol=0):
        return None
    target_xyz = tuple(settings.target_spacing[::-1])
    return target_xyz, _target_size(geom, target_xyz)


def preprocessed_shape(size_xyz: Sequence[int], spacing_xyz: Sequence[float],
                       settings: PreprocessSettings) -> Tuple[int, int, int]:
    """(Z, Y, X) of an image of ``size_xyz`` voxels at ``spacing_xyz`` mm after preprocessing:
    the size :func:`preprocess_image` resamples it to (used to check an input before any
    work is done)."""
    geom = SourceGeometry(tuple(float(v) for v in spacing_xyz), (0.0, 0.0, 0.0),
                          (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                          tuple(int(n) for n in size_xyz))
    target = _resampling_target(settings, tuple(geom.spacing[::-1]), geom)
    size = geom.size if target is None else target[1]
    return tuple(int(n) for n in size[::-1])


def preprocess_image(image, settings: Optional[PreprocessSettings] = None,
                     ct_dataset_stats: Optional[Mapping] = None,
                     modality: Optional[Sequence[str]] = None, roi: Optional[np.ndarray] = None,
                     case_id: str = "?"):
    """Normalise and resample an image ``Volume`` exactly as training cases are (also used for
    inference): returns ``(data (C, Z, Y, X) float32, spacing (z, y, x), SourceGeometry)``."""
    settings = settings or PreprocessSettings()
    n_ch = image.num_channels
    modes = _check_modes(settings, n_ch, modality, ct_dataset_stats, case_id)
    geom = SourceGeometry(image.spacing, image.origin, image.direction, image.size)
    data = _normalise(image.array, modes, roi, ct_dataset_stats)
    spacing_zyx = tuple(float(s) for s in image.spacing[::-1])
    target = _resampling_target(settings, spacing_zyx, geom)
    if target is not None:
        data = np.stack([_resample(data[c], geom, *target, sitk.sitkLinear)
                         for c in range(n_ch)])
        spacing_zyx = tuple(float(s) for s in settings.target_spacing)
    return np.ascontiguousarray(data, dtype=np.float32), spacing_zyx, geom


def preprocess_case(spec: CaseSpec, settings: Optional[PreprocessSettings] = None,
                    ct_dataset_stats: Optional[Mapping] = None,
                    modality: Optional[Sequence[str]] = None) -> Case:
    """Read, check, normalise and resample one case (no cache; see :func:`preprocess_dataset`).

    ``modality`` (one entry per channel, e.g. ``DatasetSpec.modality``) drives ``'auto'``
    normalisation; without it every ``'auto'`` channel is z-scored. ``ct_dataset_stats`` (from
    :func:`ct_statistics`) is required when a channel is normalised as CT. Raises
    :class:`DataError` naming the case for a missing file, a 2D or unsupported 4D file, NaN
    voxels, label or ROI grids that differ from the image's, non-integer labels, a label map
    with no foreground (also after resampling), or a channel-count mismatch.
    """
    settings = settings or PreprocessSettings()
    cid = spec.case_id
    image, label, roi = reading.read_case(spec)
    roi_mask = None if roi is None else roi.array[0] > 0
    lab = label.array[0]
    data, spacing_zyx, geom = preprocess_image(image, settings, ct_dataset_stats, modality,
                                               roi_mask, cid)
    target = _resampling_target(settings, tuple(float(s) for s in image.spacing[::-1]), geom)
    if target is not None:
        lab = _resample(lab.astype(np.int32), geom, *target, sitk.sitkNearestNeighbor)
        if roi_mask is not None:
            roi_mask = _resample(roi_mask.astype(np.uint8), geom, *target,
                                 sitk.sitkNearestNeighbor) > 0
            if not roi_mask.any():
                raise DataError(f"case '{cid}': the ROI {spec.roi} is empty after resampling to "
                                f"{settings.target_spacing} mm")
        if not np.any(lab):
            raise DataError(f"case '{cid}': the label map {spec.label} has no foreground left "
                            f"after resampling to {settings.target_spacing} mm (the structure "
                            "is smaller than a voxel); use a finer target spacing")
    lab = np.ascontiguousarray(lab, dtype=_label_dtype(int(lab.max()), cid))
    stats = case_statistics(data, roi_mask)
    return Case(cid, data, lab, roi_mask, spacing_zyx, stats, geom)


# --------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------


def cache_paths(cache_dir, case_id: str) -> Tuple[str, str]:
    """``(npz, json)`` cache file paths of ``case_id``. Ids with characters other than letters,
    digits, ``.``, ``_`` and ``-`` get a safe name plus a short hash of the id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)
    if safe != case_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha1(case_id.encode()).hexdigest()[:8]}"
    base = os.path.join(os.fspath(cache_dir), safe)
    return base + ".npz", base + ".json"


def _file_record(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)]


def _uses_ct(settings: PreprocessSettings, modality: Optional[Sequence[str]]) -> bool:
    """Whether some channel is CT-normalised under ``settings`` and ``modality``."""
    norm = settings.normalisation
    names = (norm,) if isinstance(norm, str) else tuple(norm)
    if "ct" in names:
        return True
    return ("auto" in names and modality is not None
            and any(str(m).upper() == "CT" for m in modality))


def _fingerprint(spec: CaseSpec, settings: PreprocessSettings, modality, ct_stats) -> dict:
    uses_ct = _uses_ct(settings, modality)
    try:
        files = {"images": [_file_record(p) for p in spec.images],
                 "label": _file_record(spec.label),
                 "roi": _file_record(spec.roi) if spec.roi else None}
    except OSError as exc:
        raise DataError(f"case '{spec.case_id}': file {exc.filename} cannot be read "
                        f"({exc.strerror})") from exc
    record = {"version": CACHE_VERSION, "case_id": spec.case_id, "files": files,
              "settings": settings.to_dict(),
              "modality": None if modality is None else [str(m) for m in modality],
              "ct_stats": _json_ready(ct_stats) if uses_ct else None}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "inputs": record}


def _json_ready(obj):
    if obj is None:
        return None
    return json.loads(json.dumps(obj, default=float))


def _atomic_write(path: str, write: Callable[[object], None], mode: str = "wb") -> None:
    from ..run.status import atomic_write_stream
    atomic_write_stream(path, write, mode)


def _save_cached(case: Case, cache_dir: str, fingerprint: dict) -> None:
    npz_path, json_path = cache_paths(cache_dir, case.case_id)
    arrays = {"image": case.image, "label": case.label}
    if case.roi is not None:
        arrays["roi"] = case.roi
    _atomic_write(npz_path, lambda fh: np.savez(fh, **arrays))
    meta = {"case_id": case.case_id, "fingerprint": fingerprint["sha256"],
            "inputs": fingerprint["inputs"], "spacing": list(case.spacing),
            "shape": list(case.image.shape), "label_dtype": str(case.label.dtype),
            "has_roi": case.roi is not None, "stats": case.stats,
            "source": case.source.to_dict()}
    text = json.dumps(meta, indent=1)
    _atomic_write(json_path, lambda fh: fh.write(text), mode="w")  # the json commits the entry


def load_cached_case(cache_dir, case_id: str, fingerprint: Optional[str] = None
                     ) -> Optional[Case]:
    """The cached case, or None if it is absent, incomplete, unreadable or (when
    ``fingerprint`` is given) made from other inputs or settings."""
    npz_path, json_path = cache_paths(cache_dir, case_id)
    try:
        with open(json_path, encoding="utf-8") as fh:
            meta = json.load(fh)
        if meta.get("case_id") != case_id:
            return None
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            return None
        with np.load(npz_path, allow_pickle=False) as z:
            image = z["image"]
            label = z["label"]
            roi = z["roi"] if "roi" in z.files else None
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    if (list(image.shape) != meta.get("shape") or image.dtype != np.float32
            or label.shape != image.shape[1:] or str(label.dtype) != meta.get("label_dtype")
            or bool(meta.get("has_roi")) != (roi is not None)
            or (roi is not None and (roi.shape != label.shape or roi.dtype != np.bool_))):
        return None
    return Case(case_id, image, label, roi, tuple(float(v) for v in meta["spacing"]),
                meta["stats"], SourceGeometry.from_dict(meta["source"]), from_cache=True)


def cached_ct_statistics(specs: Sequence[CaseSpec], settings: PreprocessSettings,
                         cache_dir: str) -> dict:
    """The CT statistics (``lo``, ``hi``, ``mean``, ``std`` per channel) of ``specs``,
    computed once and kept in ``cache_dir`` under a key of the files and the clip settings."""
    records = []
    for s in specs:
        try:
            records.append([s.case_id] + [_file_record(p) for p in s.images]
                           + [_file_record(s.label)])
        except OSError as exc:
            raise DataError(f"case '{s.case_id}': file {exc.filename} cannot be read "
                            f"({exc.strerror})") from exc
    key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "cases": records,
                                     "ct_clip": list(settings.ct_clip)},
                                    sort_keys=True).encode()).hexdigest()
    path = os.path.join(cache_dir, "ct_statistics.json")
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        if saved.get("key") == key:
            return saved["stats"]
    except (OSError, ValueError, KeyError):
        pass
    stats = ct_statistics(specs, settings.ct_clip)
    text = json.dumps({"key": key, "stats": stats}, indent=1)
    _atomic_write(path, lambda fh: fh.write(text), mode="w")
    return stats


def preprocess_dataset(specs: Union[Sequence[CaseSpec], DatasetSpec],
                       settings: Optional[PreprocessSettings] = None, cache_dir=None,
                       progress: Optional[Callable[[int, int, str], None]] = None, *,
                       modality: Optional[Sequence[str]] = None,
                       ct_dataset_stats: Optional[Mapping] = None) -> List[Case]:
    """Preprocess ``specs`` (a list of :class:`CaseSpec` or a :class:`DatasetSpec`), using and
    filling the cache in ``cache_dir`` (created if needed; None = no cache).

    A cached case is reused when its input files (paths, sizes, modification times), the
    settings, the modality and the CT statistics it used are unchanged; otherwise it is redone
    and rewritten. ``modality`` defaults to the DatasetSpec's. When a channel is CT and
    ``ct_dataset_stats`` is None, they are computed from ``specs`` (cached as
    ``ct_statistics.json``): pass stats of the training cases when preprocessing validation or
    test cases. ``progress(done, total, case_id)`` is called after each case. Every file is
    checked to exist before any case is read. Returns the cases in the order of ``specs``.
    """
    settings = settings or PreprocessSettings()
    if isinstance(specs, DatasetSpec):
        modality = specs.modality if modality is None else modality
        specs = specs.cases
    specs = list(specs)
    seen = set()
    for s in specs:
        if s.case_id in seen:
            raise DataError(f"preprocess_dataset: case id '{s.case_id}' is listed twice")
        seen.add(s.case_id)
        for p in s.files():
            if not os.path.exists(p):
                raise DataError(f"case '{s.case_id}': file {p} does not exist")
    if cache_dir is not None:
        cache_dir = os.fspath(cache_dir)
        os.makedirs(cache_dir, exist_ok=True)
        names = {}
        for s in specs:
            npz = cache_paths(cache_dir, s.case_id)[0]
            if npz.lower() in names:  # case-insensitive file systems
                raise DataError(f"cases '{names[npz.lower()]}' and '{s.case_id}' would share "
                                f"the cache file {npz}; rename one")
            names[npz.lower()] = s.case_id

    needs_ct = _uses_ct(settings, modality)
    if needs_ct and ct_dataset_stats is None:
        ct_dataset_stats = (cached_ct_statistics(specs, settings, cache_dir) if cache_dir
                            else ct_statistics(specs, settings.ct_clip))

    out = []
    for k, spec in enumerate(specs):
        case = None
        fp = _fingerprint(spec, settings, modality, ct_dataset_stats)
        if cache_dir is not None:
            case = load_cached_case(cache_dir, spec.case_id, fp["sha256"])
        if case is None:
            case = preprocess_case(spec, settings, ct_dataset_stats, modality)
            if cache_dir is not None:
                _save_cached(case, cache_dir, fp)
        out.append(case)
        if progress is not None:
            progress(k + 1, len(specs), spec.case_id)
    return out
