"""Preview grid: what augmentation does to the user's own scan.

One row per patch kind (e.g. "foreground patch", "background patch"); column
0 is the original patch, the other columns augmented samples.  Each cell
shows the central axial slice in grey with the label outlines as coloured
contours, a small cross at the patch centre and a short caption below.

Only the object-oriented matplotlib API is used (``Figure`` +
``FigureCanvasAgg``): importing or calling this module never selects a
backend, never imports ``pyplot`` and changes no global matplotlib state.
"""

from __future__ import annotations

import io
import os
import textwrap
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import matplotlib.patheffects as path_effects

from ..run.status import atomic_write_bytes

__all__ = ["draw_preview_grid"]

PathLike = Union[str, "os.PathLike[str]"]

# ---- layout, in pixels at _DPI (figure size is an exact number of pixels) ----
_DPI = 100
_CELL = 200  # square box each slice is fitted into
_GAP_X = 14  # between columns
_GAP_Y = 14  # between rows (below the captions)
_LEFT = 46  # room for the (rotated) row names
_RIGHT = 12
_TITLE_H = 34
_LEGEND_H = 20  # legend strip (label colours, centre mark)
_HEADER_H = 20  # column headers
_BOTTOM = 8
_CAPTION_PAD = 5  # between a cell and its caption
_CAPTION_LINE = 13  # caption line height
_CAPTION_WIDTH = 28  # characters per caption line
_CAPTION_MAX_LINES = 6
_CAPTION_FONTSIZE = 7.5
_ROWNAME_WIDTH = 26  # characters per (rotated) row-name line

# Label colours by value (1, 2, 3, ...), chosen to stand out on grey.
_LABEL_COLOURS = (
    "#ff3b30",  # red
    "#ffd60a",  # yellow
    "#30d158",  # green
    "#0a84ff",  # blue
    "#ff2dd4",  # magenta
    "#ff9f0a",  # orange
    "#a2845e",  # brown (cyan is the centre mark)
    "#bf5af2",  # purple
)
_CROSS_COLOUR = "#00ffff"


def label_colour(value: int) -> str:
    """The colour a label value is drawn in (the same in every picture of the package)."""
    return _LABEL_COLOURS[(int(value) - 1) % len(_LABEL_COLOURS)]


def _wrap(text: str, width: int, max_lines: int) -> List[str]:
    lines: List[str] = []
    for para in str(text).splitlines() or [""]:
        lines.extend(textwrap.wrap(para, width=width, break_long_words=True) or [""])
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        lines[-1] = (last[: width - 1] if len(last) >= width else last) + "\u2026"
    return lines


def _as_image(img, where: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[np.newaxis]
    if arr.ndim != 4:
        raise ValueError(f"{where}: image must be (C, D, H, W), got shape {arr.shape}")
    if min(arr.shape[1:]) < 1:
        raise ValueError(f"{where}: image has an empty axis, shape {arr.shape}")
    return arr


def _as_label(lab, shape: Tuple[int, int, int], where: str) -> Optional[np.ndarray]:
    if lab is None:
        return None
    arr = np.asarray(lab)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(shape):
        raise ValueError(
            f"{where}: label shape {arr.shape} does not match image shape {tuple(shape)}"
        )
    return arr


def _window(image: np.ndarray) -> Tuple[float, float]:
    """1st-99th percentile of the finite values, never an empty interval."""
    vals = image[np.isfinite(image)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, [1.0, 99.0]))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    return lo, hi


def _prepare(rows, channel: int):
    """Validate ``rows``; returns a list of per-row dicts with 2D slices."""
    if isinstance(rows, dict):
        rows = [rows]
    rows = list(rows)
    if not rows:
        raise ValueError("draw_preview_grid: rows is empty")
    prepared = []
    for r, row in enumerate(rows):
        name = str(row.get("name", f"row {r + 1}"))
        where_row = f"draw_preview_grid: row {r} ({name!r})"
        images = list(row.get("images") or [])
        if not images:
            raise ValueError(f"{where_row}: 'images' is empty (column 0 must be the original)")
        labels = list(row.get("labels") or [])
        captions = [str(c) for c in (row.get("captions") or [])]
        if len(labels) > len(images) or len(captions) > len(images):
            raise ValueError(
                f"{where_row}: {len(images)} image(s) but {len(labels)} label(s) and "
                f"{len(captions)} caption(s)"
            )
        cells = []
        for c, img in enumerate(images):
            where = f"{where_row}, column {c}"
            arr = _as_image(img, where)
            if not -arr.shape[0] <= channel < arr.shape[0]:
                raise ValueError(
                    f"{where}: channel {channel} requested but the image has "
                    f"{arr.shape[0]} channel(s)"
                )
            lab = _as_label(labels[c] if c < len(labels) else None, arr.shape[1:], where)
            z = arr.shape[1] // 2
            cells.append(
                {
                    "slice": np.asarray(arr[channel, z], dtype=np.float64),
                    "label": None if lab is None else np.asarray(lab[z]),
                    "caption": captions[c] if c < len(captions) else "",
                }
            )
        window = _window(np.asarray(_as_image(images[0], where_row)[channel], dtype=np.float64))
        prepared.append({"name": name, "cells": cells, "window": window})
    return prepared


def _layout(prepared, title) -> dict:
    n_cols = max(len(row["cells"]) for row in prepared)
    caption_lines = []
    for row in prepared:
        wrapped = [_wrap(cell["caption"], _CAPTION_WIDTH, _CAPTION_MAX_LINES) for cell in row["cells"]]
        for cell, lines in zip(row["cells"], wrapped):
            cell["caption_lines"] = lines
        caption_lines.append(max((len(w) for w in wrapped), default=0))
    row_heights = [
        _CELL + (_CAPTION_PAD + n * _CAPTION_LINE if n else 0) + _GAP_Y for n in caption_lines
    ]
    top = (_TITLE_H if title else 6) + _LEGEND_H + _HEADER_H
    width = _LEFT + n_cols * _CELL + (n_cols - 1) * _GAP_X + _RIGHT
    height = top + sum(row_heights) + _BOTTOM
    return {
        "n_cols": n_cols,
        "top": top,
        "row_heights": row_heights,
        "width": int(width),
        "height": int(height),
    }


def _figure_size_px(rows, title=None, channel: int = 0) -> Tuple[int, int]:
    """(width, height) in pixels of the PNG :func:`draw_preview_grid` makes."""
    layout = _layout(_prepare(rows, channel), title)
    return layout["width"], layout["height"]


def _draw_cell(ax, cell: dict, window: Tuple[float, float]) -> List[int]:
    img = cell["slice"]
    ax.imshow(
        img,
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        interpolation="nearest",
        origin="upper",
    )
    values: List[int] = []
    lab = cell["label"]
    if lab is not None and min(lab.shape) >= 2:
        for v in np.unique(lab):
            if v <= 0:
                continue
            mask = (lab == v).astype(np.float32)
            # a contour needs both inside and outside voxels in the slice
            if mask.min() == mask.max():
                continue
            ax.contour(
                mask, levels=[0.5], colors=[label_colour(int(v))], linewidths=1.1,
                antialiased=True,
            )
            values.append(int(v))
    h, w = img.shape
    ax.plot(
        [w // 2], [h // 2], marker="+", markersize=9, markeredgewidth=1.4,
        color=_CROSS_COLOUR, linestyle="none",
        path_effects=[path_effects.withStroke(linewidth=2.6, foreground="black")],
    )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#9a9a9a")
        spine.set_linewidth(0.6)
    return values


def _render(prepared, layout: dict, title: Optional[str]) -> bytes:
    W, H = layout["width"], layout["height"]
    fig = Figure(figsize=(W / _DPI, H / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)

    def fx(px: float) -> float:
        return px / W

    def fy(px_from_top: float) -> float:
        return 1.0 - px_from_top / H

    if title:
        fig.text(
            0.5, fy(_TITLE_H / 2 + 2), str(title), ha="center", va="center",
            fontsize=12, fontweight="bold", color="#111111",
        )

    header_y = layout["top"] - _HEADER_H / 2
    for c in range(layout["n_cols"]):
        x = _LEFT + c * (_CELL + _GAP_X) + _CELL / 2
        fig.text(
            fx(x), fy(header_y + 2), "original" if c == 0 else f"augmented {c}",
            ha="center", va="center", fontsize=8.5,
            color="#111111" if c == 0 else "#555555",
            fontweight="bold" if c == 0 else "normal",
        )

    seen_labels = set()
    y = layout["top"]
    for row, row_h in zip(prepared, layout["row_heights"]):
        name_lines = _wrap(row["name"], _ROWNAME_WIDTH, 2)
        fig.text(
            fx(_LEFT / 2 - 2), fy(y + _CELL / 2), "\n".join(name_lines),
            rotation=90, ha="center", va="center", fontsize=9.5, fontweight="bold",
            color="#111111", linespacing=1.1,
        )
        for c, cell in enumerate(row["cells"]):
            x0 = _LEFT + c * (_CELL + _GAP_X)
            ax = fig.add_axes([fx(x0), fy(y + _CELL), _CELL / W, _CELL / H])
            seen_labels.update(_draw_cell(ax, cell, row["window"]))
            lines = cell["caption_lines"]
            if lines:
                fig.text(
                    fx(x0 + _CELL / 2), fy(y + _CELL + _CAPTION_PAD), "\n".join(lines),
                    ha="center", va="top", fontsize=_CAPTION_FONTSIZE, color="#222222",
                    linespacing=1.25,
                )
        y += row_h

    # legend strip between title and column headers: label colours, centre mark
    handles = [
        Line2D([], [], color=label_colour(v), linewidth=2.0, label=f"label {v}")
        for v in sorted(seen_labels)
    ]
    handles.append(
        Line2D([], [], marker="+", color=_CROSS_COLOUR, markersize=8, markeredgewidth=1.4,
               linestyle="none", label="patch centre",
               path_effects=[path_effects.withStroke(linewidth=2.6, foreground="black")])
    )
    fig.legend(
        handles=handles, loc="center", ncol=len(handles), frameon=False,
        fontsize=8, handlelength=1.6, columnspacing=1.4, handletextpad=0.5,
        borderaxespad=0.0, borderpad=0.0,
        bbox_to_anchor=(fx(_LEFT + (W - _LEFT - _RIGHT) / 2),
                        fy(layout["top"] - _HEADER_H - _LEGEND_H / 2)),
    )

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    return buf.getvalue()


def draw_preview_grid(
    rows: Sequence[dict],
    out_path: Optional[PathLike] = None,
    title: Optional[str] = None,
    channel: int = 0,
) -> bytes:
    """Draw the augmentation preview grid and return it as PNG bytes.

    ``rows``: list of dicts ``{"name": str, "images": [ (C, D, H, W) float ],
    "labels": [ (D, H, W) int or None ], "captions": [str]}``.  Column 0 is
    the original patch, the others augmented samples.  Each cell shows slice
    ``D // 2`` of ``channel`` in grey, windowed to the 1st-99th percentile of
    the row's original; label values > 0 are drawn as coloured outlines; a
    cross marks the patch centre; the caption (wrapped to ~28 characters per
    line) sits below.

    If ``out_path`` is given the PNG is also written there atomically (temp
    file in the same folder, then ``os.replace``): if anything fails, no
    partial file is left and an existing file is untouched.
    """
    channel = int(channel)
    prepared = _prepare(rows, channel)
    layout = _layout(prepared, title)
    png = _render(prepared, layout, title)
    if out_path is not None:
        atomic_write_bytes(os.fspath(out_path), png)
    return png
