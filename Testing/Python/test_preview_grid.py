"""Tests for JCSAugmentLib.charts.preview_grid (CPU, Agg, synthetic patches)."""

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib.image as mpimg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from JCSAugmentLib.charts import draw_preview_grid  # noqa: E402
from JCSAugmentLib.charts import preview_grid as pg  # noqa: E402


def _patch(seed, size=24, channels=2):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:size, :size, :size]
    c = size // 2
    ball = ((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2) < (size // 3) ** 2
    image = rng.normal(0, 0.2, size=(channels, size, size, size)).astype(np.float32)
    image += ball.astype(np.float32) * 2.0
    label = np.zeros((size, size, size), np.int64)
    label[ball] = 1
    label[(np.abs(zz - c) < 3) & (np.abs(yy - c) < 3) & (np.abs(xx - c) < 3)] = 4
    return image, label


def _rows():
    img, lab = _patch(0)
    bg_img, bg_lab = _patch(1)
    bg_lab[:] = 0  # a background patch with no foreground at all
    return [
        {
            "name": "foreground patch",
            "images": [img, img[:, :, :, ::-1], img * 1.5 + 0.3],
            "labels": [lab, lab[:, :, ::-1], lab],
            "captions": [
                "original",
                "flip x",
                "intensity scale 1.50, shift 0.30, gaussian noise sigma 0.1, "
                "rotation 12 deg about z, elastic deformation alpha 3",
            ],
        },
        {
            "name": "background patch",
            "images": [bg_img, bg_img + 0.5],
            "labels": [bg_lab, None],
            "captions": ["original", "brightness +0.5"],
        },
    ]


def _png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_writes_png_matching_figure(tmp_path):
    out = tmp_path / "grid.png"
    rows = _rows()
    png = draw_preview_grid(rows, out_path=out, title="synthetic case")
    assert isinstance(png, bytes)
    assert out.read_bytes() == png
    width, height = _png_size(png)
    assert (width, height) == pg._figure_size_px(rows, title="synthetic case")
    pixels = mpimg.imread(str(out))
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.reshape(-1, 3).std(axis=0).max() > 0.05  # not all one colour
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50
    # clean white background: the corners are white
    for corner in (rgb[0, 0], rgb[-1, -1], rgb[0, -1], rgb[-1, 0]):
        np.testing.assert_allclose(corner, 1.0, atol=1e-6)
    # label outlines are drawn in colour (the grey slices alone have R == G == B)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    assert (spread > 0.3).sum() > 50
    # no temp files left next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_returns_bytes_without_out_path_and_is_deterministic(tmp_path):
    a = draw_preview_grid(_rows())
    b = draw_preview_grid(_rows())
    assert a == b
    assert _png_size(a) == pg._figure_size_px(_rows())
    assert list(tmp_path.iterdir()) == []


def test_single_channel_3d_images_and_channel_choice():
    img, lab = _patch(2, size=16, channels=1)
    rows = [{"name": "r", "images": [img[0]], "labels": [lab], "captions": ["x"]}]
    draw_preview_grid(rows)  # (D, H, W) is accepted as one channel
    two, _ = _patch(3, size=16, channels=2)
    rows = [{"name": "r", "images": [two, two], "labels": [lab, lab], "captions": []}]
    assert _png_size(draw_preview_grid(rows, channel=1))[0] > 0


def test_invalid_input_raises_value_error(tmp_path):
    img, lab = _patch(0, size=12)
    out = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="channel 5"):
        draw_preview_grid([{"name": "a", "images": [img], "labels": [lab], "captions": []}],
                          out_path=out, channel=5)
    with pytest.raises(ValueError, match="label shape"):
        draw_preview_grid([{"name": "a", "images": [img], "labels": [lab[:5]], "captions": []}],
                          out_path=out)
    with pytest.raises(ValueError):
        draw_preview_grid([], out_path=out)
    with pytest.raises(ValueError):
        draw_preview_grid([{"name": "a", "images": [], "labels": [], "captions": []}], out_path=out)
    assert list(tmp_path.iterdir()) == []


def test_no_half_written_file_when_drawing_raises(tmp_path, monkeypatch):
    out = tmp_path / "grid.png"
    out.write_bytes(b"previous picture")

    def boom(self, *args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        draw_preview_grid(_rows(), out_path=out)
    assert out.read_bytes() == b"previous picture"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]

    fresh = tmp_path / "fresh.png"
    with pytest.raises(RuntimeError):
        draw_preview_grid(_rows(), out_path=fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_no_half_written_file_when_writing_fails(tmp_path, monkeypatch):
    out = tmp_path / "grid.png"
    out.write_bytes(b"previous picture")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(pg.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        draw_preview_grid(_rows(), out_path=out)
    assert out.read_bytes() == b"previous picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # temp file removed


def test_no_pyplot_and_no_global_backend_change(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {_REPO_ROOT!r})
        import matplotlib
        before = dict.__getitem__(matplotlib.rcParams, "backend")
        import numpy as np
        from JCSAugmentLib.charts import draw_preview_grid
        img = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype("float32")
        lab = (img[0] > 0.5).astype("int64")
        draw_preview_grid([{{"name": "a", "images": [img], "labels": [lab],
                            "captions": ["c"]}}], out_path={str(tmp_path / "x.png")!r})
        after = dict.__getitem__(matplotlib.rcParams, "backend")
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        assert before == after, (before, after)
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
