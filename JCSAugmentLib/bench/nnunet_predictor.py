"""nnU-Net v2's own sliding-window predictor, as the peer of ``jcsaugment bench infer``.

nnU-Net v2 (``pip install nnunetv2==2.8.1``, the ``bench-nnunet`` extra) is used as a library:
its ``PlainConvUNet`` (dynamic_network_architectures) is built with the stages of our U-Net --
the same features per stage, kernel sizes, strides, two convolutions per stage on both paths,
instance norm (affine, eps 1e-5), leaky ReLU 0.01, convolution biases -- given our network's
weights (:func:`copy_unet_weights`: one network, two predictors), handed to an
``nnUNetPredictor`` through its ``manual_initialization`` together with a minimal plan (only
the patch size) and label set, and asked for ``predict_sliding_window_return_logits`` on the
preprocessed tensor: the part of ``nnUNetv2_predict`` that segments a volume, without its file
reading and preprocessing.
The predictor is nnU-Net's, unchanged: Gaussian importance (sigma = patch / 8), tile step
``step``, with ``mirroring`` the 8 flips over all three axes (one network call per window and
mirror), on the CPU its results accumulated in float16 as nnU-Net does.

On one window both predictors give the same logits (up to nnU-Net's float16 sums; the test
checks it). Over a volume they differ a little by design, at the same cost: nnU-Net spreads
its windows evenly where the volume does not tile by half patches (we put the last one flush
with the end; the count is the same), centres its Gaussian on voxel ``patch // 2`` (ours:
the patch centre), and its float16 Gaussian underflows near window corners.

The two networks differ only in their logit heads: ours has deep-supervision heads for the
upper decoder levels, nnU-Net one per decoder level, so the parameter counts differ by a few
hundred; :attr:`NNUNetPredictorPeer.parameters` states nnU-Net's count.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .peers import PeerUnavailable, _package_version

INSTALL_HINT = "pip install nnunetv2==2.8.1 (or pip install -e \".[bench-nnunet]\")"


@dataclass
class NNUNetPredictorPeer:
    """A ready nnU-Net predictor: ``predict(image)`` maps (C, Z, Y, X) to logits (K, Z, Y, X)."""
    predict: Callable[[torch.Tensor], torch.Tensor]
    network: torch.nn.Module
    parameters: int
    mirroring: bool
    version: str


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PeerUnavailable(f"nnU-Net's predictor needs nnunetv2 ({e}); {INSTALL_HINT}") \
            from None


def plain_conv_unet_like(unet, in_channels: int, num_classes: int) -> torch.nn.Module:
    """nnU-Net's PlainConvUNet with the stages of our :class:`~JCSAugmentLib.nets.unet3d.UNet3D`
    ``unet`` (features, kernels, strides), no deep supervision, in eval mode."""
    arch = _import("dynamic_network_architectures.architectures.unet")
    n = len(unet.features)
    net = arch.PlainConvUNet(
        input_channels=in_channels, n_stages=n, features_per_stage=list(unet.features),
        conv_op=torch.nn.Conv3d, kernel_sizes=[list(k) for k in unet.kernel_sizes],
        strides=[list(s) for s in unet.strides], n_conv_per_stage=[2] * n,
        num_classes=num_classes, n_conv_per_stage_decoder=[2] * (n - 1), conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"negative_slope": 0.01, "inplace": True},
        deep_supervision=False)
    return net.eval()


def copy_unet_weights(unet, plain: torch.nn.Module) -> None:
    """Give ``plain`` (from :func:`plain_conv_unet_like`) the weights of our ``unet``, so both
    predictors run one and the same network. Encoder stage s and its two convolutions map
    one to one; nnU-Net numbers the decoder from the bottom (our level s is its n - 2 - s);
    its full-resolution logit layer is the last of its ``seg_layers``, our ``heads[0]``. Both
    concatenate (upsampled, skip) in that order."""
    n = len(unet.features)
    target = plain.state_dict()
    mapped = {}
    for name, value in unet.state_dict().items():
        part = name.split(".")
        if part[0] == "encoder":  # encoder.s.blockI.(conv|norm).p
            key = f"encoder.stages.{part[1]}.0.convs.{int(part[2][5:]) - 1}.{'.'.join(part[3:])}"
        elif part[0] == "decoder":
            key = (f"decoder.stages.{n - 2 - int(part[1])}.convs.{int(part[2][5:]) - 1}."
                   f"{'.'.join(part[3:])}")
        elif part[0] == "upsample":
            key = f"decoder.transpconvs.{n - 2 - int(part[1])}.{part[2]}"
        elif part[0] == "heads" and part[1] == "0":
            key = f"decoder.seg_layers.{n - 2}.{part[2]}"
        else:  # the coarser deep-supervision heads: no counterpart used without supervision
            continue
        if key not in target or target[key].shape != value.shape:
            raise ValueError(f"no matching nnU-Net parameter for {name} (tried {key})")
        mapped[key] = value
    # nnU-Net registers each convolution twice (conv and all_modules.0): load through both
    for key in list(mapped):
        twin = key.replace(".conv.", ".all_modules.0.").replace(".norm.", ".all_modules.1.")
        if twin != key and twin in target:
            mapped[twin] = mapped[key]
    plain.load_state_dict({**target, **mapped})


def nnunet_predictor_peer(unet, in_channels: int, num_classes: int, patch: Sequence[int],
                          step: float = 0.5, mirroring: bool = True,
                          device: str = "cpu") -> NNUNetPredictorPeer:
    """nnU-Net's predictor on a PlainConvUNet like ``unet`` (see the module docstring).
    Raises :class:`~JCSAugmentLib.bench.peers.PeerUnavailable` without nnunetv2."""
    inference = _import("nnunetv2.inference.predict_from_raw_data")
    plans = _import("nnunetv2.utilities.plans_handling.plans_handler")
    dev = torch.device(device)
    network = plain_conv_unet_like(unet, in_channels, num_classes)
    copy_unet_weights(unet, network)
    network = network.to(dev)
    # the predictor reads only the patch size from the configuration and the label count from
    # the dataset description; the trainer name and the plan's other fields go unused here
    manager = plans.PlansManager({"configurations": {"3d_fullres": {
        "patch_size": [int(p) for p in patch],
        "architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {},
                         "_kw_requires_import": []}}}})
    labels = {"background": 0, **{f"class_{k}": k for k in range(1, num_classes)}}
    with contextlib.redirect_stdout(io.StringIO()):  # its notes on the CPU and the labels
        predictor = inference.nnUNetPredictor(tile_step_size=step, use_gaussian=True,
                                              use_mirroring=mirroring,
                                              perform_everything_on_device=dev.type == "cuda",
                                              device=dev, verbose=False, allow_tqdm=False)
        predictor.manual_initialization(network, manager,
                                        manager.get_configuration("3d_fullres"), None,
                                        {"labels": labels}, "nnUNetTrainer", (0, 1, 2))

    def predict(image: torch.Tensor) -> torch.Tensor:
        return predictor.predict_sliding_window_return_logits(image)

    return NNUNetPredictorPeer(predict, network, sum(p.numel() for p in network.parameters()),
                               mirroring, _package_version("nnunetv2"))
