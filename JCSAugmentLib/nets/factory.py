"""Build a segmentation backbone for a requested output patch (method.md section 9).

``build_network(backbone, in_channels, num_classes, patch_size, spacing=None, small=False)``
returns ``(model, info)``. ``patch_size`` is the label patch the loss is computed on (the
network's output). ``info.input_size`` is the image patch the network must be fed: the same for
the U-Net; for DeepMedic the larger context of its subsampled pathways (21^3 output -> 105^3
input). Sample image and label patches of ``info.input_size`` around the same centre, then
``info.crop_target(label_patch)`` gives the label of the output region, and
``info.per_sample_loss(model_output, label_patch)`` the per-sample training loss (it crops).

``small=True`` gives tiny widths (fast CPU tests); any keyword in ``overrides`` goes to the
network's constructor (``UNet3D.unet_for_patch`` or ``DeepMedic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .deepmedic import DeepMedic
from .losses import batch_soft_dice_loss, crop_target_to, per_sample_seg_loss
from .shapes import as_triple
from .unet3d import UNet3D

BACKBONES = ("unet3d", "deepmedic")

Triple = Tuple[int, int, int]

__all__ = ["BACKBONES", "NetworkInfo", "build_network"]


@dataclass(frozen=True)
class NetworkInfo:
    """How to feed a network and score its output.

    Attributes:
        backbone: ``'unet3d'`` or ``'deepmedic'``.
        input_size: spatial size of the image patch the network takes (D, H, W).
        output_size: spatial size of its (full-resolution) logits.
        target_crop: voxels to drop from the start of each axis of an ``input_size`` label
            patch to get the label of the output region (the same number is dropped at the end);
            all zero for the U-Net.
        loss_kind: per-sample training loss kind (``'ce+dice'`` U-Net, ``'ce'`` DeepMedic).
        deep_supervision: whether train-mode outputs are tuples (U-Net) or a single tensor.
        num_outputs: number of outputs in train mode (deep-supervision levels; 1 otherwise).
        strides: the U-Net's per-stage strides (empty for DeepMedic).
        parameters: number of trainable parameters.
    """

    backbone: str
    input_size: Triple
    output_size: Triple
    target_crop: Triple
    loss_kind: str
    deep_supervision: bool
    num_outputs: int
    strides: Tuple[Triple, ...] = ()
    parameters: int = 0

    def crop_target(self, target: torch.Tensor) -> torch.Tensor:
        """Label patch (``(B, 1, ...)`` or ``(B, ...)``, any spatial size >= output) -> the
        centred output region."""
        return crop_target_to(self.output_size, target)

    def per_sample_loss(self, output, target: torch.Tensor) -> torch.Tensor:
        """The backbone's per-sample training loss ``(B,)`` (deep supervision handled)."""
        return per_sample_seg_loss(output, target, kind=self.loss_kind)

    def batch_dice_loss(self, output, target: torch.Tensor) -> torch.Tensor:
        """Batch soft-Dice validation loss on the full-resolution output."""
        return batch_soft_dice_loss(output, target)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_network(backbone: str, in_channels: int, num_classes: int,
                  patch_size: Union[int, Sequence[int]],
                  spacing: Optional[Sequence[float]] = None, small: bool = False,
                  **overrides) -> Tuple[nn.Module, NetworkInfo]:
    """Build ``backbone`` for an output patch of ``patch_size`` (see the module docstring).

    U-Net: stages and per-axis strides are planned from ``patch_size`` and ``spacing``
    (``UNet3D.unet_for_patch``; reference widths 10 -> 160, ``small``: 4 -> 16).
    DeepMedic: reference widths (30..50 maps, 250 FC); ``small``: 4..6 maps, 16 FC; built with
    ``output_patch=patch_size`` so that an ``info.input_size`` input (21 -> 105) gives exactly
    the requested output. ``spacing`` is not used (the pathways' factors are
    ``subsample_factors``).
    """
    backbone = str(backbone).lower()
    out_size = as_triple(patch_size, "patch size")
    if backbone == "unet3d":
        kwargs = dict(base=4, max_features=16) if small else {}
        kwargs.update(overrides)
        model = UNet3D.unet_for_patch(out_size, in_channels, num_classes, spacing=spacing,
                                      **kwargs)
        ds = model.deep_supervision
        info = NetworkInfo("unet3d", out_size, out_size, (0, 0, 0), "ce+dice", ds,
                           model.num_heads if ds else 1, model.strides, _count(model))
        return model, info
    if backbone == "deepmedic":
        kwargs = dict(feature_maps=(4, 4, 5, 5, 5, 5, 6, 6), fc_maps=16) if small else {}
        kwargs.update(overrides)
        kwargs.setdefault("output_patch", out_size)
        model = DeepMedic(in_channels, num_classes, **kwargs)
        in_size = model.input_size(out_size)
        out_size = model.output_size(in_size)
        crop = tuple((i - o) // 2 for i, o in zip(in_size, out_size))
        info = NetworkInfo("deepmedic", in_size, out_size, crop, "ce", False, 1, (),
                           _count(model))
        return model, info
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
