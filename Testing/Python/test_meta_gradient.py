"""The meta-gradient dL_val/dw_i: exact (JVP) = create_graph = finite differences in w."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from JCSAugmentLib.meta import frozen_running_stats, meta_gradient


class TinyNet(nn.Module):
    """Instance norm and batch norm, so both per-sample and batch-coupled losses are covered."""

    def __init__(self, cin=2, k=3):
        super().__init__()
        self.c1 = nn.Conv3d(cin, 4, 3, padding=1)
        self.n1 = nn.InstanceNorm3d(4, affine=True)
        self.c2 = nn.Conv3d(4, 4, 3, padding=1)
        self.n2 = nn.BatchNorm3d(4)
        self.head = nn.Conv3d(4, k, 1)

    def forward(self, x):
        x = F.leaky_relu(self.n1(self.c1(x)), 0.01)
        x = F.leaky_relu(self.n2(self.c2(x)), 0.01)
        return self.head(x)


def per_sample_ce(logits, y):
    return F.cross_entropy(logits, y[:, 0], reduction="none").flatten(1).mean(1)


def val_ce(logits, y):
    return F.cross_entropy(logits, y[:, 0])


def make(seed=0, n=4, m=3):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyNet().double().train()
    x = torch.randn(n, 2, 6, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n, 1, 6, 6, 6), generator=g)
    xv = torch.randn(m, 2, 6, 6, 6, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 3, (m, 1, 6, 6, 6), generator=g)
    return model, x, y, xv, yv


def val_loss_after_inner_step(model, x, y, xv, yv, w, alpha):
    """L_val(theta - alpha * grad_theta L_train(theta, w)), batch-norm statistics frozen."""
    params = {k: p for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    with frozen_running_stats(model):
        losses = per_sample_ce(model(x), y)
        grads = torch.autograd.grad((w * losses).mean(), list(params.values()))
        theta = {k: p - alpha * gk for (k, p), gk in zip(params.items(), grads)}
        return float(val_ce(functional_call(model, (theta, buffers), (xv,)), yv).detach())


ALPHA = 0.5


@pytest.fixture(scope="module")
def results():
    out = {}
    for method in ("exact", "finite-difference", "create_graph"):
        model, x, y, xv, yv = make()
        out[method] = meta_gradient(model, per_sample_ce, val_ce, x, y, xv, yv, ALPHA, method)
    return out


def test_exact_equals_create_graph(results):
    # Tolerance: both are exact up to float64 rounding.
    assert torch.allclose(results["exact"].g, results["create_graph"].g, rtol=1e-8, atol=1e-12)


def test_exact_equals_central_finite_difference_in_w():
    model, x, y, xv, yv = make()
    exact = meta_gradient(model, per_sample_ce, val_ce, x, y, xv, yv, ALPHA, "exact").g
    model, x, y, xv, yv = make()  # fresh running statistics, as in the call above
    eps = 1e-5
    fd = []
    for i in range(x.shape[0]):
        w = torch.ones(x.shape[0], dtype=torch.float64)
        w[i] += eps
        up = val_loss_after_inner_step(model, x, y, xv, yv, w, ALPHA)
        w[i] -= 2 * eps
        down = val_loss_after_inner_step(model, x, y, xv, yv, w, ALPHA)
        fd.append((up - down) / (2 * eps))
    fd = torch.tensor(fd, dtype=torch.float64)
    # Tolerance: central differences with eps 1e-5 in float64 are good to about 1e-8 relative;
    # the batch-norm statistics of the reference are those after the one training forward.
    assert torch.allclose(exact, fd, rtol=1e-5, atol=1e-10), (exact, fd)
    assert exact.abs().max() > 1e-6


def test_finite_difference_mode_agrees_with_exact(results):
    # With the reference radius (R = 0.01 / ||v||) the leaky-ReLU kinks of this tiny net leave a
    # first-order error of a few per cent; a small radius recovers the exact values.
    e, f = results["exact"].g, results["finite-difference"].g
    assert ((e - f).abs().max() / e.abs().max()) < 0.1
    model, x, y, xv, yv = make()
    fine = meta_gradient(model, per_sample_ce, val_ce, x, y, xv, yv, ALPHA, "finite-difference",
                         fd_radius=1e-4).g
    assert torch.allclose(e, fine, rtol=1e-6, atol=1e-6 * float(e.abs().max()))


def test_training_gradient_is_the_plain_gradient(results):
    model, x, y, _xv, _yv = make()
    loss = per_sample_ce(model(x), y).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(grads, results["exact"].grads):
        assert torch.allclose(a, b, atol=1e-12)


def test_running_statistics_update_once_per_iteration():
    model, x, y, xv, yv = make()
    ref, *_ = make()
    ref(x)  # one training-mode forward of the training batch
    meta_gradient(model, per_sample_ce, val_ce, x, y, xv, yv, ALPHA, "exact")
    assert torch.allclose(model.n2.running_mean, ref.n2.running_mean)
    assert model.n2.num_batches_tracked == 1


def test_policy_gradient_through_the_chain_rule(results):
    # dL_val/dp = sum_i dL_val/dw_i dw_i/dp, with the straight-through weights of the policy
    from JCSAugmentLib.policy import make_tra_policy, tra_logit_gradients
    policy = make_tra_policy("nnunet")
    classes = torch.tensor([0, 1, 1, 0])
    draw = policy.sample(classes, torch.Generator().manual_seed(0))
    g = results["exact"].g
    grads = tra_logit_gradients(policy, draw, g, classes, normalise=False)
    auto = torch.autograd.grad((g * draw.weight).sum(), list(policy.parameters()))
    for a, b in zip(grads, auto):
        assert torch.allclose(a, b)


def test_bad_method_and_mode():
    model, x, y, xv, yv = make()
    with pytest.raises(ValueError, match="method"):
        meta_gradient(model, per_sample_ce, val_ce, x, y, xv, yv, ALPHA, "reinforce")
    model.eval()
    with pytest.raises(ValueError, match="train mode"):
        meta_gradient(model, per_sample_ce, val_ce, x, y, xv, yv, ALPHA)
