"""Training-time augmentation (TRA): sample the magnitudes, then apply the 15-group cascade.

Sampling and application are separate (as in Kornia): ``sample_tra_params`` turns the option
each sample drew in each group (``choices``, (B, 15), from a policy) into concrete random
magnitudes, ``apply_tra`` applies them. The same ``TRAParams`` always give the same patches, so a
batch can be replayed (previews, tests, resumed runs).

Application, per batch (``apply_tra`` on enlarged crops, or ``augment_patches`` straight from
whole volumes, which reads for each sample only the block its own transform needs):

1. Spatial. A sample with no spatial op is a crop; quarter turns and mirrors alone are exact
   array permutations. A sample that drew a scaling or small rotations is resampled once, the
   matrix holding its quarter turns and mirrors too: slice-wise where at most one axis rotates
   (a 1-D interpolation along that axis and a batched 2-D grid_sample across it, equal to the
   trilinear result up to rounding), else in one trilinear grid_sample shared by all such
   samples. Image channels and per-class label indicators are resampled together and labels
   are the argmax of the indicators, so they keep only the input's label values. The crop is
   large enough (``required_crop_size``) that no padding ever enters the patch.
2. Intensity, on the patch, in the reference code's order: noise, blur/sharpen, brightness shift,
   brightness scale, contrast, low resolution, inverted gamma, gamma; each only on the samples
   that drew it. (The reference code mirrors last; mirrors commute with every intensity op
   here, up to the sub-voxel alignment of the low-resolution grid, so they are folded into
   step 1 at no cost.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import geometry
from .labels import tra_draw_caption
from .ops import OPS
from .stats import CaseStats
from .tables import TRA_GROUPS, TRA_GROUP_INDEX

N_GROUPS = len(TRA_GROUPS)
_SCALE = TRA_GROUP_INDEX["scaling"]
_ROT = tuple(TRA_GROUP_INDEX[f"rotation_axis{a}"] for a in range(3))
_MIRROR = tuple(TRA_GROUP_INDEX[f"mirror_axis{a}"] for a in range(3))
_ROT90_OPTION = tuple(
    next(i for i, o in enumerate(TRA_GROUPS[g].options) if o.op == "rot90") for g in _ROT)
# Intensity stage: its groups, in application order.
_INTENSITY_ORDER = ("noise", "blur_sharpen", "brightness_shift", "brightness_scale", "contrast",
                    "low_resolution", "inverted_gamma", "gamma")


def _per_option(fn, dtype=torch.float64):
    """One lookup tensor per group: ``fn(option)`` for each of its options."""
    return [torch.tensor([fn(o) for o in g.options], dtype=dtype) for g in TRA_GROUPS]


# Per group and option: nominal magnitude (NaN where there is none to jitter), neutral value
# (the registry's; NaN for a mirror or sharpening, which have none, but their options always
# store a drawn value instead), whether it is a quarter turn or a mirror, and the index of its
# operation among the group's distinct operations (blur_sharpen has two: blur and sharpen).
_NOMINAL = _per_option(lambda o: float("nan") if o.magnitude is None or not OPS[o.op].jittered
                       else o.magnitude)
_NEUTRAL = _per_option(lambda o: float("nan") if OPS[o.op].neutral is None
                       else OPS[o.op].neutral)
_IS_ROT90 = _per_option(lambda o: o.op == "rot90", torch.bool)
_IS_FLIP = _per_option(lambda o: o.op == "flip", torch.bool)
_GROUP_OPS = [list(dict.fromkeys(o.op for o in g.options[1:])) for g in TRA_GROUPS]
_OP_ID = [torch.tensor([-1] + [ops.index(o.op) for o in g.options[1:]])
          for g, ops in zip(TRA_GROUPS, _GROUP_OPS)]


@dataclass
class TRAParams:
    """Concrete TRA parameters of a batch (all on the CPU, float64 values).

    ``choices`` (B, 15): the option index drawn in each group. ``values`` (B, 15): its random
    magnitude (scale factor, signed angle in degrees or +-1 quarter turn for rot90, gamma,
    signed shift, brightness / contrast factor, sigma, noise std, low-res zoom; the neutral
    value for identity). ``noise_seed``: seed of the device generator that draws noise.
    """

    choices: torch.Tensor
    values: torch.Tensor
    noise_seed: int

    @property
    def batch_size(self) -> int:
        return self.choices.shape[0]

    def op_names(self) -> List[List[str]]:
        """Human-readable ops of each sample (identity omitted), e.g. for preview captions."""
        out = []
        for i in range(self.batch_size):
            names = []
            for gi, g in enumerate(TRA_GROUPS):
                o = g.options[int(self.choices[i, gi])]
                if o.op != "identity":
                    names.append(tra_draw_caption(o.op, g.axis, float(self.values[i, gi])))
            out.append(names)
        return out

    def select(self, index) -> "TRAParams":
        return TRAParams(self.choices[index], self.values[index], self.noise_seed)

    # Derived per-sample quantities -----------------------------------------------------------
    def rot90(self) -> torch.Tensor:
        """Quarter turns (B, 3) about axes 0, 1, 2."""
        k = torch.zeros(self.batch_size, 3, dtype=torch.long)
        for a, (g, opt) in enumerate(zip(_ROT, _ROT90_OPTION)):
            drawn = self.choices[:, g] == opt
            k[:, a] = torch.where(drawn, self.values[:, g].round().long(), 0)
        return k

    def flips(self) -> torch.Tensor:
        return torch.stack([self.choices[:, g] != 0 for g in _MIRROR], dim=1)

    def small_angles(self) -> torch.Tensor:
        """Interpolated rotation angles (B, 3) in degrees (0 where identity or rot90)."""
        ang = torch.zeros(self.batch_size, 3, dtype=torch.float64)
        for a, (g, opt) in enumerate(zip(_ROT, _ROT90_OPTION)):
            ch = self.choices[:, g]
            ang[:, a] = torch.where((ch != 0) & (ch != opt), self.values[:, g], 0.0)
        return ang

    def scale(self) -> torch.Tensor:
        return torch.where(self.choices[:, _SCALE] != 0, self.values[:, _SCALE], 1.0)

    def needs_resampling(self) -> torch.Tensor:
        """Samples whose spatial transform needs interpolation (scaling or a small rotation)."""
        return (self.scale() != 1.0) | (self.small_angles() != 0).any(1)

    def interpolated_matrix(self) -> torch.Tensor:
        """Source-from-output matrices (B, 3, 3) of the scaling and small rotations."""
        m = OPS["scale"].matrix(None, self.scale())
        ang = self.small_angles()
        for a in range(3):
            m = m @ OPS["rotate"].matrix(a, ang[:, a])
        return m

    def spatial_matrix(self) -> torch.Tensor:
        """The whole spatial transform: scaling, rotations, quarter turns, then mirrors."""
        return (self.interpolated_matrix() @ geometry.rot90_matrix(self.rot90())
                @ geometry.flip_matrix(self.flips()))


def identity_params(n: int) -> TRAParams:
    """Parameters that change nothing (a plain crop), for un-augmented patches."""
    choices = torch.zeros(n, N_GROUPS, dtype=torch.long)
    values = torch.stack([_NEUTRAL[gi][choices[:, gi]] for gi in range(N_GROUPS)], 1) if n else \
        torch.zeros(0, N_GROUPS, dtype=torch.float64)
    return TRAParams(choices, values, 0)


def sample_tra_params(choices: torch.Tensor, generator: Optional[torch.Generator] = None
                      ) -> TRAParams:
    """Random training-time magnitudes for the options in ``choices`` (B, 15).

    Every call consumes the same amount of randomness from ``generator`` whatever was chosen,
    so the stream stays aligned across runs that draw different options.
    """
    choices = torch.as_tensor(choices, dtype=torch.long).cpu()
    if choices.dim() != 2 or choices.shape[1] != N_GROUPS:
        raise ValueError(f"choices must have shape (batch, {N_GROUPS}), got {tuple(choices.shape)}")
    for gi, g in enumerate(TRA_GROUPS):
        bad = (choices[:, gi] < 0) | (choices[:, gi] >= g.size)
        if bad.any():
            raise ValueError(f"choice out of range for group '{g.name}' ({g.size} options): "
                             f"{choices[bad, gi].tolist()}")
    b = choices.shape[0]
    r = torch.rand(b, N_GROUPS, generator=generator, dtype=torch.float64)
    coin = torch.rand(b, N_GROUPS, generator=generator, dtype=torch.float64) < 0.5
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    values = torch.empty(b, N_GROUPS, dtype=torch.float64)
    for gi, g in enumerate(TRA_GROUPS):
        ch = choices[:, gi]
        v = _NEUTRAL[gi][ch]
        m = _NOMINAL[gi][ch]
        if g.jitter is not None:
            j = g.jitter
            lo = (m - j.width).clamp_min(0) if j.clamp_at_zero else m - j.width
            u = lo + r[:, gi] * (m + j.width - lo)
            if j.spread == "sign":
                jittered = torch.where(coin[:, gi], -u, u)
            elif j.spread == "invert":
                jittered = torch.where(coin[:, gi], 1 / (1 + u), 1 + u)
            else:
                jittered = u
            v = torch.where(torch.isnan(m), v, jittered)
        v = torch.where(_IS_ROT90[gi][ch], torch.where(coin[:, gi], -1.0, 1.0), v)
        values[:, gi] = torch.where(_IS_FLIP[gi][ch], 1.0, v)
    return TRAParams(choices, values, seed)


def required_crop_size(params: TRAParams, patch_size: Sequence[int]) -> Tuple[int, int, int]:
    """The smallest enlarged crop from which ``apply_tra`` makes ``patch_size`` patches.

    It covers what each sample's spatial transform reads, and has the patch's parity per axis so
    the patch centre is a voxel centre of the crop (exact paths then need no interpolation).
    """
    patch = torch.tensor(patch_size, dtype=torch.float64)
    need = patch.clone()
    if params.batch_size:
        ext = geometry.source_extent(params.spatial_matrix(), patch_size)
        resampled = params.needs_resampling()
        if resampled.any():
            need = torch.maximum(need, ext[resampled].amax(0).sub(1e-6).ceil())
        # Exact paths read a permuted patch: the extent of a permutation is exact.
        exact = ~resampled
        if exact.any():
            need = torch.maximum(need, ext[exact].amax(0).round())
    out = []
    for n, p in zip(need.tolist(), patch_size):
        n = int(n)
        out.append(n + ((n - p) % 2))
    return tuple(out)


def max_crop_size(patch_size: Sequence[int]) -> Tuple[int, int, int]:
    """A crop size that suffices for any draw from the TRA table (largest scale-down, the
    largest angles about all axes in every sign combination, any quarter turns)."""
    smallest_zoom = 1 / (1 + max(o.magnitude for o in TRA_GROUPS[_SCALE].options[1:])
                         + TRA_GROUPS[_SCALE].jitter.width)
    largest = max(o.magnitude for o in TRA_GROUPS[_ROT[0]].options[1:] if o.op == "rotate")
    largest += TRA_GROUPS[_ROT[0]].jitter.width
    import itertools
    rows = []
    for signs in itertools.product((-1.0, 0.0, 1.0), repeat=3):
        for k in itertools.product((0, 1), repeat=3):
            rows.append((signs, k))
    ang = torch.tensor([[s * largest for s in r[0]] for r in rows], dtype=torch.float64)
    k = torch.tensor([r[1] for r in rows])
    m = OPS["scale"].matrix(None, torch.full((len(rows),), smallest_zoom, dtype=torch.float64))
    for a in range(3):
        m = m @ OPS["rotate"].matrix(a, ang[:, a])
    m = m @ geometry.rot90_matrix(k)
    need = geometry.source_extent(m, patch_size).amax(0).sub(1e-6).ceil()
    return tuple(int(n) + ((int(n) - p) % 2) for n, p in zip(need.tolist(), patch_size))


def _check_inputs(image, label, params, stats, patch_size):
    if not isinstance(image, torch.Tensor) or image.dim() != 5:
        raise ValueError(f"image must be a tensor shaped (B, C, D, H, W), got "
                         f"{getattr(image, 'shape', type(image))}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor, got {image.dtype}")
    b, c = image.shape[:2]
    if params.batch_size != b:
        raise ValueError(f"parameters are for {params.batch_size} samples, image has {b}")
    if label is not None:
        if not isinstance(label, torch.Tensor) or label.dim() != 5 or label.shape[1] != 1:
            raise ValueError(f"label must be a tensor shaped (B, 1, D, H, W), got "
                             f"{getattr(label, 'shape', type(label))}")
        if label.is_floating_point() or label.is_complex():
            raise TypeError(f"label must be an integer tensor of label values, got {label.dtype}")
        if label.shape[0] != b or label.shape[2:] != image.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in "
                             f"batch or spatial size")
    stats.validate(b, c)
    need = required_crop_size(params, patch_size)
    if any(s < n for s, n in zip(image.shape[2:], need)):
        raise ValueError(f"crop {tuple(image.shape[2:])} is too small for patch "
                         f"{tuple(patch_size)} under these transforms: need at least {need} "
                         f"(use required_crop_size or max_crop_size)")


def apply_tra(image: torch.Tensor, label: Optional[torch.Tensor], params: TRAParams,
              stats: CaseStats, patch_size: Sequence[int], label_mode: str = "linear",
              force_resampling: bool = False, slice_wise: bool = True
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Apply the TRA cascade to enlarged crops; return patches of ``patch_size``.

    image: (B, C, Dc, Hc, Wc) float crops centred on the patch centres; label: (B, 1, Dc, Hc, Wc)
    integer label map or None; stats: the case statistics of each sample; label_mode
    ``linear`` (per-class trilinear indicators, argmax; smooth boundaries) or ``nearest``.
    ``force_resampling`` sends every sample through the 3-D interpolating path (for tests);
    ``slice_wise=False`` resamples in 3-D even where one axis is uncoupled (for benchmarks).
    Runs on the device of ``image``; returns (image_patch, label_patch).
    """
    patch_size = _check_common(params, patch_size, label_mode)
    _check_inputs(image, label, params, stats, patch_size)

    def crops(index: torch.Tensor, size):
        # centre-crop the whole batch first (a view), so only the needed region is copied
        dev = index.to(image.device)
        img = geometry.centre_crop(image, size).index_select(0, dev)
        lab = None if label is None else geometry.centre_crop(label, size).index_select(0, dev)
        return img, lab

    return _run(crops, image.shape[0], image.shape[1], image.dtype, image.device,
                None if label is None else label.dtype, params, stats, patch_size, label_mode,
                force_resampling, slice_wise, lambda: image)


def augment_patches(images: Sequence[torch.Tensor], labels: Optional[Sequence[torch.Tensor]],
                    centres: Sequence[Sequence[int]], params: TRAParams, stats: CaseStats,
                    patch_size: Sequence[int], pad_values: Optional[Sequence] = None,
                    label_mode: str = "linear", slice_wise: bool = True
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Crop and augment patches straight from whole volumes (what a training loader does).

    ``images[i]`` (C, Z, Y, X) and ``labels[i]`` (1, Z, Y, X) are sample i's case (the same
    tensor may appear for several samples), ``centres[i]`` its patch centre voxel. Each sample
    reads only what its own transform needs: a patch-sized block for exact samples, the
    enlarged region for the samples that are resampled. Outside a volume the image is padded
    with ``pad_values[i]`` (per channel; default the case minimum from ``stats``) and the label
    with 0. Same results as ``apply_tra`` on crops centred on ``centres``.
    """
    patch_size = _check_common(params, patch_size, label_mode)
    b = params.batch_size
    if len(images) != b or len(centres) != b or (labels is not None and len(labels) != b):
        raise ValueError(f"need one image, label and centre per sample ({b}), got "
                         f"{len(images)} images, {len(centres)} centres"
                         + ("" if labels is None else f", {len(labels)} labels"))
    c = images[0].shape[0]
    for i, im in enumerate(images):
        if not isinstance(im, torch.Tensor) or im.dim() != 4 or not im.is_floating_point():
            raise ValueError(f"sample {i}: image must be a float tensor (C, Z, Y, X), got "
                             f"{getattr(im, 'shape', type(im))} {getattr(im, 'dtype', '')}")
        if im.shape[0] != c:
            raise ValueError(f"sample {i}: {im.shape[0]} channels, sample 0 has {c}")
        if labels is not None:
            lb = labels[i]
            if (not isinstance(lb, torch.Tensor) or lb.dim() != 4 or lb.shape[0] != 1
                    or lb.shape[1:] != im.shape[1:]):
                raise ValueError(f"sample {i}: label must be (1, Z, Y, X) on the image's grid "
                                 f"{tuple(im.shape[1:])}, got {getattr(lb, 'shape', type(lb))}")
            if lb.is_floating_point():
                raise TypeError(f"sample {i}: label must hold integer label values, got "
                                f"{lb.dtype}")
    stats.validate(b, c)
    if pad_values is None:
        pad_values = stats.min.tolist()
    device, dtype = images[0].device, images[0].dtype

    def crops(index: torch.Tensor, size):
        ii = index.tolist()
        img = torch.stack([geometry.crop_around(images[i], centres[i], size, pad_values[i])
                           for i in ii])
        lab = None if labels is None else torch.stack(
            [geometry.crop_around(labels[i], centres[i], size, 0) for i in ii])
        return img, lab

    def whole_input():
        return torch.stack([geometry.crop_around(images[i], centres[i],
                                                 required_crop_size(params, patch_size),
                                                 pad_values[i]) for i in range(b)])

    return _run(crops, b, c, dtype, device, None if labels is None else labels[0].dtype,
                params, stats, patch_size, label_mode, False, slice_wise, whole_input)


def _check_common(params, patch_size, label_mode):
    if label_mode not in ("linear", "nearest"):
        raise ValueError(f"label_mode must be 'linear' or 'nearest', got {label_mode!r}")
    patch_size = tuple(int(s) for s in patch_size)
    if len(patch_size) != 3 or min(patch_size) < 2:
        raise ValueError(f"patch_size must be 3 sizes of at least 2, got {patch_size}")
    return patch_size


def _run(crops, b, c, dtype, device, label_dtype, params, stats, patch_size, label_mode,
         force_resampling, slice_wise, whole_input):
    with torch.no_grad():
        img, lab = _spatial(crops, b, c, dtype, device, label_dtype, params, patch_size,
                            label_mode, force_resampling, slice_wise)
        if lab is not None and lab.dtype != torch.bool and lab.numel() and lab.min() < 0:
            raise ValueError("label contains negative values")
        img = _intensity(img, params, stats.to(img.device, img.dtype))
        # NaN and inf propagate through every operation, so one reduction over the (small)
        # output finds them; only then is the (large) input searched to say where they are.
        if not torch.isfinite(img.sum()):
            _raise_non_finite(whole_input(), img)
    return img, lab


def _raise_non_finite(image: torch.Tensor, out: torch.Tensor):
    bad = ~torch.isfinite(image)
    if bad.any():
        samples = bad.flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"image contains {int(bad.sum())} NaN/inf voxels (samples {samples})")
    samples = (~torch.isfinite(out)).flatten(1).any(1).nonzero().flatten().tolist()
    raise ValueError(f"augmentation overflowed to NaN/inf in samples {samples} (is the image "
                     f"normalised?)")


def _spatial(crops, b, c, dtype, device, label_dtype, params, patch_size, label_mode,
             force_resampling, slice_wise=True):
    """Spatial stage. ``crops(index, size)`` returns the (image, label) regions of ``size``
    centred on the patch centres of samples ``index``."""
    out = torch.empty((b, c, *patch_size), dtype=dtype, device=device)
    lab_out = None if label_dtype is None else torch.empty((b, 1, *patch_size),
                                                          dtype=label_dtype, device=device)
    resample = params.needs_resampling() | force_resampling
    rot90, flips = params.rot90(), params.flips()
    # Quarter turns permute the patch's axes: read the permuted block, then turn it in place.
    extent = geometry.source_extent(geometry.rot90_matrix(rot90), patch_size).round().long()
    for i in (~resample).nonzero().flatten().tolist():
        x, y = crops(torch.tensor([i]), extent[i].tolist())
        out[i] = geometry.exact_permute(x[0], rot90[i].tolist(), flips[i].tolist())
        if y is not None:
            lab_out[i] = geometry.exact_permute(y[0], rot90[i].tolist(), flips[i].tolist())
    # A scaling and a rotation about at most one axis leave that axis uncoupled: resample the
    # permuted patch block slice-wise (geometry.plane_resample, several times cheaper than a
    # 3-D grid_sample), then turn and mirror exactly.
    separable = torch.zeros_like(resample)
    # On a GPU one batched 3-D grid_sample beats a per-sample loop of small kernels.
    if slice_wise and not force_resampling and torch.device(device).type == "cpu":
        matrices = params.interpolated_matrix()
        for i in resample.nonzero().flatten().tolist():
            axis = geometry.single_axis(matrices[i])
            if axis is None:
                continue
            separable[i] = True
            x, y = crops(torch.tensor([i]), required_crop_size(params.select([i]), patch_size))
            block = extent[i].tolist()

            def warp_slices(t, mode, a=matrices[i], axis=axis, block=block):
                return geometry.plane_resample(t[0], a, axis, block, mode)[None]

            img, lab = _resample_with_labels(x, y, label_mode, warp_slices)
            out[i] = geometry.exact_permute(img[0], rot90[i].tolist(), flips[i].tolist())
            if lab is not None:
                lab_out[i] = geometry.exact_permute(lab[0], rot90[i].tolist(),
                                                    flips[i].tolist())
    # Rotations about several axes: one batched trilinear grid_sample for all of them.
    idx = (resample & ~separable).nonzero().flatten()
    if idx.numel():
        sub = params.select(idx)
        x, y = crops(idx, required_crop_size(sub, patch_size))
        grid = geometry.affine_grid(sub.spatial_matrix(), x.shape[2:], patch_size, device, dtype)

        def warp(t, mode):
            return F.grid_sample(t, grid, mode="bilinear" if mode == "linear" else "nearest",
                                 padding_mode="border", align_corners=True)

        img, lab = _resample_with_labels(x, y, label_mode, warp)
        dev_idx = idx.to(device)
        out[dev_idx] = img
        if lab is not None:
            lab_out[dev_idx] = lab
    return out, lab_out


def _resample_with_labels(x: torch.Tensor, y: Optional[torch.Tensor], label_mode: str,
                          resample):
    """Image and labels through one resampling ``resample(tensor, mode)``. Per-class linear
    indicators (argmax) ride in the same call as the image channels, which costs less than a
    second call; ``nearest`` samples the label map itself."""
    if y is None:
        return resample(x, "linear"), None
    lo, hi = torch.aminmax(y)
    if lo < 0:
        raise ValueError("label contains negative values")
    c, n_cls = x.shape[1], int(hi)
    if label_mode == "nearest" or n_cls == 0:
        lab = resample(y.to(x.dtype), "nearest").round().to(y.dtype)
        return resample(x, "linear"), lab
    classes = torch.arange(1, n_cls + 1, device=y.device).reshape(1, -1, 1, 1, 1)
    res = resample(torch.cat([x, (y == classes).to(x.dtype)], 1), "linear")
    ind = res[:, c:]
    # with one class the argmax of (1 - v, v) is v > 0.5
    lab = (ind > 0.5) if n_cls == 1 else _argmax_indicators(ind)
    return res[:, :c], lab.to(y.dtype)


def _argmax_indicators(ind: torch.Tensor) -> torch.Tensor:
    """Label k (0 = background, whose indicator is 1 - sum of the others) with the largest
    interpolated indicator; (n, K, ...) -> (n, 1, ...). Elementwise passes: torch's argmax
    over a channel axis is an order of magnitude slower on the CPU."""
    best = 1 - ind.sum(1, keepdim=True)
    lab = torch.zeros_like(best, dtype=torch.long)
    for k in range(ind.shape[1]):
        v = ind[:, k:k + 1]
        better = v > best
        lab[better] = k + 1
        best = torch.maximum(best, v)
    return lab


def _intensity(img, params: TRAParams, stats: CaseStats):
    """The intensity stage: each operation on the sub-batch of samples that drew it."""
    generator = None
    for name in _INTENSITY_ORDER:
        gi = TRA_GROUP_INDEX[name]
        op_id = _OP_ID[gi][params.choices[:, gi]]
        for k, op in enumerate(_GROUP_OPS[gi]):
            idx = (op_id == k).nonzero().flatten()
            if not idx.numel():
                continue
            dev_idx = idx.to(img.device)
            sub = img.index_select(0, dev_idx)
            mag = params.values[idx, gi]
            entry = OPS[op]
            # one generator, seeded with the batch's noise_seed on the first noise draw, so the
            # noise of a replayed batch is the same and a batch without noise makes none
            if entry.draws_noise and generator is None:
                generator = torch.Generator(device=img.device)
                generator.manual_seed(params.noise_seed)
            sub = entry.forward(sub, mag, stats.select(dev_idx), generator)
            img.index_copy_(0, dev_idx, sub)
    return img
