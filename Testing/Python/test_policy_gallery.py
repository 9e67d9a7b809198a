"""The policy gallery (augment.gallery, charts.policy_gallery, ``jcsaugment policy --gallery``)
on a small synthetic case: 40^3 voxels, 24^3 patches."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from JCSAugmentLib.augment.gallery import (NO_FOREGROUND_MESSAGE, load_gallery_policies,
                                           make_gallery, nominal_tra_params, nominal_value)
from JCSAugmentLib.augment.tables import TEA_INDEX, TRA_GROUP_INDEX, TRA_GROUPS
from JCSAugmentLib.charts.policy_gallery import _figure_size_px, draw_gallery
from JCSAugmentLib.cli import main
from JCSAugmentLib.io.volume import crop_with_padding
from JCSAugmentLib.policy import make_tea_policy, make_tra_policy, save_policy

PATCH = (24, 24, 24)
PNG = b"\x89PNG\r\n\x1a\n"


def _case():
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:40, :40, :40]
    image = np.stack([np.sin(z / 4.0) + np.cos(y / 5.0) + 0.1 * x / 40
                      + 0.05 * rng.normal(size=(40, 40, 40)),
                      rng.normal(size=(40, 40, 40))]).astype(np.float32)
    label = np.zeros((1, 40, 40, 40), np.int64)
    label[0, 14:26, 15:27, 13:25] = 1
    label[0, 18:22, 19:23, 17:21] = 2
    return image, label


@pytest.fixture(scope="module")
def case():
    return _case()


@pytest.fixture(scope="module")
def gallery(case):
    image, label = case
    return make_gallery(image, label, make_tra_policy("nnunet"), make_tea_policy("nnunet"),
                        make_tra_policy("nnunet"), make_tea_policy("nnunet"),
                        patch_size=PATCH, tea_top=4, seed=1)


def _tile(patch, group, option):
    return patch.blocks[TRA_GROUP_INDEX[group]].tiles[option]


def _original(case, centre):
    image, label = case
    pad = image.reshape(image.shape[0], -1).min(1)
    return (crop_with_padding(image, centre, PATCH, pad_value=pad),
            crop_with_padding(label, centre, PATCH, pad_value=0)[0])


def test_one_tile_per_tra_option_then_the_chosen_tea_ops(gallery):
    assert [p.name for p in gallery.patches] == ["foreground patch", "background patch"]
    assert len(gallery.tea_ops) == 4
    for patch in gallery.patches:
        assert len(patch.blocks) == len(TRA_GROUPS) + 1
        tra = [t for b in patch.blocks[:-1] for t in b.tiles]
        assert len(tra) == 62 == sum(g.size for g in TRA_GROUPS)
        assert [(t.group_index, t.option_index) for t in tra] == [
            (gi, oi) for gi, g in enumerate(TRA_GROUPS) for oi in range(g.size)]
        tea = patch.blocks[-1].tiles
        assert [t.option_index for t in tea] == gallery.tea_ops
        assert all(t.source == "tea" for t in tea)
        for t in tra + tea:
            assert t.image.shape == (2,) + PATCH and t.label.shape == PATCH
            assert np.isfinite(t.image).all()
    # nnU-Net's TEA puts 0.10 on each of its 8 mirror combinations: the top 4 are among them
    assert all(abs(t.probability - 0.10) < 1e-9 for t in gallery.patches[0].blocks[-1].tiles)
    assert gallery.patches[0].label[tuple(s // 2 for s in PATCH)] > 0  # centred on foreground
    assert gallery.patches[1].label[tuple(s // 2 for s in PATCH)] == 0


def test_captions_carry_the_probabilities_of_the_policy_passed_in(case):
    image, label = case
    tra = make_tra_policy("nnunet")
    gi = TRA_GROUP_INDEX["gamma"]
    with torch.no_grad():
        tra.policies[1].logits[gi][2] += 2.0  # foreground gamma 1.3 made more likely
    g = make_gallery(image, label, tra, None, make_tra_policy("nnunet"), None, patch_size=PATCH,
                     tea_top=0)
    fg, bg = g.patches
    p = float(torch.softmax(tra.policies[1].logits[gi].detach(), -1)[2])
    assert p > 0.3
    tile = _tile(fg, "gamma", 2)
    assert tile.probability == pytest.approx(p) and tile.initial == pytest.approx(0.1)
    assert tile.caption == f"gamma 1.3\np={p:.3f} \u25b2 init 0.100"
    # the identity of that group went down, the background class did not change
    assert "\u25bc init 0.700" in _tile(fg, "gamma", 0).caption
    assert _tile(bg, "gamma", 2).caption == "gamma 1.3\np=0.100 = init 0.100"
    assert len(fg.blocks) == len(TRA_GROUPS)  # no TEA policy: no TEA row


def test_identity_tiles_equal_the_original_crop(case, gallery):
    for patch in gallery.patches:
        img, lab = _original(case, patch.centre)
        np.testing.assert_array_equal(patch.image, img)
        for block in patch.blocks[:-1]:
            t = block.tiles[0]
            assert t.name == "identity" and t.caption.startswith("identity\n")
            np.testing.assert_array_equal(t.image, img)
            np.testing.assert_array_equal(t.label, lab)


def test_flip_tiles_equal_the_flipped_crop(case, gallery):
    for patch in gallery.patches:
        img, lab = _original(case, patch.centre)
        for axis in range(3):
            t = _tile(patch, f"mirror_axis{axis}", 1)
            np.testing.assert_array_equal(t.image, np.flip(img, axis + 1))
            np.testing.assert_array_equal(t.label, np.flip(lab, axis))
        tea = {t.option_index: t for t in patch.blocks[-1].tiles}
        t = tea[TEA_INDEX["flip_axis1"]]
        np.testing.assert_array_equal(t.image, np.flip(img, 2))
        np.testing.assert_array_equal(t.label, np.flip(lab, 1))


def test_resampled_tea_tiles_match_the_tra_option_of_the_same_matrix(case):
    """A TEA zoom or rotation is read from a crop large enough that the patch sees no
    border: it equals the TRA tile of the same factor / angle up to interpolation rounding."""
    from JCSAugmentLib.policy.policies import TEAPolicy
    image, label = case
    p = np.full(84, 0.001)
    for name in ("scale_1.05", "rotate_axis1_+15", "scale_1/1.25"):
        p[TEA_INDEX[name]] = 0.2
    g = make_gallery(image, label, make_tra_policy("nnunet"), TEAPolicy(list(p / p.sum())),
                     patch_size=PATCH, tea_top=3)
    for patch in g.patches:
        tea = {t.name: t for t in patch.blocks[-1].tiles}
        assert set(tea) == {"scale_1.05", "rotate_axis1_+15", "scale_1/1.25"}
        for name, group, option in (("scale_1.05", "scaling", 1),
                                    ("rotate_axis1_+15", "rotation_axis1", 2)):
            tra = _tile(patch, group, option)
            np.testing.assert_allclose(tea[name].image, tra.image, atol=1e-4)
            np.testing.assert_array_equal(tea[name].label, tra.label)
        assert tea["scale_1.05"].caption == f"TEA scale 1.05\np={p[1] / p.sum():.3f}"


def test_options_run_at_their_nominal_magnitude(gallery):
    assert nominal_value(TRA_GROUP_INDEX["rotation_axis1"], 2) == 15.0
    assert nominal_value(TRA_GROUP_INDEX["scaling"], 1) == pytest.approx(1.05)
    assert nominal_value(TRA_GROUP_INDEX["noise"], 3) == pytest.approx(0.125)
    params = nominal_tra_params([(TRA_GROUP_INDEX["rotation_axis2"], 4), (0, 0)])
    assert params.op_names() == [["rot90 ax2 +"], []]
    fg = gallery.patches[0]
    assert _tile(fg, "rotation_axis0", 3).caption.startswith("rot ax0 +25deg\n")
    assert _tile(fg, "rotation_axis0", 4).caption.startswith("rot90 ax0 +90\n")
    # an intensity op changes the image, never the label
    gamma = _tile(fg, "gamma", 3)
    assert not np.array_equal(gamma.image, fg.image)
    np.testing.assert_array_equal(gamma.label, fg.label)


def test_a_case_without_foreground_gives_the_background_row_only(case, tmp_path):
    image, _ = case
    g = make_gallery(image, np.zeros((1, 40, 40, 40), np.int64), make_tra_policy("nnunet"),
                     make_tea_policy("nnunet"), patch_size=PATCH, tea_top=2)
    assert [p.name for p in g.patches] == ["background patch"]
    assert g.messages == [NO_FOREGROUND_MESSAGE]
    png = draw_gallery(g, tmp_path / "bg.png", groups=["gamma", "tea"])
    assert png[:8] == PNG and (tmp_path / "bg.png").read_bytes() == png
    rows = _figure_size_px(g, groups=["gamma", "tea"])[2]
    assert [len(blocks) for _title, _tea, blocks in rows] == [1, 1]  # one patch, two rows
    with pytest.raises(ValueError, match="no row matches"):
        draw_gallery(g, groups=["nonsense"])


def test_draw_gallery_lays_out_both_patches(gallery):
    w, h, rows, n_cols, _half, _top = _figure_size_px(gallery)
    assert len(rows) == len(TRA_GROUPS) + 1 and n_cols == 7
    assert all(len(blocks) == 2 for _title, _tea, blocks in rows)
    assert w > 2 * 7 * 100  # both halves side by side
    png = draw_gallery(gallery, channel=1, groups=["mirror_axis0"])
    from io import BytesIO
    from PIL import Image
    pixels = np.asarray(Image.open(BytesIO(png)).convert("RGB")).reshape(-1, 3)
    # the label outlines are drawn in the preview's label colours (label 1 red, 2 yellow)
    for value, rgb in ((1, (0xff, 0x3b, 0x30)), (2, (0xff, 0xd6, 0x0a))):
        assert (pixels == rgb).all(1).sum() > 20, value
    with pytest.raises(ValueError, match="channel 2"):
        draw_gallery(gallery, channel=2)


def _write_case(tmp_path, label):
    image, _ = _case()
    paths = {}
    for name, arr in (("image", image[0]), ("flair", image[1]), ("label", label[0])):
        p = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
        paths[name] = str(p)
    return paths


def _gallery_args(run, paths, out):
    return ["policy", str(run), "--gallery", paths["image"], paths["label"], "--channel",
            paths["flair"], "--out", str(out), "--patch-size", *map(str, PATCH),
            "--tea-top", "3"]


def test_cli_writes_a_png_from_a_learned_policy(tmp_path, capsys):
    paths = _write_case(tmp_path, _case()[1].astype(np.uint8))
    run = tmp_path / "run"
    run.mkdir()
    save_policy(str(run / "policy.json"), make_tra_policy("nnunet"), make_tea_policy("nnunet"),
                meta={"init": "deepmedic", "mode": "joint", "iteration": 7})
    out = tmp_path / "g.png"
    assert main(_gallery_args(run, paths, out)) == 0
    assert out.read_bytes()[:8] == PNG
    assert "130 tiles" in capsys.readouterr().out  # 2 x (62 + 3)
    pol = load_gallery_policies(str(run))
    assert not pol.is_initial and "learned policy run/policy.json" in pol.title
    assert "iteration 7" in pol.title and "initial policy (deepmedic)" in pol.title
    gi = TRA_GROUP_INDEX["mirror_axis1"]
    assert float(pol.initial_tra.policies[0].probabilities()[gi][0]) == pytest.approx(0.95)


def test_a_run_folder_without_policy_json_uses_the_initial_policy(tmp_path, capsys):
    from JCSAugmentLib.run.folder import RunFolder
    from JCSAugmentLib.run.job import Job
    run = tmp_path / "fresh"
    run.mkdir()
    pol = load_gallery_policies(str(run))
    assert pol.is_initial and pol.initial_tra is None
    assert pol.title.startswith("INITIAL policy nnunet") and "no policy.json" in pol.title
    RunFolder(str(run)).save_job(Job.from_dict({
        "schema": 1, "data": {"dataset": str(tmp_path)},
        "training": {"mode": "heuristic", "init": "deepmedic"}}))
    pol = load_gallery_policies(str(run))
    assert pol.is_initial and pol.title.startswith("INITIAL policy deepmedic")
    gi = TRA_GROUP_INDEX["mirror_axis1"]
    assert float(pol.tra.policies[1].probabilities()[gi][0]) == pytest.approx(0.95)
    # the CLI says "initial" in every caption; a case without foreground says so on stderr
    paths = _write_case(tmp_path, np.zeros((1, 40, 40, 40), np.uint8))
    out = tmp_path / "g.png"
    assert main(_gallery_args(run, paths, out)) == 0
    captured = capsys.readouterr()
    assert out.read_bytes()[:8] == PNG
    assert NO_FOREGROUND_MESSAGE in captured.err and "65 tiles" in captured.out
    assert main(_gallery_args(tmp_path / "missing", paths, out)) == 2
    assert "neither a run folder nor a policy JSON file" in capsys.readouterr().err


def test_cli_group_draws_only_that_row(tmp_path, capsys):
    """``--group gamma``: the picture of one group's row (what the panel shows for a group) is
    smaller than the whole gallery; a name that is no row is one error line."""
    import SimpleITK as sitk
    paths = _write_case(tmp_path, _case()[1].astype(np.uint8))
    run = tmp_path / "run"
    run.mkdir()
    save_policy(str(run / "policy.json"), make_tra_policy("nnunet"), make_tea_policy("nnunet"))
    whole, row = tmp_path / "all.png", tmp_path / "gamma.png"
    assert main(_gallery_args(run, paths, whole)) == 0
    assert main(_gallery_args(run, paths, row) + ["--group", "gamma"]) == 0
    size = [sitk.ReadImage(str(p)).GetSize() for p in (whole, row)]
    assert size[1][0] <= size[0][0] and size[1][1] < size[0][1] / 4, size
    capsys.readouterr()
    assert main(_gallery_args(run, paths, tmp_path / "x.png") + ["--group", "gama"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'gama' is no gallery row" in err[0] and "gamma" in err[0]


def test_cli_arrays_are_the_drawn_rows_as_volumes(tmp_path):
    """``--arrays``: per patch the original, then each option of the drawn row, side by side
    along x; the first tile is the original crop, every option's tile differs from it only by
    its op; captions in x order; plain arrays (loads with allow_pickle=False)."""
    paths = _write_case(tmp_path, _case()[1].astype(np.uint8))
    run = tmp_path / "run"
    run.mkdir()
    save_policy(str(run / "policy.json"), make_tra_policy("nnunet"), make_tea_policy("nnunet"))
    npz = tmp_path / "g.npz"
    assert main(_gallery_args(run, paths, tmp_path / "g.png")
                + ["--group", "mirror_axis0", "--arrays", str(npz)]) == 0
    with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert set(arrays) >= {"foreground patch", "foreground patch labels",
                           "foreground patch captions"}
    d, h, w = PATCH
    strip = arrays["foreground patch"]
    captions = list(arrays["foreground patch captions"])
    assert captions[0] == "original" and len(captions) == 3  # original, identity, flip
    assert strip.shape == (d, h, 3 * w + 2 * 2)
    original, identity, flipped = (strip[:, :, k * (w + 2):k * (w + 2) + w] for k in range(3))
    assert np.array_equal(original, identity)
    assert np.array_equal(flipped, original[::-1])  # mirror along axis 0 (z)
    assert arrays["foreground patch labels"].dtype == np.int16
