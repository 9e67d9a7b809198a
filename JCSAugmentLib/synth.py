"""The embedded demo dataset: a two-site synthetic MR segmentation task with a known shift.

``make_synthetic_dataset(out_dir)`` writes an nnU-Net v2 raw folder that ``jcsaugment train
--dataset OUT_DIR --splits OUT_DIR/splits.json`` reads as it is::

    OUT_DIR/dataset.json            channel_names {"0": "MR"}, labels background 0 / lesion 1 /
                                    core 2, file_ending .nii.gz, plus a "jcsaugment_synth" record
    OUT_DIR/splits.json             {"train": [ids], "validation": [ids], "test": [ids]}
    OUT_DIR/README.md               the sites, the shift, and which operations undo it
    OUT_DIR/imagesTr/{id}_0000.nii.gz, OUT_DIR/labelsTr/{id}.nii.gz   for every case

Every case, training, validation and test alike, sits in ``imagesTr``/``labelsTr`` with its
label: evaluation on the test split needs the test labels. Training cases are ``siteA_NNN``,
validation and test cases ``siteB_NNN``.

What a case looks like
----------------------
Arrays are numpy ``(z, y, x)``; default size ``(48, 64, 64)``, spacing 2.0 x 1.0 x 1.0 mm
(2 mm slices; in SimpleITK order ``(1, 1, 2)``), identity direction, origin at minus half the
field of view (the image centre is the scanner origin).

* a "torso": an elliptic cylinder along z (intensity about 0, smooth texture), air outside;
* an "organ": an ellipsoid (intensity about 1) with a smooth random texture (coarse Gaussian
  noise upsampled by separable linear interpolation);
* 2-3 "vessels" (label 0, **distractors**): thin bright tubes (radius 1.2-1.8 mm) crossing the
  organ clear of the lesions, as bright as the lesions (fewer where they do not fit);
* 3-5 "lesions" (label 1; fewer in small volumes): bright ellipsoids inside the organ,
  semi-axes 4-6.5 mm along their long axis, 2-3 mm across, 3-5 mm along z, tilted by at most
  15 degrees in-plane;
* a "core" (label 2): a darker ellipsoid of 0.6 times the lesion's semi-axes inside about half of
  the lesions (at least one per case), so both foreground labels occur in every case and the
  classes are strongly imbalanced (foreground is well under 1 % of the voxels);
* soft (1 mm) partial-volume edges, Gaussian noise (std 0.08), then a z-score over the volume.

Lesions and vessels have the same brightness: what tells them apart is shape, in two ways.
The *robust* cue is rotation invariant: a vessel is thin and runs right across the organ, a
lesion is thicker, short, and may have a core. The *spurious* cue holds at site A only: every
lesion is elongated along y and every vessel runs along x.

The shift between the sites (``shift="default"``, alias ``"rot90"``)
--------------------------------------------------------------------
Training cases come from site A; validation and test cases from site B. A site-B case is a
site-A case rotated by 90 degrees about the first array axis (z), i.e. the two in-plane axes
swapped (``numpy.rot90(array, 1, axes=(1, 2))``) -- a patient positioned a quarter turn round
the scanner axis, or an in-plane read-out / phase-encoding swap that the header does not record
(both sites carry the same identity direction, so no header-based reorientation undoes it).

=========================================  =================  =========================
property                                   site A (train)     site B (validation, test)
=========================================  =================  =========================
lesion (label 1) long axis                 y (array axis 1)   x (array axis 2)
vessel distractors (label 0) run along     x                  y
organ and torso: longer in-plane axis      y                  x
intensities, texture, noise, lesion        identical          identical
sizes, spacing, header
undone by                                  --                 TEA rot90 about axis 0
=========================================  =================  =========================

Why this shift:

(a) *A model trained on A loses Dice on B.* At site A, "bright and elongated along y" means
    lesion and "bright and elongated along x" means vessel; a network free to use that cue
    calls site-B vessels lesions (false positives) and site-B lesions vessels (misses).
(b) *nnU-Net's heuristic augmentation covers it poorly, the TRA table can close the gap.*
    Mirroring (every axis, p 0.5) and 180-degree turns keep the long axis where it was, and
    nnU-Net's rotation groups put only 0.1 / 4 = 2.5 % on the 90-degree option about axis 0.
    Learned TRA can raise "rotation about axis 0: 90 degrees", which shows the network both
    orientations and forces it onto the robust cue.
(c) *A TEA op undoes it exactly.* TEA "rot90 about axis 0, -90" maps a site-B case back to
    site A's distribution; "+90" does too, because site A is symmetric under in-plane mirroring
    (a 180-degree turn of a site-A case is again a site-A case). The heuristic TEA set (the 8
    mirror combinations) holds neither. The in-plane axes have the same spacing and (by default)
    the same size, so the quarter turn is exact and keeps the array shape; with ``H != W``
    site-B arrays are ``(D, W, H)``.

Measured once (2026-11-26, CPU, seed 0; a proxy, not the project's trainer): a small 2-D U-Net
trained on the in-plane slices of 8 site-A cases for 300 steps with random flips only scored
foreground Dice 0.88 on held-out site-A cases, 0.38 on site B, and 0.88 on site B under TEA
rot90 about axis 0 (either direction); the same run with a 90-degree in-plane turn at p 0.5
added to the flips scored 0.82 on site A and 0.81 on site B.

``shift="none"`` writes the same dataset with site B drawn from site A's distribution (no
rotation): the control run for the demo.

The property is measurable from the labels alone: the mean run length of the foreground along
y over that along x is about 2 at site A and about 1/2 at site B (``foreground_anisotropy``).
Everything is deterministic given ``seed``: each case draws from its own
``numpy.random.SeedSequence([seed, site, index])`` stream, so the cases of one site do not
depend on how many cases the other sites have.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

__all__ = [
    "SynthError",
    "SHIFTS",
    "LABELS",
    "SPACING",
    "make_synthetic_dataset",
    "synthetic_case",
    "describe_shift",
    "shift_table",
    "foreground_anisotropy",
    "add_synth_arguments",
    "run_synth_from_args",
]

#: Label values written to ``dataset.json``.
LABELS = {"background": 0, "lesion": 1, "core": 2}

#: Voxel spacing in numpy order (z, y, x), millimetres.
SPACING = (2.0, 1.0, 1.0)

#: Shift names -> canonical name (``"default"`` is an alias of ``"rot90"``).
SHIFTS = {"default": "rot90", "rot90": "rot90", "none": "none"}

#: Marker key in ``dataset.json``; a folder holding it may be regenerated in place.
_MARKER = "jcsaugment_synth"

_FILE_ENDING = ".nii.gz"
_MIN_SIZE = (16, 32, 32)
_OWN_ENTRIES = {"dataset.json", "splits.json", "README.md", "imagesTr", "labelsTr"}


class SynthError(ValueError):
    """The synthetic dataset cannot be written as asked (bad size, shift or output folder)."""


# --------------------------------------------------------------------------------------------
# describing the shift
# --------------------------------------------------------------------------------------------

_DESCRIPTIONS = {
    "rot90": (
        "site B = site A rotated by 90 degrees about axis 0 (the in-plane axes y and x "
        "swapped): lesions are elongated along y at site A (training) and along x at site B "
        "(validation, test); the equally bright vessel distractors run along x at A and along "
        "y at B. Intensities, sizes, spacing and headers are identical. Heuristic mirroring "
        "does not cover it (flips keep the long axis); TRA 'rotation about axis 0: 90 deg' "
        "covers it and TEA 'rot90 about axis 0' (+90 or -90) undoes it exactly."
    ),
    "none": (
        "no shift: validation and test cases (site B) are drawn from the training site's "
        "distribution (lesions elongated along y, vessels along x at both sites); the control "
        "for the rot90 shift."
    ),
}

_TABLES = {
    "rot90": [
        ("lesion (label 1) long axis", "y (array axis 1)", "x (array axis 2)"),
        ("vessel distractors (label 0) run along", "x", "y"),
        ("organ / torso: longer in-plane axis", "y", "x"),
        ("intensities, texture, noise, lesion sizes, spacing, header", "identical", "identical"),
        ("undone by", "-", "TEA rot90 about axis 0 (+90 or -90)"),
    ],
    "none": [
        ("lesion (label 1) long axis", "y (array axis 1)", "y (array axis 1)"),
        ("vessel distractors (label 0) run along", "x", "x"),
        ("everything else", "identical", "identical"),
    ],
}


def _canonical_shift(shift) -> str:
    key = str(shift).strip().lower() if shift is not None else "default"
    if key not in SHIFTS:
        raise SynthError(f"unknown shift {shift!r}; choose one of {', '.join(SHIFTS)}")
    return SHIFTS[key]


def describe_shift(shift="default") -> str:
    """One paragraph saying how site B differs from site A under ``shift`` (for reports)."""
    return _DESCRIPTIONS[_canonical_shift(shift)]


def shift_table(shift="default") -> str:
    """A Markdown table of what differs between site A (training) and site B (validation,
    test) under ``shift``."""
    rows = _TABLES[_canonical_shift(shift)]
    out = ["| property | site A (train) | site B (validation, test) |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------

def _upsample_linear(coarse: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation of ``coarse`` onto ``size`` (cell-centred grids)."""
    out = coarse
    for axis, n in enumerate(size):
        m = out.shape[axis]
        pos = (np.arange(n) + 0.5) * m / n - 0.5
        pos = np.clip(pos, 0, m - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, m - 1)
        t = pos - lo
        w = np.zeros((n, m))
        w[np.arange(n), lo] += 1 - t
        w[np.arange(n), hi] += t
        out = np.moveaxis(np.tensordot(w, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out


def _smooth_noise(rng: np.random.Generator, size: Sequence[int],
                  cells: Sequence[int]) -> np.ndarray:
    coarse = rng.normal(size=tuple(max(2, int(c)) for c in cells))
    field = _upsample_linear(coarse, size)
    return (field - field.mean()) / (field.std() + 1e-8)


def _soft(signed_depth: np.ndarray, edge_mm: float = 1.0) -> np.ndarray:
    """Partial-volume fraction from a signed depth (mm, > 0 inside): 0.5 on the surface."""
    return np.clip(0.5 + signed_depth / edge_mm, 0.0, 1.0)


def _inplane_rotation(angle: float) -> np.ndarray:
    """(3, 3) rotation of (z, y, x) vectors by ``angle`` radians about the z axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ellipsoid_radius(coords, centre, semi, rot) -> np.ndarray:
    """Normalised radius (1 on the surface) of an ellipsoid with ``semi`` axes (mm) along the
    columns of ``rot``, at physical ``coords`` (list of 3 broadcastable arrays, mm)."""
    d = [coords[i] - centre[i] for i in range(3)]
    r2 = 0.0
    for k in range(3):
        q = d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k]
        r2 = r2 + (q / semi[k]) ** 2
    return np.sqrt(r2)


def synthetic_case(size: Sequence[int] = (48, 64, 64), seed=0, site: str = "A",
                   shift="default") -> Tuple[np.ndarray, np.ndarray, dict]:
    """One case as arrays: ``(image float32 (z, y, x), label uint8, info)``.

    ``seed``: an int or a sequence of ints (a ``numpy.random.SeedSequence`` entropy).
    ``site``: ``"A"`` (training site) or ``"B"``; under the ``rot90`` shift a site-B case is
    the site-A case of the same seed turned by 90 degrees about axis 0. ``info``: the site,
    the numbers of lesions and vessels, and the foreground fraction.
    """
    size = tuple(int(s) for s in size)
    if len(size) != 3 or any(s < m for s, m in zip(size, _MIN_SIZE)):
        raise SynthError(f"size must be 3 numbers (D, H, W) of at least {_MIN_SIZE}, "
                         f"got {size}")
    site = str(site).upper()
    if site not in ("A", "B"):
        raise SynthError(f"site must be 'A' or 'B', got {site!r}")
    shift = _canonical_shift(shift)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    D, H, W = size
    sz, sy, sx = SPACING
    coords = [((np.arange(n) - (n - 1) / 2.0) * sp).reshape(
        [n if a == i else 1 for a in range(3)]) for i, (n, sp) in enumerate(zip(size, SPACING))]
    ext = [n * sp / 2.0 for n, sp in zip(size, SPACING)]  # half field of view, mm

    # torso: elliptic cylinder along z, longer along y (site A)
    t_y, t_x = 0.94 * ext[1] * rng.uniform(0.96, 1.0), 0.80 * ext[2] * rng.uniform(0.96, 1.0)
    torso_depth = (1.0 - np.sqrt((coords[1] / t_y) ** 2 + (coords[2] / t_x) ** 2)) * min(t_y, t_x)
    torso = _soft(torso_depth) * np.ones((D, 1, 1))

    # organ: textured ellipsoid, longer along y (site A)
    o_c = np.array([rng.uniform(-1.5, 1.5) * sz, rng.uniform(-3, 3) * sy,
                    rng.uniform(-3, 3) * sx])
    o_a = np.array([0.70 * ext[0], 0.78 * ext[1], 0.60 * ext[2]]) * rng.uniform(0.92, 1.05, 3)
    o_a = np.minimum(o_a, [ext[0] - abs(o_c[0]) - 2 * sz, t_y - abs(o_c[1]) - 2,
                           t_x - abs(o_c[2]) - 2])
    o_r = _ellipsoid_radius(coords, o_c, o_a, np.eye(3))
    organ = _soft((1.0 - o_r) * o_a.min())
    organ_hard = o_r < 1.0

    body_tex = _smooth_noise(rng, size, (D // 8, H // 10, W // 10))
    organ_tex = _smooth_noise(rng, size, (D // 5, H // 7, W // 7))
    image = torso * (0.15 * body_tex) + (1.0 - torso) * -1.6
    image = image + organ * (1.0 + 0.22 * organ_tex - 0.15 * body_tex * torso)
    label = np.zeros(size, np.uint8)

    # lesions (label 1) with cores (label 2): ellipsoids elongated along y (site A)
    lesions: List[Tuple[np.ndarray, float]] = []
    n_target = int(rng.integers(3, 6))
    core_mask = np.zeros(size, bool)
    bright = np.zeros(size)
    darker = np.zeros(size)
    for _ in range(200):
        if len(lesions) == n_target:
            break
        semi = np.array([rng.uniform(3.0, 5.0), rng.uniform(4.0, 6.5), rng.uniform(2.0, 3.0)])
        # well inside the organ: the lesion's bounding sphere fits with a 2 mm margin (where
        # the organ is too small for that, near its centre)
        lim = np.maximum(o_a - semi.max() - 2.0, 1.0)
        v = rng.uniform(-1.0, 1.0, 3)
        if v @ v >= 1.0:
            continue
        idx = np.clip(np.round((o_c + v * lim) / np.asarray(SPACING) + (np.asarray(size) - 1)
                               / 2.0).astype(int), 0, np.asarray(size) - 1)
        c = np.array([coords[i].reshape(-1)[idx[i]] for i in range(3)])
        if any(np.linalg.norm(c - c2) < semi.max() + r2 + 2.0 for c2, r2 in lesions):
            continue
        rot = _inplane_rotation(rng.uniform(-15, 15) * math.pi / 180)
        r = _ellipsoid_radius(coords, c, semi, rot)
        bright = np.maximum(bright, _soft((1.0 - r) * semi.min()))
        label[r < 1.0] = 1
        last_chance = not core_mask.any() and len(lesions) == n_target - 1
        if rng.uniform() < 0.5 or last_chance:
            rc = _ellipsoid_radius(coords, c, semi * 0.6, rot)
            inner = rc < 1.0
            inner[tuple(idx)] = True  # the centre voxel at least
            core_mask |= inner
            darker = np.maximum(darker, _soft((1.0 - rc) * semi.min() * 0.6, 0.6))
        lesions.append((c, float(semi.max())))
    if not lesions:  # cannot happen for sizes >= _MIN_SIZE, but never write an empty case
        raise SynthError(f"size {size} leaves no room for a lesion inside the organ")
    if not core_mask.any():  # fewer lesions fitted than drawn, none with a core
        c = lesions[-1][0]
        idx = tuple(int(round(c[i] / SPACING[i] + (size[i] - 1) / 2.0)) for i in range(3))
        core_mask[idx] = True
        darker[idx] = 1.0

    # vessels (label 0): thin bright tubes along x (site A) crossing the organ, clear of the
    # lesions (where one does not fit, it is left out)
    vessels = []
    n_vessels = int(rng.integers(2, 4))
    for _ in range(60):
        if len(vessels) == n_vessels:
            break
        p = o_c + np.array([rng.uniform(-0.55, 0.55), rng.uniform(-0.6, 0.6), 0.0]) * o_a
        ang = rng.uniform(-12, 12) * math.pi / 180
        u = np.array([rng.uniform(-0.08, 0.08), math.sin(ang), math.cos(ang)])
        u /= np.linalg.norm(u)
        radius = rng.uniform(1.2, 1.8)
        if any(np.sqrt(max((c - p) @ (c - p) - ((c - p) @ u) ** 2, 0.0)) < radius + r2 + 1.5
               for c, r2 in lesions):
            continue
        d = [coords[i] - p[i] for i in range(3)]
        along = d[0] * u[0] + d[1] * u[1] + d[2] * u[2]
        dist = np.sqrt(np.maximum(d[0] ** 2 + d[1] ** 2 + d[2] ** 2 - along ** 2, 0.0))
        bright = np.maximum(bright, _soft(radius - dist))
        vessels.append((p, u, radius))
    label[core_mask & (label == 1)] = 2

    image = image + organ * 1.1 * bright - 0.9 * darker * bright
    image = image + 0.08 * rng.normal(size=size)
    image = (image - image.mean()) / (image.std() + 1e-8)
    image = image.astype(np.float32)
    label[~organ_hard] = 0

    if site == "B" and shift == "rot90":
        image = np.ascontiguousarray(np.rot90(image, 1, axes=(1, 2)))
        label = np.ascontiguousarray(np.rot90(label, 1, axes=(1, 2)))
    info = {"site": site, "lesions": len(lesions), "vessels": len(vessels),
            "foreground_fraction": float(np.count_nonzero(label)) / label.size}
    return image, label, info


def foreground_anisotropy(label: np.ndarray) -> float:
    """Mean run length of the foreground (label > 0) along y over that along x.

    About 2 for site-A cases (lesions elongated along y) and about 0.5 for site-B cases under
    the rot90 shift. ``nan`` for an empty label.
    """
    fg = np.asarray(label) > 0
    n = np.count_nonzero(fg)
    if n == 0:
        return float("nan")

    def mean_run(axis):
        starts = np.count_nonzero(np.diff(fg.astype(np.int8), axis=axis, prepend=0) == 1)
        return n / starts

    return mean_run(1) / mean_run(2)


# --------------------------------------------------------------------------------------------
# the dataset folder
# --------------------------------------------------------------------------------------------

def _to_sitk(array: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    spacing_xyz = tuple(float(s) for s in SPACING[::-1])
    img.SetSpacing(spacing_xyz)
    shape_xyz = array.shape[::-1]
    img.SetOrigin(tuple(-(n - 1) / 2.0 * s for n, s in zip(shape_xyz, spacing_xyz)))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def _prepare_folder(root: str) -> None:
    """Create ``root``, or empty it when it is a previous synthetic dataset; refuse otherwise."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise SynthError(f"{root} is a file; give a folder for the dataset")
    if not os.path.isdir(root):
        os.makedirs(root)
        return
    entries = set(os.listdir(root))
    if not entries:
        return
    meta_path = os.path.join(root, "dataset.json")
    ours = False
    if os.path.isfile(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as fh:
                ours = _MARKER in json.load(fh)
        except (OSError, ValueError):
            ours = False
    if not ours or not entries <= _OWN_ENTRIES:
        raise SynthError(f"{root} is not empty and is not a dataset written by 'jcsaugment "
                         "synth'; give a new or empty folder")
    for name in entries:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _readme(name: str, shift: str, seed: int, size, splits: Dict[str, List[str]]) -> str:
    return f"""# {name}: synthetic two-site MR lesion segmentation

Written by `jcsaugment synth` (JCSAugmentLib.synth, seed {seed}, size {tuple(size)} (z, y, x),
spacing {SPACING} mm (z, y, x), shift `{shift}`). An nnU-Net v2 raw folder: every case, test
cases included, is in `imagesTr/` and `labelsTr/` with its label; `splits.json` says which
split each case belongs to.

Labels: 0 background, 1 lesion, 2 core (a darker centre inside about half of the lesions).
Each case has a textured organ in a torso, 3-5 small bright lesions elongated in-plane, and
2-3 equally bright thin vessels (background) crossing the organ.

## Sites

- site A: the {len(splits['train'])} training cases (`siteA_*`).
- site B: the {len(splits['validation'])} validation and {len(splits['test'])} test cases
  (`siteB_*`).

{shift_table(shift)}

{describe_shift(shift)}
{_README_WHY if shift == "rot90" else ""}"""


_README_WHY = """
Why: at site A, orientation alone separates lesions (along y) from vessels (along x), so a
model trained without 90-degree rotations may rely on it and lose Dice at site B. nnU-Net's
heuristic policy mirrors every axis and turns by small angles, which never changes the long
axis (only 2.5 % of its axis-0 rotation mass is on 90 degrees); a learned TRA policy can raise
the 90-degree rotation about axis 0, and a learned TEA policy can pick rot90 about axis 0.
"""


def make_synthetic_dataset(out_dir, n_train: int = 8, n_val: int = 4, n_test: int = 4,
                           size: Sequence[int] = (48, 64, 64), seed: int = 0,
                           shift="default") -> dict:
    """Write the two-site synthetic dataset into ``out_dir`` (see the module docstring).

    ``out_dir`` must be new, empty, or a dataset this function wrote before (it is then
    replaced). Returns ``{"root", "dataset_json", "splits_json", "readme", "splits",
    "cases": {id: {"site", "split", "image", "label", "lesions", "foreground_fraction"}},
    "shift", "seed", "size", "spacing", "seconds"}``.
    """
    t0 = time.perf_counter()
    shift_name = _canonical_shift(shift)
    counts = {"train": n_train, "validation": n_val, "test": n_test}
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise SynthError(f"n_{k if k != 'validation' else 'val'} must be a non-negative "
                             f"integer, got {v!r}")
    if n_train < 1 or n_val < 1:
        raise SynthError("the dataset needs at least one training and one validation case")
    try:
        size = tuple(int(s) for s in size)
    except (TypeError, ValueError) as exc:
        raise SynthError(f"size must be 3 integers (D, H, W), got {size!r}") from exc
    if len(size) != 3 or any(s < m for s, m in zip(size, _MIN_SIZE)):
        raise SynthError(f"size must be 3 integers (D, H, W) of at least {_MIN_SIZE}, got {size}")
    seed = int(seed)

    root = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    _prepare_folder(root)
    img_dir, lab_dir = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")
    os.makedirs(img_dir)
    os.makedirs(lab_dir)

    plan = [("train", "A", 0, i) for i in range(n_train)]
    plan += [("validation", "B", 1, i) for i in range(n_val)]
    plan += [("test", "B", 1, n_val + i) for i in range(n_test)]
    splits: Dict[str, List[str]] = {"train": [], "validation": [], "test": []}
    cases: Dict[str, dict] = {}
    for split, site, site_no, i in plan:
        cid = f"site{site}_{i:03d}"
        image, label, info = synthetic_case(size, seed=[seed, site_no, i], site=site,
                                            shift=shift_name)
        img_path = os.path.join(img_dir, f"{cid}_0000{_FILE_ENDING}")
        lab_path = os.path.join(lab_dir, f"{cid}{_FILE_ENDING}")
        sitk.WriteImage(_to_sitk(image), img_path, True)
        sitk.WriteImage(_to_sitk(label), lab_path, True)
        splits[split].append(cid)
        cases[cid] = {"site": site, "split": split, "image": img_path, "label": lab_path,
                      "lesions": info["lesions"],
                      "foreground_fraction": float(np.count_nonzero(label)) / label.size}

    name = "JCSAugmentSynth"
    meta = {
        "name": name,
        "description": ("Synthetic two-site MR lesion segmentation for the JCSAugment demo; "
                        "site A trains, site B validates and tests. "
                        + describe_shift(shift_name)),
        "channel_names": {"0": "MR"},
        "labels": dict(LABELS),
        "numTraining": len(cases),
        "file_ending": _FILE_ENDING,
        _MARKER: {"seed": seed, "shift": shift_name, "size": list(size),
                  "spacing_zyx_mm": list(SPACING),
                  "sites": {cid: c["site"] for cid, c in cases.items()}},
    }
    paths = {"dataset_json": os.path.join(root, "dataset.json"),
             "splits_json": os.path.join(root, "splits.json"),
             "readme": os.path.join(root, "README.md")}
    with open(paths["dataset_json"], "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    with open(paths["splits_json"], "w", encoding="utf-8") as fh:
        json.dump(splits, fh, indent=2)
        fh.write("\n")
    with open(paths["readme"], "w", encoding="utf-8") as fh:
        fh.write(_readme(name, shift_name, seed, size, splits))
    return {"root": root, **paths, "splits": splits, "cases": cases, "shift": shift_name,
            "seed": seed, "size": list(size), "spacing": list(SPACING),
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``jcsaugment synth`` arguments to ``parser`` and set ``func``."""
    parser.add_argument("out_dir", help="dataset folder to write (new, empty, or an earlier "
                                        "synth dataset, which is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the cases")
    parser.add_argument("--n-train", type=int, default=8, metavar="N",
                        help="site-A training cases")
    parser.add_argument("--n-val", type=int, default=4, metavar="N",
                        help="site-B validation cases")
    parser.add_argument("--n-test", type=int, default=4, metavar="N", help="site-B test cases")
    parser.add_argument("--size", type=int, nargs=3, default=(48, 64, 64),
                        metavar=("D", "H", "W"), help="array size in voxels, z y x")
    parser.add_argument("--shift", default="default", choices=sorted(SHIFTS),
                        help=f"how site B differs from site A ('default' is "
                             f"{SHIFTS['default']})")
    parser.set_defaults(func=run_synth_from_args)
    return parser


def run_synth_from_args(args) -> int:
    """Run ``jcsaugment synth`` from parsed arguments; print what was written. Returns the
    exit status (2 and one line on stderr for a problem the user can fix)."""
    import sys
    try:
        res = make_synthetic_dataset(args.out_dir, n_train=args.n_train, n_val=args.n_val,
                                     n_test=args.n_test, size=args.size, seed=args.seed,
                                     shift=args.shift)
    except SynthError as exc:
        print(f"jcsaugment synth: error: {exc}", file=sys.stderr)
        return 2
    n = len(res["cases"])
    fg = 100.0 * float(np.mean([c["foreground_fraction"] for c in res["cases"].values()]))
    print(f"wrote {n} cases ({len(res['splits']['train'])} train site A, "
          f"{len(res['splits']['validation'])} validation + {len(res['splits']['test'])} test "
          f"site B) of size {tuple(res['size'])} into {res['root']} in {res['seconds']:.1f} s")
    print(f"  {res['dataset_json']}")
    print(f"  {res['splits_json']}")
    print(f"  {res['readme']}")
    print(f"  imagesTr/ and labelsTr/ (foreground {fg:.2f} % of the voxels on average)")
    print(f"shift '{res['shift']}': {describe_shift(res['shift'])}")
    print(f"train with: jcsaugment train --dataset {res['root']} --splits {res['splits_json']} "
          "--out RUN_DIR")
    return 0
