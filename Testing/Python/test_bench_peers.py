"""Tests for JCSAugmentLib.bench.peers (the peer side of `jcsaugment bench augment`).

Peers are optional: each peer test is skipped when its package is not installed.
"""

import importlib
import random
import sys

import numpy as np
import pytest
import torch

from JCSAugmentLib.bench import peers

PATCH = (64, 64, 64)
CROP = (96, 96, 96)
PEER_MODULES = {"nnunet_v2": "batchgeneratorsv2", "torchio": "torchio"}
FACTORIES = {"nnunet_v2": peers.nnunet_v2_pipeline, "torchio": peers.torchio_pipeline}


def _seed(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _batch(channels=2, labels=(0, 3)):
    """Two random crops with a blob-shaped two-class label map."""
    gen = torch.Generator().manual_seed(1234)
    image = torch.randn((2, channels, *CROP), generator=gen)
    zz, yy, xx = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in CROP), indexing="ij")
    seg = torch.full((2, 1, *CROP), labels[0], dtype=torch.int64)
    for b, (cz, cy, cx, r) in enumerate([(40, 50, 45, 20), (55, 42, 60, 25)]):
        blob = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        seg[b, 0][blob] = labels[1]
    return image, seg


def _check_output(image, seg, out_image, out_seg):
    assert out_image.shape == (image.shape[0], image.shape[1], *PATCH)
    assert out_seg.shape == (seg.shape[0], 1, *PATCH)
    assert out_image.dtype == torch.float32
    assert out_seg.dtype == seg.dtype
    assert torch.isfinite(out_image).all()
    assert set(torch.unique(out_seg).tolist()) <= set(torch.unique(seg).tolist())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_peer_shapes_labels_and_determinism(name):
    pytest.importorskip(PEER_MODULES[name])
    run = FACTORIES[name](patch_size=PATCH)
    image, seg = _batch()
    image_before, seg_before = image.clone(), seg.clone()

    _seed(7)
    out_image, out_seg = run(image, seg)
    _check_output(image, seg, out_image, out_seg)
    # the caller's tensors are left alone (bgv2 and TorchIO both work in place internally)
    assert torch.equal(image, image_before) and torch.equal(seg, seg_before)

    _seed(7)
    again_image, again_seg = run(image, seg)
    assert torch.equal(out_image, again_image)
    assert torch.equal(out_seg, again_seg)


def _force_all_nnunet(run):
    for t in run.transforms.transforms:
        if hasattr(t, "apply_probability"):
            t.apply_probability = 1.0
        if hasattr(t, "p_rotation"):
            t.p_rotation = 1.0
            t.p_scaling = 1.0
            t.scaling = (1.4, 1.4)  # reaches past the crop: padding label -1 must not leak


def _force_all_torchio(transform):
    transform.probability = 1.0
    for child in getattr(transform, "transforms", []):
        _force_all_torchio(child)
    for child in getattr(transform, "transforms_dict", {}):
        _force_all_torchio(child)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_peer_every_transform_on(name):
    """Every step of the chain runs (p forced to 1) and the output is still valid."""
    pytest.importorskip(PEER_MODULES[name])
    run = FACTORIES[name](patch_size=PATCH)
    if name == "nnunet_v2":
        _force_all_nnunet(run)
    else:
        _force_all_torchio(run.transforms)
    # both peers label voxels sampled from outside the crop 0 (background), so 0 is among the labels
    image, seg = _batch(channels=1, labels=(0, 2))
    seg = seg.to(torch.int16)
    _seed(3)
    out_image, out_seg = run(image, seg)
    _check_output(image, seg, out_image, out_seg)
    # spatial step really resampled: not a plain centre crop of the input
    lo = [(c - p) // 2 for c, p in zip(CROP, PATCH)]
    centre = image[:, :, lo[0]:lo[0] + PATCH[0], lo[1]:lo[1] + PATCH[1], lo[2]:lo[2] + PATCH[2]]
    assert not torch.allclose(out_image, centre)


def test_available_peers_lists_only_importable():
    found = peers.available_peers()
    assert set(found) <= set(PEER_MODULES)
    for name, module in PEER_MODULES.items():
        try:
            importlib.import_module(module)
            importable = True
        except ImportError:
            importable = False
        assert (name in found) == importable, name
        if importable:
            assert found[name] is FACTORIES[name]


def test_missing_peer_is_reported(monkeypatch):
    for module in PEER_MODULES.values():
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    assert peers.available_peers() == {}
    with pytest.raises(peers.PeerUnavailable, match="pip install torchio"):
        peers.torchio_pipeline()
    with pytest.raises(peers.PeerUnavailable, match="pip install batchgeneratorsv2"):
        peers.nnunet_v2_pipeline()


def test_bad_inputs_rejected():
    name = next(iter(peers.available_peers()), None)
    if name is None:
        pytest.skip("no peer installed")
    run = peers.available_peers()[name](patch_size=PATCH)
    image, seg = _batch(channels=1)
    with pytest.raises(ValueError):
        run(image[0], seg[0])
    with pytest.raises(ValueError):
        run(image, seg.repeat(1, 2, 1, 1, 1))
    with pytest.raises(TypeError):
        run(image, seg.float())
