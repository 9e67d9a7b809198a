"""Sliding-window prediction with test-time augmentation (method.md sections 5 and 9).

Windows tile the (preprocessed) volume in steps of half the output patch; each window's logits
are weighted by a Gaussian importance map (sigma = patch / 8, so window centres count more than
their borders) and accumulated. With TEA, every window is predicted under each chosen TEA op,
the predictions mapped back with the op's inverse and averaged on **logits** with the ops'
weights (voxels an inverse had to pad get weight 0); the variants of one window whose shapes
agree run as one batch. The networks here may have an input context larger than their output
(DeepMedic): a window is an output tile, the network reads the centred input block around it,
padded with the case minimum outside the volume. The noise TEA ops draw from a generator seeded
by ``seed`` (or by one draw from a given ``generator``), fresh for every call, so the same input,
network and seed give bit-identical logits.
"""

from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..augment.geometry import crop_around
from ..augment.stats import CaseStats
from ..augment.tea import tea_invert, tea_transform
from ..meta.tea_step import draw_seed, group_by_shape, noise_generator


def gaussian_importance(size: Sequence[int], sigma_scale: float = 1 / 8, device=None,
                        dtype=torch.float32) -> torch.Tensor:
    """Separable Gaussian (D, H, W), peak 1, floored at a small positive value so that the
    borders of the volume (covered by window borders only) still get a prediction."""
    axes = []
    for s in size:
        r = torch.arange(s, dtype=torch.float64) - (s - 1) / 2
        axes.append(torch.exp(-0.5 * (r / max(s * sigma_scale, 1e-6)) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    return g.clamp_min(1e-3).to(device=device, dtype=dtype)


def window_starts(size: int, patch: int, step: float) -> List[int]:
    """Start offsets along one axis: step ``step * patch``, the last window flush with the end."""
    if size <= patch:
        return [0]
    stride = max(1, int(patch * step))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def sliding_window_predict(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                           input_size: Sequence[int], output_size: Sequence[int],
                           num_classes: int, tea_ops: Sequence[int] = (0,),
                           tea_weights: Optional[Sequence[float]] = None, step: float = 0.5,
                           stats: Optional[CaseStats] = None, uncertainty: bool = False,
                           batch_limit: int = 16,
                           progress: Optional[Callable[[int, int], None]] = None,
                           seed: int = 0, generator: Optional[torch.Generator] = None
                           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Logits (K, Z, Y, X) of a whole volume ``image`` (C, Z, Y, X) and, with
    ``uncertainty``, a voxel-wise disagreement map (Z, Y, X) between the TEA predictions: the
    entropy of their weighted mean softmax minus the weighted mean of their entropies (the
    mutual information, in nats; 0 where all ops agree, large where they contradict each other,
    unlike plain entropy, which is also high where every op is unsure in the same way).
    ``predict`` maps a batch (B, C, *input_size) to logits (B, K, *output_size). ``seed`` seeds
    the noise of the noise TEA ops; ``generator``, if given, supplies that seed instead (one
    draw)."""
    device, dtype = image.device, image.dtype
    shape = image.shape[1:]
    if any(s < o for s, o in zip(shape, output_size)):
        raise ValueError(f"the image {tuple(shape)} is smaller than one output patch "
                         f"{tuple(output_size)}")
    ops = [int(o) for o in tea_ops]
    w = torch.tensor(tea_weights if tea_weights is not None else [1.0] * len(ops),
                     dtype=torch.float64)
    w = (w / w.sum()).tolist()
    if stats is None:
        stats = CaseStats.from_patch(image[None], quantiles=101)
    pad = stats.min[0].tolist()
    noise = noise_generator(device, draw_seed(generator) if generator is not None else seed)
    importance = gaussian_importance(output_size, device=device, dtype=dtype)
    logits_sum = torch.zeros((num_classes, *shape), device=device, dtype=dtype)
    weight_sum = torch.zeros(shape, device=device, dtype=dtype)
    info_sum = torch.zeros(shape, device=device, dtype=dtype) if uncertainty else None
    starts = list(itertools.product(*[window_starts(s, p, step)
                                      for s, p in zip(shape, output_size)]))
    for n, start in enumerate(starts):
        centre = [a + p // 2 for a, p in zip(start, output_size)]
        x = crop_around(image, centre, input_size, pad)[None]
        inverted, valid = _predict_tea(predict, x, ops, stats, batch_limit, noise)
        vw = torch.stack([v.to(dtype) * wk for v, wk in zip(valid, w)])  # (T, 1, ...)
        total = vw.sum(0).clamp_min(1e-8)
        stack = torch.stack(inverted)  # (T, K, ...)
        avg = (stack * vw).sum(0) / total
        sl = tuple(slice(a, a + p) for a, p in zip(start, output_size))
        logits_sum[(slice(None),) + sl] += avg * importance
        weight_sum[sl] += importance
        if uncertainty:
            probs = torch.softmax(stack, 1)
            mean_p = (probs * vw).sum(0) / total
            ent_mean = -(mean_p * mean_p.clamp_min(1e-12).log()).sum(0)
            mean_ent = (-(probs * probs.clamp_min(1e-12).log()).sum(1, keepdim=True)
                        * vw).sum(0)[0] / total[0]
            info_sum[sl] += (ent_mean - mean_ent).clamp_min(0) * importance
        if progress:
            progress(n + 1, len(starts))
    logits = logits_sum / weight_sum.clamp_min(1e-8)
    return logits, (None if info_sum is None else info_sum / weight_sum.clamp_min(1e-8))


def _predict_tea(predict, x, ops, stats, batch_limit, noise):
    """Predictions of one window under every op, mapped back; with their valid masks."""
    transformed = [tea_transform(x, op, stats=stats, generator=noise) for op in ops]
    inverted = [None] * len(ops)
    valid = [None] * len(ops)
    with torch.no_grad():
        for ks in group_by_shape(transformed).values():
            for i in range(0, len(ks), batch_limit):
                chunk = ks[i:i + batch_limit]
                out = predict(torch.cat([transformed[k] for k in chunk]))
                for j, k in enumerate(chunk):
                    inv, pad = tea_invert(out[j:j + 1], ops[k], return_mask=True)
                    inverted[k] = inv[0]
                    valid[k] = ~pad[0]
    return inverted, valid
