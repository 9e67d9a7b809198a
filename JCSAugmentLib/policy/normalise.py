"""From per-sample meta-gradients to policy-logit gradients (method.md sections 3-4).

``g_i = dL_val / dw_i`` is the meta-gradient of sample i's weight. Two normalisations make the
policy step usable with few samples per batch:

* gradient normalisation (paper Eq. 10): ``h_i = g_i - mean(g_j, j of i's class)``, the class
  of the patch's centre voxel, also when one policy serves every class;
* sampling normalisation (paper Eq. 11): in each group, sample i's contribution is divided by
  the number of samples of its class that drew the same option in that group.

The normalised logit gradient sends each sample's ``h_i`` (scaled) to the logit of the option it
drew, through the straight-through derivative ``d s[j*] / d p[j*] = s[j*] (1 - s[j*])``. The
softmax's cross terms ``d s[j*] / d p[k] = -s[j*] s[k]`` are left out on purpose: they would
hand every option that *no* sample drew a small gradient of arbitrary sign, which Adam (it
divides by the gradient's running magnitude) turns into a full-size step without any evidence.
Leaving them out is what makes "an op not drawn in this batch keeps its logit" exact, as the
paper states for Eq. 10. ``normalise=False`` gives the plain chain rule through the weights
(all cross terms) for comparison and for gradient checks.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .categorical import CategoricalDraw
from .policies import ClassSpecificTRAPolicy, TEAPolicy, TRADraw


def gradient_normalisation(g: torch.Tensor, classes: Optional[torch.Tensor] = None
                           ) -> torch.Tensor:
    """``g - mean(g over samples of the same class)`` (Eq. 10); one class if ``classes`` is None."""
    g = torch.as_tensor(g)
    if classes is None:
        return g - g.mean()
    classes = torch.as_tensor(classes, device=g.device)
    h = g.clone()
    for c in classes.unique():
        m = classes == c
        h[m] = g[m] - g[m].mean()
    return h


def sampling_counts(choices: torch.Tensor, classes: Optional[torch.Tensor] = None
                    ) -> torch.Tensor:
    """(n, G): how many samples of i's class drew i's option in each group (Eq. 11 divisor)."""
    choices = torch.as_tensor(choices)
    if choices.dim() == 1:
        choices = choices[:, None]
    if classes is None:
        classes = torch.zeros(choices.shape[0], dtype=torch.long)
    classes = torch.as_tensor(classes)
    same_class = classes[:, None] == classes[None, :]
    same_choice = choices.T[:, :, None] == choices.T[:, None, :]  # (G, n, n)
    return (same_choice & same_class[None]).sum(-1).T.to(torch.float64)


def _check_g(g: torch.Tensor, n: int) -> torch.Tensor:
    g = torch.as_tensor(g, dtype=torch.float64).detach().cpu().reshape(-1)
    if g.numel() != n:
        raise ValueError(f"need one meta-gradient per sample ({n}), got {g.numel()}")
    if not torch.isfinite(g).all():
        raise ValueError("meta-gradients contain NaN or inf")
    return g


def tra_logit_gradients(policy: ClassSpecificTRAPolicy, draw: TRADraw, g: torch.Tensor,
                        classes: torch.Tensor, normalise: bool = True,
                        centre_classes: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Gradients of the validation loss for every logit tensor of ``policy`` (in
    ``policy.parameters()`` order: class-major, then group).

    ``classes``: the policy each sample drew from; Eq. 11 counts the samples of that policy.
    ``centre_classes``: the class of each patch's centre voxel, which Eq. 10 subtracts the mean
    within (default ``classes``). The two differ when one policy serves every class (the
    ``learned`` mode): the policy is shared, the normalisation is still per centre class."""
    params = list(policy.parameters())
    classes = torch.as_tensor(classes, dtype=torch.long).cpu()
    g = _check_g(g, draw.choices.shape[0])
    if not normalise:
        grads = torch.autograd.grad((g.to(draw.weight.dtype) * draw.weight).sum(), params,
                                    allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if d is None else d for p, d in zip(params, grads)]
    centre_classes = (classes if centre_classes is None
                      else torch.as_tensor(centre_classes, dtype=torch.long).cpu())
    h = gradient_normalisation(g, centre_classes)
    scale = h[:, None] / sampling_counts(draw.choices, classes)
    scale = scale * draw.soft * (1 - draw.soft)
    out = []
    for c, cls_policy in enumerate(policy.policies):
        mine = classes == c
        for gi, logits in enumerate(cls_policy.logits):
            grad = torch.zeros(logits.shape, dtype=torch.float64)
            grad.index_add_(0, draw.choices[mine, gi], scale[mine, gi])
            out.append(grad.to(logits.dtype))
    return out


def tea_logit_gradient(policy: TEAPolicy, draw: CategoricalDraw, g: torch.Tensor,
                       normalise: bool = True) -> torch.Tensor:
    """Gradient of the TEA loss for the TEA logits from ``g_k = dL~ / dw~_k`` of the Z draws
    (mean-subtracted as the reference code does, divided by how many draws chose the same op,
    Eq. 15)."""
    g = _check_g(g, draw.index.shape[0])
    if not normalise:
        (grad,) = torch.autograd.grad((g.to(draw.weight.dtype) * draw.weight).sum(),
                                      [policy.logits], retain_graph=True)
        return grad
    h = gradient_normalisation(g) / sampling_counts(draw.index)[:, 0]
    grad = torch.zeros(policy.logits.shape, dtype=torch.float64)
    grad.index_add_(0, draw.index, h * draw.soft * (1 - draw.soft))
    return grad.to(policy.logits.dtype)


def assign_gradients(params, grads) -> None:
    """Write ``grads`` into ``.grad`` of ``params`` (ready for ``optimizer.step()``)."""
    params = list(params)
    if len(params) != len(grads):
        raise ValueError(f"{len(params)} parameters but {len(grads)} gradients")
    for p, d in zip(params, grads):
        p.grad = d.detach().to(device=p.device, dtype=p.dtype).clone()
