"""nnU-Net v2's predictor as the peer of `bench infer`: the same network as ours, so the same
logits as our sliding window (skipped without nnunetv2, an optional bench dependency)."""

import pytest
import torch

pytest.importorskip("nnunetv2.inference.predict_from_raw_data")

from JCSAugmentLib.augment.tables import TEA_MIRROR_OPS_NNUNET  # noqa: E402
from JCSAugmentLib.bench.nnunet_predictor import nnunet_predictor_peer  # noqa: E402
from JCSAugmentLib.infer.sliding_window import sliding_window_predict, window_grid  # noqa: E402
from JCSAugmentLib.nets.unet3d import UNet3D  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet3D(1, 3, base_features=4, max_features=16,
                  strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), deep_supervision=False).eval()


@pytest.mark.parametrize("mirroring", [False, True])
def test_nnunet_predicts_what_we_predict_with_the_same_network(unet, mirroring):
    peer = nnunet_predictor_peer(unet, 1, 3, (16, 16, 16), step=0.5, mirroring=mirroring)
    # the same stages: only our deep-supervision head at 1/2 resolution and nnU-Net's extra
    # logit layer at 1/4 (8 features -> 3 logits, with biases) tell the counts apart
    ours_count = sum(p.numel() for p in unet.parameters())
    assert peer.parameters - ours_count == 8 * 3 + 3
    ops = list(TEA_MIRROR_OPS_NNUNET) if mirroring else [0]
    # one window: the importance weights cancel, so the logits are the network's (mirrored)
    # on both sides, up to nnU-Net's float16 sums; its Gaussian underflows float16 within 2
    # voxels of the window's border, which is left out
    image = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    theirs = peer.predict(image).float()
    with torch.no_grad():
        ours, _ = sliding_window_predict(unet, image, (16, 16, 16), (16, 16, 16), 3, ops)
    inner = (slice(None),) + (slice(2, -2),) * 3
    assert theirs.shape == ours.shape == (3, 16, 16, 16)
    assert torch.allclose(theirs[inner], ours[inner], atol=5e-3, rtol=0)
    flipped = torch.flip(image, (1, 3))  # a mirror changes the answer: the test can fail
    assert not torch.allclose(peer.predict(flipped).float()[inner], ours[inner], atol=5e-3)


def test_both_predictors_run_the_same_number_of_windows(unet):
    peer = nnunet_predictor_peer(unet, 1, 3, (16, 16, 16), step=0.5, mirroring=False)
    calls = []
    hook = peer.network.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        peer.predict(torch.randn(1, 24, 24, 30))
    finally:
        hook.remove()
    # 30 does not tile evenly: we put the last window flush with the end, nnU-Net spreads
    # its windows evenly; the count is the same
    windows = len(window_grid((24, 24, 30), (16, 16, 16), 0.5))
    assert windows == 2 * 2 * 3 and sum(calls) == windows
