"""Segmentation backbones and losses for the meta-gradient trainer (method.md sections 3, 9).

Both networks are written for ``torch.func.functional_call`` + ``torch.func.jvp`` and
second-order autograd: no in-place operations on activations, nothing stored on the module in
``forward``, every submodule registered once, deterministic forward.

* ``UNet3D`` / ``unet_for_patch`` / ``plan_unet``: nnU-Net-style 3D U-Net with deep supervision.
* ``DeepMedic``: three-pathway DeepMedic taking one input tensor (105^3 -> 21^3 logits).
* ``losses``: ``per_sample_seg_loss``, ``batch_soft_dice_loss``, ``per_sample_soft_dice``,
  ``crop_target_to``, ``deep_supervision_weights``.
* ``build_network``: backbone + ``NetworkInfo`` (input size, target crop, loss) for a patch.
"""

from .deepmedic import DeepMedic
from .factory import BACKBONES, NetworkInfo, build_network
from .losses import (LOSS_KINDS, batch_soft_dice_loss, crop_target_to, deep_supervision_weights,
                     downsample_target, per_sample_seg_loss, per_sample_soft_dice)
from .unet3d import UNet3D, plan_unet, unet_for_patch

__all__ = ["UNet3D", "unet_for_patch", "plan_unet", "DeepMedic", "build_network", "NetworkInfo",
           "BACKBONES", "per_sample_seg_loss", "batch_soft_dice_loss", "per_sample_soft_dice",
           "crop_target_to", "downsample_target", "deep_supervision_weights", "LOSS_KINDS"]
