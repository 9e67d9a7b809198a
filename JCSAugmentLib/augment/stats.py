"""Per-case intensity statistics handed to the intensity operations with each patch.

Intensity operations use the statistics of the *case* a patch comes from (not of the patch), so
that two patches of one case get the same intensity mapping for the same magnitude. The
quantiles let gamma restore the case's mean and standard deviation exactly for the case's own
intensity distribution (see ``intensity.gamma``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch


@dataclass
class CaseStats:
    """Per-sample, per-channel statistics: ``mean``, ``std``, ``min``, ``max`` are (B, C);
    ``quantiles`` is (B, C, Q) over probabilities evenly spaced from 0 to 1, or None."""

    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    quantiles: Optional[torch.Tensor] = None

    @classmethod
    def from_patch(cls, x: torch.Tensor, quantiles: int = 0) -> "CaseStats":
        """Statistics of each sample of ``x`` (B, C, D, H, W) itself (when no case is known)."""
        flat = x.detach().flatten(2)
        q = None
        if quantiles:
            probs = torch.linspace(0, 1, quantiles, dtype=flat.dtype, device=flat.device)
            # torch.quantile refuses more than 2**24 values; a strided subsample of at most
            # 2**20 voxels estimates the quantiles well, and the ends are exact.
            step = max(1, flat.shape[2] // (1 << 20))
            q = torch.quantile(flat[:, :, ::step], probs, dim=2).permute(1, 2, 0).contiguous()
            q[..., 0], q[..., -1] = flat.amin(2), flat.amax(2)
        return cls(flat.mean(2), flat.std(2, unbiased=False), flat.amin(2), flat.amax(2), q)

    @classmethod
    def from_cases(cls, cases: Sequence[Mapping], device=None) -> "CaseStats":
        """Stack per-case dicts (keys mean, std, min, max, optional quantiles; per-channel lists)
        into batch statistics, one row per case (repeat a case for each of its patches)."""
        def stack(key):
            return torch.tensor([list(c[key]) for c in cases], dtype=torch.float32, device=device)
        q = None
        if all(c.get("quantiles") is not None for c in cases):
            q = stack("quantiles")
        return cls(stack("mean"), stack("std"), stack("min"), stack("max"), q)

    def select(self, index: torch.Tensor) -> "CaseStats":
        q = None if self.quantiles is None else self.quantiles[index]
        return CaseStats(self.mean[index], self.std[index], self.min[index], self.max[index], q)

    def to(self, device, dtype=torch.float32) -> "CaseStats":
        def mv(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return CaseStats(mv(self.mean), mv(self.std), mv(self.min), mv(self.max),
                         mv(self.quantiles))

    def validate(self, batch: int, channels: int) -> None:
        for name in ("mean", "std", "min", "max"):
            t = getattr(self, name)
            if tuple(t.shape) != (batch, channels):
                raise ValueError(f"case statistics '{name}' must have shape (batch, channels) = "
                                 f"({batch}, {channels}), got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"case statistics '{name}' contain NaN or inf")
        if self.quantiles is not None and (self.quantiles.dim() != 3
                                           or tuple(self.quantiles.shape[:2]) != (batch, channels)):
            raise ValueError(f"case statistics 'quantiles' must be (batch, channels, Q), got "
                             f"{tuple(self.quantiles.shape)}")
        if (self.max < self.min).any():
            raise ValueError("case statistics have max < min")
