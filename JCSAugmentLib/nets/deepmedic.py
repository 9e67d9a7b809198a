"""DeepMedic (Kamnitsas et al.) with one input tensor, written for meta-gradients.

Architecture (method.md section 9):

* Three pathways: full resolution, and the image average-pooled by 3 and by 5
  (``subsample_factors``). Each pathway has 8 unpadded 3x3x3 convolutions (``feature_maps`` =
  30,30,40,40,40,40,50,50); layer 1 is a plain convolution, layers 2..8 are pre-activation
  BatchNorm -> PReLU -> conv.
  Residual connections add the input of layer ``l-1`` (= output of layer ``l-2``) to the output
  of layer ``l`` for ``l`` in ``residual_layers`` = (4, 6, 8) (1-based), centre-cropped to the
  output's size (2 voxels per side) and zero-padded in channels where it has fewer.
* The subsampled pathways' outputs are upsampled by repetition (nearest) and centre-cropped to the
  full-resolution pathway's output size, then all pathways are concatenated.
* Two "fully connected" 1x1x1 layers with ``fc_maps`` = 250 maps and a 1x1x1 classifier, each
  pre-activation BatchNorm -> PReLU -> conv.
* No dropout: the forward must be a deterministic function of parameters and input.

Geometry. Each pathway loses 16 voxels per axis (8 unpadded 3^3 convs). The network takes ONE
input tensor, the largest context any pathway needs, and cuts its pathways' inputs from it:

* full resolution: the centred ``o + 16`` voxels, giving an output of ``o`` voxels;
* subsampled by an odd factor ``f``: the pathway must produce ``n = ceil(o / f)`` low-resolution
  voxels (one more if ``n*f - o`` is odd, so the upsampled map can be cropped exactly centred),
  so it needs ``n + 16`` low-resolution voxels = the centred ``f * (n + 16)`` input voxels,
  average-pooled with kernel = stride = ``f``.

The input size is the largest of these. DeepMedic's classic training geometry, a 37^3
full-resolution segment giving a 21^3 output, therefore needs a **105^3** input
(x3 pathway: 7 + 16 = 23 low-res voxels = 69 input voxels; x5 pathway: 5 + 16 = 21 low-res voxels
= 105 input voxels): ``DeepMedic.input_size(21) == (105, 105, 105)``.

The x5 pathway quantises the context, so a 105^3 input has room for outputs up to 25^3 (41^3
full-resolution segment; 17, 19, 21, 23 and 25 all need 105). Which output ``forward`` gives:

* ``DeepMedic(..., output_patch=21)`` (what ``build_network`` does for a requested 21^3 label
  patch): always the centred 21^3 (logits ``(B, K, 21, 21, 21)`` for a 105^3 input), from any
  input at least ``input_size(21)`` with the output's parity per axis;
* ``output_patch=None`` (default): the largest output the input allows,
  ``DeepMedic.output_size(105) == (25, 25, 25)``; ``output_size(s)`` is the largest ``o`` with
  ``input_size(o) <= s`` and ``s - o`` even (every crop exactly centred);
* ``forward(x, output_size=o)`` overrides both for one call.

Unused border context is ignored. To train, crop the label patch to the centred output with
``losses.crop_target_to`` (``NetworkInfo.crop_target``).

Sizes and subsample factors may be per axis (triples); subsample factors must be odd.

Meta-gradients: the forward is pure apart from BatchNorm's running statistics, which a train-mode
forward updates in place (as any BatchNorm does). ``torch.func.jvp``/``grad`` refuse in-place
updates of buffers they did not receive as inputs, so forwards made only to measure (the JVP, the
finite differences, ``L_val(theta*)``) must run with ``track_running_stats`` switched off, as
``JCSAugmentLib.meta.metagrad.frozen_running_stats`` does; batch statistics are used either way,
so the values are the same.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import IntOrTriple, Triple, as_triple


__all__ = ["DeepMedic", "geometry_input_size", "geometry_output_size"]


DEFAULT_FEATURE_MAPS = (30, 30, 40, 40, 40, 40, 50, 50)
DEFAULT_SUBSAMPLE = (3, 5)


class _class_or_instance:
    """Method decorator: bound to the instance when called on one, else to the class."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, objtype=None):
        bound = obj if obj is not None else objtype

        def call(*args, **kwargs):
            return self.func(bound, *args, **kwargs)
        call.__doc__ = self.func.__doc__
        call.__name__ = self.func.__name__
        return call


def _centre_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Exactly centred crop of the last three axes (differences must be even and >= 0)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size):
        d = have - want
        if d < 0 or d % 2:
            raise ValueError(f"cannot centre-crop {tuple(x.shape[2:])} to {tuple(size)}")
        slices.append(slice(d // 2, d // 2 + want))
    return x[tuple(slices)]


class _PreActConv(nn.Module):
    """[BatchNorm -> PReLU ->] Conv3d, out of place."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, preact: bool, bias: bool,
                 prelu_init: float = 0.01):
        super().__init__()
        self.preact = preact
        if preact:
            self.norm = nn.BatchNorm3d(in_ch)
            self.act = nn.PReLU(in_ch, init=prelu_init)
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            x = self.act(self.norm(x))
        return self.conv(x)


class _Pathway(nn.Module):
    """Unpadded 3^3 conv layers with pre-activation and DeepMedic's residual connections."""

    def __init__(self, in_channels: int, feature_maps: Sequence[int],
                 residual_layers: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList()
        ch = in_channels
        for i, fm in enumerate(feature_maps):
            # Convolutions feed a BatchNorm (next layer) so they carry no bias.
            self.layers.append(_PreActConv(ch, fm, 3, preact=(i > 0), bias=False))
            ch = fm
        self.out_channels = ch
        # 0-based indices of layers whose output receives the residual.
        self.residual_at = frozenset(int(layer) - 1 for layer in residual_layers)
        for index in self.residual_at:
            if index < 2 or index >= len(feature_maps):
                raise ValueError(f"residual layers must be in 3..{len(feature_maps)} (1-based), "
                                 f"got {list(residual_layers)}")

    @property
    def reduction(self) -> int:
        return 2 * len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i in self.residual_at:
                h = h + _match_residual(outs[i - 2], h)
            outs.append(h)
        return h


def _match_residual(res: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Crop ``res`` spatially to ``out`` (centred) and zero-pad (or cut) its channels."""
    res = _centre_crop(res, out.shape[2:])
    c_res, c_out = res.shape[1], out.shape[1]
    if c_res < c_out:
        res = F.pad(res, (0, 0, 0, 0, 0, 0, 0, c_out - c_res))
    elif c_res > c_out:
        res = res[:, :c_out]
    return res


class DeepMedic(nn.Module):
    """Multi-scale DeepMedic taking one input tensor (see the module docstring for geometry).

    Args:
        in_channels: input image channels.
        num_classes: K, logits channels (background included).
        feature_maps: per-layer maps of each pathway (all pathways alike).
        fc_maps: maps of the two 1x1x1 "fully connected" layers.
        subsample_factors: one odd factor (int or triple) per subsampled pathway.
        residual_layers: 1-based layers whose output receives a residual connection.
        width: scales ``feature_maps`` and ``fc_maps`` (e.g. 0.1 for fast CPU tests); each
            rounded, at least 1.
        output_patch: fixed output size (int or triple) for every input, e.g. 21 for the
            classic 37^3 -> 21^3 training geometry on a 105^3 input. ``None`` (default): the
            largest output the input allows (105^3 -> 25^3). ``forward(x, output_size=...)``
            overrides either per call.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 feature_maps: Sequence[int] = DEFAULT_FEATURE_MAPS,
                 fc_maps: int = 250, subsample_factors: Sequence[IntOrTriple] = DEFAULT_SUBSAMPLE,
                 residual_layers: Sequence[int] = (4, 6, 8), width: float = 1.0,
                 output_patch: Optional[IntOrTriple] = None):
        super().__init__()
        if width <= 0:
            raise ValueError("width must be positive")
        feature_maps = tuple(max(1, int(round(f * width))) for f in feature_maps)
        fc_maps = max(1, int(round(fc_maps * width)))
        if not feature_maps:
            raise ValueError("feature_maps must not be empty")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.feature_maps = feature_maps
        self.fc_maps = fc_maps
        self.factors: Tuple[Triple, ...] = tuple(as_triple(f, "subsample factor")
                                                 for f in subsample_factors)
        for f in self.factors:
            if any(v < 1 or v % 2 == 0 for v in f):
                raise ValueError(f"subsample factors must be odd and >= 1, got {f}")
        self.residual_layers = tuple(int(layer) for layer in residual_layers)
        self.pathways = nn.ModuleList(
            _Pathway(in_channels, feature_maps, self.residual_layers)
            for _ in range(1 + len(self.factors)))
        concat = feature_maps[-1] * len(self.pathways)
        self.fc1 = _PreActConv(concat, fc_maps, 1, preact=True, bias=False)
        self.fc2 = _PreActConv(fc_maps, fc_maps, 1, preact=True, bias=False)
        self.classifier = _PreActConv(fc_maps, num_classes, 1, preact=True, bias=True)
        self.output_patch: Optional[Triple] = (None if output_patch is None
                                               else as_triple(output_patch, "output patch"))
        self._init_weights()

    # ------------------------------------------------------------------ geometry
    @property
    def reduction(self) -> int:
        """Voxels lost per axis by each pathway (2 per unpadded 3^3 convolution)."""
        return 2 * len(self.feature_maps)

    @_class_or_instance
    def input_size(self_or_cls, output_size: IntOrTriple) -> Triple:
        """Input patch size (per axis) that yields ``output_size`` logits voxels.

        On the class it uses the default geometry (8 layers, factors 3 and 5):
        ``DeepMedic.input_size(21) == (105, 105, 105)``.
        """
        reduction, factors = _geometry_of(self_or_cls)
        return geometry_input_size(output_size, reduction, factors)

    @_class_or_instance
    def output_size(self_or_cls, input_size: IntOrTriple) -> Triple:
        """Output size (per axis) that ``forward`` gives for an input of ``input_size``.

        An instance with ``output_patch`` set returns it (after checking that the input is large
        enough); otherwise the largest output the input allows (see the module doc). On the
        class it uses the default geometry: ``DeepMedic.output_size(105) == (25, 25, 25)``.
        """
        reduction, factors = _geometry_of(self_or_cls)
        fixed = getattr(self_or_cls, "output_patch", None) \
            if isinstance(self_or_cls, DeepMedic) else None
        if fixed is not None:
            _check_fits(input_size, fixed, reduction, factors)
            return fixed
        return geometry_output_size(input_size, reduction, factors)

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor,
                output_size: Optional[IntOrTriple] = None) -> torch.Tensor:
        """Logits ``(B, K, *o)`` for the centred output region ``o``: ``output_size`` if given,
        else ``self.output_size(x.shape[2:])``."""
        if x.dim() != 5:
            raise ValueError(f"expected input (B, C, D, H, W), got shape {tuple(x.shape)}")
        if output_size is not None:
            o = as_triple(output_size, "output size")
            _check_fits(tuple(x.shape[2:]), o, self.reduction, self.factors)
        else:
            o = self.output_size(tuple(x.shape[2:]))
        regions = _regions(o, self.reduction, self.factors)
        feats = [self.pathways[0](_centre_crop(x, regions[0]))]
        for k, f in enumerate(self.factors):
            xs = _centre_crop(x, regions[k + 1])
            if f != (1, 1, 1):
                xs = F.avg_pool3d(xs, kernel_size=f, stride=f)
            h = self.pathways[k + 1](xs)
            for axis, fa in zip((2, 3, 4), f):
                if fa > 1:
                    h = torch.repeat_interleave(h, fa, dim=axis)
            feats.append(_centre_crop(h, o))
        h = torch.cat(feats, dim=1)
        return self.classifier(self.fc2(self.fc1(h)))


# ---------------------------------------------------------------------- geometry (pure)
def _low_res_out(o: int, f: int) -> int:
    """Low-resolution output voxels a factor-``f`` pathway needs to cover ``o`` voxels with an
    exactly centred crop after upsampling (``n*f - o`` even)."""
    n = -(-o // f)
    if (n * f - o) % 2:
        n += 1
    return n


def _regions(output_size: Sequence[int], reduction: int,
             factors: Sequence[Triple]) -> List[Triple]:
    """Input-voxel extent (per axis) read by each pathway, full resolution first."""
    regions = [tuple(o + reduction for o in output_size)]
    for f in factors:
        regions.append(tuple(fa * (_low_res_out(o, fa) + reduction)
                             for o, fa in zip(output_size, f)))
    return regions  # type: ignore[return-value]


def geometry_input_size(output_size: IntOrTriple, reduction: int = 16,
                        factors: Sequence[IntOrTriple] = (3, 5)) -> Triple:
    """Input size for ``output_size`` with pathways losing ``reduction`` voxels per axis."""
    o = as_triple(output_size, "output size")
    if any(v < 1 for v in o):
        raise ValueError(f"output size must be positive, got {o}")
    regions = _regions(o, reduction, [as_triple(f) for f in factors])
    return tuple(max(reg[a] for reg in regions) for a in range(3))  # type: ignore


def geometry_output_size(input_size: IntOrTriple, reduction: int = 16,
                         factors: Sequence[IntOrTriple] = (3, 5)) -> Triple:
    """Largest output per axis whose input fits in ``input_size`` with exactly centred crops."""
    s = as_triple(input_size, "input size")
    facs = [as_triple(f) for f in factors]
    out = []
    for a in range(3):
        def need(o):
            return max([o + reduction] + [f[a] * (_low_res_out(o, f[a]) + reduction)
                                          for f in facs])
        o = s[a] - reduction
        while o >= 1 and not ((s[a] - o) % 2 == 0 and need(o) <= s[a]):
            o -= 1
        if o < 1:
            raise ValueError(f"input size {s} is too small for this DeepMedic: axis {a} needs "
                             f"at least {min(need(1), need(2))} voxels")
        out.append(o)
    return tuple(out)  # type: ignore[return-value]


def _check_fits(input_size: IntOrTriple, output_size: IntOrTriple, reduction: int,
               factors: Sequence[IntOrTriple]) -> None:
    """Raise unless ``input_size`` holds every pathway's region for ``output_size``, exactly
    centred (same parity per axis)."""
    s = as_triple(input_size, "input size")
    o = as_triple(output_size, "output size")
    need = geometry_input_size(o, reduction, factors)
    for a in range(3):
        if need[a] > s[a] or (s[a] - o[a]) % 2:
            raise ValueError(f"a DeepMedic output of {o} needs an input of at least {need} "
                             f"with the same parity per axis; got {s}")


def _geometry_of(obj) -> Tuple[int, Tuple[Triple, ...]]:
    if isinstance(obj, DeepMedic):
        return obj.reduction, obj.factors
    return 2 * len(DEFAULT_FEATURE_MAPS), tuple(as_triple(f) for f in DEFAULT_SUBSAMPLE)
