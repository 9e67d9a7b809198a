"""The operation registry: what each augmentation operation *is*, one entry per op name.

The tables (``tables.py``) say which operations the method uses with which magnitudes; every
``op`` they name is a key of :data:`OPS`, whose entry says how to run it and how to write it:

* ``name``: the key (``"gamma"``, ``"rot90"``, ...), as the tables spell it;
* ``kind``: how it acts, one class each: :class:`IdentityOp`; :class:`ExactSpatialOp` (mirrors
  and quarter turns: voxel permutations with an exact inverse); :class:`ResampledSpatialOp`
  (scaling and small rotations: a matrix, trilinear resampling, an approximate inverse);
  :class:`IntensityOp` (value, filter, noise and resolution ops: they change the image only,
  so predictions need no inverse and ``inverse`` is None);
* ``neutral``: the magnitude at which the op changes nothing (None where no magnitude does:
  a mirror, or sharpening, which is the identity only as sigma goes to infinity);
* ``forward`` / ``inverse``: the tensor operation on a batch (B, C, D, H, W) and its inverse;
* ``labels``: how charts and captions write it (:class:`OpLabels`, formatted by ``labels.py``).

Adding an operation: write its tensor function (``intensity.py`` for a value op), add one entry
below, then add its rows to the tables in ``tables.py``; the TRA cascade (``tra.py``), TEA
(``tea.py``) and the charts pick it up from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, Optional, Union

import torch

from . import geometry, intensity
from .stats import CaseStats


@dataclass(frozen=True)
class OpLabels:
    """How an op is written for people; ``labels.py`` fills the fields in.

    ``short``: its name in a TRA pie column title, ``{axis}`` filled in (a group's title joins
    its ops' short names with ``/``, so a quarter turn shares the short name of the rotation
    group it belongs to). ``tick``: a TEA bar label, ``{axis}`` and ``{value}`` (the magnitude
    as the TEA table writes it) filled in. ``caption``: a sample's TRA draw in a preview,
    ``{op}`` (the op name), ``{axis}``, ``{value}`` (the drawn magnitude, a float) and ``{sign}``
    (``+`` or ``-``) filled in.
    """

    short: str
    tick: str
    caption: str = "{op} {value:.3g}"


@dataclass(frozen=True)
class IdentityOp:
    """The op that changes nothing (option 0 of every TRA group, TEA op 0)."""

    name: str
    labels: OpLabels
    # TRA stores this as the magnitude of every identity option (``identity_params``).
    neutral: Optional[float] = 0.0
    kind: ClassVar[str] = "identity"
    jittered: ClassVar[bool] = False

    def forward(self, x: torch.Tensor, axis: Optional[int] = None,
                magnitude: Optional[float] = None) -> torch.Tensor:
        return x

    def inverse(self, y: torch.Tensor, axis: Optional[int] = None,
                magnitude: Optional[float] = None) -> torch.Tensor:
        return y


@dataclass(frozen=True)
class ExactSpatialOp:
    """A mirror or a quarter turn: a permutation of the voxels, so ``inverse`` undoes
    ``forward`` bit-exactly. ``forward(x, axis, magnitude)`` and ``inverse(y, axis, magnitude)``
    act on the spatial axes of (B, C, D, H, W) tensors; ``magnitude`` is a quarter-turn count
    for ``rot90`` and unused by mirrors. Its table magnitude is never jittered: TRA draws a
    quarter turn's direction and switches a mirror on (``tra.sample_tra_params``)."""

    name: str
    labels: OpLabels
    neutral: Optional[float]
    forward: Callable[[torch.Tensor, Optional[int], Optional[float]], torch.Tensor]
    inverse: Callable[[torch.Tensor, Optional[int], Optional[float]], torch.Tensor]
    kind: ClassVar[str] = "exact"
    jittered: ClassVar[bool] = False


@dataclass(frozen=True)
class ResampledSpatialOp:
    """A scaling or small rotation: a source-from-output matrix and trilinear resampling.

    ``matrix(axis, magnitudes)`` gives one (3, 3) matrix per magnitude, (n,) -> (n, 3, 3); the
    TRA cascade composes these per sample. ``forward`` replicates edge voxels where it looks
    outside the input (an image continues past its border); ``inverse`` maps predictions back
    with the inverse matrix and fills what it cannot see with 0 (``tea.tea_invert`` masks
    those voxels), so the round trip is exact only up to interpolation.
    """

    name: str
    labels: OpLabels
    neutral: Optional[float]
    matrix: Callable[[Optional[int], torch.Tensor], torch.Tensor]
    kind: ClassVar[str] = "resampled"
    jittered: ClassVar[bool] = True

    def matrix_of(self, axis: Optional[int], magnitude: float) -> torch.Tensor:
        """The (3, 3) matrix of one magnitude (a TEA op's)."""
        return self.matrix(axis, torch.tensor([magnitude]))[0]

    def forward(self, x: torch.Tensor, axis: Optional[int], magnitude: float) -> torch.Tensor:
        a = self.matrix_of(axis, magnitude).expand(x.shape[0], 3, 3)
        return geometry.affine_resample(x, a, x.shape[2:], padding_mode="border")

    def inverse(self, y: torch.Tensor, axis: Optional[int], magnitude: float) -> torch.Tensor:
        a = torch.linalg.inv(self.matrix_of(axis, magnitude)).expand(y.shape[0], 3, 3)
        return geometry.affine_resample(y, a, y.shape[2:], padding_mode="zeros")


@dataclass(frozen=True)
class IntensityOp:
    """A value, filter, noise or resolution op from ``intensity.py``.

    ``forward(x, magnitudes, stats, generator)`` takes one magnitude per sample ((b,) tensor)
    and the samples' ``CaseStats``; ``generator`` is the source of fresh noise and is used only
    where ``draws_noise``. It changes the image, never the grid, so predictions map back
    unchanged: ``inverse`` is None.
    """

    name: str
    labels: OpLabels
    neutral: Optional[float]
    function: Callable[..., torch.Tensor]
    draws_noise: bool = False
    kind: ClassVar[str] = "intensity"
    jittered: ClassVar[bool] = True
    inverse: ClassVar[None] = None

    def forward(self, x: torch.Tensor, magnitudes: torch.Tensor, stats: CaseStats,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.draws_noise:
            return self.function(x, magnitudes, stats, generator)
        return self.function(x, magnitudes, stats)


Op = Union[IdentityOp, ExactSpatialOp, ResampledSpatialOp, IntensityOp]


# Exact spatial ops on (B, C, D, H, W): spatial axis a is tensor dimension a + 2.
def _mirror(x: torch.Tensor, axis: int, magnitude=None) -> torch.Tensor:
    return torch.flip(x, (axis + 2,))


def _mirror_all_axes(x: torch.Tensor, axis=None, magnitude=None) -> torch.Tensor:
    return torch.flip(x, (2, 3, 4))


def _quarter_turns(x: torch.Tensor, axis: int, turns: float) -> torch.Tensor:
    b, c = geometry.plane(axis)
    return torch.rot90(x, int(turns), dims=(b + 2, c + 2))


def _quarter_turns_back(x: torch.Tensor, axis: int, turns: float) -> torch.Tensor:
    return _quarter_turns(x, axis, -int(turns))


def _zoom_matrix(axis: Optional[int], factors: torch.Tensor) -> torch.Tensor:
    return geometry.scaling_matrix(factors)  # a zoom acts on all axes alike


OPS: Dict[str, Op] = {op.name: op for op in (
    IdentityOp("identity", OpLabels("identity", "identity", "identity")),
    ResampledSpatialOp("scale", OpLabels("scale", "scale {value}"), 1.0, _zoom_matrix),
    ResampledSpatialOp("rotate", OpLabels("rot{axis}", "rot{axis} {value}",
                                          "rot ax{axis} {value:+.0f}deg"),
                       0.0, geometry.rotation_matrix),
    ExactSpatialOp("rot90", OpLabels("rot{axis}", "rot90 ax{axis} {value}",
                                     "rot90 ax{axis} {sign}"),
                   0.0, _quarter_turns, _quarter_turns_back),
    ExactSpatialOp("flip", OpLabels("flip{axis}", "flip {axis}", "flip{axis}"),
                   None, _mirror, _mirror),
    ExactSpatialOp("flip_all", OpLabels("flip all", "flip all", "flip all"),
                   None, _mirror_all_axes, _mirror_all_axes),
    IntensityOp("gamma", OpLabels("gamma", "gamma {value}"), 1.0, intensity.gamma),
    IntensityOp("inv_gamma", OpLabels("inv gamma", "inv gamma {value}"), 1.0,
                intensity.inverted_gamma),
    IntensityOp("shift", OpLabels("shift", "shift {value}"), 0.0, intensity.brightness_shift),
    IntensityOp("bscale", OpLabels("b.scale", "b.scale {value}"), 1.0,
                intensity.brightness_scale),
    IntensityOp("contrast", OpLabels("contrast", "contrast {value}"), 1.0, intensity.contrast),
    IntensityOp("blur", OpLabels("blur", "blur \u03c3{value}"), 0.0, intensity.blur),
    IntensityOp("sharpen", OpLabels("sharp", "sharpen \u03c3{value}"), None, intensity.sharpen),
    IntensityOp("noise", OpLabels("noise", "noise {value}"), 0.0, intensity.gaussian_noise,
                draws_noise=True),
    IntensityOp("lowres", OpLabels("low-res", "low-res {value}"), 1.0,
                intensity.low_resolution),
)}
