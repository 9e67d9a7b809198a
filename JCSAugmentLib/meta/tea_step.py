"""The TEA policy's meta-gradient (method.md section 4, paper Eq. 12-15).

With the current model (not theta*), one foreground-centred validation patch is predicted in
Z + 1 copies: copy 0 unchanged, copies 1..Z under TEA ops drawn from p_V with weights w~_k. Each
prediction is mapped back with the op's inverse and scored by soft Dice against the label
(voxels the inverse had to pad are left out). The TEA loss is the weighted mean

    L~ = sum_k (w~_k / sum_j w~_j) * D_k,      so at w~ = 1:  dL~/dw~_k = (D_k - L~) / (Z + 1)

exactly. ``policy.tea_logit_gradient`` then mean-subtracts these, divides by how many draws
chose the same op (Eq. 15) and sends them to the logits of the drawn ops.

Only ops the network can actually predict may earn credit: a quarter turn of a patch whose turned
plane is not square changes its shape, which a fully convolutional U-Net takes when the new sizes
meet its divisibility and a fixed-output network (DeepMedic with ``output_patch``) does not.
``evaluable_tea_ops`` says which ops a network can take for a patch size; the trainer leaves the
others out of the step instead of predicting a stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..augment import geometry
from ..augment.stats import CaseStats
from ..augment.tables import TEA_OPS
from ..augment.tea import tea_invert, tea_transform

Size = Tuple[int, int, int]


def draw_seed(generator: Optional[torch.Generator]) -> int:
    """One seed drawn from ``generator`` (the run's stream advances by exactly one draw)."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


def noise_generator(device, seed: int) -> torch.Generator:
    """A fresh generator on ``device`` for the noise TEA ops. The noise is drawn where the images
    are, so it needs a generator there; seeding a new one keeps a run's (CPU) stream the same on
    every device."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def group_by_shape(tensors: Sequence[torch.Tensor]) -> Dict[Size, List[int]]:
    """Indices of ``tensors`` (B, C, D, H, W) by spatial shape: the copies one batch can hold."""
    groups: Dict[Size, List[int]] = {}
    for k, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape[2:]), []).append(k)
    return groups


def tea_spatial_size(size: Sequence[int], op: int) -> Size:
    """The spatial size of a patch of ``size`` after TEA op ``op`` (only quarter turns change
    it: they swap the sizes of the plane they turn)."""
    out = [int(s) for s in size]
    o = TEA_OPS[op]
    if o.op == "rot90" and abs(o.magnitude) == 1:
        b, c = geometry.plane(o.axis)
        out[b], out[c] = out[c], out[b]
    return tuple(out)  # type: ignore[return-value]


def network_output_size(model: nn.Module, input_size: Sequence[int]) -> Optional[Size]:
    """The spatial size of ``model``'s logits for an input of ``input_size``, or None where the
    network refuses that input. U-Net: the input's size, if every axis is divisible by its total
    stride; DeepMedic: its ``output_size`` (a fixed ``output_patch`` whatever the input); any
    other network is taken to keep the input's size."""
    size = tuple(int(s) for s in input_size)
    try:
        if hasattr(model, "check_input_size"):
            model.check_input_size(size)
            return size  # type: ignore[return-value]
        if hasattr(model, "output_size"):
            return tuple(int(s) for s in model.output_size(size))  # type: ignore[return-value]
    except ValueError:
        return None
    return size  # type: ignore[return-value]


def evaluable_tea_ops(model: nn.Module, input_size: Sequence[int],
                      output_size: Sequence[int]) -> torch.Tensor:
    """Bool (84,): True for the TEA ops whose transformed ``input_size`` patch ``model`` can
    predict with logits that the op's inverse maps back onto the ``output_size`` grid."""
    ok = []
    for op in range(len(TEA_OPS)):
        turned_input = tea_spatial_size(input_size, op)
        if turned_input == tuple(int(s) for s in input_size):
            ok.append(True)
            continue
        ok.append(network_output_size(model, turned_input) == tea_spatial_size(output_size, op))
    return torch.tensor(ok, dtype=torch.bool)


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
    updated by this step). x: (1, C, D, H, W); y: (1, 1, D, H, W) integer labels. ops: the drawn
    TEA op indices the network can take (``evaluable_tea_ops``; leave the others out rather than
    predicting a stand-in, or they earn credit for what another op did).
    dice_loss(probs, target, valid_mask) -> per-copy soft-Dice losses. target_for(logits, y)
    crops the label to the network's output grid (DeepMedic's output is the central part of its
    input); default: the label as it is.
    """
    if x.shape[0] != 1:
        raise ValueError(f"the TEA step takes one patch, got a batch of {x.shape[0]}")
    all_ops: List[int] = [0] + [int(o) for o in ops]
    if stats is None:
        stats = CaseStats.from_patch(x, quantiles=101)
    inverted, masks = [None] * len(all_ops), [None] * len(all_ops)
    # Copies whose transformed shape agrees are predicted in one batch.
    transformed = [tea_transform(x, op, stats=stats, generator=generator) for op in all_ops]
    with torch.no_grad():
        for ks in group_by_shape(transformed).values():
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
