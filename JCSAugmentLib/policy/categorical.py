"""Straight-through Gumbel-softmax sampling of categorical policies (paper Eq. 1-2).

For a sample with Gumbel noise ``g`` and logits ``p`` (K options): ``s = softmax(p + g)``, the
chosen option is ``j* = argmax s`` and the weight is ``w = s[j*] + (1 - s[j*]).detach()``:
exactly 1 in the forward pass, ``d s[j*] / d p`` in the backward pass.

An optional exploration floor (off by default; not the paper's) draws a share ``explore`` of
the samples uniformly over the options instead, so each option's sampling probability is at
least ``explore / K``: :func:`explore_noise`.
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


def explore_noise(logits: torch.Tensor, noise: torch.Tensor, explore: float,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``noise`` (n, K) with a share ``explore`` of its rows redrawn so that their option is
    uniform over the K options: the exploration floor. Sampling then follows
    ``(1 - explore) * p + explore / K``; the policy itself (its probabilities, what is saved
    and shown, what inference uses) is unchanged.

    An explored row's noise is Gumbel noise *conditioned on* the uniformly chosen option j
    winning the argmax (the max of ``logits + noise`` drawn first as Gumbel(logsumexp), the
    other options' values as Gumbels truncated below it), so its relaxed probability s[j] --
    which scales the drawn option's logit gradient -- is distributed as when j wins on its
    own: a rare option drawn by the floor gets the gradient it would get when drawn by the
    policy, only in more batches. ``explore`` 0 returns ``noise`` itself and draws nothing from
    ``generator``, so a run without the floor keeps its random stream."""
    if not 0 <= explore < 1:
        raise ValueError(f"explore must be in [0, 1), got {explore}")
    if explore == 0 or noise.shape[0] == 0:
        return noise
    n, k = noise.shape
    a = logits.detach().to(noise.dtype).expand(n, k)
    explored = torch.rand(n, generator=generator, dtype=noise.dtype) < explore
    chosen = torch.randint(k, (n,), generator=generator)
    top = torch.logsumexp(a, -1) + gumbel_noise((n,), generator, noise.dtype)
    below = -torch.logaddexp(-top[:, None], -(a + gumbel_noise((n, k), generator, noise.dtype)))
    conditioned = below.scatter(1, chosen[:, None], top[:, None]) - a
    return torch.where(explored[:, None], conditioned, noise)


def sample_categorical(logits: torch.Tensor, n: int,
                       generator: Optional[torch.Generator] = None,
                       explore: float = 0.0) -> CategoricalDraw:
    """``n`` straight-through draws from the categorical with ``logits`` (K,); ``explore``:
    the exploration floor (:func:`explore_noise`)."""
    noise = gumbel_noise((n, logits.shape[-1]), generator)
    return straight_through(logits, explore_noise(logits, noise, explore, generator))
