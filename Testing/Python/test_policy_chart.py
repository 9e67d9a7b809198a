"""Tests for JCSAugmentLib.charts.policy_chart (CPU, Agg, made-up policies)."""

import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib.image as mpimg  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from JCSAugmentLib.augment.tables import TEA_INDEX, TEA_OPS, TRA_GROUPS  # noqa: E402
from JCSAugmentLib.charts import policy_chart as pc  # noqa: E402
from JCSAugmentLib.charts.policy_chart import (draw_policy_figure, draw_policy_file,  # noqa: E402
                                               draw_tea_policy, draw_tra_policy, option_style)
from JCSAugmentLib.policy.initial import (make_tea_policy, make_tra_policy,  # noqa: E402
                                          tea_probabilities, tra_probabilities)
from JCSAugmentLib.policy.policies import (ClassSpecificTRAPolicy, TEAPolicy,  # noqa: E402
                                           TRAPolicy)
from JCSAugmentLib.policy.policy_json import save_policy  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes):
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _pixels(data: bytes, tmp_path, name="x.png"):
    path = tmp_path / name
    path.write_bytes(data)
    return mpimg.imread(str(path))[..., :3]


def _check_png(data: bytes, tmp_path, expected_size=None):
    assert isinstance(data, bytes)
    width, height = _png_size(data)
    assert 1200 <= width <= 2000 and 200 <= height <= 2000, (width, height)
    if expected_size is not None:
        assert (width, height) == expected_size
    rgb = _pixels(data, tmp_path)
    assert rgb.shape[:2] == (height, width)
    assert rgb.reshape(-1, 3).std(axis=0).max() > 0.05  # not one colour
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50
    for corner in (rgb[0, 0], rgb[-1, -1], rgb[0, -1], rgb[-1, 0]):
        np.testing.assert_allclose(corner, 1.0, atol=1e-6)  # white background
    return rgb


def _learned_tra():
    """Foreground: larger transformations applied more often than background (as the paper
    reports for learned policies)."""
    bg, fg = [], []
    for g, p in zip(TRA_GROUPS, tra_probabilities("nnunet")):
        k = g.size - 1
        bg.append([0.9] + [0.1 * (k - i) / (k * (k + 1) / 2) for i in range(k)])
        fg.append([0.4] + [0.6 * (i + 1) / (k * (k + 1) / 2) for i in range(k)])
    return ClassSpecificTRAPolicy([TRAPolicy(bg), TRAPolicy(fg)])


def _learned_tea():
    t = np.array(tea_probabilities("nnunet"))
    for name, f in (("identity", 3.0), ("flip_axis0", 1.5), ("flip_axis1", 1.5),
                    ("scale_1.05", 4.0)):
        t[TEA_INDEX[name]] *= f
    return TEAPolicy(list(t / t.sum()))


# ---- colour mapping --------------------------------------------------------------------------

def test_option_style_identity_white_and_grey_darkens_with_magnitude():
    for gi, g in enumerate(TRA_GROUPS):
        colour, hatch = option_style(gi, 0)
        assert to_rgb(colour) == (1.0, 1.0, 1.0) and hatch is None
        by_op = {}
        for oi, o in enumerate(g.options[1:], 1):
            by_op.setdefault(o.op, []).append(oi)
        for op, idx in by_op.items():
            lum = [sum(to_rgb(option_style(gi, oi)[0])) for oi in idx]
            assert all(a > b for a, b in zip(lum, lum[1:])), (g.name, op, lum)  # darker = larger
            levels = [g.options[oi].level for oi in idx if g.options[oi].level]
            assert levels == sorted(levels)  # table order is weakest first


def test_rot90_and_sharpen_distinct_from_small_magnitudes():
    for gi, g in enumerate(TRA_GROUPS):
        styles = [option_style(gi, oi) for oi in range(g.size)]
        assert len(set(styles)) == g.size, g.name  # every option of a group looks different
        for oi, o in enumerate(g.options):
            colour, hatch = styles[oi]
            r, gg, b = to_rgb(colour)
            if o.op == "rot90":
                assert hatch and b - r > 0.3  # hatched, blue tint
            elif o.op == "sharpen":
                assert r - b > 0.2  # orange tint
            elif o.op not in ("flip",):
                assert max(r, gg, b) - min(r, gg, b) < 1e-6  # grey


# ---- drawing ---------------------------------------------------------------------------------

def test_draw_tra_policy_png_and_rows_differ(tmp_path):
    # background: identity only; foreground: all mass on the largest scaling (0.45)
    bg = [[1.0] + [0.0] * (g.size - 1) for g in TRA_GROUPS]
    fg = [list(p) for p in bg]
    fg[0] = [0.0] * 5 + [1.0]
    tra = ClassSpecificTRAPolicy([TRAPolicy(bg), TRAPolicy(fg)])
    out = tmp_path / "tra.png"
    png = draw_tra_policy(tra, initial=make_tra_policy("nnunet"), out_path=out, title="t")
    assert out.read_bytes() == png
    rgb = _check_png(png, tmp_path, pc._figure_size_px(n_tra_rows=3, title="t"))

    def pie(row, group):
        x, y, w, h = pc._tra_pie_box(row, group, title="t")
        return rgb[y + 8:y + h - 8, x + 8:x + w - 8].mean(axis=2)

    bg_scale, fg_scale = pie(0, 0), pie(1, 0)
    assert bg_scale.mean() > 0.9  # white identity pie
    assert fg_scale.mean() < 0.5  # dark: the largest magnitude
    dark = np.asarray(to_rgb(option_style(0, 5)[0])).mean()
    assert (np.abs(fg_scale - dark) < 0.03).mean() > 0.5
    # groups other than scaling are identity in both rows: same picture
    np.testing.assert_allclose(pie(0, 3), pie(1, 3), atol=1e-6)
    # the initial row (nnunet) shows a non-trivial scaling pie
    assert 0.5 < pie(2, 0).mean() < 0.99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tra.png", "x.png"]


def test_draw_tra_policy_variants(tmp_path):
    one = TRAPolicy()  # class-agnostic, uniform
    png = draw_tra_policy(one)
    _check_png(png, tmp_path, pc._figure_size_px(n_tra_rows=1))
    # a ClassSpecific initial whose classes differ gets one row per class
    png = draw_tra_policy(one, initial=_learned_tra())
    _check_png(png, tmp_path, pc._figure_size_px(n_tra_rows=3))
    png = draw_tra_policy(_learned_tra(), initial="deepmedic")
    _check_png(png, tmp_path, pc._figure_size_px(n_tra_rows=3))
    with pytest.raises(TypeError):
        draw_tra_policy(_learned_tea())
    with pytest.raises(ValueError):
        draw_tra_policy(None)


def test_draw_tea_policy(tmp_path):
    out = tmp_path / "tea.png"
    png = draw_tea_policy(_learned_tea(), initial=make_tea_policy("nnunet"), top=8,
                          out_path=out)
    assert out.read_bytes() == png
    rgb = _check_png(png, tmp_path, pc._figure_size_px(tea=True, top=8))
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    assert (spread > 0.3).sum() > 200  # coloured bars
    for top in (1, 84):
        assert _png_size(draw_tea_policy(_learned_tea(), "deepmedic", top=top)) == \
            pc._figure_size_px(tea=True, top=top)
    for bad in (0, 85):
        with pytest.raises(ValueError):
            draw_tea_policy(_learned_tea(), top=bad)
    with pytest.raises(ValueError):
        draw_tea_policy(None)


def test_tea_order_and_short_names():
    order = pc._tea_order()
    assert sorted(order) == list(range(len(TEA_OPS)))
    kinds = [TEA_OPS[i].kind for i in order]
    rank = {"identity": 0, "spatial": 1, "intensity": 2, "filter_noise": 3}
    assert [rank[k] for k in kinds] == sorted(rank[k] for k in kinds)
    names = [pc.tea_short_name(i) for i in range(len(TEA_OPS))]
    assert len(set(names)) == len(names)
    assert max(len(n) for n in names) <= 16


def test_draw_policy_figure(tmp_path):
    out = tmp_path / "both.png"
    png = draw_policy_figure(_learned_tra(), _learned_tea(), "nnunet", "nnunet", out_path=out,
                             title="joint")
    assert out.read_bytes() == png
    _check_png(png, tmp_path, pc._figure_size_px(n_tra_rows=3, tea=True, title="joint"))
    assert _png_size(draw_policy_figure(None, _learned_tea())) == \
        pc._figure_size_px(tea=True)
    assert _png_size(draw_policy_figure(_learned_tra(), None)) == \
        pc._figure_size_px(n_tra_rows=2)
    with pytest.raises(ValueError):
        draw_policy_figure(None, None)
    # deterministic
    assert draw_policy_figure(_learned_tra(), _learned_tea()) == \
        draw_policy_figure(_learned_tra(), _learned_tea())


def test_draw_policy_file(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    path = run / "policy.json"
    save_policy(str(path), _learned_tra(), _learned_tea(),
                meta={"iteration": 10, "mode": "joint", "backbone": "unet3d"})
    out = tmp_path / "policy.png"
    png = draw_policy_file(str(path), str(out))
    assert out.read_bytes() == png
    _check_png(png, tmp_path)
    size = _png_size(png)
    assert size[1] == pc._figure_size_px(n_tra_rows=3, tea=True, top=8, title="x")[1]
    # no comparison row
    png = draw_policy_file(path, None, initial=None)
    assert _png_size(png)[1] == pc._figure_size_px(n_tra_rows=2, tea=True, title="x")[1]
    # meta "init" wins over the argument; deepmedic lists 4 TEA ops
    d = json.loads(path.read_text())
    d["meta"].update(init="deepmedic", backbone="deepmedic")
    path.write_text(json.dumps(d))
    png = draw_policy_file(path, None, initial=None)
    assert _png_size(png)[1] == pc._figure_size_px(n_tra_rows=3, tea=True, top=4,
                                                   title="x")[1]
    # TEA-only file
    save_policy(str(path), None, _learned_tea())
    png = draw_policy_file(path, None)
    assert _png_size(png)[1] == pc._figure_size_px(tea=True, title="x")[1]
    with pytest.raises(ValueError):
        draw_policy_file(path, None, initial="nonsense")


def test_atomic_write_leaves_old_file_when_drawing_fails(tmp_path, monkeypatch):
    out = tmp_path / "p.png"
    out.write_bytes(b"previous")

    def boom(self, *args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        draw_policy_figure(_learned_tra(), _learned_tea(), out_path=out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_no_pyplot_and_no_global_state_change(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {_REPO_ROOT!r})
        import matplotlib
        before = dict.__getitem__(matplotlib.rcParams, "backend")
        # read rcParams with dict methods: rcParams["backend"] would itself import pyplot
        params = dict(dict.items(matplotlib.rcParams))
        from JCSAugmentLib.charts.policy_chart import draw_policy_figure
        from JCSAugmentLib.policy.initial import make_tea_policy, make_tra_policy
        draw_policy_figure(make_tra_policy("nnunet"), make_tea_policy("nnunet"), "none",
                           "deepmedic", out_path={str(tmp_path / "x.png")!r}, title="t")
        after = dict.__getitem__(matplotlib.rcParams, "backend")
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        assert before == after, (before, after)
        changed = [k for k, v in dict.items(matplotlib.rcParams) if str(params.get(k)) != str(v)]
        assert not changed, changed
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
