"""Peer augmentation pipelines for ``jcsaugment bench augment``.

The benchmark feeds every contestant the same input, an enlarged crop per
sample (larger than the training patch, so that rotation and scaling have
context to draw from), and asks for a training patch back:

    run(image, seg) -> (image_patch, seg_patch)

    image        torch float32, (B, C, Dc, Hc, Wc)
    seg          torch integer, (B, 1, Dc, Hc, Wc)
    image_patch  torch float32, (B, C, *patch_size), on the CPU
    seg_patch    seg's dtype,   (B, 1, *patch_size), on the CPU

Two peers are provided, both optional dependencies, imported only when a
pipeline is built:

``nnunet_v2``
    batchgeneratorsv2 transforms arranged as nnU-Net v2's default 3D training
    pipeline (``nnUNetTrainer.get_training_transforms``).
    Install: ``pip install batchgeneratorsv2``.
``torchio``
    TorchIO's closest equivalent of that policy.
    Install: ``pip install torchio``.

Both peers work one sample at a time, the way their data loaders do, and the
callables here loop over the batch and stack. Neither pipeline modifies the
caller's tensors.

Determinism: a pipeline's output is a function of its input and the global
random number generators that the caller seeds. ``nnunet_v2`` draws from
NumPy's global generator (``numpy.random.seed``) and torch's default CPU
generator (``torch.manual_seed``); ``torchio`` draws from torch's default
CPU generator only. Neither uses Python's ``random`` module. Seeding all
three before each call gives the same output on the same machine.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable, Dict, Sequence, Tuple

import torch

__all__ = [
    "PeerUnavailable",
    "available_peers",
    "nnunet_v2_pipeline",
    "torchio_pipeline",
]

PeerRun = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class PeerUnavailable(Exception):
    """A peer's package is not installed (or fails to import)."""


# name -> (module imported to prove it is there, pip distribution to install)
_PEER_PACKAGES = {
    "nnunet_v2": ("batchgeneratorsv2", "batchgeneratorsv2"),
    "torchio": ("torchio", "torchio"),
}


def _import_peer(module: str, distribution: str, peer: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken dependency below it
        raise PeerUnavailable(
            f"peer {peer!r} needs the Python package {distribution!r}, which could not be "
            f"imported ({type(exc).__name__}: {exc}). Install it with: pip install {distribution}"
        ) from exc


def _package_version(distribution: str) -> str:
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:
        return "unknown"


def _check_patch_size(patch_size: Sequence[int]) -> Tuple[int, int, int]:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or any(p <= 0 for p in patch):
        raise ValueError(f"patch_size must be three positive ints, got {patch_size!r}")
    return patch  # type: ignore[return-value]


def _check_inputs(image: torch.Tensor, seg: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or not isinstance(seg, torch.Tensor):
        raise TypeError("image and seg must be torch tensors")
    if image.ndim != 5:
        raise ValueError(f"image must be (B, C, D, H, W), got shape {tuple(image.shape)}")
    if seg.ndim != 5 or seg.shape[1] != 1:
        raise ValueError(f"seg must be (B, 1, D, H, W), got shape {tuple(seg.shape)}")
    if image.shape[0] != seg.shape[0] or image.shape[2:] != seg.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and seg {tuple(seg.shape)} disagree on batch or spatial size"
        )
    if seg.dtype.is_floating_point or seg.dtype.is_complex or seg.dtype == torch.bool:
        raise TypeError(f"seg must be an integer tensor, got {seg.dtype}")


def _check_int16_labels(seg: torch.Tensor) -> None:
    if seg.dtype in (torch.int8, torch.uint8, torch.int16) or seg.numel() == 0:
        return
    lo, hi = torch.aminmax(seg)
    if lo.item() < -32768 or hi.item() > 32767:
        raise ValueError(
            "the nnunet_v2 peer carries labels as int16, as nnU-Net's data loader does; "
            f"labels span [{lo.item()}, {hi.item()}]"
        )


# --------------------------------------------------------------------------------------
# nnU-Net v2 (batchgeneratorsv2)
# --------------------------------------------------------------------------------------

def nnunet_v2_pipeline(patch_size: Sequence[int] = (64, 64, 64)) -> PeerRun:
    """nnU-Net v2's default 3D training augmentation, run with batchgeneratorsv2.

    Mirrors ``nnUNetTrainer.get_training_transforms`` (nnunetv2 2.8.1) for a 3D
    configuration without dummy-2D augmentation, no cascade, no regions, no
    deep supervision and no masking for normalisation. nnU-Net's
    ``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` then sets
    rotation to +-30 degrees per axis and mirror axes (0, 1, 2). Each sample
    runs, in this order (p = probability that the transform runs on a sample;
    "per channel" = an extra draw per image channel once it runs):

    1. SpatialTransform: patch centred in the crop (random_crop=False,
       patch_center_dist_from_border=0), no elastic deformation
       (p_elastic_deform=0); rotation p 0.2, each of the three axes by
       U(-30, 30) degrees (p_rot_per_axis 1); scaling p 0.2, one factor
       U(0.7, 1.4) for all axes (p_synchronize_scaling_across_axes 1; a
       factor > 1 samples a larger region, objects look smaller); rotation and
       scaling are drawn independently, and a sample with neither is cropped
       without resampling. Image: trilinear, zero padding. Segmentation:
       per-label linear interpolation + argmax (bg_style_seg_sampling False),
       border_mode_seg 'constant' with padding_value_seg -1.
    2. GaussianNoiseTransform p 0.1: sigma U(0, 0.1) (bgv2's ``noise_variance``
       is used as the standard deviation), p_per_channel 1, channels share sigma.
    3. GaussianBlurTransform p 0.2: sigma U(0.5, 1.0) drawn per axis and per
       channel, p_per_channel 0.5, separable direct convolution. nnU-Net passes
       benchmark=True, which times FFT against direct convolution on the first
       use of each (axis length, kernel size) and keeps the faster; the two
       agree up to float rounding, but the pick depends on the clock (it
       flips between runs on a busy machine), so here benchmark=False: the
       output does not depend on timing, and for these small kernels (3 to 7
       taps) direct convolution is what the timing normally picks anyway.
    4. MultiplicativeBrightnessTransform p 0.15: multiplier BGContrast(0.75, 1.25)
       (half the time U(0.75, 1), else U(1, 1.25)), per channel, p_per_channel 1.
    5. ContrastTransform p 0.15: factor BGContrast(0.75, 1.25) per channel,
       preserve_range True, p_per_channel 1.
    6. SimulateLowResolutionTransform p 0.25: scale U(0.5, 1) shared by the
       three axes, drawn per channel, p_per_channel 0.5 (nearest-exact down,
       trilinear back up).
    7. GammaTransform p 0.1, inverted: gamma BGContrast(0.7, 1.5), p_invert_image
       1, p_retain_stats 1, per channel, p_per_channel 1.
    8. GammaTransform p 0.3: as 7 with p_invert_image 0.
    9. MirrorTransform on axes (0, 1, 2), each flipped with p 0.5.
    10. RemoveLabelTransform(-1 -> 0): turns the padding label of step 1 into
        background, exactly as nnU-Net does. It is kept (unlike nnU-Net's other
        label extras) because without it voxels sampled from outside the crop
        would carry the label -1, which is not a label of the input.

    Left out, as nnU-Net-specific label handling that our cascade does not do:
    deep-supervision downsampling of the segmentation, the cascade's
    one-hot/binary-operator/connected-component transforms, region conversion,
    and MaskImageTransform. The dummy-2D variant that nnU-Net picks for
    strongly anisotropic patches (max/first > 3) is not reproduced: this is
    always the 3D pipeline.

    The loop mirrors nnU-Net's ``nnUNetDataLoader.generate_train_batch``: per
    sample, the image is copied to a new float32 tensor and the segmentation
    to a new int16 tensor (bgv2 transforms work in place, and the -1 padding
    label needs a signed type), the composed transform runs under
    ``torch.no_grad()``, and results are written into a preallocated batch.
    nnU-Net additionally runs that loop under ``threadpool_limits(1)`` in each
    of its worker processes; here it runs with whatever thread settings the
    caller has, so a benchmark wanting per-worker numbers must set them.
    The returned segmentation is cast back to ``seg``'s dtype (labels must fit
    int16).

    Random numbers: NumPy's global generator (spatial parameters, every
    U(a, b) and BGContrast draw) and torch's default CPU generator (each
    p-gate, per-channel gates, mirror axes, noise). Seed both.

    The returned callable has attributes ``peer`` ('nnunet_v2'), ``version``
    (batchgeneratorsv2's), ``patch_size`` and ``transforms`` (the composed
    bgv2 transform, for inspection).
    """
    patch = _check_patch_size(patch_size)
    _import_peer("batchgeneratorsv2", "batchgeneratorsv2", "nnunet_v2")
    try:
        from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
        from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
        from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
        from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
        from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
        from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
        from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
        from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
        from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
        from batchgeneratorsv2.transforms.utils.random import RandomTransform
        from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
    except Exception as exc:
        raise PeerUnavailable(
            "peer 'nnunet_v2': batchgeneratorsv2 is installed but lacks a transform this "
            f"pipeline needs ({type(exc).__name__}: {exc}). Try: pip install -U batchgeneratorsv2"
        ) from exc

    rotation = (-30.0 / 360 * 2.0 * math.pi, 30.0 / 360 * 2.0 * math.pi)
    transforms = ComposeTransforms([
        SpatialTransform(
            patch,
            patch_center_dist_from_border=0,
            random_crop=False,
            p_elastic_deform=0,
            p_rotation=0.2,
            rotation=rotation,
            p_scaling=0.2,
            scaling=(0.7, 1.4),
            p_synchronize_scaling_across_axes=1,
            bg_style_seg_sampling=False,
            border_mode_seg="constant",
            padding_value_seg=-1,
        ),
        RandomTransform(
            GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
            apply_probability=0.1,
        ),
        RandomTransform(
            GaussianBlurTransform(
                blur_sigma=(0.5, 1.0),
                synchronize_channels=False,
                synchronize_axes=False,
                p_per_channel=0.5,
                benchmark=False,  # nnU-Net: True; see the docstring
            ),
            apply_probability=0.2,
        ),
        RandomTransform(
            MultiplicativeBrightnessTransform(
                multiplier_range=BGContrast((0.75, 1.25)),
                synchronize_channels=False,
                p_per_channel=1,
            ),
            apply_probability=0.15,
        ),
        RandomTransform(
            ContrastTransform(
                contrast_range=BGContrast((0.75, 1.25)),
                preserve_range=True,
                synchronize_channels=False,
                p_per_channel=1,
            ),
            apply_probability=0.15,
        ),
        RandomTransform(
            SimulateLowResolutionTransform(
                scale=(0.5, 1),
                synchronize_channels=False,
                synchronize_axes=True,
                ignore_axes=None,
                allowed_channels=None,
                p_per_channel=0.5,
            ),
            apply_probability=0.25,
        ),
        RandomTransform(
            GammaTransform(
                gamma=BGContrast((0.7, 1.5)),
                p_invert_image=1,
                synchronize_channels=False,
                p_per_channel=1,
                p_retain_stats=1,
            ),
            apply_probability=0.1,
        ),
        RandomTransform(
            GammaTransform(
                gamma=BGContrast((0.7, 1.5)),
                p_invert_image=0,
                synchronize_channels=False,
                p_per_channel=1,
                p_retain_stats=1,
            ),
            apply_probability=0.3,
        ),
        MirrorTransform(allowed_axes=(0, 1, 2)),
        RemoveLabelTransform(-1, 0),
    ])

    def run(image: torch.Tensor, seg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_inputs(image, seg)
        _check_int16_labels(seg)
        batch, channels = image.shape[0], image.shape[1]
        image_out = torch.empty((batch, channels, *patch), dtype=torch.float32)
        seg_out = torch.empty((batch, 1, *patch), dtype=seg.dtype)
        with torch.no_grad():
            for b in range(batch):
                sample = transforms(
                    image=image[b].to(device="cpu", dtype=torch.float32, copy=True),
                    segmentation=seg[b].to(device="cpu", dtype=torch.int16, copy=True),
                )
                image_out[b] = sample["image"]
                seg_out[b] = sample["segmentation"]
        return image_out, seg_out

    run.peer = "nnunet_v2"  # type: ignore[attr-defined]
    run.version = _package_version("batchgeneratorsv2")  # type: ignore[attr-defined]
    run.patch_size = patch  # type: ignore[attr-defined]
    run.transforms = transforms  # type: ignore[attr-defined]
    return run


# --------------------------------------------------------------------------------------
# TorchIO
# --------------------------------------------------------------------------------------

def _two_sided_factor(low: float, high: float, n: int) -> torch.Tensor:
    """n factors, each U(low, 1) or U(1, high) with even odds (torch's generator).

    Matches the distribution of batchgeneratorsv2's BGContrast for low < 1 < high.
    """
    below = torch.rand(n) < 0.5
    u = torch.rand(n)
    return torch.where(below, low + (1.0 - low) * u, 1.0 + (high - 1.0) * u)


def _brightness_stand_in(x: torch.Tensor) -> torch.Tensor:
    """Multiply each channel by its own factor U(0.75, 1) or U(1, 1.25)."""
    factors = _two_sided_factor(0.75, 1.25, x.shape[0]).to(x.dtype)
    return x * factors.view(-1, *([1] * (x.ndim - 1)))


def _contrast_stand_in(x: torch.Tensor) -> torch.Tensor:
    """Per channel: stretch about the mean by U(0.75, 1) or U(1, 1.25), then clip
    to the channel's original [min, max]."""
    x = x.float()
    flat = x.reshape(x.shape[0], -1)
    shape = (-1, *([1] * (x.ndim - 1)))
    mean = flat.mean(dim=1).view(shape)
    lo = flat.amin(dim=1).view(shape)
    hi = flat.amax(dim=1).view(shape)
    factors = _two_sided_factor(0.75, 1.25, x.shape[0]).view(shape)
    return torch.clamp((x - mean) * factors + mean, min=lo, max=hi)


def torchio_pipeline(patch_size: Sequence[int] = (64, 64, 64)) -> PeerRun:
    """TorchIO's closest equivalent of nnU-Net v2's default 3D augmentation.

    Same order as ``nnunet_v2_pipeline``. Each sample becomes a ``tio.Subject``
    with a ``ScalarImage`` (the C channels, identity affine, so 1 mm = 1 voxel)
    and a ``LabelMap``, and runs, in this order (p = probability that the
    transform runs on a sample; TorchIO applies a transform to all channels
    of the image at once):

    1. ``tio.OneOf`` p 0.36 over three ``tio.RandomAffine`` (centre = image
       centre, linear image / nearest label interpolation, pad image 0 and
       label 0, no translation), weighted so that rotation and scaling each
       happen with p 0.2, independently, as in nnU-Net (0.36 = 1 - 0.8^2):
         - rotation + scaling, weight 0.04: degrees 30, scales (1/1.4, 1/0.7)
           isotropic;
         - rotation only, weight 0.16: degrees 30 (each axis U(-30, 30)), scales 0;
         - scaling only, weight 0.16: degrees 0, scales (1/1.4, 1/0.7) isotropic.
       TorchIO's scale s makes objects look s times larger, the reciprocal of
       nnU-Net's grid factor, so nnU-Net's U(0.7, 1.4) becomes the range
       (0.714, 1.429); the range matches, the density within it does not.
       TorchIO resamples the whole crop (SimpleITK), not just the patch.
    2. ``tio.CropOrPad(patch_size)``: centre crop (pads with 0 if the crop is
       smaller than the patch). Cropping here, before the intensity transforms,
       keeps them on the patch, as nnU-Net does.
    3. ``tio.RandomNoise`` p 0.1: mean 0, std U(0, 0.1).
    4. ``tio.RandomBlur`` p 0.1: std U(0.5, 1.0) per axis (in mm = voxels).
       nnU-Net blurs with p 0.2 and then each channel with p 0.5; 0.1 is that
       per-channel rate, exact for one channel.
    5. Brightness stand-in, ``tio.Lambda`` p 0.15 (TorchIO has no random
       brightness transform): each channel times U(0.75, 1) or U(1, 1.25), even
       odds, like nnU-Net's BGContrast multiplier.
    6. Contrast stand-in, ``tio.Lambda`` p 0.15 (TorchIO has no random
       contrast transform): per channel, (x - mean) * f + mean with f drawn as
       in 5, clipped to the channel's original range (nnU-Net's
       preserve_range).
    7. ``tio.RandomAnisotropy`` p 0.125 as the stand-in for nnU-Net's
       SimulateLowResolution (p 0.25, then p 0.5 per channel: 0.125, exact for
       one channel): downsampling factor U(1, 2) (nnU-Net's scale U(0.5, 1)),
       nearest down, linear back up, images only. Unlike nnU-Net it lowers the
       resolution of one random axis, not all three.
    8. ``tio.RandomGamma`` p 0.1, log_gamma (ln 0.7, ln 1.5), standing in for
       nnU-Net's inverted gamma. TorchIO's gamma is sign(x) * |x|^gamma on the
       raw values (no rescaling to [0, 1], no retained mean/std), an odd
       function, so negate-gamma-negate equals plain gamma: this slot is
       exactly what the inverted variant amounts to in TorchIO.
    9. ``tio.RandomGamma`` p 0.3, log_gamma (ln 0.7, ln 1.5), i.e. gamma in
       [0.7, 1.5] (log-uniform, where nnU-Net's BGContrast is two-sided
       uniform).
    10. ``tio.RandomFlip`` axes (0, 1, 2), each flipped with p 0.5.

    Per sample, the image is copied to a new float32 tensor and the label map
    to a new tensor of ``seg``'s dtype (as a data loader would hand them over;
    the caller's tensors are never touched), and every transform, the
    ``tio.Compose`` included, runs with ``copy=False``: TorchIO's default
    ``copy=True`` deep-copies the subject in each transform, which here only
    costs time (and deep-copying a view of the batch copies the whole batch).
    The loop runs under ``torch.no_grad()``; the label map is rounded and
    cast back to ``seg``'s dtype (TorchIO's affine returns labels as float32).

    Random numbers: torch's default CPU generator only (every p-gate, the
    OneOf choice, all parameters, the noise and the stand-ins' factors).
    ``torch.manual_seed`` is enough.

    The returned callable has attributes ``peer`` ('torchio'), ``version``
    (TorchIO's), ``patch_size`` and ``transforms`` (the ``tio.Compose``, for
    inspection).
    """
    patch = _check_patch_size(patch_size)
    tio = _import_peer("torchio", "torchio", "torchio")

    inner = {"copy": False}
    scales = (1.0 / 1.4, 1.0 / 0.7)
    affine_common = dict(
        translation=0,
        center="image",
        default_pad_value=0,
        default_pad_label=0,
        image_interpolation="linear",
        label_interpolation="nearest",
        **inner,
    )
    log_gamma = (math.log(0.7), math.log(1.5))
    transform = tio.Compose([
        tio.OneOf(
            {
                tio.RandomAffine(scales=scales, degrees=30, isotropic=True, **affine_common): 0.04,
                tio.RandomAffine(scales=0, degrees=30, **affine_common): 0.16,
                tio.RandomAffine(scales=scales, degrees=0, isotropic=True, **affine_common): 0.16,
            },
            p=0.36,
            **inner,
        ),
        tio.CropOrPad(patch, padding_mode=0, **inner),
        tio.RandomNoise(mean=0, std=(0, 0.1), p=0.1, **inner),
        tio.RandomBlur(std=(0.5, 1.0), p=0.1, **inner),
        tio.Lambda(_brightness_stand_in, types_to_apply=[tio.INTENSITY], p=0.15, **inner),
        tio.Lambda(_contrast_stand_in, types_to_apply=[tio.INTENSITY], p=0.15, **inner),
        tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1, 2), image_interpolation="linear",
                             scalars_only=True, p=0.125, **inner),
        tio.RandomGamma(log_gamma=log_gamma, p=0.1, **inner),
        tio.RandomGamma(log_gamma=log_gamma, p=0.3, **inner),
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5, **inner),
    ], **inner)

    def run(image: torch.Tensor, seg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_inputs(image, seg)
        batch, channels = image.shape[0], image.shape[1]
        image_out = torch.empty((batch, channels, *patch), dtype=torch.float32)
        seg_out = torch.empty((batch, 1, *patch), dtype=seg.dtype)
        with torch.no_grad():
            for b in range(batch):
                # fresh per-sample copies: TorchIO then works on them in place (copy=False)
                subject = tio.Subject(
                    image=tio.ScalarImage(tensor=image[b].to(device="cpu", dtype=torch.float32, copy=True)),
                    label=tio.LabelMap(tensor=seg[b].to(device="cpu", copy=True)),
                )
                out = transform(subject)
                image_out[b] = out["image"].data
                label = out["label"].data
                if label.dtype.is_floating_point:
                    label = torch.round(label)
                seg_out[b] = label.to(seg.dtype)
        return image_out, seg_out

    run.peer = "torchio"  # type: ignore[attr-defined]
    run.version = _package_version("torchio")  # type: ignore[attr-defined]
    run.patch_size = patch  # type: ignore[attr-defined]
    run.transforms = transform  # type: ignore[attr-defined]
    return run


# --------------------------------------------------------------------------------------

_FACTORIES: Dict[str, Callable[..., PeerRun]] = {
    "nnunet_v2": nnunet_v2_pipeline,
    "torchio": torchio_pipeline,
}


def available_peers() -> Dict[str, Callable[..., PeerRun]]:
    """Peers whose package imports here: name -> factory(patch_size=...).

    Possible names: 'nnunet_v2' (batchgeneratorsv2), 'torchio' (torchio).
    """
    found: Dict[str, Callable[..., PeerRun]] = {}
    for name, factory in _FACTORIES.items():
        module, distribution = _PEER_PACKAGES[name]
        try:
            _import_peer(module, distribution, name)
        except PeerUnavailable:
            continue
        found[name] = factory
    return found
