"""The panel's case table: pairing volumes with label maps by name, splits, checks."""

import pytest

from JCSAugmentLib.panel.cases import (auto_split, check_cases, name_key, normalise_split,
                                       pair_by_name, pair_report)


@pytest.mark.parametrize("label", [
    "case1-label", "case1_seg", "case1 segmentation", "Case1_label", "CASE1-Segmentation",
    "case1_label_map", "case1.seg.nrrd", "case1_gt.nii.gz", "seg_case1", "case1_mask",
    "case1 Labels", "label-case1"])
def test_label_names_pair_with_their_volume(label):
    assert pair_by_name(["case1", "case2"], [label]) == [("case1", label)]


def test_pairing_prefers_exact_keys_and_keeps_volume_order():
    vols = ["case10", "case1", "case2.nii.gz", "patient 7 image"]
    labs = ["patient_7_seg", "case1-label", "case10-label", "case2_seg.nii.gz", "notes"]
    assert pair_by_name(vols, labs) == [("case10", "case10-label"), ("case1", "case1-label"),
                                        ("case2.nii.gz", "case2_seg.nii.gz"),
                                        ("patient 7 image", "patient_7_seg")]
    r = pair_report(vols, labs)
    assert r.unpaired_labels == ["notes"] and r.unpaired_volumes == []


def test_prefix_matches_only_when_unique():
    assert pair_by_name(["case3_t1"], ["case3_seg"]) == [("case3_t1", "case3_seg")]
    assert pair_by_name(["case1"], ["case1 liver segmentation"]) == [
        ("case1", "case1 liver segmentation")]
    r = pair_report(["case3_t1", "case3_t2"], ["case3_seg"])  # two channels, one label
    assert r.pairs == [] and r.ambiguous and "pair it by hand" in r.ambiguous[0]
    r = pair_report(["a", "a.nrrd"], ["a-label"])  # same key twice
    assert r.pairs == [] and "pair them by hand" in r.ambiguous[0]


def test_digits_compare_as_text():
    assert pair_by_name(["case01"], ["case1-label"]) == []
    assert name_key("Case_01-label.nii.gz", label=True) == ("case", "01")
    assert name_key("label") == ("label",)  # a name that is only a label word stays


def test_auto_split_is_deterministic_and_order_free():
    ids = [f"c{i}" for i in range(10)]
    a = auto_split(ids, seed=3)
    assert a == auto_split(list(reversed(ids)), seed=3)
    assert list(a) == ids
    assert sorted(a.values()).count("validation") == 2 and list(a.values()).count("test") == 2
    assert any(auto_split(ids, seed=s) != a for s in range(1, 5))


@pytest.mark.parametrize("n", range(1, 8))
def test_auto_split_always_trains_and_validates(n):
    for seed in range(5):
        s = auto_split([f"c{i}" for i in range(n)], seed=seed)
        counts = {k: list(s.values()).count(k) for k in ("train", "validation", "test")}
        assert counts["train"] >= 1
        assert counts["validation"] >= (1 if n >= 2 else 0)
        assert counts["test"] == (0 if n < 3 else max(1, round(0.2 * n)))


def test_auto_split_fractions():
    s = auto_split([str(i) for i in range(10)], {"train": 0.8, "validation": 0.2, "test": 0},
                   seed=0)
    assert list(s.values()).count("test") == 0 and list(s.values()).count("validation") == 2
    s = auto_split(["a", "b"], {"train": 1, "validation": 0, "test": 0})
    assert set(s.values()) == {"train"}
    with pytest.raises(ValueError):
        auto_split(["a", "a"])
    with pytest.raises(ValueError):
        auto_split(["a"], {"training": 1})


def test_normalise_split():
    assert [normalise_split(s) for s in ("Training", "val", "TEST", "unused", None, "")] == [
        "train", "validation", "test", None, None, None]
    with pytest.raises(ValueError, match="unknown split"):
        normalise_split("holdout")


class Node:
    def __init__(self, name):
        self.name = name

    def GetName(self):
        return self.name

    def GetID(self):
        return "vtkMRMLScalarVolumeNode" + self.name


def row(cid, image, label, split, **kw):
    return dict(id=cid, images=[image] if image else [], label=label, split=split, **kw)


def test_check_cases_ready():
    rows = [row("a", "a.nrrd", "a_seg.nrrd", "train"),
            row("b", "b.nrrd", "b_seg.nrrd", "validation"),
            row("c", "c.nrrd", None, "test")]
    assert check_cases(rows) == []
    assert check_cases(rows, mode="joint") == []


def test_check_cases_sentences():
    img, lab = Node("img"), Node("lab")
    rows = [row("a", img, None, "train"),
            row("a", img, lab, "train"),
            row("", "x.nrrd", lab, "Training"),
            {"case_id": "d", "image_nodes": [Node("d1"), Node("d2")], "label_node": Node("dl"),
             "split": "test"},
            row("e", "e.nrrd", "e.nrrd", "test"),
            row("f", "f.nrrd", "f_seg", "holdout")]
    problems = check_cases(rows, mode="joint")
    text = "\n".join(problems)
    assert "Case 'a' is a training case but has no label map" in text
    assert "The case name 'a' is used twice (rows 1 and 2)" in text
    assert "Case in row 3 has no name" in text
    assert "Cases 'a', 'a' use the same image volume" in text
    assert "use the same label map" in text
    assert "same number of image channels" in text
    assert "Case 'e' uses the same volume as its image and its label map" in text
    assert "unknown split 'holdout'" in text
    assert "No case is in the validation split (mode 'joint' learns" in text
    assert all(p.endswith(".") for p in problems)


def test_check_cases_depends_on_the_mode():
    rows = [row("a", "a.nrrd", "a_seg", "train")]
    assert any("validation" in p for p in check_cases(rows))
    assert check_cases(rows, mode="heuristic") == []
    assert any("training split" in p for p in check_cases(
        [row("a", "a.nrrd", "a_seg", "validation")], mode="joint"))
    assert not any("training split" in p for p in check_cases(
        [row("a", "a.nrrd", "a_seg", "validation")], mode="tea-only"))
    assert check_cases([]) and "no cases" in check_cases([])[0]
    unused = [row("a", "a.nrrd", "a_seg", "train"), row("b", "b.nrrd", "b_seg", "validation"),
              row("c", None, None, "unused")]
    assert check_cases(unused) == []  # an unused row is not checked
