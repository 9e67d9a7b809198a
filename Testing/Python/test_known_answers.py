"""Behaviour with a known answer: the learning loops find the op that undoes a known shift."""

import torch

from JCSAugmentLib.augment import TEA_INDEX
from JCSAugmentLib.meta.tea_step import tea_meta_gradient
from JCSAugmentLib.nets.losses import per_sample_soft_dice
from JCSAugmentLib.policy import assign_gradients, make_tea_policy, tea_logit_gradient


def test_tea_learning_finds_the_flip_that_undoes_a_flipped_validation_site():
    # A "trained model" that is not equivariant: it finds bright voxels, but only where its
    # training data had lesions (a positional prior P). The validation site is the training
    # site flipped along axis 0, so only TEA ops that flip axis 0 back (and nothing else) let
    # the model see the lesion where it expects it.
    g = torch.Generator().manual_seed(0)
    shape = (16, 16, 16)
    z, y, x = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape],
                             indexing="ij")
    lesion = (((z - 4) / 3) ** 2 + ((y - 5) / 2.5) ** 2 + ((x - 10) / 2) ** 2) < 1
    prior = (((z - 4) / 4.5) ** 2 + ((y - 5) / 4) ** 2 + ((x - 10) / 3.5) ** 2) < 1
    image = lesion.float() + 0.1 * torch.randn(shape, generator=g)

    def predict(batch):
        fg = 12 * (batch[:, 0] * prior - 0.5)
        return torch.stack([torch.zeros_like(fg), fg], 1)

    x_val = torch.flip(image, (0,))[None, None]
    y_val = torch.flip(lesion, (0,))[None, None].long()

    def dice_loss(probs, target, valid):
        return 1 - per_sample_soft_dice(probs, target, mask=valid)

    policy = make_tea_policy("nnunet")
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    start = policy.probabilities()[TEA_INDEX["flip_axis0"]].item()
    for _ in range(150):
        draw = policy.sample(10, gen)
        step = tea_meta_gradient(predict, x_val, y_val, draw.index.tolist(), dice_loss,
                                 generator=gen)
        assign_gradients([policy.logits], [tea_logit_gradient(policy, draw, step.g)])
        opt.step()
    p = policy.probabilities()
    assert int(p.argmax()) == TEA_INDEX["flip_axis0"]
    assert p[TEA_INDEX["flip_axis0"]] > 2 * start
    assert p[TEA_INDEX["identity"]] < policy.probabilities()[TEA_INDEX["flip_axis0"]]


def test_tra_learning_raises_the_mirror_that_matches_a_flipped_validation_site():
    # Lesions are bright balls with a dark cap on their -z side; bright balls without a cap are
    # not lesions. The validation site is the training site flipped along axis 0 (caps on the
    # +z side), so only training patches mirrored along axis 0 teach what validation needs:
    # the meta-gradient must raise P(mirror axis 0), and more than the other two mirrors.
    import torch.nn.functional as F
    from torch import nn

    from JCSAugmentLib.augment import CaseStats, TRA_GROUP_INDEX, apply_tra, sample_tra_params
    from JCSAugmentLib.meta import meta_gradient
    from JCSAugmentLib.policy import (ClassSpecificTRAPolicy, TRAPolicy, tra_logit_gradients,
                                      tra_probabilities)

    size = 12
    grid = torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij")

    def batch(n, g, flipped=False):
        zz, yy, xx = grid
        x = 0.05 * torch.randn(n, 1, size, size, size, generator=g)
        y = torch.zeros(n, 1, size, size, size, dtype=torch.long)
        for i in range(n):
            for lesion in (True, False):
                c = torch.randint(3, size - 3, (3,), generator=g)
                ball = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= 2
                x[i, 0][ball] = 1.0
                if lesion:
                    cap = (zz == c[0] - 2) & ((yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 1)
                    x[i, 0][cap] = -1.0
                    y[i, 0][ball] = 1
        return (x.flip(2), y.flip(2)) if flipped else (x, y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv3d(1, 8, 3, padding=1)
            self.c2 = nn.Conv3d(8, 8, 3, padding=1)
            self.c3 = nn.Conv3d(8, 2, 3, padding=1)

        def forward(self, x):
            return self.c3(F.relu(self.c2(F.relu(self.c1(x)))))

    weight = torch.tensor([1.0, 5.0])

    def per_sample(out, y):
        return F.cross_entropy(out, y[:, 0], reduction="none", weight=weight).flatten(1).mean(1)

    def val_loss(out, y):
        return F.cross_entropy(out, y[:, 0], weight=weight)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    probs = tra_probabilities("none")  # only the three mirrors may act, each with p = 0.2
    mirrors = [TRA_GROUP_INDEX[f"mirror_axis{a}"] for a in range(3)]
    for gi in mirrors:
        probs[gi] = [0.8, 0.2]
    policy = ClassSpecificTRAPolicy([TRAPolicy(probs)])
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=0.02)
    classes = torch.zeros(8, dtype=torch.long)
    for _ in range(150):
        x, y = batch(8, g)
        draw = policy.sample(classes, g)
        params = sample_tra_params(draw.choices, g)
        xa, ya = apply_tra(x, y, params, CaseStats.from_patch(x), (size,) * 3)
        xv, yv = batch(4, g, flipped=True)
        step = meta_gradient(net, per_sample, val_loss, xa, ya, xv, yv, alpha=0.05)
        assign_gradients(policy.parameters(), tra_logit_gradients(policy, draw, step.g, classes))
        policy_opt.step()
        for p, gr in zip(net.parameters(), step.grads):
            p.grad = gr.clone()
        opt.step()
        opt.zero_grad()
    flip = [float(policy.policies[0].probabilities()[gi][1]) for gi in mirrors]
    assert flip[0] > 0.5, flip
    assert flip[0] > flip[1] + 0.2 and flip[0] > flip[2] + 0.2, flip
