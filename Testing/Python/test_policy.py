"""Policies: straight-through weights, class-specific draws, normalised updates, initial
policies and JSON files."""

import json
import math

import pytest
import torch

from JCSAugmentLib.augment import TEA_OPS, TRA_GROUPS
from JCSAugmentLib.augment.tables import TEA_MIRROR_OPS_NNUNET
from JCSAugmentLib.policy import (ClassSpecificTRAPolicy, PolicyFileError, TEAPolicy, TRAPolicy,
                                  assign_gradients, gradient_normalisation, heuristic_tea_ops,
                                  load_policy, make_tea_policy, make_tra_policy, policy_to_dict,
                                  sampling_counts, save_policy, straight_through,
                                  tea_logit_gradient, tea_probabilities, tra_logit_gradients,
                                  tra_probabilities)
from JCSAugmentLib.policy.categorical import gumbel_noise


def test_weight_is_one_and_its_gradient_is_the_softmax_derivative():
    logits = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64, requires_grad=True)
    noise = gumbel_noise((5, 4), torch.Generator().manual_seed(0))
    d = straight_through(logits, noise)
    assert torch.equal(d.weight.detach(), torch.ones(5, dtype=torch.float64))
    for i in range(5):
        (grad,) = torch.autograd.grad(d.weight[i], logits, retain_graph=True)
        j = int(d.index[i])
        eps = 1e-6
        fd = torch.zeros(4, dtype=torch.float64)
        for k in range(4):
            e = torch.zeros(4, dtype=torch.float64)
            e[k] = eps
            plus = torch.softmax(logits.detach() + e + noise[i], -1)[j]
            minus = torch.softmax(logits.detach() - e + noise[i], -1)[j]
            fd[k] = (plus - minus) / (2 * eps)
        assert torch.allclose(grad, fd, atol=1e-8)
        assert grad.abs().sum() > 0


def test_draw_frequencies_follow_the_probabilities():
    pol = make_tra_policy("nnunet", num_classes=1)
    d = pol.sample(torch.zeros(20000, dtype=torch.long), torch.Generator().manual_seed(0))
    for gi, p in enumerate(tra_probabilities("nnunet")):
        freq = torch.bincount(d.choices[:, gi], minlength=len(p)).double() / 20000
        assert torch.allclose(freq, torch.tensor(p, dtype=torch.float64), atol=0.015)
    assert torch.equal(d.weight.detach(), torch.ones(20000, dtype=torch.float64))


def test_tra_weight_is_the_product_of_group_weights_and_reaches_every_group():
    pol = make_tra_policy("nnunet")
    d = pol.sample(torch.tensor([0, 1, 1]), torch.Generator().manual_seed(3))
    assert torch.allclose(d.weight, d.group_weights.prod(1))
    grads = torch.autograd.grad(d.weight.sum(), list(pol.parameters()))
    assert all(g.abs().sum() > 0 for g in grads[15:])  # class 1 drew twice: every group moves


def test_class_specific_draws_use_the_policy_of_the_patch_class():
    never = TRAPolicy(tra_probabilities("none"))
    always = [[0.0] * g.size for g in TRA_GROUPS]
    for p in always:
        p[-1] = 1.0
    pol = ClassSpecificTRAPolicy([never, TRAPolicy(always)])
    classes = torch.tensor([0, 1, 0, 1, 1])
    d = pol.sample(classes, torch.Generator().manual_seed(0))
    assert (d.choices[classes == 0] == 0).all()
    assert (d.choices[classes == 1] == torch.tensor([g.size - 1 for g in TRA_GROUPS])).all()
    with pytest.raises(ValueError, match="classes"):
        pol.sample(torch.tensor([2]))


def test_draws_are_reproducible():
    pol = make_tra_policy("deepmedic", num_classes=3)
    cls = torch.tensor([0, 1, 2, 2])
    a = pol.sample(cls, torch.Generator().manual_seed(5))
    b = pol.sample(cls, torch.Generator().manual_seed(5))
    assert torch.equal(a.choices, b.choices)


def test_gradient_normalisation_and_sampling_counts():
    g = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0])
    cls = torch.tensor([0, 0, 0, 1, 1])
    h = gradient_normalisation(g, cls)
    assert torch.allclose(h, torch.tensor([-1.0, 0.0, 1.0, -5.0, 5.0]))
    choices = torch.tensor([[0, 1], [0, 2], [1, 2], [0, 2], [0, 1]])
    counts = sampling_counts(choices, cls)
    assert counts.tolist() == [[2, 1], [2, 2], [1, 2], [2, 1], [2, 1]]


def test_normalised_gradient_by_hand():
    pol = make_tra_policy("nnunet", num_classes=1)
    d = pol.sample(torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(1))
    g = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    grads = tra_logit_gradients(pol, d, g, torch.zeros(4, dtype=torch.long))
    h = g - g.mean()
    for gi in range(15):
        expect = torch.zeros(TRA_GROUPS[gi].size, dtype=torch.float64)
        for i in range(4):
            j = int(d.choices[i, gi])
            n_same = int((d.choices[:, gi] == j).sum())
            s = float(d.soft[i, gi])
            expect[j] += h[i] / n_same * s * (1 - s)
        assert torch.allclose(grads[gi], expect)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_an_op_not_drawn_keeps_its_logit_after_a_normalised_update(opt):
    pol = make_tra_policy("nnunet")
    cls = torch.tensor([0, 0, 1, 1, 1, 0])
    d = pol.sample(cls, torch.Generator().manual_seed(2))
    before = [p.detach().clone() for p in pol.parameters()]
    optim = (torch.optim.SGD(pol.parameters(), lr=0.5) if opt == "sgd"
             else torch.optim.Adam(pol.parameters(), lr=0.5))
    g = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assign_gradients(pol.parameters(), tra_logit_gradients(pol, d, g, cls))
    optim.step()
    moved = 0
    for k, (p, b) in enumerate(zip(pol.parameters(), before)):
        c, gi = divmod(k, 15)
        drawn = set(d.choices[cls == c, gi].tolist())
        for j in range(p.numel()):
            if j not in drawn:
                assert p[j] == b[j]
            elif p[j] != b[j]:
                moved += 1
    assert moved > 0


def test_unnormalised_gradient_is_the_chain_rule_through_the_weights():
    pol = make_tra_policy("nnunet", num_classes=2)
    cls = torch.tensor([0, 1, 1])
    gen = torch.Generator().manual_seed(4)
    d = pol.sample(cls, gen)
    g = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    grads = tra_logit_gradients(pol, d, g, cls, normalise=False)
    # w_i = prod_l w_il with every w_il = 1 in the forward pass, so dw_i/dp = sum_l ds_il/dp:
    # finite differences of sum_i g_i sum_l s_il(p) with the same Gumbel noise and choices
    noise = gumbel_noise((3, 62), torch.Generator().manual_seed(4))
    params = list(pol.parameters())

    def objective():
        total = 0.0
        for i in range(3):
            w, start = 0.0, 0
            for gi, grp in enumerate(TRA_GROUPS):
                lg = params[int(cls[i]) * 15 + gi].detach()
                s = torch.softmax(lg + noise[i, start:start + grp.size], -1)
                w += float(s[d.choices[i, gi]])
                start += grp.size
            total += float(g[i]) * w
        return total

    eps = 1e-6
    for k in (0, 3, 15, 22):
        p = params[k]
        for j in range(p.numel()):
            with torch.no_grad():
                p[j] += eps
            up = objective()
            with torch.no_grad():
                p[j] -= 2 * eps
            down = objective()
            with torch.no_grad():
                p[j] += eps
            assert math.isclose(grads[k][j], (up - down) / (2 * eps), abs_tol=1e-7)


def test_tea_gradient_normalised_and_not():
    pol = make_tea_policy("nnunet")
    d = pol.sample(10, torch.Generator().manual_seed(0))
    g = torch.randn(10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad = tea_logit_gradient(pol, d, g)
    drawn = set(d.index.tolist())
    assert all(grad[k] == 0 for k in range(84) if k not in drawn)
    raw = tea_logit_gradient(pol, d, g, normalise=False)
    assert raw.shape == (84,) and (raw != 0).sum() > len(drawn)


def test_heuristic_policies_reproduce_the_table():
    nn_ = tra_probabilities("nnunet")
    dm = tra_probabilities("deepmedic")
    names = [g.name for g in TRA_GROUPS]
    keep_nn = dict(zip(names, [p[0] for p in nn_]))
    assert keep_nn == {"scaling": 0.8, "rotation_axis0": 0.9, "rotation_axis1": 0.9,
                       "rotation_axis2": 0.9, "mirror_axis0": 0.5, "mirror_axis1": 0.5,
                       "mirror_axis2": 0.5, "gamma": 0.7, "inverted_gamma": 0.9,
                       "brightness_shift": 0.95, "brightness_scale": 0.85, "contrast": 0.85,
                       "blur_sharpen": 0.8, "noise": 0.9, "low_resolution": 0.9}
    keep_dm = dict(zip(names, [p[0] for p in dm]))
    assert keep_dm["rotation_axis1"] == 0.8 and keep_dm["mirror_axis1"] == 0.95
    assert keep_dm["brightness_shift"] == 0.85 and keep_dm["gamma"] == 0.95
    for p in nn_ + dm:
        assert math.isclose(sum(p), 1.0)
        assert len(set(round(v, 12) for v in p[1:])) == 1  # the rest split evenly
    pol = make_tra_policy("nnunet")
    for c in range(2):
        for got, want in zip(pol.policies[c].probabilities(), nn_):
            assert torch.allclose(got, torch.tensor(want, dtype=torch.float64))
    tea = tea_probabilities("nnunet")
    assert all(math.isclose(tea[i], 0.10) for i in TEA_MIRROR_OPS_NNUNET)
    others = [tea[i] for i in range(84) if i not in TEA_MIRROR_OPS_NNUNET]
    assert len(others) == 76 and math.isclose(sum(others), 0.2)
    dm_tea = tea_probabilities("deepmedic")
    assert sorted(dm_tea, reverse=True)[:4] == [0.2] * 4 and math.isclose(sum(dm_tea), 1)
    assert heuristic_tea_ops("unet3d") == list(TEA_MIRROR_OPS_NNUNET)
    assert len(heuristic_tea_ops("deepmedic")) == 4
    assert set(make_tea_policy("nnunet").top(8)[0]) == set(TEA_MIRROR_OPS_NNUNET)


@pytest.mark.parametrize("name,level", [("randaugment-s", 1), ("randaugment-m", 2),
                                        ("randaugment-l", 3)])
def test_randaugment_puts_the_mass_on_one_level(name, level):
    for g, p, base in zip(TRA_GROUPS, tra_probabilities(name), tra_probabilities("nnunet")):
        assert math.isclose(p[0], base[0])
        nonzero = [g.options[i] for i in range(1, g.size) if p[i] > 0]
        assert nonzero and all(o.level == level or g.size == 2 for o in nonzero)
    none = tra_probabilities("none")
    assert all(p[0] == 1.0 for p in none)


def test_json_round_trip(tmp_path):
    tra = make_tra_policy("nnunet", class_names=["bg", "tumour"])
    with torch.no_grad():
        tra.policies[1].logits[3].add_(torch.tensor([0.5, -0.25, 0.0, 1.0, 0.1],
                                                    dtype=torch.float64))
    tea = make_tea_policy("deepmedic")
    path = tmp_path / "policy.json"
    save_policy(str(path), tra, tea, meta={"iteration": 7})
    text = path.read_text()
    assert '"group": "rotation_axis2"' in text and '"probabilities"' in text
    tra2, tea2, meta = load_policy(str(path))
    assert tra2.class_names == ["bg", "tumour"] and meta == {"iteration": 7}
    for a, b in zip(tra.parameters(), tra2.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    assert torch.allclose(tea.logits, tea2.logits, atol=1e-7)


def test_hand_written_probabilities_are_accepted(tmp_path):
    d = policy_to_dict(make_tra_policy("none", num_classes=1), make_tea_policy("none"))
    for grp in d["tra"]["classes"][0]["groups"]:
        del grp["logits"]
    del d["tea"]["logits"]
    p = tmp_path / "hand.json"
    p.write_text(json.dumps(d))
    tra, tea, _ = load_policy(str(p))
    assert float(tra.policies[0].probabilities()[0][0]) == 1.0
    assert float(tea.probabilities()[0]) == 1.0


def _policy_dict():
    return policy_to_dict(make_tra_policy("nnunet"), make_tea_policy("nnunet"))


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["tra"]["classes"][0]["groups"].pop(), "needs 15 groups"),
    (lambda d: d["tra"]["classes"][1]["groups"][2]["logits"].append(0.0), "5 numbers"),
    (lambda d: d["tra"]["classes"][0]["groups"][0].__setitem__("logits", [float("nan")] * 6),
     "non-finite"),
    (lambda d: d["tea"].__setitem__("logits", [0.0] * 83), "84 numbers"),
    (lambda d: d["tea"].__setitem__("logits", [float("inf")] + [0.0] * 83), "non-finite"),
    (lambda d: d.__setitem__("format", "other"), "not a JCSAugment policy"),
    (lambda d: d.__setitem__("version", 99), "version"),
    (lambda d: d["tra"]["classes"][0]["groups"][0].__setitem__("group", "gamma"), "belongs"),
])
def test_bad_policy_files_are_refused_with_a_clear_error(tmp_path, mutate, message):
    d = _policy_dict()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(PolicyFileError, match=message):
        load_policy(str(p))


def test_unreadable_policy_files(tmp_path):
    with pytest.raises(PolicyFileError, match="not found"):
        load_policy(str(tmp_path / "missing.json"))
    p = tmp_path / "broken.json"
    p.write_text("{\"format\": ")
    with pytest.raises(PolicyFileError, match="not valid JSON"):
        load_policy(str(p))


def test_saving_a_non_finite_policy_writes_nothing(tmp_path):
    tea = TEAPolicy()
    with torch.no_grad():
        tea.logits[5] = float("nan")
    path = tmp_path / "policy.json"
    with pytest.raises(PolicyFileError, match="non-finite"):
        save_policy(str(path), tea=tea)
    assert list(tmp_path.iterdir()) == []


def test_policy_constructors_validate_sizes():
    with pytest.raises(ValueError, match="15 groups"):
        TRAPolicy([[1.0]] * 14)
    with pytest.raises(ValueError, match="84"):
        TEAPolicy([1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        TEAPolicy([0.5] * 84)
    with pytest.raises(ValueError, match="unknown TRA policy"):
        tra_probabilities("autoaugment")
    assert len(TEA_OPS) == len(tea_probabilities("none"))
