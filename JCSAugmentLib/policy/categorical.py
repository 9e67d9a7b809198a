"""Straight-through Gumbel-softmax sampling of categorical policies (paper Eq. 1-2).

For a sample with Gumbel noise ``g`` and logits ``p`` (K options): ``s = softmax(p + g)``, the
chosen option is ``j* = argmax s`` and the weight is ``w = s[j*] + (1 - s[j*]).detach()``:
exactly 1 in the forward pass, ``d s[j*] / d p`` in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Keeps -log(-log(u)) finite: torch.rand can return exactly 0.
_EPS = 1e-12


def gumbel_noise(shape, generator: Optional[torch.Generator] = None,
                 dtype=torch.float64) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)), u ~ U(0, 1), drawn on the CPU from ``generator``."""
    u = torch.rand(shape, generator=generator, dtype=dtype).clamp(_EPS, 1 - _EPS)
    return -torch.log(-torch.log(u))


@dataclass
class CategoricalDraw:
    """Draws of one categorical for n samples: chosen ``index`` (n,), straight-through
    ``weight`` (n,) (value 1, gradient to the logits), and ``soft`` (n,), the detached relaxed
    probability s[j*] of the chosen option."""

    index: torch.Tensor
    weight: torch.Tensor
    soft: torch.Tensor


def straight_through(logits: torch.Tensor, noise: torch.Tensor) -> CategoricalDraw:
    """Draw with given Gumbel ``noise`` (n, K); ``logits`` is (K,) or (n, K) (per-sample rows)."""
    s = torch.softmax(logits.to(noise.dtype) + noise, dim=-1)
    index = s.detach().argmax(-1)
    chosen = s.gather(-1, index[:, None])[:, 0]
    weight = chosen + (1 - chosen).detach()
    return CategoricalDraw(index, weight, chosen.detach())


def sample_categorical(logits: torch.Tensor, n: int,
                       generator: Optional[torch.Generator] = None) -> CategoricalDraw:
    """``n`` straight-through draws from the categorical with ``logits`` (K,)."""
    return straight_through(logits, gumbel_noise((n, logits.shape[-1]), generator))
