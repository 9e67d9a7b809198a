"""The TRA cascade: label validity, identity, seeding, magnitudes, exactness, bad input."""

import pytest
import torch

from JCSAugmentLib.augment import (CaseStats, TRA_GROUPS, apply_tra, max_crop_size,
                                   required_crop_size, sample_tra_params)
from JCSAugmentLib.augment import geometry, intensity
from JCSAugmentLib.augment.tra import TRAParams
from JCSAugmentLib.io.volume import case_statistics

PATCH = (12, 14, 16)


def smooth_batch(b, shape, seed=0, channels=2):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, channels, *[max(2, s // 4) for s in shape], generator=g)
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear",
                                           align_corners=False)


def label_batch(b, shape, values=(0, 2, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (b, 1, *[max(2, s // 3) for s in shape]), generator=g)
    idx = torch.nn.functional.interpolate(idx.float(), size=shape, mode="nearest").long()
    return torch.tensor(values)[idx]


def one_option_choices(gi, oi, b=3):
    ch = torch.zeros(b, len(TRA_GROUPS), dtype=torch.long)
    ch[:, gi] = oi
    return ch


def run(choices, seed=0, label_mode="linear", force=False, b=None):
    g = torch.Generator().manual_seed(seed)
    params = sample_tra_params(choices, g)
    crop = required_crop_size(params, PATCH)
    b = choices.shape[0]
    img = smooth_batch(b, crop)
    lab = label_batch(b, crop)
    stats = CaseStats.from_patch(img, quantiles=33)
    out, out_lab = apply_tra(img, lab, params, stats, PATCH, label_mode=label_mode,
                             force_resampling=force)
    return img, lab, out, out_lab, params


ALL_OPTIONS = [(gi, oi) for gi, g in enumerate(TRA_GROUPS) for oi in range(1, g.size)]


@pytest.mark.parametrize("gi,oi", ALL_OPTIONS,
                         ids=[f"{TRA_GROUPS[g].name}-{TRA_GROUPS[g].options[o].name}"
                              for g, o in ALL_OPTIONS])
def test_every_option_keeps_labels_valid_and_image_finite(gi, oi):
    for mode in ("linear", "nearest"):
        _img, lab, out, out_lab, _p = run(one_option_choices(gi, oi), label_mode=mode)
        assert out.shape == (3, 2, *PATCH) and out_lab.shape == (3, 1, *PATCH)
        assert out_lab.dtype == lab.dtype
        assert set(out_lab.unique().tolist()) <= {0, 2, 5}
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("gi,oi", ALL_OPTIONS[:: 5])
def test_each_option_changes_something(gi, oi):
    img, _lab, out, _l, _p = run(one_option_choices(gi, oi))
    assert not torch.equal(out, geometry.centre_crop(img, PATCH))


def test_identity_policy_changes_nothing():
    img, lab, out, out_lab, _ = run(torch.zeros(4, 15, dtype=torch.long))
    assert torch.equal(out, geometry.centre_crop(img, PATCH))
    assert torch.equal(out_lab, geometry.centre_crop(lab, PATCH))


def random_choices(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, grp.size, (b,), generator=g) for grp in TRA_GROUPS], 1)


def test_same_seed_same_patches_and_different_seed_differs():
    ch = random_choices(5, 3)
    a = run(ch, seed=7)
    b = run(ch, seed=7)
    c = run(ch, seed=8)
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    assert not torch.equal(a[2], c[2])


def test_replaying_params_gives_the_same_patches():
    img, lab, out, out_lab, params = run(random_choices(4, 5))
    stats = CaseStats.from_patch(img, quantiles=33)
    again, again_lab = apply_tra(img, lab, params, stats, PATCH)
    assert torch.equal(out, again) and torch.equal(out_lab, again_lab)


def test_samples_are_independent_of_their_batch_neighbours():
    ch = random_choices(4, 11)
    params = sample_tra_params(ch, torch.Generator().manual_seed(0))
    params.choices[:, 13] = 0  # noise draws from one stream per batch; leave it out here
    crop = max_crop_size(PATCH)
    img, lab = smooth_batch(4, crop), label_batch(4, crop)
    stats = CaseStats.from_patch(img, quantiles=33)
    full, full_lab = apply_tra(img, lab, params, stats, PATCH)
    for i in range(4):
        one, one_lab = apply_tra(img[i:i + 1], lab[i:i + 1], params.select([i]),
                                 stats.select(torch.tensor([i])), PATCH)
        assert torch.allclose(one, full[i:i + 1], atol=1e-5)
        assert torch.equal(one_lab, full_lab[i:i + 1])


def test_exact_and_interpolated_paths_agree_on_quarter_turns_and_flips():
    # every combination of quarter turns about each axis and mirrors, on a cubic patch
    cube = (12, 12, 12)
    rows = []
    for k0 in (0, 1, -1):
        for k1 in (0, 1, -1):
            for k2 in (0, 1, -1):
                for f in range(8):
                    rows.append((k0, k1, k2, f & 1, (f >> 1) & 1, (f >> 2) & 1))
    rows = torch.tensor(rows)
    b = rows.shape[0]
    ch = torch.zeros(b, 15, dtype=torch.long)
    vals = torch.ones(b, 15, dtype=torch.float64)
    vals[:, :] = 0
    vals[:, 0] = 1
    for a in range(3):
        g = 1 + a
        ch[:, g] = torch.where(rows[:, a] != 0, 4, 0)
        vals[:, g] = rows[:, a].double()
        ch[:, 4 + a] = rows[:, 3 + a]
        vals[:, 4 + a] = rows[:, 3 + a].double()
    for gi, grp in enumerate(TRA_GROUPS[7:], start=7):
        vals[:, gi] = 1.0 if grp.options[1].op in ("gamma", "inv_gamma", "bscale", "contrast",
                                                     "lowres") else 0.0
    params = TRAParams(ch, vals, 0)
    crop = required_crop_size(params, cube)
    img = smooth_batch(b, crop, channels=1).double()
    lab = label_batch(b, crop)
    stats = CaseStats.from_patch(img)
    exact, exact_lab = apply_tra(img, lab, params, stats, cube)
    interp, interp_lab = apply_tra(img, lab, params, stats, cube, force_resampling=True)
    assert torch.allclose(exact, interp, atol=1e-9)
    assert torch.equal(exact_lab, interp_lab)


def test_rotation_matrix_matches_torch_rot90():
    x = torch.arange(5 * 5 * 5, dtype=torch.float64).reshape(1, 1, 5, 5, 5)
    for axis in range(3):
        b, c = geometry.plane(axis)
        a = geometry.rotation_matrix(axis, torch.tensor([90.0]))
        got = geometry.affine_resample(x, a, (5, 5, 5))
        assert torch.allclose(got, torch.rot90(x, 1, dims=(b + 2, c + 2)), atol=1e-9)


def test_magnitudes_are_jittered_within_the_table_ranges():
    n = 400
    g = torch.Generator().manual_seed(0)
    for gi, grp in enumerate(TRA_GROUPS):
        for oi, opt in enumerate(grp.options[1:], start=1):
            v = sample_tra_params(one_option_choices(gi, oi, n), g).values[:, gi]
            m = opt.magnitude
            if opt.op == "flip":
                assert (v == 1).all()
            elif opt.op == "rot90":
                assert set(v.tolist()) == {-1.0, 1.0}
            elif opt.op in ("rotate", "shift"):
                lo = max(0.0, m - grp.jitter.width)
                assert (v.abs() >= lo - 1e-9).all() and (v.abs() <= m + grp.jitter.width + 1e-9).all()
                assert (v > 0).any() and (v < 0).any()
            elif opt.op in ("scale", "gamma", "inv_gamma", "bscale", "contrast"):
                u = torch.where(v >= 1, v - 1, 1 / v - 1)
                lo = max(0.0, m - grp.jitter.width)
                assert (u >= lo - 1e-9).all() and (u <= m + grp.jitter.width + 1e-9).all()
                assert (v > 1).any() and (v < 1).any()
            else:  # blur, sharpen, noise, lowres: U(m - w, m + w), clamped at 0 for noise
                lo = max(0.0, m - grp.jitter.width) if grp.jitter.clamp_at_zero else m - grp.jitter.width
                assert (v >= lo - 1e-9).all() and (v <= m + grp.jitter.width + 1e-9).all()


def test_crop_sizes():
    for seed in range(5):
        params = sample_tra_params(random_choices(8, seed), torch.Generator().manual_seed(seed))
        need = required_crop_size(params, PATCH)
        assert all(n >= p and (n - p) % 2 == 0 for n, p in zip(need, PATCH))
        assert all(n <= m for n, m in zip(need, max_crop_size(PATCH)))
    none = sample_tra_params(torch.zeros(2, 15, dtype=torch.long))
    assert required_crop_size(none, PATCH) == PATCH


def test_gamma_restores_the_case_mean_and_std():
    g = torch.Generator().manual_seed(0)
    # an MR-like histogram: dark background plus three skewed tissue classes
    tissue = torch.randint(0, 4, (1, 1, 40, 40, 40), generator=g)
    centre = torch.tensor([0.0, 2.0, 3.0, 5.0])[tissue]
    case = centre + 0.4 * torch.randn(tissue.shape, generator=g).abs()
    st = case_statistics(case[0].numpy(), quantiles=101)
    stats = CaseStats.from_cases([st])
    for gam in (0.6, 1.5):
        y = intensity.gamma(case, torch.tensor([gam]), stats)
        assert not torch.allclose(y, case)
        assert abs(float(y.mean()) - st["mean"][0]) < 0.01 * st["std"][0]
        assert abs(float(y.std()) / st["std"][0] - 1) < 0.01
    assert torch.allclose(intensity.gamma(case, torch.tensor([1.0]), stats), case, atol=1e-5)


def test_contrast_and_sharpen_stay_in_the_case_range():
    x = smooth_batch(2, (10, 10, 10))
    stats = CaseStats.from_patch(x)
    for fn, m in ((intensity.contrast, 1.5), (intensity.sharpen, 0.5)):
        y = fn(x, torch.tensor([m, m]), stats)
        assert (y >= stats.min[..., None, None, None] - 1e-6).all()
        assert (y <= stats.max[..., None, None, None] + 1e-6).all()


def test_blur_preserves_a_constant_and_smooths_noise():
    c = torch.full((1, 1, 8, 8, 8), 3.0)
    assert torch.allclose(intensity.blur(c, torch.tensor([0.9])), c, atol=1e-5)
    n = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    assert intensity.blur(n, torch.tensor([0.9])).std() < 0.6 * n.std()


# ---- bad input ------------------------------------------------------------------------------

def _ok_inputs(b=2):
    params = sample_tra_params(torch.zeros(b, 15, dtype=torch.long))
    img = smooth_batch(b, PATCH)
    return img, label_batch(b, PATCH), params, CaseStats.from_patch(img)


def test_bad_input_errors_name_the_problem():
    img, lab, params, stats = _ok_inputs()
    with pytest.raises(ValueError, match="shaped"):
        apply_tra(img[0], lab, params, stats, PATCH)
    with pytest.raises(TypeError, match="floating"):
        apply_tra(img.long(), lab, params, stats, PATCH)
    with pytest.raises(TypeError, match="integer"):
        apply_tra(img, lab.float(), params, stats, PATCH)
    with pytest.raises(ValueError, match="differ"):
        apply_tra(img, lab[..., :-1], params, stats, PATCH)
    bad = img.clone()
    bad[1, 0, 2, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf voxels \(samples \[1\]\)"):
        apply_tra(bad, lab, params, stats, PATCH)
    with pytest.raises(ValueError, match="negative"):
        apply_tra(img, lab - 1, params, stats, PATCH)
    with pytest.raises(ValueError, match="statistics"):
        apply_tra(img, lab, params, CaseStats.from_patch(img[:1]), PATCH)
    with pytest.raises(ValueError, match="samples"):
        apply_tra(img, lab, params.select([0]), stats, PATCH)
    with pytest.raises(ValueError, match="label_mode"):
        apply_tra(img, lab, params, stats, PATCH, label_mode="cubic")


def test_too_small_crop_is_refused():
    ch = one_option_choices(0, 5, 2)  # strongest scaling
    params = sample_tra_params(ch, torch.Generator().manual_seed(0))
    params.values[:, 0] = 1 / 1.5  # zoom out: needs 1.5x the patch
    img = smooth_batch(2, PATCH)
    with pytest.raises(ValueError, match="too small"):
        apply_tra(img, None, params, CaseStats.from_patch(img), PATCH)


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match="shape"):
        sample_tra_params(torch.zeros(2, 14, dtype=torch.long))
    ch = torch.zeros(2, 15, dtype=torch.long)
    ch[0, 4] = 2  # a mirror has 2 options
    with pytest.raises(ValueError, match="mirror_axis0"):
        sample_tra_params(ch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    ch = random_choices(6, 2)
    ch[:, 13] = 0  # noise comes from the device generator, which differs between devices
    params = sample_tra_params(ch, torch.Generator().manual_seed(0))
    crop = required_crop_size(params, PATCH)
    img, lab = smooth_batch(6, crop), label_batch(6, crop)
    stats = CaseStats.from_patch(img, quantiles=33)
    a, al = apply_tra(img, lab, params, stats, PATCH)
    b, bl = apply_tra(img.cuda(), lab.cuda(), params, stats.to("cuda"), PATCH)
    assert torch.allclose(a, b.cpu(), atol=1e-4)
    assert (al != bl.cpu()).float().mean() < 1e-3  # ties at exactly 0.5 may round differently


# ---- cropping straight from volumes ---------------------------------------------------------

def test_augment_patches_equals_apply_tra_on_centred_crops():
    from JCSAugmentLib.augment import augment_patches
    vol = smooth_batch(1, (30, 34, 38))[0]
    lab = label_batch(1, (30, 34, 38))[0].to(torch.uint8)
    ch = random_choices(8, 21)
    ch[:, 13] = 0  # noise: one stream per call, drawn for a different sub-batch order
    params = sample_tra_params(ch, torch.Generator().manual_seed(1))
    centres = [(15, 17, 19), (2, 3, 4), (29, 33, 37), (10, 30, 5), (15, 0, 19), (0, 0, 0),
               (20, 20, 20), (5, 17, 36)]  # several near or at the border: padding needed
    stats = CaseStats.from_cases([{"mean": [0.1, 0.2], "std": [1.0, 0.8], "min": [-2.5, -3.0],
                                   "max": [2.5, 3.0]}] * 8)
    got, got_lab = augment_patches([vol] * 8, [lab] * 8, centres, params, stats, PATCH)
    crop = required_crop_size(params, PATCH)
    from JCSAugmentLib.augment.geometry import crop_around
    imgs = torch.stack([crop_around(vol, c, crop, [-2.5, -3.0]) for c in centres])
    labs = torch.stack([crop_around(lab, c, crop, 0) for c in centres])
    want, want_lab = apply_tra(imgs, labs, params, stats, PATCH)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(got_lab, want_lab)


def test_crop_around_pads_per_channel_outside_the_volume():
    from JCSAugmentLib.augment.geometry import crop_around
    vol = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    inside = crop_around(vol, (2, 2, 3), (2, 3, 4))
    assert torch.equal(inside, vol[:, 1:3, 1:4, 1:5])
    out = crop_around(vol, (0, 0, 0), (4, 4, 4), pad_value=[-1.0, -2.0])
    assert torch.equal(out[:, 2:, 2:, 2:], vol[:, :2, :2, :2])
    assert (out[0, :2] == -1).all() and (out[1, :, :2] == -2).all()
    assert (crop_around(vol, (50, 50, 50), (3, 3, 3), pad_value=7.0) == 7).all()


def test_augment_patches_bad_input():
    from JCSAugmentLib.augment import augment_patches
    vol = smooth_batch(1, (20, 20, 20))[0]
    lab = label_batch(1, (20, 20, 20))[0]
    params = sample_tra_params(torch.zeros(2, 15, dtype=torch.long))
    stats = CaseStats.from_patch(vol[None].repeat(2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="one image, label and centre per sample"):
        augment_patches([vol], [lab], [(5, 5, 5)], params, stats, PATCH)
    with pytest.raises(ValueError, match="on the image's grid"):
        augment_patches([vol, vol], [lab, lab[:, :-1]], [(5, 5, 5)] * 2, params, stats, PATCH)
    with pytest.raises(TypeError, match="integer"):
        augment_patches([vol, vol], [lab, lab.float()], [(5, 5, 5)] * 2, params, stats, PATCH)
    bad = vol.clone()
    bad[0, 10, 10, 10] = float("inf")
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        augment_patches([vol, bad], [lab, lab], [(10, 10, 10)] * 2, params, stats, PATCH)


def test_slice_wise_path_agrees_with_the_3d_resampling():
    # scaling and rotations about one axis, with quarter turns and mirrors on top
    b = 24
    g = torch.Generator().manual_seed(3)
    ch = torch.zeros(b, 15, dtype=torch.long)
    ch[:, 0] = torch.randint(0, 6, (b,), generator=g)
    axis = torch.arange(b) % 3
    ch[torch.arange(b), 1 + axis] = torch.randint(1, 4, (b,), generator=g)
    ch[torch.arange(b), 1 + (axis + 1) % 3] = torch.where(torch.rand(b, generator=g) < 0.3, 4, 0)
    ch[:, 4:7] = torch.randint(0, 2, (b, 3), generator=g)
    params = sample_tra_params(ch, g)
    assert params.needs_resampling().all()
    crop = required_crop_size(params, PATCH)
    img = smooth_batch(b, crop, channels=1).double()
    lab = label_batch(b, crop)
    stats = CaseStats.from_patch(img)
    fast, fast_lab = apply_tra(img, lab, params, stats, PATCH)
    ref, ref_lab = apply_tra(img, lab, params, stats, PATCH, force_resampling=True)
    assert torch.allclose(fast, ref, atol=1e-9)
    assert (fast_lab == ref_lab).double().mean() > 0.999  # indicator ties at exactly 0.5


def test_plane_resample_equals_3d_resampling():
    x = smooth_batch(1, (20, 22, 24), channels=2).double()[0]
    for axis in range(3):
        a = (geometry.scaling_matrix(torch.tensor([1.2]))
             @ geometry.rotation_matrix(axis, torch.tensor([17.0])))[0]
        assert geometry.single_axis(a) == axis
        ref = geometry.affine_resample(x[None], a[None], (14, 16, 18), padding_mode="border")[0]
        assert torch.allclose(geometry.plane_resample(x, a, axis, (14, 16, 18)), ref,
                              atol=1e-12)
    two = (geometry.rotation_matrix(0, torch.tensor([10.0]))
           @ geometry.rotation_matrix(1, torch.tensor([10.0])))[0]
    assert geometry.single_axis(two) is None
