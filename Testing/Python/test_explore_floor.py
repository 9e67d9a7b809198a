"""The exploration floor (training.explore; off by default, not the paper's): sampling follows
(1 - e) p + e / K, an option drawn by the floor gets the relaxed probability it would get when
drawn by the policy, and a run without it keeps its random stream."""

import json

import pytest
import torch

from JCSAugmentLib.augment.tables import TRA_GROUP_INDEX, TRA_GROUPS
from JCSAugmentLib.policy import make_tra_policy
from JCSAugmentLib.policy.categorical import explore_noise, gumbel_noise, straight_through
from JCSAugmentLib.run.job import Job, JobError
from test_train import cases, job_dict  # noqa: F401 (cases: the trainer tests' fixture)

N = 40000


def _logits():
    return torch.log(torch.tensor([0.95, 0.04, 0.01], dtype=torch.float64))


def test_sampling_follows_the_floored_distribution():
    g = torch.Generator().manual_seed(0)
    a = _logits()
    draw = straight_through(a, explore_noise(a, gumbel_noise((N, 3), g), 0.3, g))
    freq = torch.bincount(draw.index, minlength=3).double() / N
    expected = 0.7 * torch.exp(a) + 0.3 / 3
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
    plain = straight_through(a, gumbel_noise((N, 3), g))
    assert (torch.bincount(plain.index, minlength=3).double() / N)[2] < 0.02  # the floor did it


def test_an_option_drawn_by_the_floor_gets_the_relaxed_weight_it_would_get_on_its_own():
    # the logit gradient of a drawn option is scaled by s(1 - s) of its relaxed probability:
    # a floor that picked the option but kept the unconditioned noise would give it s ~ 0
    g = torch.Generator().manual_seed(1)
    a = _logits()
    natural = straight_through(a, gumbel_noise((N, 3), g))
    floored = straight_through(a, explore_noise(a, gumbel_noise((N, 3), g), 0.99, g))
    for option in (1, 2):
        s_nat = natural.soft[natural.index == option].mean()
        s_exp = floored.soft[floored.index == option].mean()
        assert abs(s_nat - s_exp) < 0.03, (option, s_nat, s_exp)
    naive = torch.softmax(a + gumbel_noise((N, 3), g), -1)[:, 2].mean()
    assert naive < 0.1 < floored.soft[floored.index == 2].mean()  # the check can fail


def test_no_floor_draws_nothing_and_returns_the_noise_itself():
    g = torch.Generator().manual_seed(2)
    noise = gumbel_noise((5, 3), g)
    state = g.get_state()
    assert explore_noise(_logits(), noise, 0.0, g) is noise
    assert torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="explore"):
        explore_noise(_logits(), noise, 1.0, g)


def test_the_tra_policy_draws_a_rare_option_more_often_with_the_floor():
    policy = make_tra_policy("nnunet", num_classes=2)
    gi = TRA_GROUP_INDEX["rotation_axis0"]
    k = TRA_GROUPS[gi].size
    classes = torch.ones(4000, dtype=torch.long)
    counts = {}
    for e in (0.0, 0.5):
        d = policy.sample(classes, torch.Generator().manual_seed(3), explore=e)
        counts[e] = int((d.choices[:, gi] == k - 1).sum())  # the largest option (90 degrees)
    p = float(policy.policies[1].probabilities()[gi][k - 1])
    assert counts[0.5] > 2 * counts[0.0]
    assert abs(counts[0.5] / 4000 - (0.5 * p + 0.5 / k)) < 0.03
    # the policy itself is unchanged by sampling with the floor
    assert float(policy.policies[1].probabilities()[gi][k - 1]) == p


def test_the_job_field_is_off_by_default_and_checked():
    base = {"schema": 1, "data": {"cases": [{"id": c, "images": [f"{c}.nii.gz"],
                                             "label": f"{c}l.nii.gz"} for c in "ab"],
                                  "splits": {"train": ["a"], "validation": ["b"], "test": []}}}
    assert Job.from_dict(base).training.explore == 0.0
    assert Job.from_dict({**base, "training": {"explore": 0.25}}).training.explore == 0.25
    with pytest.raises(JobError, match="training.explore"):
        Job.from_dict({**base, "training": {"explore": 1.0}})


def test_a_joint_run_with_the_floor_trains_and_says_so_in_its_job(cases, tmp_path):
    from JCSAugmentLib.train.trainer import Trainer
    runs = {}
    for e in (0.0, 0.5):
        job = Job.from_dict(job_dict(cases, "joint", explore=e))
        tr = Trainer(job, str(tmp_path / f"run{e}"))
        for _ in range(2):
            tr.step()
        runs[e] = [p.detach().clone() for p in tr.tra.parameters()]
        assert json.loads(json.dumps(job.to_dict()))["training"]["explore"] == e
    # the same seed, other draws: the floor changed what was sampled and so what was learned
    assert any(not torch.equal(a, b) for a, b in zip(runs[0.0], runs[0.5]))
