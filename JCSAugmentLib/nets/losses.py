"""Segmentation losses for the meta-gradient trainer (method.md sections 3, 4 and 9).

All losses are differentiable in both reverse and forward mode (``torch.func.jvp``), work in
float32 and float64, and accept integer label targets shaped ``(B, 1, D, H, W)`` or
``(B, D, H, W)``.

* ``per_sample_seg_loss``: one loss per sample, shape ``(B,)``, for the weighted training risk
  and its per-sample directional derivatives. ``kind``: ``'ce'`` (cross entropy averaged over
  voxels), ``'dice'`` (``1 - `` mean soft Dice over the foreground classes, per sample) or
  ``'ce+dice'`` (their sum, nnU-Net's 1:1). A tuple of logits (the U-Net's deep supervision,
  full resolution first) is scored level by level against the label map downsampled by nearest
  neighbour, weighted ``1/2^k`` and normalised (``deep_supervision_weights``). Logits smaller
  than the target (DeepMedic) are scored against the centred crop of the target
  (``crop_target_to``).
* ``batch_soft_dice_loss``: ``1 -`` mean foreground soft Dice with sums over the whole batch
  (a validation loss).
* ``per_sample_soft_dice``: per-sample soft Dice *score* (higher is better) of probabilities,
  optionally restricted to a voxel mask (TEA: voxels the inverse transform padded are excluded).

Soft Dice per class ``c``: ``(2 sum p_c y_c + smooth) / (sum p_c + sum y_c + smooth)`` with
``smooth = 1e-5`` (nnU-Net's). A class absent from both target and prediction scores 1; absent
from the target but predicted, close to 0.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]

__all__ = ["full_resolution", "per_sample_seg_loss", "batch_soft_dice_loss",
           "per_sample_soft_dice", "crop_target_to", "downsample_target",
           "deep_supervision_weights", "LOSS_KINDS"]

LOSS_KINDS = ("ce", "dice", "ce+dice")
SMOOTH = 1e-5


# ---------------------------------------------------------------------- targets
def _labels(target: torch.Tensor) -> torch.Tensor:
    """Integer label map ``(B, D, H, W)`` (long) from ``(B, 1, D, H, W)`` or ``(B, D, H, W)``."""
    if target.dim() == 5:
        if target.shape[1] != 1:
            raise ValueError(f"label target must be (B, 1, D, H, W) or (B, D, H, W), got "
                             f"{tuple(target.shape)}")
        target = target[:, 0]
    if target.dim() != 4:
        raise ValueError(f"label target must be (B, 1, D, H, W) or (B, D, H, W), got "
                         f"{tuple(target.shape)}")
    if target.is_floating_point():
        target = torch.round(target)
    return target.long()


def crop_target_to(logits: Union[torch.Tensor, Sequence[int]],
                   target: torch.Tensor) -> torch.Tensor:
    """Centre-crop ``target`` (``(B, 1, ...)`` or ``(B, ...)``, any dtype) to the spatial size of
    ``logits`` (a tensor ``(B, K, D, H, W)`` or a 3-sequence of sizes).

    The crop starts at ``(T - O) // 2`` per axis: exactly centred when ``T - O`` is even, as in
    DeepMedic's geometry (e.g. a 105^3 label patch cropped to the 21^3 output). Returns the
    target unchanged when the sizes already match.
    """
    size = tuple(int(s) for s in (logits.shape[2:] if torch.is_tensor(logits) else logits))
    if len(size) != 3:
        raise ValueError(f"expected 3 spatial sizes, got {size}")
    spatial = tuple(target.shape[-3:])
    if spatial == size:
        return target
    index = [slice(None)] * (target.dim() - 3)
    for have, want in zip(spatial, size):
        if have < want:
            raise ValueError(f"target spatial size {spatial} is smaller than the output {size}")
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return target[tuple(index)]


def downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour downsampling of an integer label map to ``size`` (nnU-Net's deep
    supervision targets). Keeps the target's layout (``(B, 1, ...)`` or ``(B, ...)``)."""
    size = tuple(int(s) for s in size)
    if tuple(target.shape[-3:]) == size:
        return target
    labels = _labels(target)
    # nearest-exact samples the centre of each block for integer factors.
    out = F.interpolate(labels[:, None].to(torch.float32), size=size, mode="nearest-exact")
    out = out.round().to(labels.dtype)
    return out if target.dim() == 5 else out[:, 0]


def deep_supervision_weights(n: int, zero_lowest: bool = False) -> torch.Tensor:
    """nnU-Net deep-supervision weights ``1/2^k`` (k = 0 full resolution), normalised to sum 1.

    ``UNet3D`` already omits the lowest decoder level (nnU-Net weights it 0), so the default
    ``zero_lowest=False`` fits its outputs; pass ``True`` for a tuple that includes that level.
    Returns float64 weights on the CPU.
    """
    if n < 1:
        raise ValueError("need at least one output")
    w = torch.tensor([0.5 ** k for k in range(n)], dtype=torch.float64)
    if zero_lowest and n > 1:
        w[-1] = 0.0
    return w / w.sum()


# ---------------------------------------------------------------------- Dice pieces
def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must be in [0, {num_classes - 1}], got range [{lo}, {hi}]")


def _one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype,
             check: bool = True) -> torch.Tensor:
    if check:
        _check_label_range(labels, num_classes)
    return F.one_hot(labels, num_classes).movedim(-1, 1).to(dtype)


def _soft_targets(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One-hot (or soft, if already ``(B, K, ...)`` floating) target matching ``probs``."""
    if target.is_floating_point() and target.shape == probs.shape and probs.shape[1] > 1:
        return target.to(probs.dtype)
    labels = _labels(crop_target_to(probs, target))
    return _one_hot(labels, probs.shape[1], probs.dtype)


def _dice_terms(probs: torch.Tensor, onehot: torch.Tensor, dims: Tuple[int, ...],
                include_background: bool, mask: Optional[torch.Tensor] = None):
    if not include_background:
        if probs.shape[1] < 2:
            raise ValueError("Dice over foreground classes needs at least 2 classes")
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    if mask is not None:
        probs = probs * mask
        onehot = onehot * mask
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return inter, denom


def _mask_tensor(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mask.dim() == 4:
        mask = mask[:, None]
    if mask.dim() != 5 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, D, H, W) or (B, D, H, W), got "
                         f"{tuple(mask.shape)}")
    mask = crop_target_to(like, mask)
    return mask.to(like.dtype)


def per_sample_soft_dice(probs: torch.Tensor, target: torch.Tensor,
                         mask: Optional[torch.Tensor] = None, smooth: float = SMOOTH,
                         include_background: bool = False) -> torch.Tensor:
    """Soft Dice score per sample, shape ``(B,)``: mean over the foreground classes.

    ``probs``: ``(B, K, D, H, W)`` class probabilities (e.g. softmax of logits, or averaged TEA
    predictions). ``target``: integer labels ``(B, 1, ...)``/``(B, ...)`` or a floating
    ``(B, K, ...)`` one-hot/soft map. ``mask``: ``(B, 1, ...)``/``(B, ...)``, nonzero where
    voxels count (bool or float weights); excluded voxels contribute neither to the
    intersection nor to the sums. The Dice *loss* is ``1 - per_sample_soft_dice(...)``.
    """
    if probs.dim() != 5:
        raise ValueError(f"probs must be (B, K, D, H, W), got {tuple(probs.shape)}")
    onehot = _soft_targets(probs, target)
    m = _mask_tensor(mask, probs) if mask is not None else None
    inter, denom = _dice_terms(probs, onehot, (2, 3, 4), include_background, m)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return dice.mean(1)


def full_resolution(output: Logits) -> torch.Tensor:
    """The full-resolution logits of a network's output: with deep supervision the network
    returns a list of logits, finest first; otherwise the logits themselves."""
    return output[0] if isinstance(output, (tuple, list)) else output


def batch_soft_dice_loss(logits: Logits, target: torch.Tensor,
                         smooth: float = SMOOTH) -> torch.Tensor:
    """``1 -`` mean foreground soft Dice with sums over batch and voxels (a scalar).

    A tuple of deep-supervision logits is scored on its full-resolution member only; a target
    larger than the logits is centre-cropped (DeepMedic).
    """
    probs = torch.softmax(full_resolution(logits), dim=1)
    onehot = _soft_targets(probs, target)
    inter, denom = _dice_terms(probs, onehot, (0, 2, 3, 4), include_background=False)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


# ---------------------------------------------------------------------- per-sample loss
def _level_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str,
                smooth: float) -> torch.Tensor:
    loss = None
    if "ce" in kind.split("+"):
        ce = F.cross_entropy(logits, labels, reduction="none")
        loss = ce.flatten(1).mean(1)
    if "dice" in kind.split("+"):
        probs = torch.softmax(logits, dim=1)
        onehot = _one_hot(labels, logits.shape[1], probs.dtype, check=False)
        inter, denom = _dice_terms(probs, onehot, (2, 3, 4), include_background=False)
        dice = 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean(1)
        loss = dice if loss is None else loss + dice
    return loss


def per_sample_seg_loss(logits_or_tuple: Logits, target: torch.Tensor, kind: str = "ce+dice",
                        ds_weights: Optional[Sequence[float]] = None,
                        smooth: float = SMOOTH) -> torch.Tensor:
    """Per-sample segmentation loss, shape ``(B,)``.

    ``logits_or_tuple``: ``(B, K, D, H, W)`` logits, or a tuple of them (deep supervision, full
    resolution first, then 1/2, 1/4, ...). ``target``: integer labels ``(B, 1, ...)`` or
    ``(B, ...)``, of the full-resolution output's size or larger (then centre-cropped to it).
    Each lower level is scored against the (cropped) target downsampled by nearest neighbour to
    its size. ``ds_weights``: one weight per level (normalised to sum 1; default ``1/2^k``
    normalised); levels with weight 0 are not computed.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")
    outputs = list(logits_or_tuple) if isinstance(logits_or_tuple, (tuple, list)) \
        else [logits_or_tuple]
    if not outputs:
        raise ValueError("no logits given")
    if ds_weights is None:
        weights = deep_supervision_weights(len(outputs))
    else:
        weights = torch.as_tensor(ds_weights, dtype=torch.float64).flatten()
        if weights.numel() != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {weights.numel()} weights")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("deep-supervision weights must be >= 0 with a positive sum")
        weights = weights / weights.sum()
    full = outputs[0]
    if full.dim() != 5:
        raise ValueError(f"logits must be (B, K, D, H, W), got {tuple(full.shape)}")
    labels = _labels(crop_target_to(full, target))
    if labels.shape[0] != full.shape[0]:
        raise ValueError(f"batch sizes differ: logits {full.shape[0]}, target {labels.shape[0]}")
    _check_label_range(labels, full.shape[1])
    total = None
    for out, w in zip(outputs, weights.tolist()):
        if w == 0.0:
            continue
        lab = downsample_target(labels, out.shape[2:])
        term = w * _level_loss(out, lab, kind, smooth)
        total = term if total is None else total + term
    return total
