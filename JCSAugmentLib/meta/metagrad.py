"""Meta-gradients of the validation loss with respect to the training samples' weights.

One iteration of the method (method.md section 3, paper Eq. 3-11):

* ``L_train(theta, w) = (1/n) sum_i w_i loss_i(theta)``, the inner step
  ``theta* = theta - alpha * grad_theta L_train`` and ``L_val(theta*)``.
* Because ``w`` enters ``L_train`` linearly and after the forward pass,
  ``d theta* / d w_i = -(alpha/n) grad_theta loss_i(theta)``, so with
  ``v = grad_theta* L_val(theta*)``::

      dL_val / dw_i = -(alpha / n) <grad_theta loss_i(theta), v>

  exactly, batch norm included (``loss_i`` is sample i's loss from the batched forward).

Three ways to get the n numbers, all returned by ``meta_gradient``:

* ``exact`` (default): one forward-mode JVP of the vector of per-sample losses at ``theta``
  along ``v`` (``torch.func.jvp``): all n directional derivatives at once, no second derivative.
* ``finite-difference`` (the reference code's DARTS-style choice): two gradient-free forwards at
  ``theta +- R v`` with ``R = 0.01 / ||v||``.
* ``create_graph``: differentiate through the inner step with ``create_graph=True`` (second
  order); the ground truth in tests, the slowest.

Forward passes made only to measure (the JVP, the finite differences, ``L_val(theta*)``) run in
train mode but do not update batch-norm running statistics, so one iteration updates them
exactly once, in the forward of the training batch. The training-batch gradient is returned too:
the model step uses it (the reference code steps the optimiser rather than setting
``theta := theta*``, which keeps momentum; so does the trainer).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.func import functional_call, jvp

METHODS = ("exact", "finite-difference", "create_graph")

# loss_fn(model_output, target) -> per-sample losses (n,)
PerSampleLoss = Callable[[object, torch.Tensor], torch.Tensor]
# val_loss_fn(model_output, target) -> scalar
ScalarLoss = Callable[[object, torch.Tensor], torch.Tensor]


@dataclass
class MetaStep:
    """Result of one meta-gradient computation.

    ``g``: dL_val/dw_i per training sample (n,), float64 on the CPU. ``train_losses``: the
    per-sample training losses (n,). ``val_loss``: L_val(theta*). ``grads``: gradient of
    L_train at theta (weights at their forward value 1) for the model step, one tensor per
    trainable parameter in ``model.named_parameters()`` order.
    """

    g: torch.Tensor
    train_losses: torch.Tensor
    val_loss: float
    grads: List[torch.Tensor]


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module):
    """Train-mode forwards inside this block use batch statistics but leave every batch-norm
    module's running statistics untouched (``track_running_stats`` off for the duration)."""
    changed = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.track_running_stats = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


def _split(model: nn.Module):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    return names, params, buffers


def meta_gradient(model: nn.Module, loss_fn: PerSampleLoss, val_loss_fn: ScalarLoss,
                  x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                  y_val: torch.Tensor, alpha: float, method: str = "exact",
                  val_forward: Optional[Callable] = None, fd_radius: float = 0.01,
                  reduce: Optional[Callable[[List[torch.Tensor]], List[torch.Tensor]]] = None,
                  world: int = 1) -> MetaStep:
    """dL_val/dw_i for every training sample, and the training gradient for the model step.

    ``val_forward(f, x_val)``, if given, replaces ``f(x_val)`` for the validation forward
    (``f`` maps an input batch to the model output at theta*): joint mode uses it to predict on
    TEA-transformed validation patches and invert the predictions. ``fd_radius``: the length
    of the finite-difference step in parameter space (``R = fd_radius / ||v||``; 0.01 as the
    reference code; piecewise-linear activations make the estimate first-order accurate in it).
    ``reduce`` / ``world``: with several processes, the function that averages a list of
    tensors across them and their number; the training gradient and ``v`` are then those of
    the global batch of ``n * world`` samples, and ``g`` is exact for it.
    """
    if method not in METHODS:
        raise ValueError(f"meta-gradient method must be one of {', '.join(METHODS)}, got "
                         f"{method!r}")
    if not model.training:
        raise ValueError("meta_gradient expects the model in train mode")
    names, params, buffers = _split(model)
    n = x_train.shape[0]
    if method == "create_graph":
        return _create_graph(model, names, params, buffers, loss_fn, val_loss_fn, x_train,
                             y_train, x_val, y_val, alpha, val_forward)

    # Training batch at theta: per-sample losses and the model-step gradient (the one forward
    # that updates batch-norm running statistics).
    losses = loss_fn(model(x_train), y_train)
    if losses.shape != (n,):
        raise ValueError(f"loss_fn must return one loss per sample ({n}), got "
                         f"{tuple(losses.shape)}")
    grads = torch.autograd.grad(losses.mean(), [params[k] for k in names])
    if reduce is not None:
        grads = reduce(list(grads))

    # Inner step and v = grad L_val(theta*).
    theta_star = {k: (params[k] - alpha * gk).detach().requires_grad_(True)
                  for k, gk in zip(names, grads)}
    with frozen_running_stats(model):
        val_loss = _val_loss(model, theta_star, buffers, val_loss_fn, x_val, y_val, val_forward)
        # Parameters L_val does not reach (e.g. deep-supervision heads when only the full
        # resolution output is scored) have v = 0.
        v = torch.autograd.grad(val_loss, [theta_star[k] for k in names], allow_unused=True)
        v = [torch.zeros_like(theta_star[k]) if vk is None else vk for k, vk in zip(names, v)]
        if reduce is not None:
            v = reduce(v)
        if method == "exact":
            directional = _jvp_losses(model, names, params, buffers, loss_fn, x_train, y_train,
                                      v)
        else:
            directional = _finite_difference(model, names, params, buffers, loss_fn, x_train,
                                             y_train, v, fd_radius)
    g = (-alpha / (n * world)) * directional.detach().to(torch.float64).cpu()
    return MetaStep(g, losses.detach(), float(val_loss.detach()), [gk.detach() for gk in grads])


def _val_loss(model, theta, buffers, val_loss_fn, x_val, y_val, val_forward):
    def f(x):
        return functional_call(model, (theta, buffers), (x,))
    out = val_forward(f, x_val) if val_forward is not None else f(x_val)
    return val_loss_fn(out, y_val)


def _jvp_losses(model, names, params, buffers, loss_fn, x, y, v):
    primals = tuple(params[k].detach() for k in names)

    def losses_at(*p):
        return loss_fn(functional_call(model, ({k: t for k, t in zip(names, p)}, buffers), (x,)),
                       y)

    _, tangent = jvp(losses_at, primals, tuple(t.detach() for t in v))
    return tangent


def _finite_difference(model, names, params, buffers, loss_fn, x, y, v, radius):
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
    if norm == 0:
        return torch.zeros(x.shape[0], dtype=torch.float64)
    r = radius / norm
    with torch.no_grad():
        plus = {k: params[k] + r * t for k, t in zip(names, v)}
        minus = {k: params[k] - r * t for k, t in zip(names, v)}
        lp = loss_fn(functional_call(model, (plus, buffers), (x,)), y).double()
        lm = loss_fn(functional_call(model, (minus, buffers), (x,)), y).double()
    return (lp - lm) / (2 * r)


def _create_graph(model, names, params, buffers, loss_fn, val_loss_fn, x_train, y_train,
                  x_val, y_val, alpha, val_forward) -> MetaStep:
    n = x_train.shape[0]
    w = torch.ones(n, dtype=x_train.dtype, device=x_train.device, requires_grad=True)
    losses = loss_fn(model(x_train), y_train)
    l_train = (w * losses).mean()
    grads = torch.autograd.grad(l_train, [params[k] for k in names], create_graph=True)
    theta_star: Dict[str, torch.Tensor] = {k: params[k] - alpha * gk
                                           for k, gk in zip(names, grads)}
    with frozen_running_stats(model):
        val_loss = _val_loss(model, theta_star, buffers, val_loss_fn, x_val, y_val, val_forward)
    (g,) = torch.autograd.grad(val_loss, [w])
    return MetaStep(g.detach().to(torch.float64).cpu(), losses.detach(),
                    float(val_loss.detach()), [gk.detach() for gk in grads])
