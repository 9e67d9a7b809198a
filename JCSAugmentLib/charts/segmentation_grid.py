"""Segmentations side by side: one axial slice of a case, the reference and each method's label
map as coloured outlines on the image, one panel per label map.

Used by the demo report (reference vs heuristic vs joint on a test case) and by anyone who
would rather look at a result than read its Dice. The slice shown is the one with the most
reference foreground unless one is given. Object-oriented matplotlib only (no pyplot, no
global state), like the other charts.
"""

from __future__ import annotations

import io
from typing import Mapping, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .preview_grid import label_colour

__all__ = ["draw_segmentation_grid", "busiest_slice"]


def busiest_slice(label: np.ndarray) -> int:
    """Index along axis 0 of the slice with the most voxels > 0 (the middle one if none)."""
    counts = (np.asarray(label) > 0).reshape(label.shape[0], -1).sum(1)
    return int(np.argmax(counts)) if counts.any() else label.shape[0] // 2


def draw_segmentation_grid(image: np.ndarray, labels: Mapping[str, np.ndarray],
                           reference: str, z: Optional[int] = None,
                           title: Optional[str] = None, spacing_yx=(1.0, 1.0),
                           out_path: Optional[str] = None) -> bytes:
    """PNG bytes of one panel per entry of ``labels`` (name -> (z, y, x) label map of
    ``image``'s shape), all on slice ``z`` of ``image``; ``reference`` names the entry whose
    busiest slice is shown by default. ``spacing_yx`` keeps the in-plane aspect in mm."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (z, y, x), got shape {image.shape}")
    if reference not in labels:
        raise ValueError(f"reference {reference!r} is not one of {list(labels)}")
    for name, lab in labels.items():
        if np.shape(lab) != image.shape:
            raise ValueError(f"{name}: label shape {np.shape(lab)} differs from the image's "
                             f"{image.shape}")
    z = busiest_slice(labels[reference]) if z is None else int(z)
    sl = image[z]
    lo, hi = np.percentile(sl, [1, 99])
    n = len(labels)
    cell = 2.6
    fig = Figure(figsize=(cell * n, cell + (0.8 if title else 0.4)), dpi=100)
    FigureCanvasAgg(fig)
    aspect = float(spacing_yx[0]) / float(spacing_yx[1])
    for i, (name, lab) in enumerate(labels.items()):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        lab_sl = np.asarray(lab)[z]
        for value in sorted(int(v) for v in np.unique(lab_sl) if v > 0):
            ax.contour((lab_sl == value).astype(float), levels=[0.5], linewidths=1.2,
                       colors=[label_colour(value)])
        ax.set_title(name, fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(f"{title} (axial slice {z})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.88 if title else 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    if out_path:
        from ..run.status import atomic_write_bytes
        atomic_write_bytes(out_path, png)
    return png
