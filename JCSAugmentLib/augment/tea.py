"""Test-time augmentation (TEA): the 84 deterministic operations and their inverses.

``tea_transform(x, index)`` transforms an image batch (B, C, D, H, W); the network predicts on
the result; ``tea_invert(y, index)`` maps the prediction (logits or probabilities, any channel
count) back onto the original grid. Flips and quarter turns invert bit-exactly (quarter turns
about an axis whose plane is not square change the spatial shape, and the inverse restores it).
Scalings and rotations invert by trilinear resampling with the inverse matrix;
``tea_invert(..., return_mask=True)`` also returns the voxels whose value depended on padding
(outside the field of view of the transformed input), which a TEA loss or average must skip.
Intensity, filter and noise operations change only the input, so their inverse is the identity.
Each op's forward and inverse are its entry in the operation registry (``ops.OPS``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from . import geometry
from .ops import OPS
from .stats import CaseStats
from .tables import TEA_OPS, TEAOp


def _op(index: int) -> TEAOp:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(TEA_OPS):
        raise ValueError(f"TEA op index must be an int in [0, {len(TEA_OPS) - 1}], got {index!r}")
    return TEA_OPS[index]


def tea_matrix(index: int) -> Optional[torch.Tensor]:
    """Source-from-output matrix (3, 3) of an interpolated TEA op (scale / rotate), else None."""
    op = _op(index)
    entry = OPS[op.op]
    if entry.kind != "resampled":
        return None
    return entry.matrix_of(op.axis, op.magnitude)


def _check(x: torch.Tensor, what: str):
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise ValueError(f"{what} must be a tensor shaped (B, C, D, H, W), got "
                         f"{getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {x.dtype}")


def tea_transform(x: torch.Tensor, index: int, stats: Optional[CaseStats] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Apply TEA op ``index`` to images ``x`` (B, C, D, H, W).

    ``stats``: the case statistics for intensity ops (default: each sample's own, with
    quantiles). ``generator``: the source of the fresh noise of the noise ops. Interpolated
    spatial ops replicate edge voxels where they look outside the input.
    """
    op = _op(index)
    _check(x, "image")
    entry = OPS[op.op]
    if entry.kind != "intensity":
        return entry.forward(x, op.axis, op.magnitude)
    if stats is None:
        stats = CaseStats.from_patch(x, quantiles=101)
    stats = stats.to(x.device, x.dtype)
    mag = torch.full((x.shape[0],), float(op.magnitude), dtype=torch.float64)
    return entry.forward(x, mag, stats, generator)


@lru_cache(maxsize=256)
def _padded_mask(index: int, shape: tuple, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Voxels (1, 1, D, H, W) whose round trip through op ``index`` touched padding."""
    a = tea_matrix(index)[None]
    ones = torch.ones((1, 1, *shape), device=device, dtype=dtype)
    seen = geometry.affine_resample(ones, a, shape, padding_mode="zeros")
    back = geometry.affine_resample(seen, torch.linalg.inv(a), shape, padding_mode="zeros")
    return back < 1 - 1e-4


def tea_invert(y: torch.Tensor, index: int, return_mask: bool = False):
    """Map predictions ``y`` (B, K, D, H, W) made on ``tea_transform(x, index)`` back onto the
    grid of ``x``. With ``return_mask``, also return a boolean (B, 1, D, H, W) mask of voxels
    the inverse had to pad (True = no valid prediction there; always False for exact ops)."""
    op = _op(index)
    _check(y, "prediction")
    entry = OPS[op.op]
    # an op without an inverse changed the image only: the prediction is already on its grid
    out = y if entry.inverse is None else entry.inverse(y, op.axis, op.magnitude)
    if not return_mask:
        return out
    if entry.kind == "resampled":
        mask = _padded_mask(index, tuple(y.shape[2:]), str(y.device), y.dtype)
        return out, mask.expand(y.shape[0], 1, *y.shape[2:])
    return out, torch.zeros((y.shape[0], 1, *out.shape[2:]), dtype=torch.bool, device=y.device)
