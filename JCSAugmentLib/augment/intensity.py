"""Intensity, filter, noise and resolution operations on (b, C, D, H, W) patches.

Every function takes one magnitude per sample (a tensor of shape (b,)) and the samples' case
statistics (``CaseStats`` rows, (b, C)), so one call handles a whole sub-batch whose samples drew
different magnitudes. All magnitudes are in z-score units of the case (shift and noise std are
multiplied by the case std), so the tables mean the same thing for any normalisation. The
operation registry (``ops.OPS``) maps the tables' op names to these functions.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .stats import CaseStats


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).reshape(*v.shape[:2], *([1] * (x.dim() - 2)))


def brightness_shift(x, shift, stats: CaseStats):
    """x + shift * case std."""
    return x + _per_sample(shift, x) * _per_channel(stats.std, x)


def brightness_scale(x, factor, stats: CaseStats = None):
    """x * factor (multiplicative brightness, as nnU-Net)."""
    return x * _per_sample(factor, x)


def contrast(x, factor, stats: CaseStats):
    """(x - case mean) * factor + case mean, clipped to the case range."""
    mean = _per_channel(stats.mean, x)
    y = (x - mean) * _per_sample(factor, x) + mean
    return torch.maximum(torch.minimum(y, _per_channel(stats.max, x)), _per_channel(stats.min, x))


def _trapezoid_moments(values: torch.Tensor):
    """Mean and std of a distribution given by its quantile function sampled at evenly spaced
    probabilities (..., Q): the trapezoid rule on the quantile function."""
    w = torch.ones(values.shape[-1], dtype=values.dtype, device=values.device)
    w[0] = w[-1] = 0.5
    w = w / w.sum()
    m1 = (values * w).sum(-1)
    m2 = (values * values * w).sum(-1)
    return m1, (m2 - m1 * m1).clamp_min(0).sqrt()


def gamma(x, g, stats: CaseStats):
    """Gamma ``g`` on the case range rescaled to [0, 1], then restored to the case mean and std.

    ``f(x) = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` with the case's min ``lo`` and max
    ``hi``. When the case's quantiles are known, ``f`` is followed by the affine map that gives
    the case's own intensity distribution back its mean and std (mean and std of ``f`` over the
    case are computed from the quantiles, so every patch of a case gets the same mapping and
    ``g = 1`` is exactly the identity). Without quantiles only the range is kept.
    """
    lo, hi = _per_channel(stats.min, x), _per_channel(stats.max, x)
    rng = (hi - lo).clamp_min(1e-8)
    gg = _per_sample(g, x)
    y = lo + rng * ((x - lo) / rng).clamp(0, 1).pow(gg)
    if stats.quantiles is None:
        return y
    q = stats.quantiles.to(device=x.device, dtype=x.dtype)  # (b, C, Q)
    lo_q, hi_q = stats.min.to(q)[..., None], stats.max.to(q)[..., None]
    rng_q = (hi_q - lo_q).clamp_min(1e-8)
    fq = lo_q + rng_q * ((q - lo_q) / rng_q).clamp(0, 1).pow(g.to(q).reshape(-1, 1, 1))
    mean_f, std_f = _trapezoid_moments(fq)
    mean_x, std_x = _trapezoid_moments(q)
    scale = std_x / std_f.clamp_min(1e-8)
    return (y - _per_channel(mean_f, x)) * _per_channel(scale, x) + _per_channel(mean_x, x)


def inverted_gamma(x, g, stats: CaseStats):
    """Gamma applied to -x (it acts on the bright end instead of the dark end)."""
    q = None if stats.quantiles is None else -stats.quantiles.flip(-1)
    neg = CaseStats(-stats.mean, stats.std, -stats.max, -stats.min, q)
    return -gamma(-x, g, neg)


def gaussian_kernels(sigma: torch.Tensor, radius: int, dtype, device) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels (b, 2 * radius + 1), one per sigma."""
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigma.to(torch.float64).reshape(-1, 1).clamp_min(1e-3)
    k = torch.exp(-0.5 * (r[None, :] / s) ** 2)
    return (k / k.sum(1, keepdim=True)).to(device=device, dtype=dtype)


def _separable_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with one sigma per sample, edges replicated; grouped conv, one call per axis."""
    b, c = x.shape[:2]
    radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    k = gaussian_kernels(sigma, radius, x.dtype, x.device).repeat_interleave(c, dim=0)
    y = x.reshape(1, b * c, *x.shape[2:])
    for axis in range(3):
        shape = [b * c, 1, 1, 1, 1]
        shape[2 + axis] = 2 * radius + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.reshape(shape), groups=b * c)
    return y.reshape(x.shape)


def blur(x, sigma, stats: CaseStats = None):
    """Gaussian blur with standard deviation ``sigma`` voxels."""
    return _separable_blur(x, sigma)


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    """7-point discrete Laplacian with replicated edges."""
    p = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
    c = p[:, :, 1:-1, 1:-1, 1:-1]
    return (p[:, :, 2:, 1:-1, 1:-1] + p[:, :, :-2, 1:-1, 1:-1] + p[:, :, 1:-1, 2:, 1:-1]
            + p[:, :, 1:-1, :-2, 1:-1] + p[:, :, 1:-1, 1:-1, 2:] + p[:, :, 1:-1, 1:-1, :-2]
            - 6 * c)


def sharpen(x, sigma, stats: CaseStats):
    """x - LoG_sigma(x) (the Laplacian of the Gaussian-blurred patch), clipped to the case range.

    A smaller sigma sharpens finer detail, so sigma 0.5 is the strongest option.
    """
    y = x - _laplacian(_separable_blur(x, sigma))
    return torch.maximum(torch.minimum(y, _per_channel(stats.max, x)), _per_channel(stats.min, x))


def gaussian_noise(x, std, stats: CaseStats, generator: Optional[torch.Generator] = None):
    """x + N(0, (std * case std)^2), fresh noise from ``generator``."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * _per_sample(std, x) * _per_channel(stats.std, x)


def low_resolution(x, zoom, stats: CaseStats = None):
    """Simulate a coarser acquisition: downsample by ``zoom`` (linear), upsample back (nearest)."""
    out = torch.empty_like(x)
    size = x.shape[2:]
    for i, z in enumerate(zoom.tolist()):
        small = [max(1, int(round(s * z))) for s in size]
        down = F.interpolate(x[i:i + 1], size=small, mode="trilinear", align_corners=False)
        out[i:i + 1] = F.interpolate(down, size=size, mode="nearest")
    return out

