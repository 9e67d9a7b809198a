"""Backbones and losses (JCSAugmentLib.nets): shapes, geometry, forward-mode and second-order
differentiability under torch.func, absence of hidden state, and the losses' values."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from JCSAugmentLib.nets import (DeepMedic, NetworkInfo, UNet3D, batch_soft_dice_loss,
                                build_network, crop_target_to, deep_supervision_weights,
                                downsample_target, per_sample_seg_loss, per_sample_soft_dice,
                                plan_unet, unet_for_patch)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@contextlib.contextmanager
def no_running_stat_updates(model):
    """Train-mode forwards use batch statistics without updating running statistics (as the
    trainer does for measuring forwards: torch.func refuses in-place updates of captured
    buffers)."""
    changed = [m for m in model.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in changed:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


def small_unet(strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), ds=True, k=3):
    torch.manual_seed(0)
    return UNet3D(1, k, base_features=3, max_features=8, strides=strides, deep_supervision=ds)


def small_deepmedic(k=3, output_patch=None, factors=(3, 5)):
    torch.manual_seed(0)
    return DeepMedic(1, k, feature_maps=(3, 3, 4, 4, 4, 4, 5, 5), fc_maps=6,
                     subsample_factors=factors, output_patch=output_patch)


def _assert_module_intact(model, params_before, state_before):
    for (name, p), p0 in zip(model.named_parameters(), params_before):
        assert type(p) is torch.nn.Parameter and p is p0, name
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    copy.deepcopy(model)  # no non-leaf tensors left on the module


# ---------------------------------------------------------------------- U-Net shapes
def test_unet_train_mode_returns_deep_supervision_tuple_eval_single():
    net = small_unet()
    x = torch.randn(2, 1, 16, 16, 16)
    net.train()
    out = net(x)
    assert isinstance(out, tuple)
    # 4 stages -> decoder levels full, 1/2, 1/4; the lowest (1/4) is left out.
    assert [tuple(o.shape) for o in out] == [(2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
    assert net.output_scales == ((1, 1, 1), (2, 2, 2))
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert torch.is_tensor(y) and y.shape == (2, 3, 16, 16, 16)
    nods = small_unet(ds=False).train()
    assert nods(x).shape == (2, 3, 16, 16, 16)


def test_unet_reference_widths_and_anisotropic_strides():
    net = UNet3D(1, 2)
    assert net.features == (10, 20, 40, 80, 160)
    assert UNet3D(1, 2, strides=[1, 2, 2, 2, 2, 2]).features[-1] == 160  # capped
    aniso = small_unet(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))).train()
    out = aniso(torch.randn(1, 1, 8, 16, 16))
    assert [tuple(o.shape[2:]) for o in out] == [(8, 16, 16), (8, 8, 8)]
    assert aniso.total_stride == (4, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        aniso(torch.randn(1, 1, 6, 16, 16))


def test_unet_two_stages_still_returns_a_tuple_in_train_mode():
    net = small_unet(strides=(1, 2)).train()
    out = net(torch.randn(1, 1, 8, 8, 8))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 3, 8, 8, 8)


def test_plan_unet_nnunet_style():
    strides, kernels = plan_unet(64)
    assert strides == ((1, 1, 1),) + ((2, 2, 2),) * 4  # 64 -> 4, four downsamplings
    assert kernels == ((3, 3, 3),) * 5
    # Thick slices (axis 0 three times coarser): first pooling in-plane only, kernel 1 there.
    strides, kernels = plan_unet((32, 64, 64), spacing=(3.0, 1.0, 1.0))
    assert strides[1] == (1, 2, 2) and strides[2:] == ((2, 2, 2),) * 3
    assert kernels[0] == (1, 3, 3) and kernels[1] == (3, 3, 3)
    # An axis stops pooling when it would go below min_size or is odd.
    strides, _ = plan_unet((40, 96, 96))
    assert strides[-1] == (1, 2, 2)
    net = unet_for_patch((32, 64, 64), 1, 3, spacing=(3.0, 1.0, 1.0), base=2, max_features=4)
    assert net.strides[1] == (1, 2, 2) and net.num_stages == 5
    assert UNet3D.unet_for_patch(16, 1, 2, base=2).strides == ((1, 1, 1),) + ((2, 2, 2),) * 2
    with pytest.raises(ValueError):
        plan_unet(3)
    with pytest.raises(ValueError):
        plan_unet(5)  # odd: no downsampling possible


# ---------------------------------------------------------------------- DeepMedic geometry
def test_deepmedic_geometry_reference_sizes():
    assert DeepMedic.input_size(21) == (105, 105, 105)
    assert DeepMedic.output_size(105) == (25, 25, 25)  # largest output 105^3 allows
    net = small_deepmedic()
    assert net.reduction == 16 and net.input_size(21) == (105, 105, 105)
    # The normal pathway alone would need o + 16: 37 for 21; the x3 pathway 3*(7+16) = 69.
    nx3 = small_deepmedic(factors=(3,))
    assert nx3.input_size(21) == (69, 69, 69)
    assert small_deepmedic(factors=()).input_size(21) == (37, 37, 37)
    assert small_deepmedic(factors=()).output_size(37) == (21, 21, 21)
    for o in (1, 8, 9, 20, 21, 30, 31):
        s = DeepMedic.input_size(o)
        assert all(a >= b for a, b in zip(DeepMedic.output_size(s), (o, o, o)))
    assert DeepMedic.input_size((21, 21, 9)) == (105, 105, 95)
    with pytest.raises(ValueError, match="odd"):
        DeepMedic(1, 2, subsample_factors=(2,))
    with pytest.raises(ValueError, match="too small"):
        DeepMedic.output_size(60)


def test_deepmedic_forward_shapes():
    net = small_deepmedic(output_patch=21).train()
    x = torch.randn(2, 1, 105, 105, 105)
    assert net(x).shape == (2, 3, 21, 21, 21)
    assert net(x, output_size=25).shape == (2, 3, 25, 25, 25)
    free = small_deepmedic().eval()
    with torch.no_grad():
        assert free(x).shape == (2, 3, 25, 25, 25)
    with pytest.raises(ValueError, match="needs an input"):
        net(torch.randn(1, 1, 103, 103, 103))
    aniso = small_deepmedic(factors=((1, 3, 3),))
    s = aniso.input_size((9, 21, 21))
    assert s == (25, 69, 69)
    assert aniso(torch.randn(1, 1, *s)).shape == (1, 3, 9, 21, 21)


def test_deepmedic_crops_are_centred():
    """Eval mode: a smaller output equals the centre of a larger one from the same input."""
    net = small_deepmedic().double().eval()
    x = torch.randn(1, 1, 105, 105, 105, dtype=torch.float64)
    with torch.no_grad():
        big = net(x, output_size=25)
        small = net(x, output_size=21)
        smaller = net(x, output_size=15)
    assert torch.allclose(crop_target_to(small, big), small, atol=1e-12)
    assert torch.allclose(crop_target_to(smaller, big), smaller, atol=1e-12)


# ---------------------------------------------------------------------- factory
def test_build_network_infos():
    unet, info = build_network("unet3d", 2, 3, (16, 32, 32), spacing=(3.0, 1.0, 1.0), small=True)
    assert isinstance(info, NetworkInfo) and isinstance(unet, UNet3D)
    assert info.input_size == info.output_size == (16, 32, 32)
    assert info.target_crop == (0, 0, 0) and info.loss_kind == "ce+dice"
    assert info.strides[1] == (1, 2, 2) and info.num_outputs == len(unet.heads)
    assert info.parameters == sum(p.numel() for p in unet.parameters())
    dm, info = build_network("deepmedic", 1, 2, 21, small=True)
    assert info.input_size == (105, 105, 105) and info.output_size == (21, 21, 21)
    assert info.target_crop == (42, 42, 42) and info.loss_kind == "ce"
    y = torch.randint(0, 2, (1, 1, 105, 105, 105))
    assert torch.equal(info.crop_target(y), y[:, :, 42:63, 42:63, 42:63])
    out = dm.train()(torch.randn(1, 1, 105, 105, 105))
    assert out.shape == (1, 2, 21, 21, 21)
    assert info.per_sample_loss(out, y).shape == (1,)
    ref, ref_info = build_network("deepmedic", 1, 2, 21)
    assert ref.feature_maps == (30, 30, 40, 40, 40, 40, 50, 50) and ref.fc_maps == 250
    with pytest.raises(ValueError):
        build_network("resnet", 1, 2, 16)


# ---------------------------------------------------------------------- torch.func
def _cases(device):
    """(name, model, x, y, loss_fn) in float64, train mode."""
    torch.manual_seed(1)
    unet = small_unet().to(device=device, dtype=torch.float64).train()
    x_u = torch.randn(3, 1, 16, 16, 16, dtype=torch.float64, device=device)
    y_u = torch.randint(0, 3, (3, 1, 16, 16, 16), device=device)
    dm = small_deepmedic(output_patch=3).to(device=device, dtype=torch.float64).train()
    size = dm.input_size(3)
    x_d = torch.randn(3, 1, *size, dtype=torch.float64, device=device)
    y_d = torch.randint(0, 3, (3, *size), device=device)
    return [
        ("unet3d", unet, x_u, y_u, lambda o, y: per_sample_seg_loss(o, y, kind="ce+dice")),
        ("deepmedic", dm, x_d, y_d, lambda o, y: per_sample_seg_loss(o, y, kind="ce")),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_jvp_of_per_sample_losses_matches_autograd(device):
    for name, model, x, y, loss_fn in _cases(device):
        names = [n for n, _ in model.named_parameters()]
        params = [p.detach() for _, p in model.named_parameters()]
        buffers = dict(model.named_buffers())
        params_before = list(model.parameters())
        state_before = {k: v.clone() for k, v in model.state_dict().items()}
        gen = torch.Generator(device="cpu").manual_seed(2)
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(device) for p in params]

        def losses_at(*p):
            return loss_fn(functional_call(model, (dict(zip(names, p)), buffers), (x,)), y)

        with no_running_stat_updates(model):
            values, tangent = jvp(losses_at, tuple(params), tuple(v))
            leaves = [p.clone().requires_grad_(True) for p in params]
            losses = losses_at(*leaves)
            expected = []
            for i in range(x.shape[0]):
                g = torch.autograd.grad(losses[i], leaves, retain_graph=True)
                expected.append(sum((gi * vi).sum() for gi, vi in zip(g, v)))
        expected = torch.stack(expected)
        assert tangent.shape == (x.shape[0],), name
        assert torch.allclose(values, losses.detach()), name
        assert torch.allclose(tangent, expected, rtol=1e-9, atol=1e-10), \
            (name, tangent, expected)
        _assert_module_intact(model, params_before, state_before)


@pytest.mark.parametrize("device", DEVICES)
def test_second_order_create_graph(device):
    """Hessian-vector products through create_graph=True (reverse-over-reverse) agree with
    forward-over-reverse (torch.func.jvp of torch.func.grad) and with central differences of
    gradients (float64; a small step, since leaky ReLU/PReLU kinks spoil larger ones)."""
    for name, model, x, y, loss_fn in _cases(device):
        names = [n for n, _ in model.named_parameters()]
        params = tuple(p.detach() for _, p in model.named_parameters())
        buffers = dict(model.named_buffers())
        gen = torch.Generator(device="cpu").manual_seed(3)
        v = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(device) for p in params)

        def mean_loss(p):
            return loss_fn(functional_call(model, (dict(zip(names, p)), buffers), (x,)), y).mean()

        def grad_at(p):
            leaves = [t.clone().requires_grad_(True) for t in p]
            return torch.autograd.grad(mean_loss(leaves), leaves)

        with no_running_stat_updates(model):
            leaves = [p.clone().requires_grad_(True) for p in params]
            g = torch.autograd.grad(mean_loss(leaves), leaves, create_graph=True)
            hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), leaves)
            _, fwd_rev = jvp(torch.func.grad(mean_loss), (params,), (v,))
            eps = 1e-7
            gp = grad_at([p + eps * d for p, d in zip(params, v)])
            gm = grad_at([p - eps * d for p, d in zip(params, v)])
        hv = torch.cat([h.flatten() for h in hv])
        fwd_rev = torch.cat([h.flatten() for h in fwd_rev])
        fd = torch.cat([((a - b) / (2 * eps)).flatten() for a, b in zip(gp, gm)])
        assert torch.isfinite(hv).all() and hv.abs().max() > 0, name
        assert torch.allclose(hv, fwd_rev, rtol=1e-8, atol=1e-10 * hv.abs().max().item()), name
        assert (hv - fd).norm() <= 1e-4 * fd.norm(), name


def test_meta_gradient_identity_create_graph_vs_jvp():
    """dL_val/dw_i through the inner step (create_graph) equals -(alpha/n) JVP (method 3.4)."""
    for name, model, x, y, loss_fn in _cases("cpu"):
        names = [n for n, _ in model.named_parameters()]
        params = {n: p for n, p in model.named_parameters()}
        buffers = dict(model.named_buffers())
        n, alpha = x.shape[0], 0.1
        x_val, y_val = x.flip(0)[:2], y.flip(0)[:2]
        with no_running_stat_updates(model):
            w = torch.ones(n, dtype=torch.float64, requires_grad=True)
            losses = loss_fn(model(x), y)
            grads = torch.autograd.grad((w * losses).mean(), list(params.values()),
                                        create_graph=True)
            star = {k: params[k] - alpha * g for k, g in zip(names, grads)}
            val = loss_fn(functional_call(model, (star, buffers), (x_val,)), y_val).mean()
            (g_cg,) = torch.autograd.grad(val, [w])
            star_d = {k: t.detach().requires_grad_(True) for k, t in star.items()}
            val_d = loss_fn(functional_call(model, (star_d, buffers), (x_val,)), y_val).mean()
            v = torch.autograd.grad(val_d, list(star_d.values()))

            def losses_at(*p):
                return loss_fn(functional_call(model, (dict(zip(names, p)), buffers), (x,)), y)
            _, t = jvp(losses_at, tuple(p.detach() for p in params.values()), tuple(v))
        assert torch.allclose(g_cg, -(alpha / n) * t, rtol=1e-8, atol=1e-12), name


def test_repeated_calls_identical_and_no_hidden_state():
    for name, model, x, y, loss_fn in _cases("cpu"):
        with no_running_stat_updates(model):
            a = model(x)
            b = model(x)
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        assert all(torch.equal(p, q) for p, q in zip(a, b)), name
        assert not any(torch.is_tensor(v) for m in model.modules()
                       for k, v in vars(m).items() if not k.startswith("_")), name
        # functional_call with other parameters leaves the module untouched.
        params_before = list(model.parameters())
        state_before = {k: v.clone() for k, v in model.state_dict().items()}
        other = {k: p.detach() * 1.5 for k, p in model.named_parameters()}
        with no_running_stat_updates(model):
            functional_call(model, other, (x,))
            c = model(x)
        c = c if isinstance(c, tuple) else (c,)
        assert all(torch.equal(p, q) for p, q in zip(a, c)), name
        _assert_module_intact(model, params_before, state_before)


def test_repeated_meta_steps_keep_module_consistent():
    """Several iterations of {train forward/backward, JVP through functional_call, optimiser
    step}: the module keeps its own Parameters (the optimiser's), its forward equals
    functional_call with them, and the steps change the outputs (what MONAI's DynUNet fails:
    functional_call leaves its doubly-registered blocks holding stale tensors)."""
    for name, model, x, y, loss_fn in _cases("cpu"):
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        names = [n for n, _ in model.named_parameters()]
        previous = None
        for _ in range(3):
            opt.zero_grad()
            losses = loss_fn(model(x), y)
            losses.mean().backward()
            grads = tuple(p.grad.detach().clone() for p in model.parameters())
            with no_running_stat_updates(model):
                _, t = jvp(lambda *p: loss_fn(functional_call(
                    model, (dict(zip(names, p)), dict(model.named_buffers())), (x,)), y),
                    tuple(p.detach() for p in model.parameters()), grads)
            assert torch.isfinite(t).all() and t.mean() > 0, name  # along its own gradient
            opt.step()
            assert list(model.parameters()) == opt.param_groups[0]["params"], name
            assert all(type(p) is torch.nn.Parameter for p in model.parameters()), name
            with no_running_stat_updates(model):
                out = model(x)
                ref = functional_call(model, (dict(model.named_parameters()),
                                              dict(model.named_buffers())), (x,))
            out0 = out[0] if isinstance(out, tuple) else out
            ref0 = ref[0] if isinstance(ref, tuple) else ref
            assert torch.equal(out0, ref0), name
            if previous is not None:
                assert not torch.equal(out0, previous), name
            previous = out0.detach()


def test_deepmedic_running_stats_update_only_in_plain_train_forward():
    model = small_deepmedic(output_patch=3).train()
    x = torch.randn(2, 1, *model.input_size(3))
    bn = model.pathways[0].layers[1].norm
    before = bn.running_mean.clone()
    with no_running_stat_updates(model):
        model(x)
    assert torch.equal(bn.running_mean, before)
    model(x)
    assert not torch.equal(bn.running_mean, before)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)


def test_float32_forward_backward_both_nets():
    for backbone, patch in (("unet3d", 16), ("deepmedic", 5)):
        model, info = build_network(backbone, 1, 2, patch, small=True)
        x = torch.randn(2, 1, *info.input_size)
        y = torch.randint(0, 2, (2, 1, *info.input_size))
        losses = info.per_sample_loss(model.train()(x), y)
        assert losses.dtype == torch.float32 and losses.shape == (2,)
        losses.mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in model.parameters()), backbone


# ---------------------------------------------------------------------- losses
def test_per_sample_losses_equal_one_sample_at_a_time_unet():
    torch.manual_seed(4)
    net = small_unet().double().train()
    x = torch.randn(3, 1, 16, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 16, 16, 16))
    for kind in ("ce", "dice", "ce+dice"):
        batch = per_sample_seg_loss(net(x), y, kind=kind)
        single = torch.cat([per_sample_seg_loss(net(x[i:i + 1]), y[i:i + 1], kind=kind)
                            for i in range(3)])
        assert torch.allclose(batch, single, rtol=1e-10, atol=1e-12), kind


def test_soft_dice_hand_computed():
    # 2 classes, 1 x 1 x 4 voxels; target = [0, 1, 1, 0]; foreground probs [0.1, 0.8, 0.6, 0.3].
    p1 = torch.tensor([0.1, 0.8, 0.6, 0.3], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).reshape(1, 2, 1, 1, 4)
    target = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 1, 4)
    inter, denom = 0.8 + 0.6, (0.1 + 0.8 + 0.6 + 0.3) + 2
    expected = 2 * inter / denom
    got = per_sample_soft_dice(probs, target, smooth=0.0)
    assert torch.allclose(got, torch.tensor([expected], dtype=torch.float64))
    # Mask out the last voxel: it leaves both sums.
    mask = torch.tensor([1, 1, 1, 0]).reshape(1, 1, 1, 4)
    masked = per_sample_soft_dice(probs, target, mask=mask, smooth=0.0)
    assert torch.allclose(masked, torch.tensor([2 * 1.4 / (1.5 + 2)], dtype=torch.float64))
    # One-hot float target gives the same, and so does the per-sample loss's Dice term.
    onehot = F.one_hot(target, 2).movedim(-1, 1).double()
    assert torch.allclose(per_sample_soft_dice(probs, onehot, smooth=0.0), got)
    logits = torch.log(probs)
    loss = per_sample_seg_loss(logits, target, kind="dice", smooth=0.0)
    assert torch.allclose(loss, 1 - got)
    ce = per_sample_seg_loss(logits, target, kind="ce")
    expected_ce = -torch.log(torch.tensor([0.9, 0.8, 0.6, 0.7], dtype=torch.float64)).mean()
    assert torch.allclose(ce, expected_ce.reshape(1))
    assert torch.allclose(per_sample_seg_loss(logits, target), ce + 1 - per_sample_soft_dice(
        probs, target))
    # Batch Dice sums over the batch: two samples with different Dice.
    probs2 = torch.cat([probs, probs.flip(-1)])
    target2 = torch.cat([target, target])
    b = batch_soft_dice_loss(torch.log(probs2), target2, smooth=0.0)
    inter_b = 1.4 + (0.6 + 0.8)  # flipped sample: foreground probs [0.3, 0.6, 0.8, 0.1]
    denom_b = 3.8 + 3.8
    assert torch.allclose(b, torch.tensor(1 - 2 * inter_b / denom_b, dtype=torch.float64))


def test_loss_target_layouts_and_dtypes():
    torch.manual_seed(5)
    for dtype in (torch.float32, torch.float64):
        logits = torch.randn(2, 3, 4, 4, 4, dtype=dtype, requires_grad=True)
        y = torch.randint(0, 3, (2, 4, 4, 4))
        a = per_sample_seg_loss(logits, y)
        b = per_sample_seg_loss(logits, y[:, None])
        assert a.dtype == dtype and torch.equal(a, b)
        a.sum().backward()
        assert torch.isfinite(logits.grad).all()
        assert batch_soft_dice_loss(logits, y).dtype == dtype
        assert per_sample_soft_dice(torch.softmax(logits, 1), y).dtype == dtype
    with pytest.raises(ValueError):
        per_sample_seg_loss(logits, y, kind="focal")
    with pytest.raises(ValueError):
        per_sample_seg_loss(logits, torch.full((2, 4, 4, 4), 3))


def test_deep_supervision_weights_and_loss():
    w = deep_supervision_weights(3)
    assert torch.allclose(w, torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64))
    # nnU-Net: 4 decoder levels with the lowest weighted 0 == our 3 levels.
    w4 = deep_supervision_weights(4, zero_lowest=True)
    assert torch.allclose(w4[:3], w) and w4[3] == 0
    torch.manual_seed(6)
    outs = (torch.randn(2, 3, 8, 8, 8, dtype=torch.float64),
            torch.randn(2, 3, 4, 4, 4, dtype=torch.float64),
            torch.randn(2, 3, 2, 2, 2, dtype=torch.float64))
    y = torch.randint(0, 3, (2, 1, 8, 8, 8))
    got = per_sample_seg_loss(outs, y)
    # Nearest ("nearest-exact") downsampling by f picks voxel floor((i + 1/2) f) of each block.
    levels = [per_sample_seg_loss(outs[0], y),
              per_sample_seg_loss(outs[1], y[..., 1::2, 1::2, 1::2]),
              per_sample_seg_loss(outs[2], y[..., 2::4, 2::4, 2::4])]
    expected = sum(wk * lk for wk, lk in zip(w.tolist(), levels))
    assert torch.allclose(got, expected)
    assert torch.equal(downsample_target(y, (4, 4, 4)), y[..., 1::2, 1::2, 1::2])
    # Custom weights are normalised; weight 0 drops a level.
    only_full = per_sample_seg_loss(outs, y, ds_weights=[2.0, 0.0, 0.0])
    assert torch.allclose(only_full, levels[0])
    with pytest.raises(ValueError):
        per_sample_seg_loss(outs, y, ds_weights=[1.0, 1.0])


def test_crop_target_to_deepmedic_output():
    y = torch.arange(2 * 9 ** 3).reshape(2, 1, 9, 9, 9)
    logits = torch.zeros(2, 2, 3, 3, 3)
    c = crop_target_to(logits, y)
    assert torch.equal(c, y[:, :, 3:6, 3:6, 3:6])
    assert torch.equal(crop_target_to((3, 3, 3), y[:, 0]), y[:, 0, 3:6, 3:6, 3:6])
    # per_sample_seg_loss crops a larger target itself.
    torch.manual_seed(7)
    logits = torch.randn(2, 2, 3, 3, 3)
    lab = torch.randint(0, 2, (2, 1, 9, 9, 9))
    assert torch.equal(per_sample_seg_loss(logits, lab, kind="ce"),
                       per_sample_seg_loss(logits, lab[:, :, 3:6, 3:6, 3:6], kind="ce"))
    with pytest.raises(ValueError):
        crop_target_to(torch.zeros(1, 2, 10, 10, 10), y)
