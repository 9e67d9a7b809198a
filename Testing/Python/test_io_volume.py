"""Tests for JCSAugmentLib.io.volume (synthetic volumes written with SimpleITK)."""

import os
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from JCSAugmentLib.io import (  # noqa: E402
    Volume,
    VolumeError,
    case_statistics,
    crop_with_padding,
    read_images,
    read_label,
    read_volume,
    sample_centres,
)

# a proper rotation (det = +1) that is not the identity: x<->y swapped, z flipped
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-10.5, 20.25, 3.0)


def _write(path, array, spacing=SPACING, origin=ORIGIN, direction=DIRECTION, vector=False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return str(path)


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_scalar_round_trip(tmp_path, ext):
    arr = _rand((5, 6, 7))  # (z, y, x)
    path = _write(tmp_path / ("img" + ext), arr)
    vol = read_volume(path)
    assert isinstance(vol, Volume)
    assert vol.array.shape == (1, 5, 6, 7)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[0], arr)
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(vol.origin, ORIGIN, rtol=1e-6)
    np.testing.assert_allclose(vol.direction, DIRECTION, atol=1e-6)
    assert vol.path == path
    assert vol.size == (7, 6, 5)
    assert vol.shape_zyx == (5, 6, 7)
    assert vol.num_channels == 1


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_vector_round_trip_channels_first(tmp_path, ext):
    arr = _rand((4, 5, 6, 3), seed=1)  # (z, y, x, components)
    path = _write(tmp_path / ("vec" + ext), arr, vector=True)
    vol = read_volume(path)
    assert vol.array.shape == (3, 4, 5, 6)
    assert vol.array.flags["C_CONTIGUOUS"]
    for c in range(3):
        np.testing.assert_array_equal(vol.array[c], arr[..., c])
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(vol.direction, DIRECTION, atol=1e-6)


def test_integer_image_becomes_float32(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    vol = read_volume(_write(tmp_path / "int.nrrd", arr))
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array[0], arr.astype(np.float32))


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_label_round_trip(tmp_path, ext, dtype):
    lab = np.zeros((4, 5, 6), dtype=dtype)
    lab[1:3, 2:4, 1:5] = 2
    lab[0, 0, 0] = 4
    img_path = _write(tmp_path / ("img" + ext), _rand((4, 5, 6)))
    lab_path = _write(tmp_path / ("lab" + ext), lab)
    ref = read_volume(img_path)
    vol = read_label(lab_path, reference=ref)
    assert vol.array.shape == (1, 4, 5, 6)
    assert vol.array.dtype == np.int64
    np.testing.assert_array_equal(vol.array[0], lab.astype(np.int64))
    # without a reference too
    np.testing.assert_array_equal(read_label(lab_path).array, vol.array)


def test_read_images_stacks_channels(tmp_path):
    t1 = _rand((4, 5, 6), seed=2)
    fl = _rand((4, 5, 6), seed=3)
    p1 = _write(tmp_path / "t1c.nii.gz", t1)
    p2 = _write(tmp_path / "flair.nrrd", fl)
    vol = read_images([p1, p2])
    assert vol.array.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(vol.array[0], t1)
    np.testing.assert_array_equal(vol.array[1], fl)
    assert vol.path == p1
    assert vol.channel_paths == (p1, p2)
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-6)


def test_grid_within_tolerance_is_accepted(tmp_path):
    p1 = _write(tmp_path / "a.nii.gz", _rand((4, 5, 6)))
    spacing = tuple(s * (1 + 2e-5) for s in SPACING)
    origin = (ORIGIN[0] + 1e-5, ORIGIN[1], ORIGIN[2])
    p2 = _write(tmp_path / "b.nrrd", np.zeros((4, 5, 6), np.uint8), spacing, origin)
    read_label(p2, reference=read_volume(p1))


# ---------------------------------------------------------------- errors


def _assert_volume_error(func, path, *fragments):
    with pytest.raises(VolumeError) as info:
        func()
    msg = str(info.value)
    assert os.path.basename(str(path)) in msg, msg
    for frag in fragments:
        assert frag.lower() in msg.lower(), msg
    assert isinstance(info.value, ValueError)
    return msg


def test_missing_file(tmp_path):
    path = tmp_path / "nothere.nii.gz"
    _assert_volume_error(lambda: read_volume(path), path, "does not exist")
    _assert_volume_error(lambda: read_label(path), path, "does not exist")
    _assert_volume_error(lambda: read_images([path]), path, "does not exist")


def test_unreadable_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not a NIfTI file")
    _assert_volume_error(lambda: read_volume(path), path, "could not read")
    path2 = tmp_path / "truncated.nrrd"
    path2.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n12")
    _assert_volume_error(lambda: read_volume(path2), path2)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG")
    _assert_volume_error(lambda: read_volume(path), path, "unsupported")


def test_2d_image(tmp_path):
    path = _write(tmp_path / "flat.nii.gz", _rand((5, 6)), SPACING[:2], ORIGIN[:2], (1, 0, 0, 1))
    _assert_volume_error(lambda: read_volume(path), path, "2D")
    _assert_volume_error(lambda: read_label(path), path, "2D")


def test_4d_non_vector_image(tmp_path):
    path = tmp_path / "time.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_rand((3, 4, 5, 6)), isVector=False), str(path))
    assert sitk.ReadImage(str(path)).GetDimension() == 4
    _assert_volume_error(lambda: read_volume(path), path, "4D", "not a vector image")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_nan_and_inf_voxels(tmp_path, ext):
    # (ITK's NIfTI reader silently turns NaN/inf into 0; read_volume must still see them)
    arr = _rand((4, 5, 6))
    arr[0, 0, :3] = np.nan
    arr[2, 2, 2] = np.inf
    arr[3, 1, 1] = -np.inf
    path = _write(tmp_path / ("nan" + ext), arr)
    msg = _assert_volume_error(lambda: read_volume(path), path, "5 non-finite")
    assert "3 NaN" in msg and "2 inf" in msg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_in_vector_nifti(tmp_path, dtype):
    arr = _rand((4, 5, 6, 2)).astype(dtype)
    arr[1, 2, 3, 1] = np.nan
    path = _write(tmp_path / "vecnan.nii.gz", arr, vector=True)
    _assert_volume_error(lambda: read_volume(path), path, "1 non-finite", "1 NaN, 0 inf")


def test_label_non_integer(tmp_path):
    lab = np.zeros((4, 5, 6), np.float32)
    lab[1, 1, 1] = 0.5
    lab[2, 2, 2] = 1.0
    path = _write(tmp_path / "frac.nii.gz", lab)
    _assert_volume_error(lambda: read_label(path), path, "non-integer", "0.5")


def test_label_negative(tmp_path):
    lab = np.zeros((4, 5, 6), np.int16)
    lab[1, 1, 1] = -3
    path = _write(tmp_path / "neg.nrrd", lab)
    _assert_volume_error(lambda: read_label(path), path, "negative", "-3")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_label_nan(tmp_path, ext):
    lab = np.zeros((4, 5, 6), np.float32)
    lab[1, 1, 1] = np.nan
    path = _write(tmp_path / ("nanlab" + ext), lab)
    _assert_volume_error(lambda: read_label(path), path, "NaN")


def test_label_vector_image(tmp_path):
    path = _write(tmp_path / "veclab.nrrd", np.zeros((4, 5, 6, 2), np.uint8), vector=True)
    _assert_volume_error(lambda: read_label(path), path, "scalar")


@pytest.mark.parametrize(
    "prop, kwargs, expect",
    [
        ("size", {"shape": (4, 5, 7)}, "(7, 5, 4)"),
        ("spacing", {"spacing": (0.7, 1.3, 2.6)}, "2.6"),
        ("origin", {"origin": (-10.5, 20.5, 3.0)}, "20.5"),
        ("direction", {"direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}, "(1, 0, 0"),
    ],
)
def test_grid_mismatch(tmp_path, prop, kwargs, expect):
    ref_path = _write(tmp_path / "ref.nii.gz", _rand((4, 5, 6)))
    shape = kwargs.pop("shape", (4, 5, 6))
    args = {"spacing": SPACING, "origin": ORIGIN, "direction": DIRECTION}
    args.update(kwargs)
    lab_path = _write(tmp_path / "lab.nrrd", np.zeros(shape, np.uint8), **args)
    ref = read_volume(ref_path)
    msg = _assert_volume_error(lambda: read_label(lab_path, reference=ref), lab_path, prop, expect)
    assert "ref.nii.gz" in msg  # names the reference too
    # the same check applies to read_images
    img_path = _write(tmp_path / "img2.mha", np.zeros(shape, np.float32), **args)
    _assert_volume_error(lambda: read_images([ref_path, img_path]), img_path, prop)


def test_read_images_empty_list():
    with pytest.raises(VolumeError):
        read_images([])


def test_volume_error_is_picklable():
    err = pickle.loads(pickle.dumps(VolumeError("/x/a.nii", "broken")))
    assert isinstance(err, VolumeError)
    assert str(err) == "/x/a.nii: broken"
    assert err.path == "/x/a.nii" and err.problem == "broken"


# ---------------------------------------------------------------- statistics


def test_case_statistics_known_values():
    x = np.arange(101, dtype=np.float32).reshape(101, 1, 1)
    image = np.stack([x, 2 * x + 1])  # (2, 101, 1, 1)
    st = case_statistics(image)
    np.testing.assert_allclose(st["mean"], [50.0, 101.0])
    np.testing.assert_allclose(st["std"], [np.std(np.arange(101)), 2 * np.std(np.arange(101))])
    assert st["min"] == [0.0, 1.0]
    assert st["max"] == [100.0, 201.0]
    q = np.asarray(st["quantiles"])
    assert q.shape == (2, 101)
    np.testing.assert_allclose(q[0], np.arange(101))
    np.testing.assert_allclose(q[1], 2 * np.arange(101) + 1)
    assert all(isinstance(v, float) for v in st["mean"] + q[0].tolist())


def test_case_statistics_mask_and_quantile_count():
    x = np.arange(101, dtype=np.float32).reshape(101, 1, 1)
    image = x[np.newaxis]
    mask = (x >= 50)  # voxels 50..100
    st = case_statistics(image, mask, quantiles=5)
    assert st["min"] == [50.0] and st["max"] == [100.0]
    np.testing.assert_allclose(st["mean"], [75.0])
    np.testing.assert_allclose(st["quantiles"][0], [50, 62.5, 75, 87.5, 100])
    with pytest.raises(ValueError):
        case_statistics(image, np.zeros_like(mask))
    with pytest.raises(ValueError):
        case_statistics(image, mask[:50])


def test_case_statistics_subsample_is_deterministic():
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 1, size=(1, 60, 200, 200)).astype(np.float32)  # 2.4e6 voxels
    a = case_statistics(image, quantiles=11)
    b = case_statistics(image, quantiles=11)
    assert a == b
    q = np.asarray(a["quantiles"][0])
    assert q[0] == a["min"][0] and q[-1] == a["max"][0]
    np.testing.assert_allclose(q, np.linspace(0, 1, 11), atol=0.005)


# ---------------------------------------------------------------- crops


def _reference_crop(array, centre, size, pad_values):
    margin = max(size) + max(array.shape) + 2
    padded = np.empty(
        (array.shape[0],) + tuple(s + 2 * margin for s in array.shape[1:]), array.dtype
    )
    for c, v in enumerate(pad_values):
        padded[c] = v
    padded[:, margin:-margin, margin:-margin, margin:-margin] = array
    sl = tuple(slice(c - s // 2 + margin, c - s // 2 + margin + s) for c, s in zip(centre, size))
    return padded[(slice(None),) + sl]


@pytest.mark.parametrize("size", [(3, 4, 5), (8, 1, 6), (12, 12, 12)])
def test_crop_with_padding_matches_reference(size):
    rng = np.random.default_rng(7)
    array = rng.normal(size=(2, 7, 8, 9)).astype(np.float32)
    for z in (-6, -1, 0, 1, 3, 5, 6, 7, 12):
        for y in (-2, 0, 4, 7, 8):
            for x in (-1, 0, 4, 8, 9, 15):
                centre = (z, y, x)
                for pad in (0.0, [-1.0, 5.0]):
                    out = crop_with_padding(array, centre, size, pad)
                    pads = [pad, pad] if np.isscalar(pad) else pad
                    ref = _reference_crop(array, centre, size, pads)
                    assert out.shape == (2,) + size
                    assert out.dtype == array.dtype
                    np.testing.assert_array_equal(out, ref, err_msg=f"centre {centre} pad {pad}")


def test_crop_with_padding_returns_copy_and_accepts_3d():
    array = np.arange(2 * 6 * 6 * 6, dtype=np.int64).reshape(2, 6, 6, 6)
    out = crop_with_padding(array, (3, 3, 3), (2, 2, 2), 0)
    out[...] = -7
    assert array.min() >= 0
    lab = array[0]
    out3 = crop_with_padding(lab, (0, 0, 0), (4, 4, 4), -1)
    assert out3.shape == (4, 4, 4)
    # centre 0, size 4: the crop starts 2 voxels before the volume
    np.testing.assert_array_equal(out3[2:, 2:, 2:], lab[:2, :2, :2])
    assert (out3[:2] == -1).all() and (out3[:, :2] == -1).all() and (out3[:, :, :2] == -1).all()
    with pytest.raises(ValueError):
        crop_with_padding(array, (3, 3, 3), (2, 2, 2), [1, 2, 3])
    with pytest.raises(ValueError):
        crop_with_padding(array, (3, 3), (2, 2, 2), 0)


# ---------------------------------------------------------------- centres


def test_sample_centres_classes_and_roi():
    label = np.zeros((10, 12, 14), np.int64)
    label[2:4, 3:5, 4:6] = 1
    label[7, 8, 9] = 3
    roi = np.zeros(label.shape, bool)
    roi[:, :6, :] = True
    rng = np.random.default_rng(0)
    fg, bg = sample_centres(label, 500, 700, rng, roi=roi)
    assert fg.shape == (500, 3) and bg.shape == (700, 3)
    assert fg.dtype == np.int64 and bg.dtype == np.int64
    assert (label[tuple(fg.T)] > 0).all()
    assert (label[tuple(bg.T)] == 0).all()
    assert roi[tuple(bg.T)].all()
    # uniform over foreground voxels: the single label-3 voxel is hit ~1/9 of the time
    hits = int((label[tuple(fg.T)] == 3).sum())
    assert 20 < hits < 100
    # without a ROI, background covers the whole volume
    _, bg2 = sample_centres(label, 0, 2000, np.random.default_rng(1))
    assert (bg2[:, 1] >= 6).any()
    # deterministic for a given seed
    a = sample_centres(label, 5, 5, np.random.default_rng(3), roi=roi)
    b = sample_centres(label, 5, 5, np.random.default_rng(3), roi=roi)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_sample_centres_errors():
    rng = np.random.default_rng(0)
    empty = np.zeros((4, 4, 4), np.int64)
    with pytest.raises(ValueError, match="foreground"):
        sample_centres(empty, 1, 1, rng)
    full = np.ones((4, 4, 4), np.int64)
    with pytest.raises(ValueError, match="background"):
        sample_centres(full, 1, 1, rng)
    label = np.zeros((4, 4, 4), np.int64)
    label[:2] = 1
    roi = label > 0  # ROI only covers foreground
    with pytest.raises(ValueError, match="ROI"):
        sample_centres(label, 1, 1, rng, roi=roi)
    with pytest.raises(ValueError):
        sample_centres(label, 1, 1, rng, roi=roi[:2])
