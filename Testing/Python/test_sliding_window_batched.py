"""Batched sliding window: the same logits, disagreement and noise as one window at a time,
fewer network calls, and one progress record per batch."""

import pytest
import torch

from JCSAugmentLib.augment.tables import TEA_INDEX, TEA_MIRROR_OPS_NNUNET
from JCSAugmentLib.infer.sliding_window import (WindowProgress, default_batch_windows,
                                                sliding_window_predict, window_grid)
from JCSAugmentLib.nets.unet3d import UNet3D

# mirrors, a resampled op (its inverse pads), a quarter turn of a non-cubic window (another
# shape, so another network call) and a noise op (draws from the seeded generator)
MIXED_OPS = [0, TEA_INDEX["flip_axis1"], TEA_INDEX["rotate_axis0_+15"],
             TEA_INDEX["rot90_axis0_+90"], TEA_INDEX["noise_0.125"]]


def _unet():
    torch.manual_seed(0)
    net = UNet3D(1, 3, base_features=4, max_features=16, strides=((1, 1, 1), (2, 2, 2)),
                 deep_supervision=False).eval()
    calls = []

    def predict(b):
        calls.append(b.shape[0])
        return net(b)
    return predict, calls


def _image(shape=(20, 26, 30)):
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, *shape, generator=g)


@pytest.mark.parametrize("ops", [[0], list(TEA_MIRROR_OPS_NNUNET[:4]), MIXED_OPS])
def test_batched_windows_give_the_one_window_result(ops):
    predict, calls = _unet()
    image = _image()
    window = (12, 12, 16)  # non-cubic: the quarter turn about axis 0 swaps H and W
    one, u_one = sliding_window_predict(predict, image, window, window, 3, ops,
                                        uncertainty=True, batch_windows=1)
    single_calls = len(calls)
    calls.clear()
    batched, u_batched = sliding_window_predict(predict, image, window, window, 3, ops,
                                                uncertainty=True, batch_windows=5)
    assert torch.allclose(one, batched, atol=1e-5, rtol=1e-5)
    assert torch.allclose(u_one, u_batched, atol=1e-5, rtol=1e-5)
    # the noise op saw the same noise: a different seed moves the result far more than 1e-5
    if TEA_INDEX["noise_0.125"] in ops:
        other, _ = sliding_window_predict(predict, image, window, window, 3, ops, seed=1,
                                          batch_windows=5)
        assert (other - one).abs().max() > 1e-3
    # fewer, bigger network calls: windows of one batch share them
    windows = len(window_grid(image.shape[1:], window, 0.5))
    assert windows > 5 and len(calls) < single_calls and max(calls) > len(ops)


def test_the_default_batch_equals_the_one_window_path_on_a_deepmedic_like_context():
    # input context larger than the output (windows read padding at the volume's border)
    conv = torch.nn.Conv3d(1, 2, 5).eval()

    def predict(b):
        return conv(b)
    image = _image((16, 16, 16))
    one, _ = sliding_window_predict(predict, image, (12, 12, 12), (8, 8, 8), 2, [0, 29],
                                    batch_windows=1)
    default, _ = sliding_window_predict(predict, image, (12, 12, 12), (8, 8, 8), 2, [0, 29])
    assert torch.allclose(one, default, atol=1e-6)


def test_progress_reports_every_batch_with_an_eta():
    predict, _ = _unet()
    image = _image()
    events = []
    sliding_window_predict(predict, image, (12, 12, 12), (12, 12, 12), 3, [0],
                           batch_windows=4, progress=events.append)
    total = len(window_grid(image.shape[1:], (12, 12, 12), 0.5))
    assert all(isinstance(e, WindowProgress) for e in events)
    assert len(events) == -(-total // 4)
    assert [e.windows_done for e in events] == sorted({min(4 * (i + 1), total)
                                                       for i in range(len(events))})
    assert all(e.windows_total == total for e in events)
    assert sum(e.batch_windows for e in events) == total
    assert events[-1].eta_s == 0 and events[-1].fraction == 1.0
    assert all(e.eta_s >= 0 and e.elapsed_s >= 0 for e in events)


def test_the_default_batch_size_follows_the_device():
    assert default_batch_windows("cpu", 1) == 2
    assert default_batch_windows("cpu", 8) == 1  # nnU-Net's mirrors already fill a call
    # a GPU: half the free memory over the measured cost of a window's inputs, capped
    assert default_batch_windows("cuda", 8, bytes_per_image=10 ** 8, free_bytes=32 * 10 ** 9) \
        == 20
    assert default_batch_windows("cuda", 1, bytes_per_image=10, free_bytes=10 ** 12) == 64
    assert default_batch_windows("cuda", 8) == 1  # not measured yet
    assert default_batch_windows("cuda", 8, bytes_per_image=10 ** 10, free_bytes=10 ** 9) == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_bad_batch_size_is_refused(bad):
    predict, _ = _unet()
    with pytest.raises(ValueError, match="batch_windows"):
        sliding_window_predict(predict, _image(), (12, 12, 12), (12, 12, 12), 3, [0],
                               batch_windows=bad)


def test_prepare_for_inference_keeps_the_logits_and_the_parameters():
    import copy
    from JCSAugmentLib.infer.sliding_window import (ChannelsLastInstanceNorm3d,
                                                    prepare_for_inference)
    torch.manual_seed(0)
    net = UNet3D(1, 3, base_features=4, max_features=16, strides=((1, 1, 1), (2, 2, 2)),
                 deep_supervision=False).eval()
    for m in net.modules():  # non-trivial affine norms
        if isinstance(m, torch.nn.InstanceNorm3d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    plain = copy.deepcopy(net)
    prepare_for_inference(net, torch.device("cpu"))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(type(m) is ChannelsLastInstanceNorm3d for m in norms)
    assert net.state_dict().keys() == plain.state_dict().keys()
    assert net.encoder[0].block1.act.inplace and not plain.encoder[0].block1.act.inplace
    x = _image((12, 16, 16))[None].repeat(2, 1, 1, 1, 1)
    with torch.no_grad():
        a, b = plain(x), net(x)
        # the layout is kept through the norms (torch's own returns a contiguous tensor)
        h = norms[0](net.encoder[0].block1.conv(x))
    assert h.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, plain(x.flip(2)).detach(), atol=1e-4)  # the check can fail
    # in train mode the norm is torch's (gradients, running statistics)
    norms[0].train()
    y = x.to(memory_format=torch.channels_last_3d)[:, :1].repeat(1, norms[0].num_features, 1,
                                                                  1, 1)
    assert torch.allclose(norms[0](y), torch.nn.functional.instance_norm(
        y, weight=norms[0].weight, bias=norms[0].bias, eps=norms[0].eps), atol=1e-5)


@pytest.mark.parametrize("shape, mean, std", [((2, 10, 16, 20, 24), 3.0, 2.0),
                                              ((1, 4, 8, 8, 8), 0.0, 1.0),
                                              ((3, 32, 4, 4, 4), -1.0, 0.5),
                                              ((2, 6, 12, 12, 12), 40.0, 0.05)])
def test_the_channels_last_norm_matches_torchs_instance_norm(shape, mean, std):
    """Its two-pass statistics over the (N, voxels, C) view give torch's numbers, in the
    channels-last layout, also where the mean dwarfs the spread (a one-pass E[x^2] - E[x]^2
    would lose the variance there); another layout goes through torch's own."""
    from JCSAugmentLib.infer.sliding_window import ChannelsLastInstanceNorm3d
    g = torch.Generator().manual_seed(1)
    c = shape[1]
    norm = ChannelsLastInstanceNorm3d(c, affine=True).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(c, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(c, generator=g))
    x = (torch.randn(shape, generator=g) * std + mean).contiguous(
        memory_format=torch.channels_last_3d)
    reference = torch.nn.functional.instance_norm(
        x.double(), weight=norm.weight.double(), bias=norm.bias.double(), eps=norm.eps)
    with torch.no_grad():
        y = norm(x)
        plain = norm(x.contiguous())  # not channels-last: torch's path
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    tolerance = 1e-5 if mean < 10 else 1e-3  # float32 near a large mean, as torch's own
    torch_error = (plain.double() - reference).abs().max().item()
    assert (y.double() - reference).abs().max().item() <= max(tolerance, 2 * torch_error)
    assert torch.allclose(plain, torch.nn.functional.instance_norm(
        x.contiguous(), weight=norm.weight, bias=norm.bias, eps=norm.eps))
    assert not torch.allclose(y, x, atol=1e-2)  # it did normalise


def test_one_op_without_padding_takes_the_fast_path_with_the_same_result():
    # z = 1 with the identity: the logits themselves, as the general weighted average (two
    # identical identity ops, half weight each) gives them
    predict, _ = _unet()
    image = _image()
    one, _ = sliding_window_predict(predict, image, (12, 12, 12), (12, 12, 12), 3, [0],
                                    batch_windows=1)
    two, _ = sliding_window_predict(predict, image, (12, 12, 12), (12, 12, 12), 3, [0, 0],
                                    batch_windows=1, batch_limit=1)  # the same network calls
    assert torch.allclose(one, two, atol=1e-6)
    # a volume of one window: the importance weights cancel, the network's logits come back
    small = image[:, :12, :12, :12]
    alone, _ = sliding_window_predict(predict, small, (12, 12, 12), (12, 12, 12), 3, [0])
    with torch.no_grad():
        assert torch.allclose(alone, predict(small[None])[0], atol=1e-5)
        assert not torch.allclose(alone, predict(small.flip(1)[None])[0], atol=1e-3)


def test_on_a_cpu_a_lone_last_input_joins_the_call_before_it():
    predict, calls = _unet()
    image = _image((12, 24, 36))  # 1 x 3 x 5 = 15 windows of 12^3: an odd count
    window = (12, 12, 12)
    assert len(window_grid(image.shape[1:], window, 0.5)) == 15
    default, _ = sliding_window_predict(predict, image, window, window, 3, [0])
    assert calls == [2] * 6 + [3]  # not 2 x 7 + 1: a call of one costs more than one of two
    calls.clear()
    one, _ = sliding_window_predict(predict, image, window, window, 3, [0], batch_windows=1)
    assert calls == [1] * 15 and torch.allclose(one, default, atol=1e-5)
    calls.clear()  # a batch size or call limit the caller gave is kept as given
    sliding_window_predict(predict, image, window, window, 3, [0], batch_windows=2)
    assert calls == [2] * 7 + [1]
    calls.clear()
    sliding_window_predict(predict, image, window, window, 3, [0], batch_limit=2)
    assert calls == [2] * 7 + [1]
    calls.clear()  # three TEA copies of one window: one call of 3, not 2 + 1
    ops = list(TEA_MIRROR_OPS_NNUNET[:3])
    default3, _ = sliding_window_predict(predict, image, window, window, 3, ops)
    assert calls == [3] * 15
    calls.clear()
    one3, _ = sliding_window_predict(predict, image, window, window, 3, ops, batch_windows=1,
                                     batch_limit=1)
    assert calls == [1] * 45 and torch.allclose(one3, default3, atol=1e-5)
