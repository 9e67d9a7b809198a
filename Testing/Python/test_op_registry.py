"""The operation registry (augment/ops.py): one entry per op, read by tables, TRA, TEA, charts."""

import dataclasses
import math

import pytest
import torch

from JCSAugmentLib.augment import CaseStats, OPS, TEA_OPS, TRA_GROUPS
from JCSAugmentLib.augment.labels import tea_op_label, tra_group_title
from JCSAugmentLib.augment.ops import OpLabels
from JCSAugmentLib.augment.tra import TRAParams, identity_params
from JCSAugmentLib.charts import policy_chart as pc

# The registry kinds each table kind may use (method.md section 6 groups the ops).
_TEA_KIND_TO_ENTRY_KINDS = {"identity": {"identity"}, "spatial": {"exact", "resampled"},
                            "intensity": {"intensity"}, "filter_noise": {"intensity"}}
_TRA_KIND_TO_ENTRY_KINDS = {"spatial": {"exact", "resampled"}, "intensity": {"intensity"},
                            "filter": {"intensity"}, "noise": {"intensity"},
                            "resolution": {"intensity"}}


def _smooth(shape=(10, 12, 14), b=2, c=2):
    """A smooth, non-cubic field: a wrong axis or a wrong turn direction changes it."""
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape],
                             indexing="ij")
    f = (torch.sin(math.pi * 0.5 * z + 0.3) * torch.cos(math.pi * 0.4 * y + 0.2)
         + 0.3 * x + 0.5 * x * x)
    return torch.stack([f * (i + 1) for i in range(c)])[None].repeat(b, 1, 1, 1, 1)


def test_every_table_op_has_exactly_one_entry_and_every_entry_is_used():
    tra_ops = {o.op for g in TRA_GROUPS for o in g.options}
    tea_ops = {op.op for op in TEA_OPS}
    assert tra_ops <= OPS.keys() and tea_ops <= OPS.keys()
    assert set(OPS) == tra_ops | tea_ops  # no entry the tables never use
    assert all(name == entry.name for name, entry in OPS.items())
    assert len({id(e) for e in OPS.values()}) == len(OPS)


def test_entry_kinds_agree_with_the_tables():
    for op in TEA_OPS:
        assert OPS[op.op].kind in _TEA_KIND_TO_ENTRY_KINDS[op.kind], op.name
    for g in TRA_GROUPS:
        assert all(OPS[o.op].kind in _TRA_KIND_TO_ENTRY_KINDS[g.kind] for o in g.options[1:]), \
            g.name
    # only resampled ops lose information on the way back
    assert {op.op for op in TEA_OPS if not op.invertible_exactly} == {"scale", "rotate"}


def test_tra_column_titles_and_tea_labels_come_from_the_registry(monkeypatch):
    assert pc.TRA_COLUMN_TITLES == tuple(tra_group_title(g) for g in TRA_GROUPS) == (
        "scale", "rot0", "rot1", "rot2", "flip0", "flip1", "flip2", "gamma", "inv gamma",
        "shift", "b.scale", "contrast", "blur/sharp", "noise", "low-res")
    gamma = next(op for op in TEA_OPS if op.name == "gamma_1.3")
    assert pc.tea_short_name(gamma.index) == "gamma 1.3"
    monkeypatch.setitem(OPS, "gamma", dataclasses.replace(
        OPS["gamma"], labels=OpLabels("gam", "GAMMA<{value}>", "g={value:.2f}")))
    assert pc.tea_short_name(gamma.index) == tea_op_label(gamma) == "GAMMA<1.3>"
    assert tra_group_title(next(g for g in TRA_GROUPS if g.name == "gamma")) == "gam"
    # preview captions read the same entry
    gi = [g.name for g in TRA_GROUPS].index("gamma")
    choices = torch.zeros(1, len(TRA_GROUPS), dtype=torch.long)
    choices[0, gi] = 2
    values = identity_params(1).values
    values[0, gi] = 1.25
    assert TRAParams(choices, values, 0).op_names() == [["g=1.25"]]


def test_preview_captions_of_spatial_draws():
    by_name = [g.name for g in TRA_GROUPS]
    choices = torch.zeros(1, len(TRA_GROUPS), dtype=torch.long)
    values = identity_params(1).values
    for group, option, value in (("rotation_axis1", 2, -12.4), ("rotation_axis2", 4, -1.0),
                                 ("mirror_axis0", 1, 1.0), ("low_resolution", 1, 0.8123)):
        choices[0, by_name.index(group)] = option
        values[0, by_name.index(group)] = value
    assert TRAParams(choices, values, 0).op_names() == [
        ["rot ax1 -12deg", "rot90 ax2 -", "flip0", "lowres 0.812"]]


def test_identity_options_store_the_identity_neutral():
    assert torch.equal(identity_params(3).values,
                       torch.full((3, len(TRA_GROUPS)), OPS["identity"].neutral,
                                  dtype=torch.float64))


@pytest.mark.parametrize("name", [n for n, e in OPS.items() if e.neutral is not None])
def test_neutral_magnitude_changes_nothing(name):
    entry = OPS[name]
    x = _smooth()
    if entry.kind == "intensity":
        stats = CaseStats.from_patch(x, quantiles=33)
        mag = torch.full((x.shape[0],), entry.neutral, dtype=torch.float64)
        out = entry.forward(x, mag, stats, torch.Generator().manual_seed(0))
    else:
        out = entry.forward(x, 1, entry.neutral)
    assert out.shape == x.shape
    if entry.kind in ("identity", "exact"):
        assert torch.equal(out, x)
    else:  # resampling on its own grid and value ops are exact up to float rounding
        assert torch.allclose(out, x, atol=1e-6 * float(x.abs().max())), name


def test_ops_without_a_neutral_magnitude_always_change_the_image():
    x = _smooth()
    stats = CaseStats.from_patch(x)
    for name, entry in OPS.items():
        if entry.neutral is not None:
            continue
        for m in (0.0, 1.0):
            if entry.kind == "intensity":
                out = entry.forward(x, torch.full((2,), m, dtype=torch.float64), stats)
            else:
                out = entry.forward(x, 0, m)
            assert not torch.allclose(out, x), (name, m)


@pytest.mark.parametrize("op", [op for op in TEA_OPS if OPS[op.op].inverse is not None],
                         ids=lambda op: op.name)
def test_tea_ops_with_an_inverse_round_trip(op):
    entry = OPS[op.op]
    x = _smooth()
    there = entry.forward(x, op.axis, op.magnitude)
    back = entry.inverse(there, op.axis, op.magnitude)
    assert back.shape == x.shape
    if entry.kind in ("identity", "exact"):
        assert torch.equal(back, x)
        if op.op != "identity":
            assert there.shape != x.shape or not torch.equal(there, x)
        return
    # two trilinear resamplings: close to the input on the voxels that saw no padding
    core = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    err = (back - x)[core].abs().max() / x.abs().max()
    assert err < 0.03, err


def test_intensity_ops_have_no_inverse_and_leave_predictions_alone():
    from JCSAugmentLib.augment import tea_invert
    y = torch.randn(1, 3, 6, 7, 8, dtype=torch.float64)
    for op in TEA_OPS:
        if OPS[op.op].kind == "intensity":
            assert OPS[op.op].inverse is None
            assert tea_invert(y, op.index) is y
