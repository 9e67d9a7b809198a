"""Spatial transforms of (B, C, D, H, W) tensors: matrices, affine resampling, exact rot90/flip.

One convention for the whole engine. A spatial transform is given by the matrix ``A`` that maps
an *output* voxel offset to a *source* offset, both measured from the geometric centres of the
two grids (index order D, H, W)::

    output[p] = input[c_in + A @ (p - c_out)]

so a transform applied after another multiplies on the right (``A_total = A_first @ A_second``)
and the inverse of a transform is ``inv(A)``. ``rotation_matrix(axis, +90)`` equals
``torch.rot90(x, 1, dims=plane(axis))`` exactly, so interpolated and exact paths agree.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def plane(axis: int) -> Tuple[int, int]:
    """The two spatial axes a rotation about ``axis`` turns, ordered for a right-handed turn."""
    return ((axis + 1) % 3, (axis + 2) % 3)


def rotation_matrix(axis: int, degrees: torch.Tensor) -> torch.Tensor:
    """Matrices (B, 3, 3) that rotate the image content by ``degrees`` about ``axis``.

    As a source-from-output map this is the rotation by ``-degrees``.
    """
    degrees = torch.as_tensor(degrees, dtype=torch.float64)
    theta = torch.deg2rad(-degrees)
    c, s = torch.cos(theta), torch.sin(theta)
    # Exact zeros and ones for multiples of 90 degrees (cos(pi/2) is 6e-17 in floating point).
    quarter = torch.remainder(degrees, 90.0) == 0
    c = torch.where(quarter, torch.round(c), c)
    s = torch.where(quarter, torch.round(s), s)
    b, k = plane(axis)
    m = torch.eye(3, dtype=torch.float64).repeat(degrees.numel(), 1, 1)
    m[:, b, b] = c
    m[:, b, k] = -s
    m[:, k, b] = s
    m[:, k, k] = c
    return m


def scaling_matrix(factor: torch.Tensor) -> torch.Tensor:
    """Matrices (B, 3, 3) that zoom the content by ``factor`` (> 1 enlarges)."""
    factor = torch.as_tensor(factor, dtype=torch.float64).reshape(-1)
    return torch.eye(3, dtype=torch.float64) / factor[:, None, None]


def flip_matrix(flips: torch.Tensor) -> torch.Tensor:
    """Matrices (B, 3, 3) for boolean flips (B, 3) along each axis."""
    flips = torch.as_tensor(flips, dtype=torch.bool).reshape(-1, 3)
    return torch.diag_embed(torch.where(flips, -1.0, 1.0).to(torch.float64))


def source_extent(a: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """Size (B, 3) of the input region that ``a`` reads for an output of ``out_shape``.

    The output's corner offsets are +-(S-1)/2; their images under ``a`` bound the region. Add 1
    so that the interpolation neighbours of the outermost sample are inside.
    """
    half = (torch.tensor(out_shape, dtype=torch.float64) - 1) / 2
    reach = (a.abs() * half[None, None, :]).sum(-1)
    return 2 * reach + 1


def affine_grid(a: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int],
                device=None, dtype=torch.float32) -> torch.Tensor:
    """The sampling grid (B, *out_shape, n) of source-from-output matrices ``a`` (B, n, n),
    n = 3 (volumes) or 2 (slices), for ``grid_sample`` (align_corners=True), both grids
    centred on each other."""
    if min(in_shape) < 2 or min(out_shape) < 2:
        raise ValueError(f"affine resampling needs at least 2 voxels per axis, got input "
                         f"{tuple(in_shape)} and output {tuple(out_shape)}")
    n = a.shape[-1]
    h_in = (torch.tensor(tuple(in_shape), dtype=torch.float64) - 1) / 2
    h_out = (torch.tensor(tuple(out_shape), dtype=torch.float64) - 1) / 2
    # Normalised coordinates (align_corners=True): n = offset / half-size. Reverse the axis
    # order because grid_sample's last grid dimension is (x, y, z) = (W, H, D).
    theta = a.to(torch.float64) * h_out[None, None, :] / h_in[None, :, None]
    theta = theta.flip(1).flip(2)
    theta = torch.cat([theta, torch.zeros(theta.shape[0], n, 1, dtype=torch.float64)], dim=2)
    return F.affine_grid(theta.to(device=device, dtype=dtype), [a.shape[0], 1, *out_shape],
                         align_corners=True)


def affine_resample(x: torch.Tensor, a: torch.Tensor, out_shape: Sequence[int],
                    mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Resample ``x`` (B, C, D, H, W) with source-from-output matrices ``a`` (B, 3, 3).

    Both grids are centred on each other; the output has spatial size ``out_shape``. ``mode``
    ``bilinear`` is trilinear interpolation for 5-D input.
    """
    grid = affine_grid(a, x.shape[2:], out_shape, x.device, x.dtype)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def interpolation_matrix(n_in: int, n_out: int, factor: float, mode: str = "linear",
                         dtype=torch.float32, device=None) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear (or nearest) interpolation for a zoom by ``factor``
    about the centres, clamped at the edges (border padding)."""
    src = ((n_in - 1) / 2 + (torch.arange(n_out, dtype=torch.float64) - (n_out - 1) / 2)
           / factor).clamp(0, n_in - 1)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    if mode == "nearest":
        m[rows, src.round().long()] = 1.0
    else:
        i0 = src.floor().clamp(max=max(n_in - 2, 0)).long()
        frac = src - i0
        m[rows, i0] += 1 - frac
        m[rows, (i0 + 1).clamp(max=n_in - 1)] += frac
    return m.to(device=device, dtype=dtype)


def single_axis(a: torch.Tensor) -> Optional[int]:
    """The axis a source-from-output matrix (3, 3) leaves uncoupled from the other two (its
    row and column are zero off the diagonal), preferring axis 0; None if there is none."""
    for axis in range(3):
        others = [d for d in range(3) if d != axis]
        if bool((a[axis, others] == 0).all() and (a[others, axis] == 0).all()):
            return axis
    return None


def plane_resample(x: torch.Tensor, a: torch.Tensor, axis: int, out_shape: Sequence[int],
                   mode: str = "linear") -> torch.Tensor:
    """Resample one sample ``x`` (C, D, H, W) with a matrix ``a`` (3, 3) that does not couple
    ``axis`` to the other two (a zoom along it, any 2-D affine across it).

    Trilinear interpolation then factors into a 1-D interpolation along ``axis`` (a small
    matrix product) and a bilinear one in each slice across it (one batched 2-D grid_sample,
    which PyTorch vectorises on the CPU): the same numbers as ``affine_resample`` with border
    padding, up to float rounding, for a fraction of the cost.
    """
    c = x.shape[0]
    others = [d for d in range(3) if d != axis]
    n_in, n_out = x.shape[1 + axis], int(out_shape[axis])
    along = interpolation_matrix(n_in, n_out, 1.0 / float(a[axis, axis]), mode, x.dtype, x.device)
    x = torch.movedim(x, 1 + axis, 1)                                   # (C, L, P, Q)
    p, q = x.shape[2:]
    x = (along @ x.reshape(c, n_in, p * q)).reshape(c, n_out, p, q)
    out_pq = [int(out_shape[d]) for d in others]
    grid = affine_grid(a[others][:, others][None], (p, q), out_pq, x.device, x.dtype)
    res = F.grid_sample(x.transpose(0, 1), grid.expand(n_out, -1, -1, -1),
                        mode="bilinear" if mode == "linear" else "nearest",
                        padding_mode="border", align_corners=True)      # (L, C, P', Q')
    return torch.movedim(res.transpose(0, 1), 1, 1 + axis)


def exact_permute(x: torch.Tensor, rot90: Sequence[int], flips: Sequence[bool]) -> torch.Tensor:
    """Apply quarter turns about axes 0, 1, 2 (in that order), then flips, to one (C, D, H, W).

    ``rot90[a]`` is the number of +90-degree turns about axis ``a``. No interpolation.
    """
    for axis in range(3):
        k = int(rot90[axis]) % 4
        if k:
            b, c = plane(axis)
            x = torch.rot90(x, k, dims=(b + 1, c + 1))
    dims = [a + 1 for a in range(3) if flips[a]]
    if dims:
        x = torch.flip(x, dims)
    return x


def centre_crop(x: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """The central ``out_shape`` region of the last three axes (view, no copy)."""
    sl = []
    for size, want in zip(x.shape[-3:], out_shape):
        if size < want:
            raise ValueError(f"cannot crop {tuple(x.shape[-3:])} to {tuple(out_shape)}")
        o = (size - want) // 2
        sl.append(slice(o, o + want))
    return x[(..., *sl)]


def crop_around(volume: torch.Tensor, centre: Sequence[int], size: Sequence[int],
                pad_value=0) -> torch.Tensor:
    """The ``size`` block of ``volume`` (C, Z, Y, X) spanning ``centre - size // 2`` onwards,
    filled with ``pad_value`` (a scalar or one value per channel) where it leaves the volume.
    A view when the block lies inside the volume."""
    start = [int(c) - int(s) // 2 for c, s in zip(centre, size)]
    dims = volume.shape[1:]
    if all(a >= 0 and a + s <= d for a, s, d in zip(start, size, dims)):
        return volume[(slice(None),) + tuple(slice(a, a + int(s)) for a, s in zip(start, size))]
    out = torch.empty((volume.shape[0], *[int(s) for s in size]), dtype=volume.dtype,
                      device=volume.device)
    out[:] = torch.as_tensor(pad_value, dtype=volume.dtype, device=volume.device).reshape(
        -1, 1, 1, 1)
    src, dst = [slice(None)], [slice(None)]
    for a, s, d in zip(start, size, dims):
        lo, hi = max(a, 0), min(a + int(s), d)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def rot90_matrix(rot90: torch.Tensor) -> torch.Tensor:
    """Matrices (B, 3, 3) for quarter turns (B, 3) about axes 0, 1, 2 applied in that order."""
    rot90 = torch.as_tensor(rot90).reshape(-1, 3)
    m = torch.eye(3, dtype=torch.float64).repeat(rot90.shape[0], 1, 1)
    for axis in range(3):
        m = m @ rotation_matrix(axis, 90.0 * rot90[:, axis].to(torch.float64))
    return m
