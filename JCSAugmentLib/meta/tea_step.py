"""The TEA policy's meta-gradient (method.md section 4, paper Eq. 12-15).

With the current model (not theta*), one foreground-centred validation patch is predicted in
Z + 1 copies: copy 0 unchanged, copies 1..Z under TEA ops drawn from p_V with weights w~_k. Each
prediction is mapped back with the op's inverse and scored by soft Dice against the label
(voxels the inverse had to pad are left out). The TEA loss is the weighted mean

    L~ = sum_k (w~_k / sum_j w~_j) * D_k,      so at w~ = 1:  dL~/dw~_k = (D_k - L~) / (Z + 1)

exactly. ``policy.tea_logit_gradient`` then mean-subtracts these, divides by how many draws
chose the same op (Eq. 15) and sends them to the logits of the drawn ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from ..augment.stats import CaseStats
from ..augment.tea import tea_invert, tea_transform


@dataclass
class TEAStep:
    """``g``: dL~/dw~_k for the Z drawn copies (Z,), float64 CPU; ``losses``: the soft-Dice
    losses D_k of all Z + 1 copies (copy 0 is the identity); ``loss``: L~."""

    g: torch.Tensor
    losses: torch.Tensor
    loss: float


def tea_meta_gradient(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor, ops: Sequence[int],
                      dice_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                      stats: Optional[CaseStats] = None,
                      generator: Optional[torch.Generator] = None,
                      target_for: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
                      = None) -> TEAStep:
    """TEA meta-gradient for one patch.

    predict: images (B, C, ...) -> logits (B, K, ...), run without gradients (the model is not
    updated by this step). x: (1, C, D, H, W); y: (1, 1, D, H, W) integer labels. ops: the Z
    drawn TEA op indices. dice_loss(probs, target, valid_mask) -> per-copy soft-Dice losses.
    target_for(logits, y) crops the label to the network's output grid (DeepMedic's output is
    the central part of its input); default: the label as it is.
    """
    if x.shape[0] != 1:
        raise ValueError(f"the TEA step takes one patch, got a batch of {x.shape[0]}")
    all_ops: List[int] = [0] + [int(o) for o in ops]
    if stats is None:
        stats = CaseStats.from_patch(x, quantiles=101)
    inverted, masks = [None] * len(all_ops), [None] * len(all_ops)
    # Copies whose transformed shape agrees are predicted in one batch.
    transformed = [tea_transform(x, op, stats=stats, generator=generator) for op in all_ops]
    shapes = {}
    for k, t in enumerate(transformed):
        shapes.setdefault(tuple(t.shape[2:]), []).append(k)
    with torch.no_grad():
        for ks in shapes.values():
            logits = predict(torch.cat([transformed[k] for k in ks]))
            for j, k in enumerate(ks):
                inv, pad = tea_invert(logits[j:j + 1], all_ops[k], return_mask=True)
                inverted[k], masks[k] = inv, pad
        logits = torch.cat(inverted)
        target = target_for(logits, y) if target_for is not None else y
        target = target.expand(len(all_ops), *target.shape[1:])
        valid = ~torch.cat(masks)
        losses = dice_loss(torch.softmax(logits, 1), target, valid).double().cpu()
    tilde = losses.mean()
    g = (losses[1:] - tilde) / len(all_ops)
    return TEAStep(g, losses, float(tilde))
