import numpy as np
import pytest

from JCSAugmentLib.charts.segmentation_grid import busiest_slice, draw_segmentation_grid


def test_busiest_slice_and_png(tmp_path):
    image = np.random.default_rng(0).normal(size=(6, 20, 24)).astype(np.float32)
    ref = np.zeros(image.shape, np.uint8)
    ref[2, 5:8, 5:8] = 1
    ref[4, 3:12, 3:12] = 2
    assert busiest_slice(ref) == 4
    assert busiest_slice(np.zeros_like(ref)) == 3
    out = tmp_path / "seg.png"
    png = draw_segmentation_grid(image, {"reference": ref, "model": np.roll(ref, 2, axis=2)},
                                 "reference", title="case", out_path=str(out))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and out.read_bytes() == png


def test_shape_mismatch_and_unknown_reference_are_refused():
    image = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="differs"):
        draw_segmentation_grid(image, {"reference": np.zeros((4, 8, 9))}, "reference")
    with pytest.raises(ValueError, match="not one of"):
        draw_segmentation_grid(image, {"a": np.zeros((4, 8, 8))}, "reference")
