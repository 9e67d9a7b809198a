"""The operation tables of the method, as data.

Each table below can be audited line by line against the paper (Li et al., IEEE TMI 2023) and
against ``shared/spec/method.md`` section 6:

* ``TRA_GROUPS``: the 15 cascaded training-time groups. Option 0 of every group is identity; the
  other 47 options carry a nominal magnitude that is jittered at training time (see
  ``Jitter``).
* ``TEA_OPS``: the 84 deterministic test-time operations, identity at index 0.

Every ``op`` a row names is an entry of the operation registry (``ops.OPS``), which says how
the op runs, what its neutral magnitude is and how charts write it. Nothing in this module
computes anything; ``tra.py`` and ``tea.py`` read these tables and the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .ops import OPS

# --------------------------------------------------------------------------------------------
# Training-time augmentation (TRA)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jitter:
    """How a nominal magnitude ``m`` becomes a random training-time magnitude.

    ``u ~ U(lo, hi)`` with ``lo = max(0, m - width)`` when ``clamp_at_zero`` else ``m - width``
    and ``hi = m + width``; then, by ``spread``:

    * ``"sign"``: the magnitude is ``+u`` or ``-u`` with equal probability (rotation, shift);
    * ``"invert"``: the factor is ``1 + u`` or ``1 / (1 + u)`` with equal probability
      (scaling, gamma, brightness scale, contrast);
    * ``"none"``: the magnitude is ``u`` itself (blur/sharpen sigma, noise std, low-res zoom).
    """

    width: float
    spread: str
    clamp_at_zero: bool = True


@dataclass(frozen=True)
class TRAOption:
    """One option of a TRA group.

    ``op`` names the tensor operation, a key of ``ops.OPS`` (``identity``, ``scale``,
    ``rotate``, ``rot90``, ``flip``, ``gamma``, ``inv_gamma``, ``shift``, ``bscale``,
    ``contrast``, ``blur``, ``sharpen``, ``noise``, ``lowres``); ``magnitude`` is the nominal
    value of the table; ``level`` ranks magnitudes inside the group (1 = small, 2 = medium,
    3 = large; 0 for identity and for the 90-degree rotation, which is not a magnitude level);
    it is what RandAugment-S/M/L select.
    """

    name: str
    op: str
    magnitude: Optional[float]
    level: int


@dataclass(frozen=True)
class TRAGroup:
    name: str
    kind: str  # spatial | intensity | filter | noise | resolution
    axis: Optional[int]
    options: Tuple[TRAOption, ...]
    jitter: Optional[Jitter]

    @property
    def size(self) -> int:
        return len(self.options)


_IDENTITY = TRAOption("identity", "identity", None, 0)


def _group(name, kind, op, magnitudes, jitter, axis=None, levels=None, extra=()):
    levels = levels or list(range(1, len(magnitudes) + 1))
    options = [_IDENTITY]
    for m, level in zip(magnitudes, levels):
        options.append(TRAOption(f"{op}_{m:g}", op, float(m), level))
    options.extend(extra)
    return TRAGroup(name, kind, axis, tuple(options), jitter)


def _rotation_group(axis):
    return _group(
        f"rotation_axis{axis}", "spatial", "rotate", (5, 15, 25), Jitter(5.0, "sign"), axis=axis,
        extra=(TRAOption("rot90", "rot90", 90.0, 0),),
    )


# Scaling has five magnitudes; RandAugment's small / medium / large use 0.05 / 0.25 / 0.45
# (levels 1, 2, 3); 0.15 and 0.35 sit between levels and are never the RandAugment choice.
TRA_GROUPS: Tuple[TRAGroup, ...] = (
    _group("scaling", "spatial", "scale", (0.05, 0.15, 0.25, 0.35, 0.45), Jitter(0.05, "invert"),
           levels=(1, 0, 2, 0, 3)),
    _rotation_group(0),
    _rotation_group(1),
    _rotation_group(2),
    TRAGroup("mirror_axis0", "spatial", 0, (_IDENTITY, TRAOption("flip", "flip", None, 1)), None),
    TRAGroup("mirror_axis1", "spatial", 1, (_IDENTITY, TRAOption("flip", "flip", None, 1)), None),
    TRAGroup("mirror_axis2", "spatial", 2, (_IDENTITY, TRAOption("flip", "flip", None, 1)), None),
    _group("gamma", "intensity", "gamma", (0.1, 0.3, 0.5), Jitter(0.1, "invert")),
    _group("inverted_gamma", "intensity", "inv_gamma", (0.1, 0.3, 0.5), Jitter(0.1, "invert")),
    _group("brightness_shift", "intensity", "shift", (0.05, 0.15, 0.25), Jitter(0.05, "sign")),
    _group("brightness_scale", "intensity", "bscale", (0.05, 0.15, 0.25), Jitter(0.05, "invert")),
    _group("contrast", "intensity", "contrast", (0.05, 0.15, 0.25), Jitter(0.05, "invert")),
    # Blur sigma 0.5 / 0.7 / 0.9 grows stronger; sharpen sigma 0.9 / 0.7 / 0.5 grows stronger
    # (a smaller sigma sharpens finer detail), so level k pairs blur and sharpen of strength k.
    TRAGroup(
        "blur_sharpen", "filter", None,
        (_IDENTITY,)
        + tuple(TRAOption(f"blur_{s:g}", "blur", s, k) for k, s in enumerate((0.5, 0.7, 0.9), 1))
        + tuple(TRAOption(f"sharpen_{s:g}", "sharpen", s, k)
                for k, s in enumerate((0.9, 0.7, 0.5), 1)),
        Jitter(0.1, "none", clamp_at_zero=False),
    ),
    _group("noise", "noise", "noise", (0.025, 0.075, 0.125), Jitter(0.025, "none")),
    _group("low_resolution", "resolution", "lowres", (0.9, 0.7, 0.5),
           Jitter(0.1, "none", clamp_at_zero=False)),
)

TRA_GROUP_INDEX = {g.name: i for i, g in enumerate(TRA_GROUPS)}

# --------------------------------------------------------------------------------------------
# Test-time augmentation (TEA)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TEAOp:
    """One deterministic test-time operation.

    ``kind`` is ``identity``, ``spatial``, ``intensity`` or ``filter_noise`` (the method's
    grouping of the table). ``op`` names the tensor operation, a key of ``ops.OPS``; ``axis``
    the axis it acts about (rotations, rot90, flips); ``magnitude`` its parameter: a scale
    factor, an angle in degrees, a rot90 quarter-turn count (+1, -1, 2), a gamma exponent, a
    shift in z-score units, a brightness or contrast factor, a sigma, a noise std or a
    low-resolution zoom.
    """

    index: int
    name: str
    kind: str
    op: str
    axis: Optional[int]
    magnitude: Optional[float]

    @property
    def invertible_exactly(self) -> bool:
        """True unless the op resamples (scaling, rotation): every other op maps predictions
        back by an exact array permutation, or leaves them unchanged."""
        return OPS[self.op].kind != "resampled"


def _tea_table():
    rows = [("identity", "identity", "identity", None, None)]
    for f in (1.05, 1.15, 1.25, 1.35, 1.45):
        rows.append((f"scale_{f:g}", "spatial", "scale", None, f))
        rows.append((f"scale_1/{f:g}", "spatial", "scale", None, 1.0 / f))
    for axis in range(3):
        for a in (5, 15, 25):
            rows.append((f"rotate_axis{axis}_+{a}", "spatial", "rotate", axis, float(a)))
            rows.append((f"rotate_axis{axis}_-{a}", "spatial", "rotate", axis, -float(a)))
    for axis in range(3):
        rows.append((f"flip_axis{axis}", "spatial", "flip", axis, None))
    for axis in range(3):
        rows.append((f"rot90_axis{axis}_+90", "spatial", "rot90", axis, 1.0))
        rows.append((f"rot90_axis{axis}_-90", "spatial", "rot90", axis, -1.0))
        rows.append((f"rot90_axis{axis}_180", "spatial", "rot90", axis, 2.0))
    for op, label in (("gamma", "gamma"), ("inv_gamma", "inverted_gamma")):
        for g in (1.1, 1.3, 1.5):
            rows.append((f"{label}_{g:g}", "intensity", op, None, g))
            rows.append((f"{label}_1/{g:g}", "intensity", op, None, 1.0 / g))
    for s in (0.05, 0.15, 0.25):
        rows.append((f"shift_+{s:g}", "intensity", "shift", None, s))
        rows.append((f"shift_-{s:g}", "intensity", "shift", None, -s))
    for op, label in (("bscale", "brightness_scale"), ("contrast", "contrast")):
        for f in (1.05, 1.15, 1.25):
            rows.append((f"{label}_{f:g}", "intensity", op, None, f))
            rows.append((f"{label}_1/{f:g}", "intensity", op, None, 1.0 / f))
    for s in (0.5, 0.7, 0.9):
        rows.append((f"blur_{s:g}", "filter_noise", "blur", None, s))
    for s in (0.9, 0.7, 0.5):
        rows.append((f"sharpen_{s:g}", "filter_noise", "sharpen", None, s))
    for s in (0.025, 0.075, 0.125):
        rows.append((f"noise_{s:g}", "filter_noise", "noise", None, s))
    for z in (0.9, 0.7, 0.5):
        rows.append((f"lowres_{z:g}", "filter_noise", "lowres", None, z))
    rows.append(("flip_all", "spatial", "flip_all", None, None))
    return tuple(TEAOp(i, *row) for i, row in enumerate(rows))


TEA_OPS: Tuple[TEAOp, ...] = _tea_table()
TEA_INDEX = {op.name: op.index for op in TEA_OPS}

# nnU-Net's 8 mirror combinations expressed as TEA ops: identity, the 3 single flips, the 3
# two-axis flips (a 180-degree rotation about the third axis is the flip of the other two) and
# the flip of all three axes. DeepMedic mirrors single axes only.
TEA_MIRROR_OPS_NNUNET: Tuple[int, ...] = tuple(
    TEA_INDEX[n] for n in ("identity", "flip_axis0", "flip_axis1", "flip_axis2",
                           "rot90_axis0_180", "rot90_axis1_180", "rot90_axis2_180", "flip_all")
)
TEA_MIRROR_OPS_DEEPMEDIC: Tuple[int, ...] = tuple(
    TEA_INDEX[n] for n in ("identity", "flip_axis0", "flip_axis1", "flip_axis2")
)


def table_rows():
    """Both tables as plain rows (for ``jcsaugment ops`` and for documentation)."""
    tra = []
    for gi, g in enumerate(TRA_GROUPS):
        for oi, o in enumerate(g.options):
            tra.append({"group_index": gi, "group": g.name, "option_index": oi, "op": o.name,
                        "kind": g.kind, "magnitude": o.magnitude, "level": o.level})
    tea = [{"index": op.index, "op": op.name, "kind": op.kind, "axis": op.axis,
            "magnitude": op.magnitude} for op in TEA_OPS]
    return {"tra": tra, "tea": tea}
