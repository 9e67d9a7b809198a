"""The operation tables hold exactly the method's sets and counts (method.md section 6)."""

import collections

from JCSAugmentLib.augment import TEA_OPS, TRA_GROUPS, table_rows
from JCSAugmentLib.augment.tables import TEA_MIRROR_OPS_DEEPMEDIC, TEA_MIRROR_OPS_NNUNET


def test_tra_counts():
    assert len(TRA_GROUPS) == 15
    assert sum(g.size - 1 for g in TRA_GROUPS) == 47
    assert sum(g.size for g in TRA_GROUPS) == 62
    assert all(g.options[0].op == "identity" for g in TRA_GROUPS)
    assert all(o.op != "identity" for g in TRA_GROUPS for o in g.options[1:])


def test_tra_magnitudes_match_the_table():
    by_name = {g.name: g for g in TRA_GROUPS}
    mags = lambda n: [o.magnitude for o in by_name[n].options[1:]]  # noqa: E731
    assert mags("scaling") == [0.05, 0.15, 0.25, 0.35, 0.45]
    for a in range(3):
        assert mags(f"rotation_axis{a}") == [5, 15, 25, 90]
        assert by_name[f"rotation_axis{a}"].options[-1].op == "rot90"
        assert [o.op for o in by_name[f"mirror_axis{a}"].options] == ["identity", "flip"]
    for n in ("gamma", "inverted_gamma"):
        assert mags(n) == [0.1, 0.3, 0.5]
    for n in ("brightness_shift", "brightness_scale", "contrast"):
        assert mags(n) == [0.05, 0.15, 0.25]
    bs = by_name["blur_sharpen"].options[1:]
    assert [(o.op, o.magnitude) for o in bs] == [("blur", 0.5), ("blur", 0.7), ("blur", 0.9),
                                                 ("sharpen", 0.9), ("sharpen", 0.7),
                                                 ("sharpen", 0.5)]
    assert mags("noise") == [0.025, 0.075, 0.125]
    assert mags("low_resolution") == [0.9, 0.7, 0.5]


def test_tea_counts_and_kinds():
    assert len(TEA_OPS) == 84
    kinds = collections.Counter(op.kind for op in TEA_OPS)
    assert kinds == {"spatial": 41, "intensity": 30, "filter_noise": 12, "identity": 1}
    assert TEA_OPS[0].op == "identity"
    assert [op.index for op in TEA_OPS] == list(range(84))
    assert len({op.name for op in TEA_OPS}) == 84


def test_tea_parameter_sets():
    ops = collections.defaultdict(list)
    for op in TEA_OPS:
        ops[(op.op, op.axis)].append(op.magnitude)
    assert sorted(round(m, 6) for m in ops[("scale", None)]) == sorted(
        round(v, 6) for f in (1.05, 1.15, 1.25, 1.35, 1.45) for v in (f, 1 / f))
    for a in range(3):
        assert sorted(ops[("rotate", a)]) == [-25, -15, -5, 5, 15, 25]
        assert sorted(ops[("rot90", a)]) == [-1, 1, 2]
        assert ops[("flip", a)] == [None]
    assert ops[("flip_all", None)] == [None]
    assert sorted(ops[("shift", None)]) == [-0.25, -0.15, -0.05, 0.05, 0.15, 0.25]
    for name in ("gamma", "inv_gamma"):
        assert sorted(round(m, 6) for m in ops[(name, None)]) == sorted(
            round(v, 6) for g in (1.1, 1.3, 1.5) for v in (g, 1 / g))
    assert ops[("noise", None)] == [0.025, 0.075, 0.125]
    assert ops[("lowres", None)] == [0.9, 0.7, 0.5]


def test_mirror_sets():
    names = lambda ix: {TEA_OPS[i].name for i in ix}  # noqa: E731
    assert len(TEA_MIRROR_OPS_NNUNET) == 8 and len(set(TEA_MIRROR_OPS_NNUNET)) == 8
    assert names(TEA_MIRROR_OPS_DEEPMEDIC) == {"identity", "flip_axis0", "flip_axis1",
                                                "flip_axis2"}
    assert names(TEA_MIRROR_OPS_DEEPMEDIC) < names(TEA_MIRROR_OPS_NNUNET)


def test_table_rows_cover_everything():
    rows = table_rows()
    assert len(rows["tra"]) == 62 and len(rows["tea"]) == 84
    assert {r["group"] for r in rows["tra"]} == {g.name for g in TRA_GROUPS}
