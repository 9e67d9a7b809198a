"""Overlap and surface-distance metrics for one case (method section 10).

Conventions
-----------
* Arrays are in numpy order ``(Z, Y, X)`` (2D ``(Y, X)`` also works) and ``spacing`` is given in
  the same order, in millimetres -- the reverse of SimpleITK's ``GetSpacing()``.
* ``binary_metrics(pred, ref, spacing)`` takes two boolean masks; ``case_metrics`` takes two
  integer label maps and a dict ``name -> label values``.  A "label" is a single value
  (``{"enhancing": [4]}``) or a region, the union of several values
  (``{"whole": [1, 2, 3, 4]}``).

Definitions (TP, FP, FN are voxel counts)
-----------------------------------------
* ``dsc`` = 2 TP / (2 TP + FP + FN)
* ``sensitivity`` = TP / (TP + FN)
* ``precision`` = TP / (TP + FP)
* ``volume_pred_ml``, ``volume_ref_ml`` = voxel count x voxel volume (product of the spacing,
  mm^3) / 1000.
* ``hd95`` (millimetres), the 95th percentile of the symmetric surface distances:

  1. The *surface* of a mask is the set of its voxels that have at least one of their 6 face
     neighbours outside the mask.  Beyond the array edge counts as outside, so a mask voxel
     on the edge of the image is a surface voxel.  A mask that is one voxel thick is all
     surface.
  2. Distances are Euclidean between voxel centres, in millimetres: index differences
     multiplied by ``spacing`` per axis (the direction matrix is not used, which is exact for
     the orthonormal directions that medical images have).
  3. For every surface voxel of ``pred``, the distance to the nearest surface voxel of
     ``ref``; for every surface voxel of ``ref``, the distance to the nearest surface voxel of
     ``pred``.  Both lists are pooled into one (length = |surface pred| + |surface ref|).
  4. ``hd95`` = ``numpy.percentile(pooled, 95)`` with numpy's default linear interpolation
     between the two closest ranks.  (Not the max of the two directed 95th percentiles.)

  The distances come from SimpleITK's exact Euclidean distance transform (Maurer), computed
  in float32 and returned as Python floats: expect agreement with a brute-force computation
  to about 1e-6 relative.  The transform runs only on the bounding box of ``pred | ref``
  padded by one voxel, which gives the same answer as the whole image (every surface voxel
  lies in that box) in a fraction of the time.

Empty masks (never a silent 0)
------------------------------
=====================  ======  ===========  =========  ======  ==========================
case                   dsc     sensitivity  precision  hd95    hd95_undefined
=====================  ======  ===========  =========  ======  ==========================
both empty             1.0     1.0          1.0        0.0     None
ref empty, pred not    0.0     None         0.0        None    ``"reference empty"``
pred empty, ref not    0.0     0.0          None       None    ``"prediction empty"``
neither empty          ...     ...          ...        ...     None
=====================  ======  ===========  =========  ======  ==========================

``None`` means undefined (JSON ``null``, an empty CSV cell): sensitivity with nothing to find,
precision with nothing predicted, and the Hausdorff distance to an empty surface, which is
infinite.  The key ``hd95_undefined`` is always present; it names the reason when ``hd95`` is
``None`` and is ``None`` otherwise.  Both-empty counts as a perfect answer (nothing to find,
nothing found), as in the BraTS challenge evaluation.

All values are plain Python ``int``/``float``/``None``, ready for ``json.dumps``.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

__all__ = [
    "EvaluationError",
    "METRIC_KEYS",
    "SUMMARY_KEYS",
    "HD95_PERCENTILE",
    "binary_metrics",
    "case_metrics",
    "default_labels",
    "normalise_labels",
    "empty_metrics",
    "surface_mask",
    "surface_distances",
]

#: Keys of the dict that :func:`binary_metrics` returns, in a stable (CSV column) order.
METRIC_KEYS = ("dsc", "sensitivity", "precision", "hd95", "hd95_undefined",
               "volume_pred_ml", "volume_ref_ml", "tp", "fp", "fn")
#: The numeric keys that get a mean and std over cases.
SUMMARY_KEYS = ("dsc", "sensitivity", "precision", "hd95",
                "volume_pred_ml", "volume_ref_ml", "tp", "fp", "fn")
HD95_PERCENTILE = 95.0

LabelSpec = Mapping[str, Union[int, Sequence[int]]]


class EvaluationError(ValueError):
    """Input that cannot be evaluated (bad masks, grids, folders, label specs); the message
    says what and where."""


# --------------------------------------------------------------------------------------------
# checks


def _check_spacing(spacing, ndim: int) -> Tuple[float, ...]:
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise EvaluationError(f"spacing must be {ndim} numbers in mm, got {spacing!r}") from None
    if len(sp) != ndim:
        raise EvaluationError(f"spacing has {len(sp)} values but the masks have {ndim} axes "
                              f"(give it in array order, e.g. (z, y, x))")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise EvaluationError(f"spacing must be positive and finite, got {sp}")
    return sp


def _check_pair(pred: np.ndarray, ref: np.ndarray, what: str) -> None:
    if pred.shape != ref.shape:
        raise EvaluationError(f"{what}: prediction shape {pred.shape} differs from reference "
                              f"shape {ref.shape}")
    if pred.ndim not in (2, 3):
        raise EvaluationError(f"{what}: expected 2D or 3D arrays, got {pred.ndim} axes")


# --------------------------------------------------------------------------------------------
# surfaces and distances


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour (4 in 2D) outside it; outside the
    array counts as outside the mask."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = mask.copy()
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            sl = list(inner)
            sl[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            interior &= padded[tuple(sl)]
    return mask & ~interior


def _distance_to(target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest ``True`` voxel of ``target``."""
    img = sitk.GetImageFromArray(target.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True, backgroundValue=0)
    # Target voxels come out <= 0 (distance 0 to themselves); everything else is positive.
    return np.maximum(sitk.GetArrayViewFromImage(dist), 0.0)


def _bounding_box(mask: np.ndarray, margin: int = 1) -> Tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - margin, 0),
                         min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """``(pred_to_ref, ref_to_pred)``: for each surface voxel of ``pred`` the distance (mm) to
    the nearest surface voxel of ``ref``, and the other way round.  Both masks must be
    non-empty.  The masks are cropped to the bounding box of ``pred | ref`` first; the
    surfaces are taken on the uncropped geometry (image edge = outside)."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    box = _bounding_box(pred | ref, margin=1)
    p, r = pred[box], ref[box]
    # Cropping keeps a one-voxel margin wherever the box does not touch the image edge, so
    # surface_mask (which treats beyond-the-array as outside) sees the same neighbours.
    sp, sr = surface_mask(p), surface_mask(r)
    if not sp.any() or not sr.any():
        raise EvaluationError("surface_distances needs two non-empty masks")
    pred_to_ref = _distance_to(sr, spacing)[sp].astype(np.float64)
    ref_to_pred = _distance_to(sp, spacing)[sr].astype(np.float64)
    return pred_to_ref, ref_to_pred


# --------------------------------------------------------------------------------------------
# metrics


def empty_metrics() -> dict:
    """The result for a label absent from both maps (both empty)."""
    return {"dsc": 1.0, "sensitivity": 1.0, "precision": 1.0, "hd95": 0.0,
            "hd95_undefined": None, "volume_pred_ml": 0.0, "volume_ref_ml": 0.0,
            "tp": 0, "fp": 0, "fn": 0}


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict:
    """DSC, sensitivity, precision, HD95 (mm), volumes (ml) and TP/FP/FN of two boolean masks.

    ``spacing`` is in array axis order, mm.  See the module docstring for the exact
    definitions and the empty-mask results.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    _check_pair(pred, ref, "binary_metrics")
    sp = _check_spacing(spacing, pred.ndim)
    pred = pred.astype(bool, copy=False)
    ref = ref.astype(bool, copy=False)
    voxel_ml = float(np.prod(sp)) / 1000.0

    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred == 0 and n_ref == 0:
        return empty_metrics()
    tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    fp = n_pred - tp
    fn = n_ref - tp
    out = {
        "dsc": 2.0 * tp / (2 * tp + fp + fn),
        "sensitivity": tp / (tp + fn) if n_ref else None,
        "precision": tp / (tp + fp) if n_pred else None,
        "hd95": None,
        "hd95_undefined": None,
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_ref_ml": n_ref * voxel_ml,
        "tp": tp, "fp": fp, "fn": fn,
    }
    if n_ref == 0:
        out["hd95_undefined"] = "reference empty"
    elif n_pred == 0:
        out["hd95_undefined"] = "prediction empty"
    else:
        a, b = surface_distances(pred, ref, sp)
        out["hd95"] = float(np.percentile(np.concatenate([a, b]), HD95_PERCENTILE))
    return out


def normalise_labels(labels: LabelSpec) -> Dict[str, List[int]]:
    """``{name: value or [values]}`` -> ``{name: sorted unique [values]}``, checked: names are
    non-empty strings, values integers >= 1, no empty regions."""
    if not isinstance(labels, Mapping) or not labels:
        raise EvaluationError(f"labels must be a non-empty mapping name -> label value(s), "
                              f"got {labels!r}")
    out: Dict[str, List[int]] = {}
    for name, values in labels.items():
        if not isinstance(name, str) or not name.strip():
            raise EvaluationError(f"label name {name!r} must be a non-empty string")
        if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
            values = [values]
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise EvaluationError(f"label {name!r}: values must be an integer or a list of "
                                  f"integers, got {values!r}")
        vals = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    raise EvaluationError(f"label {name!r}: {v!r} is not an integer label "
                                          f"value")
            if int(v) < 1:
                raise EvaluationError(f"label {name!r}: values must be >= 1 (0 is "
                                      f"background), got {int(v)}")
            vals.append(int(v))
        if not vals:
            raise EvaluationError(f"label {name!r} has no values")
        out[name.strip()] = sorted(set(vals))
    return out


def _as_label_map(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise EvaluationError(f"{what} holds non-integer values; expected a label map")
        return arr.astype(np.int64)
    raise EvaluationError(f"{what} has pixel type {arr.dtype}; expected integer labels")


def default_labels(pred_labels: np.ndarray, ref_labels: np.ndarray) -> Dict[str, List[int]]:
    """Each value > 0 found in either map (named by its value, e.g. ``"1"``), then
    ``"foreground"`` = all of them together.  No values > 0 -> ``{}``."""
    values = np.union1d(np.unique(pred_labels), np.unique(ref_labels))
    values = [int(v) for v in values if v > 0]
    out: Dict[str, List[int]] = {str(v): [v] for v in values}
    if values:
        out["foreground"] = values
    return out


def case_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: Sequence[float],
                 labels: Optional[LabelSpec] = None) -> Dict[str, dict]:
    """Per-label :func:`binary_metrics` of two label maps: ``{label name: metrics}``.

    ``labels`` maps a name to one label value or a list of values (a region: the union of
    those values).  ``None`` uses :func:`default_labels` (each value > 0 present in either
    map, plus ``"foreground"``); if neither map has any value > 0 that is just
    ``{"foreground": both-empty metrics}``.
    """
    pred_labels = _as_label_map(pred_labels, "prediction")
    ref_labels = _as_label_map(ref_labels, "reference")
    _check_pair(pred_labels, ref_labels, "case_metrics")
    sp = _check_spacing(spacing, pred_labels.ndim)
    spec = normalise_labels(labels) if labels is not None else None

    # Crop once to everything labelled in either map: every metric is unchanged by dropping
    # voxels that are background in both (surface_mask treats the array edge as outside, so
    # keep a one-voxel margin).  Negative values count as labelled here; they match no label.
    any_fg = (pred_labels != 0) | (ref_labels != 0)
    if any_fg.any():
        box = _bounding_box(any_fg, margin=1)
        pred_labels, ref_labels = pred_labels[box], ref_labels[box]
    if spec is None:
        spec = default_labels(pred_labels, ref_labels)
        if not spec:
            return {"foreground": empty_metrics()}
    out: Dict[str, dict] = {}
    for name, values in spec.items():
        if len(values) == 1:
            p, r = pred_labels == values[0], ref_labels == values[0]
        else:
            p, r = np.isin(pred_labels, values), np.isin(ref_labels, values)
        out[name] = binary_metrics(p, r, sp)
    return out
