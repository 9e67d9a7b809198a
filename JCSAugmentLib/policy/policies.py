"""Learnable augmentation policies: TRA (15 groups, optionally one policy per class) and TEA.

Policies are ``torch.nn.Module`` s whose parameters are logits, so an optimiser (Adam in the
method) steps them directly and ``state_dict`` checkpoints them. Sampling draws Gumbel noise on
the CPU from the caller's generator (reproducible across devices) and returns straight-through
weights whose gradient reaches the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..augment.tables import TEA_OPS, TRA_GROUPS
from .categorical import explore_noise, gumbel_noise, sample_categorical, straight_through

CLASS_NAMES_DEFAULT = ("background", "foreground")


def _logits_from_probabilities(p: Sequence[float]) -> torch.Tensor:
    """log p with zero probabilities mapped to a finite -1e4 (exp underflows to exactly 0, and
    the policy stays JSON-serialisable)."""
    t = torch.as_tensor(p, dtype=torch.float64)
    if (t < 0).any() or not torch.isclose(t.sum(), torch.tensor(1.0, dtype=torch.float64)):
        raise ValueError(f"probabilities must be non-negative and sum to 1, got {list(p)}")
    return torch.where(t > 0, t.clamp_min(1e-300).log(), torch.full_like(t, -1e4))


@dataclass
class TRADraw:
    """TRA draws of n samples: ``choices`` (n, 15), ``group_weights`` (n, 15) straight-through,
    ``weight`` (n,) their product (value 1), ``soft`` (n, 15) the detached s[j*] per group."""

    choices: torch.Tensor
    group_weights: torch.Tensor
    weight: torch.Tensor
    soft: torch.Tensor


class TRAPolicy(nn.Module):
    """One categorical per TRA group (15 groups, 62 options with identity)."""

    def __init__(self, probabilities: Optional[Sequence[Sequence[float]]] = None):
        super().__init__()
        if probabilities is None:
            probabilities = [[1.0 / g.size] * g.size for g in TRA_GROUPS]
        if len(probabilities) != len(TRA_GROUPS):
            raise ValueError(f"a TRA policy has {len(TRA_GROUPS)} groups, got {len(probabilities)}")
        params = []
        for g, p in zip(TRA_GROUPS, probabilities):
            if len(p) != g.size:
                raise ValueError(f"TRA group '{g.name}' has {g.size} options, got {len(p)} "
                                 f"probabilities")
            params.append(nn.Parameter(_logits_from_probabilities(p)))
        self.logits = nn.ParameterList(params)

    def probabilities(self) -> List[torch.Tensor]:
        return [torch.softmax(p.detach(), -1) for p in self.logits]

    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               explore: float = 0.0) -> TRADraw:
        """``n`` draws of every group; ``explore``: the exploration floor
        (:func:`.categorical.explore_noise`, per group)."""
        return _draw_groups([list(self.logits)], torch.zeros(n, dtype=torch.long), generator,
                            explore)


class ClassSpecificTRAPolicy(nn.Module):
    """One ``TRAPolicy`` per patch class (class of the patch's centre voxel).

    The paper uses two classes (background = 0, foreground = any label > 0); any number works.
    With one class this is the class-agnostic learned TRA of the paper's baselines.
    """

    def __init__(self, policies: Sequence[TRAPolicy], class_names: Optional[Sequence[str]] = None):
        super().__init__()
        if not policies:
            raise ValueError("a class-specific TRA policy needs at least one class")
        self.policies = nn.ModuleList(policies)
        names = list(class_names) if class_names else (
            list(CLASS_NAMES_DEFAULT) if len(policies) == 2 else [f"class{i}" for i in
                                                                  range(len(policies))])
        if len(names) != len(policies):
            raise ValueError(f"{len(policies)} policies but {len(names)} class names")
        self.class_names = names

    @property
    def num_classes(self) -> int:
        return len(self.policies)

    def sample(self, classes: torch.Tensor, generator: Optional[torch.Generator] = None,
               explore: float = 0.0) -> TRADraw:
        """Draw for samples whose patch classes are ``classes`` (n,) in [0, num_classes);
        ``explore``: the exploration floor (:func:`.categorical.explore_noise`, per group)."""
        classes = torch.as_tensor(classes, dtype=torch.long).cpu()
        if classes.numel() and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"patch classes must be in [0, {self.num_classes}), got "
                             f"{sorted(set(classes.tolist()))}")
        return _draw_groups([list(p.logits) for p in self.policies], classes, generator,
                            explore)


def _draw_groups(logits_per_class: List[List[torch.Tensor]], classes: torch.Tensor,
                 generator: Optional[torch.Generator], explore: float = 0.0) -> TRADraw:
    """Draw all 15 groups for every sample from its class's logits. Noise is drawn for all 62
    options of every sample in one call, so the random stream does not depend on the classes
    (the exploration floor, when on, draws after it, group by group)."""
    n = classes.shape[0]
    noise = gumbel_noise((n, sum(g.size for g in TRA_GROUPS)), generator)
    choices, weights, soft = [], [], []
    start = 0
    for gi, g in enumerate(TRA_GROUPS):
        table = torch.stack([lg[gi] for lg in logits_per_class])  # (classes, K)
        rows = table[classes]
        d = straight_through(rows, explore_noise(rows, noise[:, start:start + g.size], explore,
                                                 generator))
        start += g.size
        choices.append(d.index)
        weights.append(d.weight)
        soft.append(d.soft)
    gw = torch.stack(weights, 1) if n else torch.zeros(0, len(TRA_GROUPS), dtype=torch.float64)
    return TRADraw(torch.stack(choices, 1) if n else torch.zeros(0, len(TRA_GROUPS),
                                                                 dtype=torch.long),
                   gw, gw.prod(1), torch.stack(soft, 1) if n else gw.detach())


class TEAPolicy(nn.Module):
    """One categorical over the 84 TEA operations."""

    def __init__(self, probabilities: Optional[Sequence[float]] = None):
        super().__init__()
        if probabilities is None:
            probabilities = [1.0 / len(TEA_OPS)] * len(TEA_OPS)
        if len(probabilities) != len(TEA_OPS):
            raise ValueError(f"a TEA policy has {len(TEA_OPS)} options, got {len(probabilities)}")
        self.logits = nn.Parameter(_logits_from_probabilities(probabilities))

    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits.detach(), -1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               explore: float = 0.0):
        """``n`` draws; ``explore``: the exploration floor (:func:`.categorical.explore_noise`)."""
        return sample_categorical(self.logits, n, generator, explore)

    def top(self, z: int, allowed: Optional[torch.Tensor] = None):
        """The ``z`` most probable ops and their probabilities renormalised over those z
        (what inference averages, paper III-F).  ``allowed`` (bool, one per op): choose among
        these only (the ops the network can evaluate on its window); fewer than ``z`` allowed
        gives them all."""
        if not 1 <= z <= len(TEA_OPS):
            raise ValueError(f"z must be in [1, {len(TEA_OPS)}], got {z}")
        p = self.probabilities()
        if allowed is not None:
            allowed = torch.as_tensor(allowed, dtype=torch.bool, device=p.device)
            z = min(z, int(allowed.sum()))
            p = torch.where(allowed, p, torch.full_like(p, -1.0))
        values, index = torch.topk(p, z)
        return index.tolist(), (values / values.sum()).tolist()
