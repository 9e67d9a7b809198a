"""Metrics (method section 10): DSC / sensitivity / precision by hand, HD95 against hand
answers and a brute-force all-pairs computation, the empty-mask rules, region labels, and the
folder evaluation (matching, grid checks, CSV/JSON, nothing written on error)."""

import argparse
import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from JCSAugmentLib.evaluate import (
    EvaluationError,
    add_evaluate_arguments,
    binary_metrics,
    case_metrics,
    evaluate_folders,
    format_table,
    parse_labels,
    run_evaluate_from_args,
    surface_mask,
)


# --------------------------------------------------------------------------------------------
# an independent brute-force HD95: explicit neighbour test, all surface-voxel pairs


def _brute_surface(mask):
    pts = []
    shape = mask.shape
    for idx in zip(*np.nonzero(mask)):
        on_surface = False
        for axis in range(mask.ndim):
            for step in (-1, 1):
                n = list(idx)
                n[axis] += step
                if not (0 <= n[axis] < shape[axis]) or not mask[tuple(n)]:
                    on_surface = True
        if on_surface:
            pts.append(idx)
    return np.array(pts, dtype=np.float64)


def _brute_hd95(pred, ref, spacing):
    a = _brute_surface(pred) * np.asarray(spacing)
    b = _brute_surface(ref) * np.asarray(spacing)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    pooled = np.concatenate([d.min(axis=1), d.min(axis=0)])
    return float(np.percentile(pooled, 95))


# --------------------------------------------------------------------------------------------
# overlap metrics


def test_overlap_metrics_by_hand():
    pred = np.zeros((1, 4, 4), bool)
    ref = np.zeros((1, 4, 4), bool)
    pred[0, 0, :3] = True          # 3 voxels
    ref[0, 0, 1:] = True           # 3 voxels, 2 shared
    ref[0, 1, 0] = True            # +1 missed
    m = binary_metrics(pred, ref, (2.0, 1.0, 0.5))
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 2)
    assert m["dsc"] == pytest.approx(4 / 7)
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["volume_pred_ml"] == pytest.approx(3 * 1.0 / 1000)
    assert m["volume_ref_ml"] == pytest.approx(4 * 1.0 / 1000)
    assert m["hd95_undefined"] is None


def test_identical_masks_are_perfect():
    m = np.zeros((6, 6, 6), bool)
    m[1:4, 2:5, 1:3] = True
    r = binary_metrics(m, m.copy(), (1, 1, 1))
    assert r["dsc"] == r["sensitivity"] == r["precision"] == 1.0
    assert r["hd95"] == 0.0


# --------------------------------------------------------------------------------------------
# HD95


def test_hd95_parallel_planes_anisotropic():
    # two one-voxel-thick planes 3 slices apart along z (3 mm): every voxel is surface and
    # every nearest distance is 3 slices x 3 mm = 9 mm
    pred = np.zeros((8, 5, 6), bool)
    ref = np.zeros((8, 5, 6), bool)
    pred[2] = True
    ref[5] = True
    assert binary_metrics(pred, ref, (3.0, 0.7, 0.5))["hd95"] == pytest.approx(9.0, abs=1e-5)


def test_hd95_line_with_interpolation_by_hand():
    # pred: x = 0..4, ref: x = 2..4, spacing 3 mm along x. Line voxels are all surface.
    # pred -> ref: 6, 3, 0, 0, 0 mm; ref -> pred: 0, 0, 0.  Pooled sorted (8 values):
    # 0 0 0 0 0 0 3 6 -> rank 0.95 * 7 = 6.65 -> 3 + 0.65 * (6 - 3) = 4.95
    pred = np.zeros((1, 1, 7), bool)
    ref = np.zeros((1, 1, 7), bool)
    pred[0, 0, 0:5] = True
    ref[0, 0, 2:5] = True
    assert binary_metrics(pred, ref, (1.0, 1.0, 3.0))["hd95"] == pytest.approx(4.95, abs=1e-5)


def test_hd95_shifted_cube_matches_brute_force_and_hand():
    # a 4x4x4 cube and the same cube shifted by 2 voxels along z (spacing 3 mm)
    pred = np.zeros((12, 8, 8), bool)
    ref = np.zeros((12, 8, 8), bool)
    pred[2:6, 2:6, 2:6] = True
    ref[4:8, 2:6, 2:6] = True
    spacing = (3.0, 1.0, 0.8)
    got = binary_metrics(pred, ref, spacing)["hd95"]
    # by hand: each cube's surface has 64 - 8 = 56 voxels.  pred -> ref: the face z=2 (16) is
    # 2 slices = 6 mm away, the ring at z=3 (12) 3 mm, the ring at z=4 (12) and the ring at
    # z=5 (12) 0 mm, the 4 centre voxels of the face z=5 0.8 mm (one x step to ref's ring).
    # ref -> pred is the mirror image.  Pooled, 112 values: 48 x 0, 8 x 0.8, 24 x 3, 32 x 6;
    # rank 0.95 * 111 = 105.45 falls among the 6 mm values (ranks 80..111) -> 6 mm.
    assert got == pytest.approx(6.0, abs=1e-5)
    assert got == pytest.approx(_brute_hd95(pred, ref, spacing), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_random_blobs_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 11, 10)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")

    def blob():
        c = rng.uniform(2, 7, 3)
        r = rng.uniform(1.5, 3.5, 3)
        m = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        return m | (rng.random(shape) < 0.01)  # a few stray voxels

    pred, ref = blob(), blob()
    spacing = (2.5, 0.9, 1.3)
    got = binary_metrics(pred, ref, spacing)["hd95"]
    assert got == pytest.approx(_brute_hd95(pred, ref, spacing), rel=1e-5, abs=1e-5)


def test_mask_touching_the_image_edge_is_surface_there():
    m = np.ones((3, 3, 3), bool)
    assert surface_mask(m).sum() == 26  # all but the centre
    pred = np.zeros((4, 3, 3), bool)
    ref = np.zeros((4, 3, 3), bool)
    pred[0:3] = True
    ref[1:4] = True
    spacing = (2.0, 1.0, 1.0)
    assert binary_metrics(pred, ref, spacing)["hd95"] == pytest.approx(
        _brute_hd95(pred, ref, spacing), abs=1e-5)


# --------------------------------------------------------------------------------------------
# empty masks


def test_both_empty():
    z = np.zeros((3, 4, 5), bool)
    m = binary_metrics(z, z, (1, 1, 1))
    assert m["dsc"] == 1.0 and m["sensitivity"] == 1.0 and m["precision"] == 1.0
    assert m["hd95"] == 0.0 and m["hd95_undefined"] is None
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)


def test_reference_empty():
    z = np.zeros((3, 4, 5), bool)
    p = z.copy()
    p[1, 1, 1:3] = True
    m = binary_metrics(p, z, (1, 1, 1))
    assert m["dsc"] == 0.0 and m["precision"] == 0.0
    assert m["sensitivity"] is None
    assert m["hd95"] is None and m["hd95_undefined"] == "reference empty"
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 0)


def test_prediction_empty():
    z = np.zeros((3, 4, 5), bool)
    r = z.copy()
    r[1, 1, 1:4] = True
    m = binary_metrics(z, r, (1, 1, 1))
    assert m["dsc"] == 0.0 and m["sensitivity"] == 0.0
    assert m["precision"] is None
    assert m["hd95"] is None and m["hd95_undefined"] == "prediction empty"
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 3)


def test_bad_inputs():
    a = np.zeros((3, 3, 3), bool)
    with pytest.raises(EvaluationError, match="shape"):
        binary_metrics(a, np.zeros((3, 3, 4), bool), (1, 1, 1))
    with pytest.raises(EvaluationError, match="spacing"):
        binary_metrics(a, a, (1, 1))
    with pytest.raises(EvaluationError, match="spacing"):
        binary_metrics(a, a, (1, 0, 1))
    with pytest.raises(EvaluationError, match="non-integer"):
        case_metrics(np.full((2, 2, 2), 0.5), np.zeros((2, 2, 2)), (1, 1, 1))


# --------------------------------------------------------------------------------------------
# labels and regions


def _brats_like():
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[2:8, 2:10, 2:10] = 2       # oedema
    ref[3:7, 4:8, 4:8] = 1         # necrosis
    ref[4:6, 5:7, 5:7] = 4         # enhancing
    pred = ref.copy()
    top = pred[2:4]
    top[top == 2] = 0              # misses the oedema of two slices
    pred[4:6, 5:7, 5:7] = 1        # calls enhancing necrosis
    return pred, ref


def test_region_labels_are_unions():
    pred, ref = _brats_like()
    spacing = (2.0, 1.0, 1.0)
    labels = {"whole": [1, 2, 4], "core": [1, 4], "enhancing": 4}
    m = case_metrics(pred, ref, spacing, labels)
    assert list(m) == ["whole", "core", "enhancing"]
    for name, values in (("whole", [1, 2, 4]), ("core", [1, 4]), ("enhancing", [4])):
        expect = binary_metrics(np.isin(pred, values), np.isin(ref, values), spacing)
        assert m[name] == expect
    assert m["core"]["dsc"] == 1.0          # 1 vs 4 inside the core does not matter there
    assert m["enhancing"]["hd95_undefined"] == "prediction empty"
    whole = m["whole"]
    assert whole["fn"] == int(np.count_nonzero(ref[2:4] == 2)) == 2 * 64 - 16
    assert whole["fp"] == 0


def test_default_labels_each_value_plus_foreground():
    pred, ref = _brats_like()
    m = case_metrics(pred, ref, (1, 1, 1))
    assert list(m) == ["1", "2", "4", "foreground"]
    assert m["foreground"] == binary_metrics(pred > 0, ref > 0, (1, 1, 1))
    empty = case_metrics(np.zeros((3, 3, 3), int), np.zeros((3, 3, 3), int), (1, 1, 1))
    assert empty == {"foreground": binary_metrics(np.zeros((3, 3, 3), bool),
                                                  np.zeros((3, 3, 3), bool), (1, 1, 1))}


def test_parse_labels(tmp_path):
    assert parse_labels("whole=1,2,3,4;core=1,3,4;enhancing=4") == {
        "whole": [1, 2, 3, 4], "core": [1, 3, 4], "enhancing": [4]}
    f = tmp_path / "labels.json"
    f.write_text(json.dumps({"labels": {"background": 0, "tumour": [2, 1], "kidney": 3}}))
    assert parse_labels(str(f)) == {"tumour": [1, 2], "kidney": [3]}
    assert parse_labels('{"a": 1}') == {"a": [1]}
    for bad in ("whole", "a=x", "a=", "a=0", "a=1;a=2", str(tmp_path / "nope.json")):
        with pytest.raises(EvaluationError):
            parse_labels(bad)


# --------------------------------------------------------------------------------------------
# folders


def _write(path, arr, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    pred, ref = _brats_like()
    _write(pred_dir / "caseA.nii.gz", pred)
    _write(ref_dir / "caseA.nii.gz", ref)
    # case B: perfect prediction without label 4; ref stored as .nrrd to mix formats
    refb = ref.copy()
    refb[refb == 4] = 1
    _write(pred_dir / "caseB.nii.gz", refb.copy())
    _write(ref_dir / "caseB.nrrd", refb)
    return pred_dir, ref_dir, tmp_path


def test_evaluate_folders_outputs(folders):
    pred_dir, ref_dir, tmp = folders
    csv_path, json_path = tmp / "m.csv", tmp / "m.json"
    res = evaluate_folders(pred_dir, ref_dir, csv_path=str(csv_path), json_path=str(json_path))
    assert list(res["cases"]) == ["caseA", "caseB"]
    assert list(res["labels"]) == ["1", "2", "4", "foreground"]
    pred, ref = _brats_like()
    # spacing from the file (x, y, z) = (1, 1, 2) -> (z, y, x) = (2, 1, 1)
    assert res["cases"]["caseA"]["2"] == binary_metrics(pred == 2, ref == 2, (2.0, 1.0, 1.0))
    # label 4 is absent from both maps of case B: both-empty result, filled in
    b4 = res["cases"]["caseB"]["4"]
    assert b4["dsc"] == 1.0 and b4["hd95"] == 0.0
    # caseA label 4: prediction empty -> precision and hd95 null in one case
    s4 = res["summary"]["4"]
    assert s4["hd95"] == {"mean": 0.0, "std": 0.0, "n": 1, "nulls": 1}
    assert s4["dsc"]["mean"] == pytest.approx(0.5) and s4["dsc"]["std"] == pytest.approx(0.5)
    s2 = res["summary"]["2"]["dsc"]
    vals = [res["cases"][c]["2"]["dsc"] for c in ("caseA", "caseB")]
    assert s2["mean"] == pytest.approx(np.mean(vals)) and s2["std"] == pytest.approx(np.std(vals))

    on_disk = json.loads(json_path.read_text())
    assert on_disk["cases"] == res["cases"] and on_disk["summary"] == res["summary"]
    rows = list(csv.DictReader(open(csv_path, newline="")))
    case_rows = [r for r in rows if r["row"] == "case"]
    assert len(case_rows) == 2 * 4
    a4 = next(r for r in case_rows if r["case"] == "caseA" and r["label"] == "4")
    assert a4["precision"] == "" and a4["hd95"] == "" and a4["hd95_undefined"] == "prediction empty"
    a2 = next(r for r in case_rows if r["case"] == "caseA" and r["label"] == "2")
    assert float(a2["dsc"]) == pytest.approx(res["cases"]["caseA"]["2"]["dsc"])
    mean4 = next(r for r in rows if r["row"] == "mean" and r["label"] == "4")
    nulls4 = next(r for r in rows if r["row"] == "nulls" and r["label"] == "4")
    assert float(mean4["dsc"]) == pytest.approx(0.5) and nulls4["hd95"] == "1"
    assert {r["row"] for r in rows} == {"case", "mean", "std", "nulls"}
    assert not [f for f in os.listdir(tmp) if f.endswith(".tmp")]

    table = format_table(res)
    assert table.splitlines()[0] == "| label | cases | DSC | SEN | PRC | HD95 (mm) |"
    assert "| 4 | 2 | 0.500 ± 0.500 |" in table and "(1 undefined)" in table


def test_evaluate_folders_region_labels(folders):
    pred_dir, ref_dir, _ = folders
    res = evaluate_folders(pred_dir, ref_dir, labels={"whole": [1, 2, 4], "core": [1, 4]})
    assert list(res["summary"]) == ["whole", "core"]
    assert res["cases"]["caseA"]["core"]["dsc"] == 1.0


def _assert_nothing_written(tmp):
    assert not (tmp / "m.csv").exists() and not (tmp / "m.json").exists()
    assert not [f for f in os.listdir(tmp) if f.endswith(".tmp")]


def test_grid_mismatch_is_refused_and_nothing_written(folders):
    pred_dir, ref_dir, tmp = folders
    pred, _ = _brats_like()
    _write(pred_dir / "caseB.nii.gz", pred, origin=(0.0, 0.5, 0.0))
    with pytest.raises(EvaluationError, match=r"case 'caseB'.*origin"):
        evaluate_folders(pred_dir, ref_dir, csv_path=str(tmp / "m.csv"),
                         json_path=str(tmp / "m.json"))
    _assert_nothing_written(tmp)
    _write(pred_dir / "caseB.nii.gz", pred, spacing=(1.0, 1.0, 2.5))
    with pytest.raises(EvaluationError, match=r"case 'caseB'.*spacing"):
        evaluate_folders(pred_dir, ref_dir)
    _write(pred_dir / "caseB.nii.gz", pred[:, :, :-1])
    with pytest.raises(EvaluationError, match=r"case 'caseB'.*size"):
        evaluate_folders(pred_dir, ref_dir)
    # within the 1e-4 tolerance is accepted
    _write(pred_dir / "caseB.nii.gz", pred, spacing=(1.0, 1.0, 2.00001))
    evaluate_folders(pred_dir, ref_dir)


def test_missing_and_unmatched_cases(folders):
    pred_dir, ref_dir, tmp = folders
    os.remove(pred_dir / "caseB.nii.gz")
    pred, _ = _brats_like()
    _write(pred_dir / "caseC.nii.gz", pred)
    with pytest.raises(EvaluationError) as e:
        evaluate_folders(pred_dir, ref_dir, csv_path=str(tmp / "m.csv"),
                         json_path=str(tmp / "m.json"))
    assert "no prediction: [caseB]" in str(e.value) and "no reference: [caseC]" in str(e.value)
    _assert_nothing_written(tmp)
    for f in os.listdir(pred_dir):
        os.rename(pred_dir / f, pred_dir / f.replace(".nii.gz", "_pred.nii.gz"))
    with pytest.raises(EvaluationError, match=r"no case name matches.*caseA_pred.*caseB"):
        evaluate_folders(pred_dir, ref_dir)


def test_ignore_unreferenced_leaves_out_predictions_without_a_reference(folders):
    pred_dir, ref_dir, tmp = folders
    pred, _ = _brats_like()
    _write(pred_dir / "caseC.nii.gz", pred)  # no reference: an error unless ignored
    with pytest.raises(EvaluationError, match=r"no reference: \[caseC\]"):
        evaluate_folders(pred_dir, ref_dir)
    res = evaluate_folders(pred_dir, ref_dir, ignore_unreferenced=True)
    assert list(res["cases"]) == ["caseA", "caseB"]
    os.remove(pred_dir / "caseB.nii.gz")  # a reference without its prediction stays an error
    with pytest.raises(EvaluationError, match=r"no prediction: \[caseB\]"):
        evaluate_folders(pred_dir, ref_dir, ignore_unreferenced=True)


def test_unreadable_file_names_the_case(folders):
    pred_dir, ref_dir, tmp = folders
    (pred_dir / "caseB.nii.gz").write_bytes(b"not an image")
    with pytest.raises(EvaluationError, match=r"case 'caseB': cannot read the prediction"):
        evaluate_folders(pred_dir, ref_dir, json_path=str(tmp / "m.json"))
    _assert_nothing_written(tmp)


def test_existing_outputs_untouched_on_error(folders):
    pred_dir, ref_dir, tmp = folders
    (tmp / "m.json").write_text("old")
    (pred_dir / "caseB.nii.gz").write_bytes(b"broken")
    with pytest.raises(EvaluationError):
        evaluate_folders(pred_dir, ref_dir, json_path=str(tmp / "m.json"))
    assert (tmp / "m.json").read_text() == "old"
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_folders(pred_dir, ref_dir, csv_path=str(tmp / "no" / "m.csv"))


def test_cli_helpers(folders, capsys):
    pred_dir, ref_dir, tmp = folders
    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    args = p.parse_args(["--pred", str(pred_dir), "--ref", str(ref_dir),
                         "--labels", "whole=1,2,4;core=1,4", "--json", str(tmp / "e.json")])
    assert run_evaluate_from_args(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("| label |") and "| whole | 2 |" in out
    assert json.loads((tmp / "e.json").read_text())["labels"] == {"whole": [1, 2, 4],
                                                                  "core": [1, 4]}
    args = p.parse_args(["--pred", str(pred_dir), "--ref", str(ref_dir), "--labels", "x=a"])
    with pytest.raises(EvaluationError):
        run_evaluate_from_args(args)
