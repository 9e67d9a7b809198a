"""TEA: every op followed by its inverse returns the input (exact where it should be)."""

import math

import pytest
import torch

from JCSAugmentLib.augment import CaseStats, TEA_OPS, tea_invert, tea_transform


def smooth_field(shape=(20, 18, 22), b=2, c=3):
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape],
                             indexing="ij")
    f = torch.sin(math.pi * 0.5 * z + 0.3) * torch.cos(math.pi * 0.4 * y) + 0.5 * x * x
    return torch.stack([f * (i + 1) for i in range(c)])[None].repeat(b, 1, 1, 1, 1)


@pytest.mark.parametrize("op", TEA_OPS, ids=[op.name for op in TEA_OPS])
def test_transform_then_invert_returns_the_input(op):
    x = smooth_field()
    t = tea_transform(x, op.index, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(t).all()
    inv, padded = tea_invert(t, op.index, return_mask=True)
    assert padded.shape == (2, 1, *x.shape[2:]) and padded.dtype == torch.bool
    if op.kind != "spatial":
        # intensity / filter / noise ops change the input only: the inverse is the identity
        assert torch.equal(tea_invert(x, op.index), x)
        assert not padded.any()
        if op.op != "identity":
            assert not torch.equal(t, x)
    elif op.invertible_exactly:
        assert torch.equal(inv, x)
        assert not padded.any()
        if op.op == "rot90" and abs(op.magnitude) == 1:
            assert t.shape != x.shape  # the plane is not square: the shape turns too
    else:
        ok = ~padded.expand_as(inv)
        # two trilinear resamplings of a smooth field: small error, away from the padding
        err = (inv - x)[ok].abs().max() / x.abs().max()
        assert err < 0.03, err
        assert ok.float().mean() > 0.25  # zoom 1.45 keeps (1/1.45)^3
        assert padded.any()


def test_mask_covers_every_voxel_the_inverse_padded():
    for op in TEA_OPS:
        if op.op in ("scale", "rotate"):
            ones = torch.ones(1, 1, 16, 18, 20, dtype=torch.float64)
            inv, padded = tea_invert(ones, op.index, return_mask=True)
            # zero padding pulls the inverse of a constant below 1 wherever it entered
            assert padded[inv < 1 - 1e-6].all(), op.name
            assert not padded.all(), op.name


def test_inverse_works_on_any_channel_count_and_logits():
    x = smooth_field(c=1)
    for idx in (3, 12, 30, 33, 83):
        y = torch.randn(2, 5, *tea_transform(x, idx).shape[2:], dtype=torch.float64)
        assert tea_invert(y, idx).shape == (2, 5, *x.shape[2:])


def test_intensity_ops_use_given_case_statistics():
    x = smooth_field(c=1)
    stats = CaseStats.from_patch(x)
    stats.std = stats.std * 2
    shift = next(op for op in TEA_OPS if op.op == "shift" and op.magnitude == 0.25)
    y = tea_transform(x, shift.index, stats=stats)
    assert torch.allclose(y - x, (0.25 * stats.std).reshape(2, 1, 1, 1, 1).to(x.dtype).expand_as(x))


def test_noise_is_reproducible_with_a_generator():
    x = smooth_field(c=1)
    noise = next(op for op in TEA_OPS if op.op == "noise")
    a = tea_transform(x, noise.index, generator=torch.Generator().manual_seed(1))
    b = tea_transform(x, noise.index, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_bad_input():
    x = smooth_field()
    with pytest.raises(ValueError, match="index"):
        tea_transform(x, 84)
    with pytest.raises(ValueError, match="index"):
        tea_invert(x, -1)
    with pytest.raises(ValueError, match="shaped"):
        tea_transform(x[0], 1)
    with pytest.raises(TypeError, match="floating"):
        tea_invert(x.long(), 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    x = smooth_field().float()
    for op in TEA_OPS:
        if op.op == "noise":
            continue
        a = tea_invert(tea_transform(x, op.index), op.index)
        b = tea_invert(tea_transform(x.cuda(), op.index), op.index).cpu()
        assert torch.allclose(a, b, atol=1e-4), op.name
