"""The embedded synthetic two-site dataset (JCSAugmentLib.synth): folder layout, metadata,
labels, determinism, the documented site shift, and that the data layer reads it."""

import argparse
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from JCSAugmentLib.data import discover_dataset, load_splits
from JCSAugmentLib.synth import (LABELS, SPACING, SynthError, add_synth_arguments,
                                 describe_shift, foreground_anisotropy, make_synthetic_dataset,
                                 shift_table, synthetic_case)

SMALL = (24, 40, 40)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The default dataset (8 / 4 / 4 cases of 48 x 64 x 64), written once for the module."""
    root = tmp_path_factory.mktemp("synth") / "JCSAugmentSynth"
    return make_synthetic_dataset(root, seed=0)


@pytest.fixture(scope="module")
def arrays(dataset):
    return {cid: (read(c["image"]), read(c["label"])) for cid, c in dataset["cases"].items()}


def test_folder_layout(dataset):
    root = dataset["root"]
    assert sorted(os.listdir(root)) == ["README.md", "dataset.json", "imagesTr", "labelsTr",
                                        "splits.json"]
    ids = [c for s in ("train", "validation", "test") for c in dataset["splits"][s]]
    assert len(ids) == 16
    assert sorted(os.listdir(os.path.join(root, "imagesTr"))) == sorted(
        f"{c}_0000.nii.gz" for c in ids)
    assert sorted(os.listdir(os.path.join(root, "labelsTr"))) == sorted(
        f"{c}.nii.gz" for c in ids)
    readme = open(dataset["readme"], encoding="utf-8").read()
    assert "site A" in readme and "site B" in readme and "rot90" in readme


def test_dataset_json(dataset):
    meta = json.load(open(os.path.join(dataset["root"], "dataset.json"), encoding="utf-8"))
    assert meta["channel_names"] == {"0": "MR"}
    assert meta["labels"] == {"background": 0, "lesion": 1, "core": 2} == LABELS
    assert meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 16
    rec = meta["jcsaugment_synth"]
    assert rec["seed"] == 0 and rec["shift"] == "rot90" and rec["size"] == [48, 64, 64]
    assert set(rec["sites"].values()) == {"A", "B"}


def test_splits_json(dataset):
    splits = json.load(open(os.path.join(dataset["root"], "splits.json"), encoding="utf-8"))
    assert list(splits) == ["train", "validation", "test"]
    assert [len(splits[k]) for k in splits] == [8, 4, 4]
    assert all(c.startswith("siteA_") for c in splits["train"])
    assert all(c.startswith("siteB_") for c in splits["validation"] + splits["test"])
    assert len(set(sum(splits.values(), []))) == 16
    assert splits == dataset["splits"]


def test_images_and_labels(dataset, arrays):
    for cid, (image, label) in arrays.items():
        assert image.dtype == np.float32 and image.shape == (48, 64, 64)
        assert label.shape == image.shape and np.issubdtype(label.dtype, np.integer)
        assert set(np.unique(label)) == {0, 1, 2}, cid  # both foreground labels in every case
        fg = np.count_nonzero(label) / label.size
        assert 0 < fg < 0.05, (cid, fg)
        assert np.count_nonzero(label == 2) < np.count_nonzero(label == 1)
        assert abs(float(image.mean())) < 0.05 and abs(float(image.std()) - 1) < 0.05
        # lesions are brighter than the rest of the image
        assert image[label == 1].mean() > image[label == 0].mean() + 1.0
        img = sitk.ReadImage(dataset["cases"][cid]["image"])
        assert img.GetSpacing() == pytest.approx(SPACING[::-1])
        assert img.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
        lab = sitk.ReadImage(dataset["cases"][cid]["label"])
        assert lab.GetOrigin() == pytest.approx(img.GetOrigin())


def test_deterministic_given_seed(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", n_train=2, n_val=1, n_test=1, size=SMALL, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", n_train=2, n_val=1, n_test=1, size=SMALL, seed=3)
    c = make_synthetic_dataset(tmp_path / "c", n_train=2, n_val=1, n_test=1, size=SMALL, seed=4)
    assert a["splits"] == b["splits"] == c["splits"]
    for cid in a["cases"]:
        for key in ("image", "label"):
            xa, xb, xc = (read(r["cases"][cid][key]) for r in (a, b, c))
            np.testing.assert_array_equal(xa, xb)
            assert not np.array_equal(xa, xc)


def test_cases_do_not_depend_on_the_other_splits():
    im1, lab1, _ = synthetic_case(SMALL, seed=[0, 1, 2], site="B")
    im2, lab2, _ = synthetic_case(SMALL, seed=[0, 1, 2], site="B")
    np.testing.assert_array_equal(im1, im2)
    np.testing.assert_array_equal(lab1, lab2)


def test_the_documented_shift_is_measurable(arrays):
    """Lesions are elongated along y at site A and along x at site B."""
    ratio = {cid: foreground_anisotropy(lab) for cid, (_im, lab) in arrays.items()}
    for cid, r in ratio.items():
        if cid.startswith("siteA_"):
            assert r > 1.3, (cid, r)
        else:
            assert r < 1 / 1.3, (cid, r)


def test_site_b_is_site_a_turned_a_quarter_about_axis_0():
    """A site-B case is exactly the site-A case of the same seed rotated about axis 0, so the
    TEA op 'rot90 about axis 0, -90' brings it back."""
    torch = pytest.importorskip("torch")
    from JCSAugmentLib.augment import tea_transform
    from JCSAugmentLib.augment.tables import TEA_INDEX
    im_a, lab_a, _ = synthetic_case(SMALL, seed=[5, 1, 0], site="A")
    im_b, lab_b, _ = synthetic_case(SMALL, seed=[5, 1, 0], site="B")
    assert im_b.shape == im_a.shape
    back = tea_transform(torch.from_numpy(im_b)[None, None], TEA_INDEX["rot90_axis0_-90"])
    np.testing.assert_array_equal(back[0, 0].numpy(), im_a)
    lab_back = tea_transform(torch.from_numpy(lab_b.astype(np.float32))[None, None],
                             TEA_INDEX["rot90_axis0_-90"])
    np.testing.assert_array_equal(lab_back[0, 0].numpy(), lab_a)
    # the heuristic mirrors keep the lesions' long axis: none of them maps B back to A
    for axis in (1, 2):
        assert foreground_anisotropy(np.flip(lab_b, axis)) < 1.0


def test_no_shift_control(tmp_path):
    res = make_synthetic_dataset(tmp_path / "none", n_train=2, n_val=2, n_test=1, size=SMALL,
                                 shift="none")
    ratios = [foreground_anisotropy(read(c["label"])) for c in res["cases"].values()]
    assert min(ratios) > 1.1 and np.mean(ratios) > 1.4, ratios  # site B elongated along y too
    assert "no shift" in open(res["readme"], encoding="utf-8").read()


def test_describe_shift():
    assert describe_shift() == describe_shift("rot90") == describe_shift("default")
    assert "90 degrees" in describe_shift("rot90") and "axis 0" in describe_shift("rot90")
    assert "no shift" in describe_shift("none")
    assert shift_table("rot90").startswith("| property | site A")
    with pytest.raises(SynthError, match="unknown shift"):
        describe_shift("blur")


def test_data_layer_reads_the_folder(dataset):
    spec = discover_dataset(dataset["root"])
    assert spec.layout == "nnunet_v2"
    assert spec.channel_names == ["MR"] and spec.modality == ["MR"]
    assert spec.labels == LABELS
    assert sorted(spec.case_ids()) == sorted(dataset["cases"])
    for case in spec.cases:
        assert case.images == [dataset["cases"][case.case_id]["image"]]
        assert case.label == dataset["cases"][case.case_id]["label"]
    splits = load_splits(dataset["splits_json"], spec.case_ids())
    assert splits == dataset["splits"]


def test_output_folder_rules(tmp_path):
    small = dict(n_train=1, n_val=1, n_test=0, size=SMALL)
    first = make_synthetic_dataset(tmp_path / "ds", n_train=2, n_val=1, n_test=1, size=SMALL)
    again = make_synthetic_dataset(tmp_path / "ds", **small)  # its own output: replaced
    assert sorted(os.listdir(os.path.join(again["root"], "labelsTr"))) == [
        "siteA_000.nii.gz", "siteB_000.nii.gz"]
    assert discover_dataset(first["root"]).case_ids() == ["siteA_000", "siteB_000"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        make_synthetic_dataset(other, **small)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(SynthError, match="size"):
        make_synthetic_dataset(tmp_path / "tiny", size=(8, 8, 8))
    with pytest.raises(SynthError, match="validation"):
        make_synthetic_dataset(tmp_path / "noval", n_val=0, size=SMALL)


def test_cli_hook(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="jcsaugment synth")
    add_synth_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args([str(out), "--seed", "2", "--n-train", "2", "--n-val", "1",
                              "--n-test", "1", "--size", *map(str, SMALL)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "wrote 4 cases" in text and "splits.json" in text and "shift 'rot90'" in text
    meta = json.load(open(out / "dataset.json", encoding="utf-8"))
    assert meta["jcsaugment_synth"]["seed"] == 2
    assert meta["jcsaugment_synth"]["size"] == list(SMALL)
    bad = parser.parse_args([str(tmp_path / "bad"), "--size", "4", "4", "4"])
    assert bad.func(bad) == 2
    assert "jcsaugment synth: error:" in capsys.readouterr().err
