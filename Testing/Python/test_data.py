"""Data: dataset discovery, splits, preprocessing + cache, patch sampling (synthetic volumes)."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from JCSAugmentLib.data import (Case, CaseSpec, DataError, PatchSampler, PreprocessSettings,
                                SourceGeometry, ct_statistics, dataset_from_list,
                                discover_dataset, load_splits, make_splits, preprocess_case,
                                preprocess_dataset)
from JCSAugmentLib.data import reading as reading_mod


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def write(path, arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), vector=False):
    """Write a numpy (z, y, x) array (or (c, z, y, x) as 4D / vector) with SimpleITK."""
    img = sitk.GetImageFromArray(np.asarray(arr), isVector=vector)
    dim = img.GetDimension()
    img.SetSpacing(tuple(spacing) + (1.0,) * (dim - len(spacing)))
    img.SetOrigin(tuple(origin) + (0.0,) * (dim - len(origin)))
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    sitk.WriteImage(img, str(path))
    return str(path)


def blob_label(shape=(12, 14, 16), value=1, box=((4, 8), (5, 9), (6, 10))):
    lab = np.zeros(shape, np.uint8)
    lab[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]] = value
    return lab


def make_case(folder, cid, shape=(12, 14, 16), channels=2, seed=0, roi=False, spacing=(1, 1, 1)):
    rng = np.random.default_rng(seed)
    imgs = [write(os.path.join(folder, f"{cid}_ch{c}.nii.gz"),
                  rng.normal(10 * (c + 1), 3, shape).astype(np.float32), spacing)
            for c in range(channels)]
    lab = write(os.path.join(folder, f"{cid}_seg.nii.gz"), blob_label(shape), spacing)
    r = None
    if roi:
        m = np.zeros(shape, np.uint8)
        m[2:-2, 2:-2, 2:-2] = 1
        r = write(os.path.join(folder, f"{cid}_roi.nii.gz"), m, spacing)
    return CaseSpec(cid, imgs, lab, r)


def nnunet_folder(root, ids=("a", "b", "c"), channels=("T1", "FLAIR")):
    os.makedirs(root / "imagesTr")
    os.makedirs(root / "labelsTr")
    for k, cid in enumerate(ids):
        for c in range(len(channels)):
            write(root / "imagesTr" / f"{cid}_{c:04d}.nii.gz",
                  np.random.default_rng(k).normal(size=(8, 9, 10)).astype(np.float32))
        write(root / "labelsTr" / f"{cid}.nii.gz", blob_label((8, 9, 10), box=((2, 5),) * 3))
    meta = {"channel_names": {str(i): n for i, n in enumerate(channels)},
            "labels": {"background": 0, "tumour": 1}, "numTraining": len(ids),
            "file_ending": ".nii.gz", "name": "Dataset001_Test"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------

def test_discover_nnunet_v2(tmp_path):
    root = nnunet_folder(tmp_path / "ds", channels=("T1", "CT"))
    ds = discover_dataset(root)
    assert ds.layout == "nnunet_v2" and ds.name == "Dataset001_Test"
    assert ds.case_ids() == ["a", "b", "c"]
    assert ds.channel_names == ["T1", "CT"] and ds.modality == ["MR", "CT"]
    assert ds.labels == {"background": 0, "tumour": 1}
    a = ds.case("a")
    assert a.images == [str(root / "imagesTr" / "a_0000.nii.gz"),
                        str(root / "imagesTr" / "a_0001.nii.gz")]
    assert a.label == str(root / "labelsTr" / "a.nii.gz") and a.roi is None


def test_discover_nnunet_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no dataset.json"):
        discover_dataset(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "dataset.json").write_text('{"foo": 1}')
    with pytest.raises(DataError, match="neither"):
        discover_dataset(tmp_path / "odd")
    root = nnunet_folder(tmp_path / "ds")
    os.remove(root / "imagesTr" / "b_0001.nii.gz")
    with pytest.raises(DataError, match=r"case 'b'.*b_0001\.nii\.gz does not exist"):
        discover_dataset(root)
    root2 = nnunet_folder(tmp_path / "ds2")
    write(root2 / "imagesTr" / "z_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError, match="case 'z'.*no label"):
        discover_dataset(root2)


def test_discover_msd_with_4d_images(tmp_path):
    root = tmp_path / "Task01"
    rng = np.random.default_rng(0)
    four_d = rng.normal(size=(2, 8, 9, 10)).astype(np.float32)  # (channel, z, y, x)
    write(root / "imagesTr" / "x_001.nii.gz", four_d, spacing=(1.0, 1.5, 2.0))
    write(root / "labelsTr" / "x_001.nii.gz", blob_label((8, 9, 10), box=((2, 5),) * 3),
          spacing=(1.0, 1.5, 2.0))
    meta = {"name": "BrainTumour", "modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "edema"},
            "training": [{"image": "./imagesTr/x_001.nii.gz", "label": "./labelsTr/x_001.nii.gz"}],
            "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = discover_dataset(root)
    assert ds.layout == "msd" and ds.case_ids() == ["x_001"]
    assert ds.modality == ["MR", "MR"] and ds.labels == {"background": 0, "edema": 1}
    vol = reading_mod.read_case_images(ds.cases[0].images)
    assert vol.array.shape == (2, 8, 9, 10)
    np.testing.assert_allclose(vol.array, four_d)
    assert vol.spacing == (1.0, 1.5, 2.0)
    case = preprocess_case(ds.cases[0], PreprocessSettings(), modality=ds.modality)
    assert case.image.shape == (2, 8, 9, 10) and case.spacing == (2.0, 1.5, 1.0)
    # a case listed twice
    meta["training"] *= 2
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'x_001' is listed twice"):
        discover_dataset(root)


def test_dataset_from_list(tmp_path):
    a = make_case(str(tmp_path), "a", roi=True)
    entries = [{"id": "a", "images": [os.path.basename(p) for p in a.images],
                "label": "a_seg.nii.gz", "roi": "a_roi.nii.gz", "split": "train"}]
    ds = dataset_from_list(entries, channel_names=["T1c", "Flair"], base_dir=tmp_path)
    assert ds.layout == "list" and ds.modality == ["MR", "MR"]
    assert ds.cases[0].images == a.images and ds.cases[0].roi == a.roi
    assert dataset_from_list(entries, base_dir=tmp_path, modality=["CT", "CT"]).modality == \
        ["CT", "CT"]
    with pytest.raises(DataError, match="listed twice"):
        dataset_from_list(entries * 2, base_dir=tmp_path)
    with pytest.raises(DataError, match=r"case 'a'.*unknown key.*lable"):
        dataset_from_list([dict(entries[0], lable="x")], base_dir=tmp_path)
    with pytest.raises(DataError, match=r"case 'a': label file .*missing\.nii\.gz does not exist"):
        dataset_from_list([dict(entries[0], label="missing.nii.gz")], base_dir=tmp_path)
    b = make_case(str(tmp_path), "b", channels=1)
    with pytest.raises(DataError, match="case 'b': 1 image file"):
        dataset_from_list(entries + [{"id": "b", "images": b.images, "label": b.label}],
                          base_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------

def test_make_splits_deterministic_and_non_empty():
    ids = [f"c{i:02d}" for i in range(20)]
    s1 = make_splits(ids, seed=3)
    rev = make_splits(list(reversed(ids)), seed=3)  # same splits, lists in the input's order
    assert {k: sorted(v) for k, v in rev.items()} == s1 and rev["train"] == s1["train"][::-1]
    assert s1 == make_splits(ids, seed=3)
    assert s1 != make_splits(ids, seed=4)
    assert sorted(sum(s1.values(), [])) == ids
    assert [len(s1[k]) for k in ("train", "validation", "test")] == [14, 3, 3]
    s3 = make_splits(ids[:3], seed=0)
    assert all(len(v) == 1 for v in s3.values())
    s4 = make_splits(ids[:4], seed=0, fractions=(8, 1, 1))
    assert [len(s4[k]) for k in ("train", "validation", "test")] == [2, 1, 1]
    assert make_splits(ids[:2], seed=0, fractions=(0.5, 0.5, 0))["test"] == []
    with pytest.raises(DataError, match="2 case"):
        make_splits(ids[:2], seed=0)
    with pytest.raises(DataError, match="appears twice"):
        make_splits(["a", "a", "b"], seed=0)


def test_load_splits(tmp_path):
    ids = ["a", "b", "c", "d"]
    good = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert load_splits(good, ids) == {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ["a"], "validation": ["b"]}))
    assert load_splits(path, ids) == {"train": ["a"], "validation": ["b"], "test": []}
    with pytest.raises(DataError, match="case 'zz' in 'test' is not a case"):
        load_splits({"train": ["a"], "validation": ["b"], "test": ["zz"]}, ids)
    with pytest.raises(DataError, match="case 'a' is in 'train' and in 'validation'"):
        load_splits({"train": ["a"], "validation": ["a"]}, ids)
    with pytest.raises(DataError, match="no validation case"):
        load_splits({"train": ["a"], "validation": [], "test": ["b"]}, ids)
    with pytest.raises(DataError, match="no training case"):
        load_splits({"validation": ["a"]}, ids)
    with pytest.raises(DataError, match="unknown key"):
        load_splits({"train": ["a"], "validation": ["b"], "tset": []}, ids)
    with pytest.raises(DataError, match="does not exist"):
        load_splits(tmp_path / "none.json", ids)


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------

def test_zscore_inside_roi_and_whole_volume(tmp_path):
    spec = make_case(str(tmp_path), "a", roi=True, seed=1)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(spec.images[0])).astype(np.float64)
    roi = sitk.GetArrayFromImage(sitk.ReadImage(spec.roi)) > 0
    case = preprocess_case(spec, PreprocessSettings(normalisation="zscore"))
    expect = (raw - raw[roi].mean()) / raw[roi].std()
    np.testing.assert_allclose(case.image[0], expect, rtol=1e-5, atol=1e-5)
    assert abs(case.image[0][roi].mean()) < 1e-5 and abs(case.image[0][roi].std() - 1) < 1e-5
    assert case.roi.dtype == np.bool_ and case.label.dtype == np.uint8
    assert case.stats["n_voxels"] == int(roi.sum())
    assert abs(case.stats["mean"][0]) < 1e-5 and len(case.stats["quantiles"][1]) == 101
    whole = preprocess_case(CaseSpec("a", spec.images, spec.label), PreprocessSettings())
    assert abs(whole.image[1].mean()) < 1e-5 and abs(whole.image[1].std() - 1) < 1e-4
    none = preprocess_case(spec, PreprocessSettings(normalisation="none"))
    np.testing.assert_allclose(none.image[0], raw, rtol=1e-6)


def test_ct_normalisation_numbers(tmp_path):
    specs = []
    for k in range(2):
        shape = (6, 7, 8)
        img = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * (k + 1) - 100
        lab = blob_label(shape, box=((1, 5), (1, 6), (1, 7)))
        specs.append(CaseSpec(f"ct{k}", [write(tmp_path / f"ct{k}.nii.gz", img)],
                              write(tmp_path / f"ct{k}_seg.nii.gz", lab)))
    fg = np.concatenate([
        sitk.GetArrayFromImage(sitk.ReadImage(s.images[0]))[
            sitk.GetArrayFromImage(sitk.ReadImage(s.label)) > 0] for s in specs]).astype(float)
    st = ct_statistics(specs)
    lo, hi = np.percentile(fg, 0.5), np.percentile(fg, 99.5)
    clipped = np.clip(fg, lo, hi)
    np.testing.assert_allclose([st["lo"][0], st["hi"][0], st["mean"][0], st["std"][0]],
                               [lo, hi, clipped.mean(), clipped.std()], rtol=1e-10)
    assert st["n_voxels"] == fg.size
    case = preprocess_case(specs[1], PreprocessSettings(), ct_dataset_stats=st, modality=["CT"])
    raw = sitk.GetArrayFromImage(sitk.ReadImage(specs[1].images[0])).astype(float)
    np.testing.assert_allclose(case.image[0], (np.clip(raw, lo, hi) - clipped.mean())
                               / clipped.std(), rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="case 'ct0'.*no dataset statistics"):
        preprocess_case(specs[0], PreprocessSettings(), modality=["CT"])
    with pytest.raises(DataError, match="case 'ct0': 1 image channel.*declares 2"):
        preprocess_case(specs[0], PreprocessSettings(), modality=["CT", "MR"])


def test_resampling_keeps_labels_integer(tmp_path):
    shape = (10, 12, 14)
    lab = blob_label(shape, value=3, box=((2, 7), (3, 9), (4, 11)))
    lab[5:7, 3:5, 4:6] = 1
    spec = CaseSpec("r", [write(tmp_path / "r.nii.gz", np.random.default_rng(0).normal(
        size=shape).astype(np.float32), spacing=(1.0, 1.0, 2.0), origin=(5, 6, 7))],
        write(tmp_path / "r_seg.nii.gz", lab, spacing=(1.0, 1.0, 2.0), origin=(5, 6, 7)))
    case = preprocess_case(spec, PreprocessSettings(target_spacing=(1.0, 2.0, 2.0)))
    assert case.image.shape == (1, 20, 6, 7) and case.label.shape == (20, 6, 7)
    assert case.spacing == (1.0, 2.0, 2.0) and case.image.dtype == np.float32
    assert case.label.dtype == np.uint8
    assert set(np.unique(case.label)) <= {0, 1, 3} and 3 in np.unique(case.label)
    assert case.source == SourceGeometry((1.0, 1.0, 2.0), (5.0, 6.0, 7.0),
                                         (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (14, 12, 10))
    big = lab.astype(np.uint16)
    big[big == 3] = 300
    spec2 = CaseSpec("r2", spec.images, write(tmp_path / "r2_seg.nii.gz", big,
                                              spacing=(1.0, 1.0, 2.0), origin=(5, 6, 7)))
    assert preprocess_case(spec2).label.dtype == np.int16


def test_preprocess_errors_name_the_case(tmp_path):
    good = make_case(str(tmp_path), "g")
    shape = (12, 14, 16)
    other_grid = write(tmp_path / "grid.nii.gz", blob_label(shape), spacing=(1, 1, 2))
    with pytest.raises(DataError, match="case 'g'.*grid differs"):
        preprocess_case(CaseSpec("g", good.images, other_grid))
    empty = write(tmp_path / "empty.nii.gz", np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match="case 'g'.*no foreground"):
        preprocess_case(CaseSpec("g", good.images, empty))
    frac = write(tmp_path / "frac.nii.gz", blob_label(shape).astype(np.float32) * 0.5)
    with pytest.raises(DataError, match="case 'g'.*non-integer"):
        preprocess_case(CaseSpec("g", good.images, frac))
    bad = np.zeros(shape, np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(DataError, match="case 'g'.*NaN"):
        preprocess_case(CaseSpec("g", [write(tmp_path / "nan.nrrd", bad)], good.label))
    flat = write(tmp_path / "flat.nii.gz", np.zeros((14, 16), np.float32))
    with pytest.raises(DataError, match="case 'g'.*2D"):
        preprocess_case(CaseSpec("g", [flat], good.label))
    with pytest.raises(DataError, match=r"case 'g'.*gone\.nii\.gz does not exist"):
        preprocess_case(CaseSpec("g", [str(tmp_path / "gone.nii.gz")], good.label))
    with pytest.raises(DataError, match="target_spacing"):
        PreprocessSettings(target_spacing=(1, 0, 1))
    with pytest.raises(DataError, match="normalisation"):
        PreprocessSettings(normalisation="minmax")


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    data = tmp_path / "data"
    specs = [make_case(str(data), "a", seed=1, roi=True), make_case(str(data), "b", seed=2)]
    cache = tmp_path / "cache"
    calls = []
    first = preprocess_dataset(specs, PreprocessSettings(), cache,
                               progress=lambda *a: calls.append(a))
    assert calls == [(1, 2, "a"), (2, 2, "b")]
    assert not any(c.from_cache for c in first)
    assert sorted(os.listdir(cache)) == ["a.json", "a.npz", "b.json", "b.npz"]

    def refuse(*_a, **_k):
        raise AssertionError("a cached case was read again")

    with monkeypatch.context() as m:
        for name in ("read_images", "read_label", "read_volume", "read_4d_channels"):
            m.setattr(reading_mod, name, refuse)
        again = preprocess_dataset(specs, PreprocessSettings(), cache)
    assert all(c.from_cache for c in again)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label, y.label)
        assert x.label.dtype == y.label.dtype and x.spacing == y.spacing
        assert x.stats == y.stats and x.source == y.source
    assert again[0].roi is not None and again[1].roi is None

    # change an input of case b: b is redone, a still comes from the cache
    img = sitk.ReadImage(specs[1].images[0])
    sitk.WriteImage(img * 2.0 + 1.0, specs[1].images[0])
    st = os.stat(specs[1].images[0])
    os.utime(specs[1].images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = preprocess_dataset(specs, PreprocessSettings(), cache)
    assert [c.from_cache for c in third] == [True, False]
    # other settings: everything redone; a corrupt npz is redone too
    fourth = preprocess_dataset(specs, PreprocessSettings(normalisation="none"), cache)
    assert not any(c.from_cache for c in fourth)
    (cache / "a.npz").write_bytes(b"garbage")
    fifth = preprocess_dataset(specs, PreprocessSettings(normalisation="none"), cache)
    assert [c.from_cache for c in fifth] == [False, True]
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]


def test_preprocess_dataset_checks_files_first(tmp_path):
    a = make_case(str(tmp_path), "a")
    b = CaseSpec("b", [str(tmp_path / "missing.nii.gz")], a.label)
    seen = []
    with pytest.raises(DataError, match=r"case 'b'.*missing\.nii\.gz does not exist"):
        preprocess_dataset([a, b], PreprocessSettings(), tmp_path / "c",
                           progress=lambda *x: seen.append(x))
    assert seen == []  # nothing was processed before the missing file was reported


# --------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------

def synthetic_case(cid, shape=(20, 22, 24), roi=True, values=(1,), seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    for k, v in enumerate(values):
        lab[3 + 3 * k:5 + 3 * k, 4:8, 5:9] = v
    r = None
    if roi:
        r = np.zeros(shape, bool)
        r[2:-2, 2:-2, 2:-2] = True
    img = rng.normal(size=(2,) + shape).astype(np.float32)
    from JCSAugmentLib.io import case_statistics
    return Case(cid, img, lab, r, (1.0, 1.0, 1.0), case_statistics(img, r),
                SourceGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                               (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), shape[::-1]))


def test_sampler_fractions_classes_and_roi():
    cases = [synthetic_case("a", seed=0), synthetic_case("b", roi=False, seed=1)]
    s = PatchSampler(cases, (8, 8, 8), fg_fraction=0.5)
    rng = np.random.default_rng(0)
    for _ in range(30):
        d = s.sample(10, rng)
        assert d.patch_class.tolist() == [1] * 5 + [0] * 5
        assert d.centre_label.dtype == torch.long and d.patch_class.dtype == torch.long
        for ci, c, v in zip(d.case_index, d.centres, d.centre_label.tolist()):
            case = cases[ci]
            assert case.label[c] == v
            if v == 0 and case.roi is not None:
                assert case.roi[c]
    d = s.sample(7, np.random.default_rng(1))
    assert d.patch_class.tolist() == [1] * 4 + [0] * 3  # round(3.5) half up
    assert PatchSampler(cases, (8, 8, 8), fg_fraction=0.25).sample(
        4, rng).patch_class.tolist() == [1, 0, 0, 0]
    # both cases get drawn, tensors are shared and shaped for augment_patches
    counts = np.bincount(s.sample(400, rng).case_index, minlength=2)
    assert counts.min() > 120
    ims, labs = s.images([0, 0, 1]), s.labels([0, 0, 1])
    assert ims[0] is ims[1] and labs[0] is labs[1] and ims[0] is not ims[2]
    assert ims[0].dtype == torch.float32 and tuple(labs[0].shape) == (1, 20, 22, 24)
    assert labs[0].dtype == torch.uint8
    st = s.stats([1, 0, 1])
    assert tuple(st.mean.shape) == (3, 2) and tuple(st.quantiles.shape) == (3, 2, 101)
    assert torch.allclose(st.mean[1], torch.tensor(cases[0].stats["mean"]))


def test_sampler_background_rejection_matches_roi():
    # background fills most of the volume: drawn by rejection, still inside the ROI only
    case = synthetic_case("a")
    s = PatchSampler([case], (4, 4, 4), fg_fraction=0.0)
    assert s._bg[0].index is None and s._fg == [None]
    d = s.sample(500, np.random.default_rng(0))
    assert all(case.roi[c] and case.label[c] == 0 for c in d.centres)
    z = np.array([c[0] for c in d.centres])
    assert z.min() == 2 and z.max() == 17  # covers the ROI's extent
    # a small ROI: background drawn from a stored int32 index list
    case.roi[:] = False
    case.roi[10:14, 10:14, 10:14] = True
    s = PatchSampler([case], (4, 4, 4), fg_fraction=0.0)
    assert s._bg[0].index.dtype == np.int32 and s._bg[0].index.size == 64
    d = s.sample(300, np.random.default_rng(0))
    assert len(set(d.centres)) > 50 and all(case.roi[c] for c in d.centres)


def test_sampler_class_balanced():
    cases = [synthetic_case("a", values=(1, 2)), synthetic_case("b", values=(1, 4))]
    s = PatchSampler(cases, (8, 8, 8), class_balanced=True)
    assert s.label_values == [1, 2, 4, 0]
    rng = np.random.default_rng(0)
    d = s.sample(8, rng)
    assert sorted(d.centre_label.tolist()) == [0, 0, 1, 1, 2, 2, 4, 4]
    assert d.centre_label.tolist()[-2:] == [0, 0]
    for ci, c, v in zip(d.case_index, d.centres, d.centre_label.tolist()):
        assert cases[ci].label[c] == v
        if v == 2:
            assert ci == 0
        if v == 4:
            assert ci == 1
    assert (d.patch_class == (d.centre_label > 0).long()).all()
    d = s.sample(6, rng)
    assert sorted(np.bincount(d.centre_label.numpy(), minlength=5)[[0, 1, 2, 4]]) == [1, 1, 2, 2]


def test_sampler_patch_too_large_and_bad_args():
    with pytest.raises(DataError, match=r"case 'a': patch size \(8, 8, 30\).*image \(20, 22, 24\)"):
        PatchSampler([synthetic_case("a")], (8, 8, 30))
    with pytest.raises(DataError, match="fg_fraction"):
        PatchSampler([synthetic_case("a")], (8, 8, 8), fg_fraction=1.5)
    full = synthetic_case("full")
    full.label[full.roi] = 1
    with pytest.raises(DataError, match="case 'full': no background voxel.*inside the ROI"):
        PatchSampler([full], (8, 8, 8))


def test_sampler_feeds_augment_patches():
    from JCSAugmentLib.augment.tra import augment_patches, sample_tra_params
    from JCSAugmentLib.policy import make_tra_policy
    cases = [synthetic_case("a", values=(1, 2)), synthetic_case("b")]
    s = PatchSampler(cases, (8, 8, 8))
    d = s.sample(4, np.random.default_rng(0))
    g = torch.Generator().manual_seed(0)
    draw = make_tra_policy("nnunet").sample(d.patch_class, g)
    params = sample_tra_params(draw.choices, g)
    x, y = augment_patches(s.images(d.case_index), s.labels(d.case_index), d.centres, params,
                           s.stats(d.case_index), (8, 8, 8))
    assert tuple(x.shape) == (4, 2, 8, 8, 8) and tuple(y.shape) == (4, 1, 8, 8, 8)
    assert y.dtype == torch.uint8 and set(y.unique().tolist()) <= {0, 1, 2}


def test_preprocessed_shape_matches_what_preprocess_image_makes():
    import numpy as np
    import SimpleITK as sitk
    from JCSAugmentLib.data.preprocess import (PreprocessSettings, preprocess_image,
                                               preprocessed_shape)
    from JCSAugmentLib.io.volume import read_images
    import tempfile, os
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(9, 20, 15))
                                 .astype(np.float32))
    img.SetSpacing((1.3, 0.7, 2.5))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "img.nii.gz")
        sitk.WriteImage(img, path)
        vol = read_images([path])
        for target in (None, (1.0, 1.0, 1.0), (2.5, 0.5, 1.3)):
            settings = PreprocessSettings(target_spacing=target)
            data = preprocess_image(vol, settings)[0]
            assert preprocessed_shape(vol.size, vol.spacing, settings) == data.shape[1:]
