"""3D U-Net in the style of nnU-Net (method.md section 9), written for meta-gradients.

Per stage two 3x3x3 convolutions (the first one strided for downsampling), each followed by
instance normalisation (affine) and leaky ReLU 0.01; transposed convolutions upsample; the decoder
concatenates the skip connection and runs two convolutions; 1x1x1 convolutions give the logits.
Features double per stage from ``base_features`` up to ``max_features``.

The trainer differentiates this network with ``torch.func.functional_call`` + ``torch.func.jvp``
(forward-mode AD, train mode) and with ``torch.autograd.grad(create_graph=True)``. Therefore:

* no in-place operation on activations (``LeakyReLU(inplace=False)``, no ``+=``);
* nothing is stored on the module during ``forward`` (deep-supervision outputs are returned,
  never kept as attributes);
* every submodule is registered exactly once (``functional_call`` with tied weights mis-restores
  parameters of submodules reachable by two paths, which is what breaks MONAI's DynUNet);
* the forward is a deterministic function of parameters and input (no dropout).

Axis order: spatial sizes, strides, kernel sizes and spacings are all given in the tensor's axis
order ``(D, H, W)``.

Deep supervision: in train mode (and ``deep_supervision=True``) ``forward`` returns a tuple of
logits ``(full, 1/2, 1/4, ...)``, one per decoder level except the lowest one (nnU-Net gives that
level the weight 0, so it is not computed at all). In eval mode, or with ``deep_supervision=False``,
it returns the full-resolution logits ``(B, K, D, H, W)`` only.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .shapes import IntOrTriple, Triple, as_triple


__all__ = ["UNet3D", "plan_unet", "unet_for_patch"]


class _ConvNormAct(nn.Module):
    """Conv3d -> InstanceNorm3d(affine) -> LeakyReLU(0.01), all out of place."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple, stride: Triple):
        super().__init__()
        padding = tuple(k // 2 for k in kernel)
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=True)
        self.norm = nn.InstanceNorm3d(out_ch, eps=1e-5, affine=True, track_running_stats=False)
        self.act = nn.LeakyReLU(0.01, inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class _Stage(nn.Module):
    """Two conv-norm-act blocks; the first carries the stage's stride."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple, stride: Triple):
        super().__init__()
        self.block1 = _ConvNormAct(in_ch, out_ch, kernel, stride)
        self.block2 = _ConvNormAct(out_ch, out_ch, kernel, (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x))


class UNet3D(nn.Module):
    """nnU-Net-style 3D U-Net.

    Args:
        in_channels: input image channels.
        num_classes: K, logits channels (background included).
        base_features: features of the first stage; they double per stage ...
        max_features: ... up to this cap.
        strides: one stride per stage, the first one for the stem (normally ``(1, 1, 1)``).
            Each is an int or a per-axis triple, e.g. ``(1, 2, 2)`` to keep thick slices.
            The number of stages is ``len(strides)``; ``len(strides) - 1`` downsamplings.
        deep_supervision: return the tuple of decoder-level logits in train mode.
        kernel_sizes: optional per-stage kernel (int or triple, default 3 everywhere); nnU-Net
            uses kernel 1 along an axis whose spacing is much coarser (see ``plan_unet``).
    """

    def __init__(self, in_channels: int, num_classes: int, base_features: int = 10,
                 max_features: int = 160,
                 strides: Sequence[IntOrTriple] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2),
                                                   (2, 2, 2)),
                 deep_supervision: bool = True,
                 kernel_sizes: Optional[Sequence[IntOrTriple]] = None):
        super().__init__()
        if len(strides) < 2:
            raise ValueError("a U-Net needs at least 2 stages (the stem and one downsampling)")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.strides: Tuple[Triple, ...] = tuple(as_triple(s, "stride") for s in strides)
        if kernel_sizes is None:
            kernel_sizes = [3] * len(self.strides)
        if len(kernel_sizes) != len(self.strides):
            raise ValueError("kernel_sizes needs one entry per stage")
        self.kernel_sizes: Tuple[Triple, ...] = tuple(as_triple(k, "kernel size")
                                                     for k in kernel_sizes)
        for k in self.kernel_sizes:
            if any(v % 2 == 0 for v in k):
                raise ValueError(f"kernel sizes must be odd, got {k}")
        self.deep_supervision = bool(deep_supervision)
        n = len(self.strides)
        self.features: Tuple[int, ...] = tuple(min(base_features * 2 ** s, max_features)
                                               for s in range(n))

        self.encoder = nn.ModuleList()
        ch = self.in_channels
        for s in range(n):
            self.encoder.append(_Stage(ch, self.features[s], self.kernel_sizes[s],
                                       self.strides[s]))
            ch = self.features[s]

        # Decoder level s (s = n-2 ... 0) upsamples from stage s+1 to stage s's resolution.
        # Stored in index order s = 0 .. n-2.
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for s in range(n - 1):
            up_stride = self.strides[s + 1]
            self.upsample.append(nn.ConvTranspose3d(self.features[s + 1], self.features[s],
                                                    kernel_size=up_stride, stride=up_stride,
                                                    bias=True))
            self.decoder.append(_Stage(2 * self.features[s], self.features[s],
                                       self.kernel_sizes[s], (1, 1, 1)))
        # Logit heads for decoder levels 0 .. n-3 (the lowest decoder level n-2 has none:
        # nnU-Net weights it 0). With 2 stages there is one decoder level, the full one.
        self.num_heads = max(n - 2, 1)
        self.heads = nn.ModuleList(nn.Conv3d(self.features[s], self.num_classes, 1, bias=True)
                                   for s in range(self.num_heads))
        self._init_weights()

    # ------------------------------------------------------------------ geometry
    @property
    def num_stages(self) -> int:
        return len(self.strides)

    @property
    def total_stride(self) -> Triple:
        """Per-axis product of all strides: input sizes must be divisible by it."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(3))  # type: ignore

    @property
    def output_scales(self) -> Tuple[Triple, ...]:
        """Per-axis downsampling factor of each deep-supervision output (full first)."""
        scales = []
        for level in range(self.num_heads):
            scales.append(tuple(math.prod(s[a] for s in self.strides[:level + 1])
                                for a in range(3)))
        return tuple(scales)  # type: ignore[return-value]

    def check_input_size(self, size: Sequence[int]) -> None:
        size = tuple(int(v) for v in size)
        if len(size) != 3:
            raise ValueError(f"expected 3 spatial sizes, got {size}")
        ts = self.total_stride
        if any(sz % t for sz, t in zip(size, ts)):
            raise ValueError(f"spatial size {size} is not divisible by the U-Net's total "
                             f"stride {ts} (strides {self.strides})")

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, a=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor):
        if x.dim() != 5:
            raise ValueError(f"expected input (B, C, D, H, W), got shape {tuple(x.shape)}")
        self.check_input_size(x.shape[2:])
        skips: List[torch.Tensor] = []
        h = x
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        want_all = self.training and self.deep_supervision
        outputs: List[torch.Tensor] = []
        h = skips[-1]
        for s in range(self.num_stages - 2, -1, -1):
            h = self.upsample[s](h)
            h = self.decoder[s](torch.cat((h, skips[s]), dim=1))
            if s < self.num_heads and (want_all or s == 0):
                outputs.append(self.heads[s](h))
        outputs.reverse()  # full resolution first
        if want_all:
            return tuple(outputs)
        return outputs[0]

    # ------------------------------------------------------------------ planning
    @classmethod
    def unet_for_patch(cls, patch_size: IntOrTriple, in_channels: int, num_classes: int,
                       spacing: Optional[Sequence[float]] = None, base: int = 10,
                       max_features: int = 160, min_size: int = 4,
                       deep_supervision: bool = True,
                       max_downsamplings: int = 5) -> "UNet3D":
        """A U-Net whose stages and strides fit ``patch_size`` (see ``plan_unet``)."""
        strides, kernels = plan_unet(patch_size, spacing=spacing, min_size=min_size,
                                     max_downsamplings=max_downsamplings)
        net = cls(in_channels, num_classes, base_features=base, max_features=max_features,
                  strides=strides, deep_supervision=deep_supervision, kernel_sizes=kernels)
        net.check_input_size(as_triple(patch_size, "patch size"))
        return net


def plan_unet(patch_size: IntOrTriple, spacing: Optional[Sequence[float]] = None,
              min_size: int = 4, max_downsamplings: int = 5
              ) -> Tuple[Tuple[Triple, ...], Tuple[Triple, ...]]:
    """Per-stage strides and kernel sizes for a patch, nnU-Net style.

    Starting from the patch size and voxel spacing (tensor axis order), each new stage halves
    every axis that (a) stays at least ``min_size`` voxels, (b) is even, and (c) has a spacing
    less than twice the currently finest spacing (thick-slice axes wait until in-plane pooling
    has caught up). Planning stops when no axis can be halved or after ``max_downsamplings``.
    Kernel size per stage and axis is 3, or 1 as long as that axis' spacing has never been less
    than twice the finest (nnU-Net's in-plane-only convolutions for very anisotropic data).

    Returns ``(strides, kernel_sizes)``, the first stride being the stem's ``(1, 1, 1)``.
    Raises ``ValueError`` if the patch is smaller than ``min_size`` or not divisible.
    """
    size = list(as_triple(patch_size, "patch size"))
    if any(s < 1 for s in size):
        raise ValueError(f"patch size must be positive, got {tuple(size)}")
    if spacing is None:
        spacing = (1.0, 1.0, 1.0)
    sp = [float(v) for v in spacing]
    if len(sp) != 3 or any(v <= 0 for v in sp):
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing!r}")
    if min(size) < min_size:
        raise ValueError(f"patch size {tuple(size)} is smaller than min_size {min_size}")

    # An axis gets kernel 3 from the first stage at which its spacing is less than twice the
    # finest, and keeps it (nnU-Net): only the thick-slice axis starts with kernel 1.
    reached = [False, False, False]

    def kernel_for(current_sp):
        finest = min(current_sp)
        for a in range(3):
            reached[a] = reached[a] or current_sp[a] / finest < 2
        return tuple(3 if r else 1 for r in reached)

    strides: List[Triple] = [(1, 1, 1)]
    kernels: List[Triple] = [kernel_for(sp)]
    for _ in range(max_downsamplings):
        finest = min(sp)
        stride = tuple(2 if (size[a] % 2 == 0 and size[a] // 2 >= min_size
                             and sp[a] / finest < 2) else 1 for a in range(3))
        if stride == (1, 1, 1):
            break
        size = [s // st for s, st in zip(size, stride)]
        sp = [v * st for v, st in zip(sp, stride)]
        strides.append(stride)  # type: ignore[arg-type]
        kernels.append(kernel_for(sp))
    if len(strides) < 2:
        raise ValueError(f"patch size {tuple(as_triple(patch_size))} allows no downsampling "
                         f"with min_size {min_size}")
    return tuple(strides), tuple(kernels)


def unet_for_patch(patch_size: IntOrTriple, in_channels: int, num_classes: int,
                   spacing: Optional[Sequence[float]] = None, base: int = 10,
                   max_features: int = 160, min_size: int = 4,
                   deep_supervision: bool = True, max_downsamplings: int = 5) -> UNet3D:
    """Module-level alias of ``UNet3D.unet_for_patch``."""
    return UNet3D.unet_for_patch(patch_size, in_channels, num_classes, spacing=spacing, base=base,
                                 max_features=max_features, min_size=min_size,
                                 deep_supervision=deep_supervision,
                                 max_downsamplings=max_downsamplings)
