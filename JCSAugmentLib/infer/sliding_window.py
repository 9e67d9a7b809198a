"""Sliding-window prediction with test-time augmentation (method.md sections 5 and 9).

Windows tile the (preprocessed) volume in steps of half the output patch; each window's logits
are weighted by a Gaussian importance map (sigma = patch / 8, so window centres count more than
their borders) and accumulated. With TEA, every window is predicted under each chosen TEA op,
the predictions mapped back with the op's inverse and averaged on **logits** with the ops'
weights (voxels an inverse had to pad get weight 0). The networks here may have an input
context larger than their output (DeepMedic): a window is an output tile, the network reads the
centred input block around it, padded with the case minimum outside the volume. The noise TEA
ops draw from a generator seeded by ``seed`` (or by one draw from a given ``generator``), fresh
for every call, so the same input, network and seed give bit-identical logits.

Windows run in batches of ``batch_windows``: the TEA variants of all windows of a batch whose
shapes agree go through the network together (on a CPU in calls of
:data:`CPU_IMAGES_PER_CALL` inputs, the fastest per input there, a lone last input joining
the call before it: :data:`LONE_INPUT_JOINS`; on a GPU a batch sized to the free memory).
The variants are drawn window by window, op by op, exactly as one window at a time would draw
them (the noise ops see the same noise), and the windows are accumulated in the same order, so
the result equals the one-window path (``batch_windows=1``) up to the network's own floating-point
differences between batch sizes. ``progress`` receives a :class:`WindowProgress` after every
batch.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..augment.geometry import crop_around
from ..augment.stats import CaseStats
from ..augment.tea import tea_invert, tea_transform
from ..meta.tea_step import draw_seed, group_by_shape, noise_generator

#: network inputs per call on a CPU: on a 2-core VM (64^3 windows, base-10 U-Net in
#: channels-last layout, 2026-12-01, median of 4 interleaved rounds) a window cost 1.06 s in
#: calls of 1, 0.59 s in calls of 2, 0.74 s in calls of 4 and 0.86 s in calls of 8: past 2 the
#: activations (~85 MB per window) no longer fit the caches; again 2026-12-01 14:10 UTC with the
#: prepared network (load 5-7): a 96x160x160 volume ran 1.59x faster than one window per
#: call with calls of 2, 1.25x with calls of 4 (median of 4 interleaved pairs)
CPU_IMAGES_PER_CALL = 2
#: on a CPU with the default batch, a lone last input joins the call before it (a call of 3
#: instead of 2 + 1; the last window of an odd count joins the last batch): on a 2-core VM
#: (64^3 windows, prepared base-10 U-Net, 2026-12-01 14:30 UTC, load 4.7, 14 interleaved
#: rounds) a call of 1 took 1.24 s, of 2 1.07 s, of 3 1.31 s: 2 + 1 cost 1.76x a call of 3
LONE_INPUT_JOINS = True
#: the share of the free GPU memory a window batch may take (the rest: the accumulators, the
#: inverses and whatever else runs on the device)
GPU_MEMORY_SHARE = 0.5
MAX_BATCH_WINDOWS = 64


@dataclass(frozen=True)
class WindowProgress:
    """Where one volume's sliding window stands, after a batch of windows."""
    #: windows predicted so far, and in all
    windows_done: int
    windows_total: int
    #: windows in the batch just finished
    batch_windows: int
    #: seconds since the first window, and the estimate for the rest (None before any window)
    elapsed_s: float
    eta_s: Optional[float]

    @property
    def fraction(self) -> float:
        return self.windows_done / max(self.windows_total, 1)


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


def window_grid(shape: Sequence[int], output_size: Sequence[int],
                step: float) -> List[Tuple[int, ...]]:
    """The start corner of every window over a volume of ``shape``, in prediction order."""
    return list(itertools.product(*[window_starts(int(s), int(p), step)
                                    for s, p in zip(shape, output_size)]))


def default_batch_windows(device, images_per_window: int,
                          bytes_per_image: Optional[int] = None,
                          free_bytes: Optional[int] = None) -> int:
    """How many windows to batch when the caller does not say.

    On a CPU: enough windows for about :data:`CPU_IMAGES_PER_CALL` network inputs per call
    (z = 1: 2 windows; z >= 2, e.g. nnU-Net's 8 mirrors: 1 window, in calls of 2). On a GPU:
    as many windows as :data:`GPU_MEMORY_SHARE` of the free memory holds, from
    ``bytes_per_image`` (the peak memory one network input took, measured on the first
    window) and ``free_bytes`` (free device memory); 1 while either is unknown. Always 1 to
    :data:`MAX_BATCH_WINDOWS`."""
    per_window = max(int(images_per_window), 1)
    if torch.device(device).type != "cuda":
        n = CPU_IMAGES_PER_CALL // per_window
    elif bytes_per_image and free_bytes:
        n = int(GPU_MEMORY_SHARE * free_bytes) // (int(bytes_per_image) * per_window)
    else:
        n = 1
    return max(1, min(int(n), MAX_BATCH_WINDOWS))


class ChannelsLastInstanceNorm3d(torch.nn.InstanceNorm3d):
    """``InstanceNorm3d`` (affine, no running statistics) that keeps its input's memory
    layout and computes its statistics the fast way round for that layout.

    Why: torch's own instance norm reshapes a channels-last input into a contiguous copy and
    returns a contiguous result, which the next channels-last convolution copies back
    (measured at z = 1 on a 2-core VM, 64^3 windows: the copies took 19% of a U-Net call);
    and ``torch.var_mean`` over the three spatial dimensions of a channels-last tensor is
    slow (28% of a U-Net call, 13 ms for a 2 x 10 x 64^3 batch). Here a channels-last batch
    is read as (N, voxels, C), where a reduction over the voxels runs along memory: the mean,
    then the deviations written straight into the output, their mean square (the same
    two-pass variance as torch's, not the cancellation-prone E[x^2] - E[x]^2), and the
    scale and shift applied to the output in place (6.5 ms for that batch, 2026-12-01).
    The same parameters and ``state_dict``; in train mode, or for inputs it does not cover
    (another layout, not 5-D), it is torch's. Results within ~1e-6 of torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or self.track_running_stats or not self.affine or x.dim() != 5
                or not x.is_contiguous(memory_format=torch.channels_last_3d)):
            return super().forward(x)
        n, c = x.shape[:2]
        voxels = x[0, 0].numel()
        flat = x.permute(0, 2, 3, 4, 1).view(n, voxels, c)  # channels-last: no copy
        out = torch.empty_like(x)  # channels-last too
        out_flat = out.permute(0, 2, 3, 4, 1).view(n, voxels, c)
        torch.sub(flat, flat.mean(1, keepdim=True), out=out_flat)
        var = torch.linalg.vecdot(out_flat, out_flat, dim=1).div_(voxels)  # (N, C)
        scale = (torch.rsqrt(var + self.eps) * self.weight).unsqueeze(1)
        torch.addcmul(self.bias.view(1, 1, c), out_flat, scale, out=out_flat)
        return out


def prepare_for_inference(model: torch.nn.Module, device) -> torch.nn.Module:
    """``model`` (in place, and returned) laid out for fast inference on ``device``: on a CPU
    its 5-D weights in channels-last order, which oneDNN's 3-D convolutions prefer (measured
    on a 2-core VM, 64^3 windows, base-10 U-Net, 2026-12-01: 1.09x one window, 1.16x batches
    of 4 and 8, median of 5 interleaved pairs; logits within 2e-5; without it torch runs most
    of the U-Net's one-window convolutions through its slow im2col path), its instance
    norms as :class:`ChannelsLastInstanceNorm3d`, which keep that layout, and the U-Net's
    conv-norm-activation blocks with their LeakyReLU in place (its input is the norm's
    output, used nowhere else: one 20 MB temporary less per block and window; ~5% at z = 1).
    On a CPU it also makes this process keep freed memory for reuse
    (:func:`..allocator.apply_allocator_policy`: one U-Net call 1.28x faster; inference
    processes only, never Slicer's). On a GPU unchanged."""
    if torch.device(device).type == "cpu":
        from ..allocator import apply_allocator_policy
        from ..nets.unet3d import _ConvNormAct  # forward: act(norm(conv(x)))
        apply_allocator_policy()
        model.to(memory_format=torch.channels_last_3d)
        for m in model.modules():
            if type(m) is torch.nn.InstanceNorm3d and m.affine and not m.track_running_stats:
                m.__class__ = ChannelsLastInstanceNorm3d
            if type(m) is _ConvNormAct and isinstance(m.act, torch.nn.LeakyReLU):
                m.act.inplace = True
    return model


def sliding_window_predict(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                           input_size: Sequence[int], output_size: Sequence[int],
                           num_classes: int, tea_ops: Sequence[int] = (0,),
                           tea_weights: Optional[Sequence[float]] = None, step: float = 0.5,
                           stats: Optional[CaseStats] = None, uncertainty: bool = False,
                           batch_limit: Optional[int] = None,
                           progress: Optional[Callable[[WindowProgress], None]] = None,
                           seed: int = 0, generator: Optional[torch.Generator] = None,
                           batch_windows: Optional[int] = None
                           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Logits (K, Z, Y, X) of a whole volume ``image`` (C, Z, Y, X) and, with
    ``uncertainty``, a voxel-wise disagreement map (Z, Y, X) between the TEA predictions: the
    entropy of their weighted mean softmax minus the weighted mean of their entropies (the
    mutual information, in nats; 0 where all ops agree, large where they contradict each other,
    unlike plain entropy, which is also high where every op is unsure in the same way).
    ``predict`` maps a batch (B, C, *input_size) to logits (B, K, *output_size). ``seed`` seeds
    the noise of the noise TEA ops; ``generator``, if given, supplies that seed instead (one
    draw).

    ``batch_windows``: windows per batch (None: :func:`default_batch_windows`; on a GPU the
    first window runs alone to measure its memory). ``batch_limit``: at most this many network
    inputs per call (None: a whole batch's variants of one shape; on a CPU with the default
    batch, :data:`CPU_IMAGES_PER_CALL`, where a lone last input or window joins the call or
    batch before it). ``progress`` is called with a
    :class:`WindowProgress` after every batch."""
    device, dtype = image.device, image.dtype
    shape = image.shape[1:]
    if any(s < o for s, o in zip(shape, output_size)):
        raise ValueError(f"the image {tuple(shape)} is smaller than one output patch "
                         f"{tuple(output_size)}")
    if batch_windows is not None and (isinstance(batch_windows, bool) or
                                      int(batch_windows) != batch_windows or batch_windows < 1):
        raise ValueError(f"batch_windows must be a whole number >= 1, got {batch_windows!r}")
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
    starts = window_grid(shape, output_size, step)

    def accumulate(start, inverted, valid):
        """Add one window's TEA average (and disagreement) to the sums, in place."""
        sl = tuple(slice(a, a + p) for a, p in zip(start, output_size))
        weight_sum[sl] += importance
        if len(inverted) == 1 and not uncertainty and bool(valid[0].all()):
            # one op that padded nothing (z = 1): its logits are the average, exactly
            logits_sum[(slice(None),) + sl].addcmul_(inverted[0], importance)
            return
        vw = torch.stack([v.to(dtype) * wk for v, wk in zip(valid, w)])  # (T, 1, ...)
        total = vw.sum(0).clamp_min(1e-8)
        stack = torch.stack(inverted)  # (T, K, ...)
        avg = (stack * vw).sum(0).div_(total)
        logits_sum[(slice(None),) + sl].addcmul_(avg, importance)
        if uncertainty:
            probs = torch.softmax(stack, 1)
            mean_p = (probs * vw).sum(0) / total
            ent_mean = -(mean_p * mean_p.clamp_min(1e-12).log()).sum(0)
            mean_ent = (-(probs * probs.clamp_min(1e-12).log()).sum(1, keepdim=True)
                        * vw).sum(0)[0] / total[0]
            info_sum[sl] += (ent_mean - mean_ent).clamp_min(0) * importance

    measure = batch_windows is None and device.type == "cuda"
    size = 1 if measure else (int(batch_windows) if batch_windows is not None
                              else default_batch_windows(device, len(ops)))
    # on a CPU with the default batch: calls of CPU_IMAGES_PER_CALL inputs (the fastest per
    # input there, also for one window's TEA), never a lone input after others (see
    # LONE_INPUT_JOINS)
    cpu_default = batch_limit is None and batch_windows is None and device.type != "cuda"
    if cpu_default:
        batch_limit = CPU_IMAGES_PER_CALL
    t0 = time.perf_counter()
    n = 0
    while n < len(starts):
        batch = starts[n:n + size]
        if cpu_default and LONE_INPUT_JOINS and len(starts) - n - size == 1 and \
                len(ops) < CPU_IMAGES_PER_CALL:
            batch = starts[n:]  # the last window would be a call of its own: it joins this one
        if measure:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        crops = [crop_around(image, [a + p // 2 for a, p in zip(start, output_size)],
                             input_size, pad)[None] for start in batch]
        per_window = _predict_tea(predict, crops, ops, stats, batch_limit, noise,
                                  join_lone=cpu_default and LONE_INPUT_JOINS)
        for start, (inverted, valid) in zip(batch, per_window):
            accumulate(start, inverted, valid)
        n += len(batch)
        if measure:  # the first window alone told what one network input costs
            peak = torch.cuda.max_memory_allocated(device) - before
            free, _ = torch.cuda.mem_get_info(device)
            size = default_batch_windows(device, len(ops), max(peak // len(ops), 1), free)
            measure = False
        if progress:
            elapsed = time.perf_counter() - t0
            progress(WindowProgress(n, len(starts), len(batch), elapsed,
                                    elapsed / n * (len(starts) - n)))
    logits = logits_sum / weight_sum.clamp_min(1e-8)
    return logits, (None if info_sum is None else info_sum / weight_sum.clamp_min(1e-8))


def _predict_tea(predict, crops, ops, stats, batch_limit, noise, join_lone=False):
    """Per window of ``crops`` (each (1, C, ...)): its predictions under every op, mapped back,
    with their valid masks. The variants are drawn window-major, op-minor (the draw order of
    one window at a time); those of one shape share network calls (of at most ``batch_limit``
    inputs; ``join_lone``: a last call of one input joins the call before it), and each op's
    predictions of all windows are inverted together."""
    transformed = [tea_transform(x, op, stats=stats, generator=noise)
                   for x in crops for op in ops]  # index = window * T + op
    t = len(ops)
    outputs: List[Optional[torch.Tensor]] = [None] * len(transformed)
    with torch.no_grad():
        for ks in group_by_shape(transformed).values():
            limit = len(ks) if batch_limit is None else max(int(batch_limit), 1)
            chunks = [ks[i:i + limit] for i in range(0, len(ks), limit)]
            if join_lone and len(chunks) > 1 and len(chunks[-1]) == 1:
                chunks[-2:] = [chunks[-2] + chunks[-1]]
            for chunk in chunks:
                out = predict(torch.cat([transformed[k] for k in chunk]))
                for j, k in enumerate(chunk):
                    outputs[k] = out[j:j + 1]
        inverted = [[None] * t for _ in crops]
        valid = [[None] * t for _ in crops]
        for o, op in enumerate(ops):
            same = [outputs[m * t + o] for m in range(len(crops))]
            inv, padded = tea_invert(torch.cat(same) if len(same) > 1 else same[0], op,
                                     return_mask=True)
            for m in range(len(crops)):
                inverted[m][o] = inv[m]
                valid[m][o] = ~padded[m]
    return list(zip(inverted, valid))
