"""The policy gallery picture: every op of a policy on the user's own patch.

One row per TRA group, in the order and with the titles of the policy pies, then the TEA ops;
the foreground patch's tiles on the left, the background patch's on the right. A tile is the
central axial slice of the augmented patch, windowed like the original patch (so intensity ops
show as brightness changes), with the label outlines and the patch centre drawn as in the
preview grid; a small square in its corner has the colour of the option's pie wedge. The
caption gives the op and magnitude and its probability for that patch class (and the initial
one, with an arrow saying whether learning raised or lowered it).

Only the object-oriented matplotlib API is used (``Figure`` + ``FigureCanvasAgg``).
"""

from __future__ import annotations

import io
import os
from typing import List, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
import matplotlib.patheffects as path_effects

from ..augment.gallery import Gallery, GalleryBlock
from ..augment.tables import TRA_GROUPS
from ..run.status import atomic_write_bytes
from .policy_chart import option_style
from .preview_grid import _CROSS_COLOUR, _window, _wrap, label_colour

__all__ = ["draw_gallery"]

PathLike = Union[str, "os.PathLike[str]"]

# ---- layout, in pixels at _DPI ----
_DPI = 100
_TILE = 116
_GAP_X = 6
_BLOCK_GAP = 34  # between the foreground and background halves
_LEFT = 128  # row names
_RIGHT = 10
_TITLE_H = 30
_SUBTITLE_H = 16
_NOTE_H = 18  # one line per message under the title
_LEGEND_H = 20
_HEADER_H = 36  # patch names above each half
_CAPTION_LINE = 10
_CAPTION_LINES = 2
_CAPTION_PAD = 3
_ROW_GAP = 8
_ROW_H = _TILE + _CAPTION_PAD + _CAPTION_LINES * _CAPTION_LINE + _ROW_GAP
_BOTTOM = 8
_SWATCH = 11
_MIN_COLUMNS = max(g.size for g in TRA_GROUPS)
_MAX_COLUMNS = 8  # TEA tiles beyond this wrap onto further rows
_SUBTITLE = ("each TRA option alone at its nominal magnitude (the other groups at identity), "
             "then the most probable TEA ops; p: its probability for the patch's class "
             "(\u25b2/\u25bc: above/below the initial policy's)")
_CROSS_RGB = np.asarray(to_rgb(_CROSS_COLOUR), dtype=np.float32)


def _rows(gallery: Gallery, groups: Optional[Sequence[str]]):
    """Row specs [(title, [block per patch])], a long TEA block split over several rows."""
    if not gallery.patches:
        raise ValueError("draw_gallery: the gallery has no patch")
    wanted = None if groups is None else {str(g).lower() for g in groups}
    n_blocks = len(gallery.patches[0].blocks)
    n_cols = max(_MIN_COLUMNS, min(_MAX_COLUMNS, len(gallery.tea_ops)))
    rows = []
    for b in range(n_blocks):
        blocks: List[GalleryBlock] = [p.blocks[b] for p in gallery.patches]
        first = blocks[0]
        is_tea = first.tiles and first.tiles[0].source == "tea"
        name = "tea" if is_tea else TRA_GROUPS[first.tiles[0].group_index].name
        if wanted is not None and name not in wanted:
            continue
        n = max(len(bl.tiles) for bl in blocks)
        for start in range(0, max(n, 1), n_cols):
            part = [GalleryBlock(bl.title, bl.tiles[start:start + n_cols]) for bl in blocks]
            rows.append((first.title if start == 0 else "", is_tea, part))
    if not rows:
        raise ValueError(f"draw_gallery: no row matches groups {sorted(wanted)}; give TRA "
                         f"group names ({', '.join(g.name for g in TRA_GROUPS)}) or 'tea'")
    return rows, n_cols


def _applied(gallery: Gallery, group_index: int) -> str:
    """P(applied) = 1 - P(identity) of a group per patch, the number under its pie."""
    parts = []
    for p in gallery.patches:
        tile = p.blocks[group_index].tiles[0]
        short = {"foreground patch": "fg", "background patch": "bg"}.get(p.name, p.name)
        parts.append(f"{short} {1 - tile.probability:.2f}")
    return "P(applied)\n" + "  ".join(parts)


def _figure_size_px(gallery: Gallery, groups: Optional[Sequence[str]] = None):
    rows, n_cols = _rows(gallery, groups)
    half = n_cols * _TILE + (n_cols - 1) * _GAP_X
    width = _LEFT + len(gallery.patches) * half + (len(gallery.patches) - 1) * _BLOCK_GAP \
        + _RIGHT
    top = _TITLE_H + _SUBTITLE_H + len(gallery.messages) * _NOTE_H + _LEGEND_H + _HEADER_H
    return int(width), int(top + len(rows) * _ROW_H + _BOTTOM), rows, n_cols, half, top


def _hex_rgb(colour: str) -> np.ndarray:
    return np.asarray(to_rgb(colour), dtype=np.float32)


def _paint_tile(canvas: np.ndarray, x0: int, y0: int, image2d: np.ndarray,
                label2d: Optional[np.ndarray], window, swatch: Optional[str]) -> set:
    """Paint one tile into ``canvas`` (H, W, 3) at pixel (x0, y0): the slice in grey fitted
    into the tile box (nearest voxel, aspect kept), label outlines two pixels wide in the
    preview's label colours, the centre cross, a frame and the pie-wedge swatch. Pixels, not
    artists: one image for the whole gallery draws in a fraction of the time of 140 axes."""
    h, w = image2d.shape
    scale = _TILE / max(h, w)
    th, tw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    rows = np.minimum((np.arange(th) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(tw) / scale).astype(int), w - 1)
    oy, ox = y0 + (_TILE - th) // 2, x0 + (_TILE - tw) // 2
    lo, hi = window
    grey = np.clip((np.nan_to_num(image2d[np.ix_(rows, cols)], nan=lo) - lo) / (hi - lo), 0, 1)
    box = canvas[oy:oy + th, ox:ox + tw]
    box[:] = grey[..., None]
    seen = set()
    if label2d is not None:
        lab = label2d[np.ix_(rows, cols)]
        edge = np.zeros((th, tw), dtype=bool)
        # both pixels of a pair that differ: a line two pixels wide, like the preview's contour
        dy = lab[1:, :] != lab[:-1, :]
        dx = lab[:, 1:] != lab[:, :-1]
        for v in np.unique(lab):
            if v <= 0:
                continue
            inside = lab == v
            mask = edge.copy()
            mask[1:, :] |= dy & (inside[1:, :] | inside[:-1, :])
            mask[:-1, :] |= dy & (inside[1:, :] | inside[:-1, :])
            mask[:, 1:] |= dx & (inside[:, 1:] | inside[:, :-1])
            mask[:, :-1] |= dx & (inside[:, 1:] | inside[:, :-1])
            mask &= inside | ~(lab > 0)  # a pixel of another label keeps its own outline
            box[mask] = _hex_rgb(label_colour(int(v)))
            seen.add(int(v))
    # centre cross: cyan on a black stroke
    cy, cx = oy + (h // 2) * th // h + th // (2 * h), ox + (w // 2) * tw // w + tw // (2 * w)
    arm = 5
    canvas[cy - 2:cy + 3, cx - arm - 1:cx + arm + 2] = 0.0
    canvas[cy - arm - 1:cy + arm + 2, cx - 2:cx + 3] = 0.0
    canvas[cy - 1:cy + 1, cx - arm:cx + arm + 1] = _CROSS_RGB
    canvas[cy - arm:cy + arm + 1, cx - 1:cx + 1] = _CROSS_RGB
    frame = _hex_rgb("#9a9a9a")
    canvas[oy, ox:ox + tw] = frame
    canvas[oy + th - 1, ox:ox + tw] = frame
    canvas[oy:oy + th, ox] = frame
    canvas[oy:oy + th, ox + tw - 1] = frame
    if swatch is not None:
        sy, sx = oy + 3, ox + 3
        canvas[sy:sy + _SWATCH, sx:sx + _SWATCH] = _hex_rgb("#222222")
        canvas[sy + 1:sy + _SWATCH - 1, sx + 1:sx + _SWATCH - 1] = _hex_rgb(swatch)
    return seen


def draw_gallery(gallery: Gallery, out_path: Optional[PathLike] = None, channel: int = 0,
                 groups: Optional[Sequence[str]] = None) -> bytes:
    """Draw ``gallery`` (from ``augment.gallery.make_gallery``) and return the PNG bytes.

    ``channel``: the image channel shown (0-based). ``groups``: draw only these rows (TRA
    group names such as ``"gamma"``, or ``"tea"``), e.g. the row of the pie a user clicked;
    default all. Given ``out_path`` the PNG is also written there atomically.
    """
    channel = int(channel)
    for p in gallery.patches:
        if not -p.image.shape[0] <= channel < p.image.shape[0]:
            raise ValueError(f"draw_gallery: channel {channel} requested but the image has "
                             f"{p.image.shape[0]} channel(s)")
    W, H, rows, n_cols, half, top = _figure_size_px(gallery, groups)
    fig = Figure(figsize=(W / _DPI, H / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)

    def fx(px):
        return px / W

    def fy(px_from_top):
        return 1.0 - px_from_top / H

    fig.text(0.5, fy(_TITLE_H / 2 + 2), gallery.title, ha="center", va="center",
             fontsize=12, fontweight="bold", color="#111111")
    fig.text(0.5, fy(_TITLE_H + _SUBTITLE_H / 2), _SUBTITLE, ha="center", va="center",
             fontsize=8.5, color="#444444")
    for i, message in enumerate(gallery.messages):
        fig.text(0.5, fy(_TITLE_H + _SUBTITLE_H + (i + 0.5) * _NOTE_H), message, ha="center",
                 va="center", fontsize=9, color="#b00020")
    legend_y = _TITLE_H + _SUBTITLE_H + len(gallery.messages) * _NOTE_H + _LEGEND_H / 2

    # one window per patch, the original's: an intensity op then shows as a change
    windows = [_window(np.asarray(p.image[channel], dtype=np.float64)) for p in gallery.patches]
    x_of = [_LEFT + k * (half + _BLOCK_GAP) for k in range(len(gallery.patches))]
    for k, p in enumerate(gallery.patches):
        head = (f"{p.name} (class '{p.class_name}'), centre z y x {p.centre}, "
                f"slice {p.image.shape[1] // 2} of {p.image.shape[1]}")
        fig.text(fx(x_of[k] + half / 2), fy(top - _HEADER_H / 2), "\n".join(_wrap(head, 90, 2)),
                 ha="center", va="center", fontsize=9.5, fontweight="bold", color="#111111")

    canvas = np.ones((H, W, 3), dtype=np.float32)
    seen = set()
    y = top
    for title, is_tea, blocks in rows:
        if title:
            lines = title.split("\n")
            fig.text(fx(8), fy(y + _TILE / 2 - 14), lines[0], ha="left", va="center",
                     fontsize=10, fontweight="bold", color="#111111")
            if len(lines) > 1:
                fig.text(fx(8), fy(y + _TILE / 2 + 2), lines[1], ha="left", va="center",
                         fontsize=7.5, color="#444444")
            if not is_tea:
                gi = blocks[0].tiles[0].group_index
                fig.text(fx(8), fy(y + _TILE / 2 + 14), _applied(gallery, gi), ha="left",
                         va="top", fontsize=7, color="#444444", linespacing=1.2)
        for k, block in enumerate(blocks):
            for c, tile in enumerate(block.tiles):
                x0 = x_of[k] + c * (_TILE + _GAP_X)
                z = tile.image.shape[1] // 2
                swatch = (option_style(tile.group_index, tile.option_index)[0]
                          if tile.source == "tra" else None)
                seen.update(_paint_tile(canvas, x0, y, np.asarray(tile.image[channel, z],
                                                                  dtype=np.float64),
                                        np.asarray(tile.label[z]), windows[k], swatch))
                fig.text(fx(x0 + _TILE / 2), fy(y + _TILE + _CAPTION_PAD), tile.caption,
                         ha="center", va="top", fontsize=6.6, color="#222222",
                         linespacing=1.15)
        y += _ROW_H

    fig.figimage(canvas, xo=0, yo=0, origin="upper", zorder=0)
    handles = [Line2D([], [], color=label_colour(v), linewidth=2.0, label=f"label {v}")
               for v in sorted(seen)]
    handles.append(Line2D([], [], marker="+", color=_CROSS_COLOUR, markersize=8,
                          markeredgewidth=1.4, linestyle="none", label="patch centre",
                          path_effects=[path_effects.withStroke(linewidth=2.6,
                                                                foreground="black")]))
    handles.append(Rectangle((0, 0), 1, 1, facecolor="#959595", edgecolor="#222222",
                             linewidth=0.6, label="pie wedge colour"))
    fig.legend(handles=handles, loc="center", ncol=len(handles), frameon=False, fontsize=8,
               handlelength=1.6, columnspacing=1.4, handletextpad=0.5, borderaxespad=0.0,
               borderpad=0.0, bbox_to_anchor=(0.5, fy(legend_y)))

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    png = buf.getvalue()
    if out_path is not None:
        atomic_write_bytes(os.fspath(out_path), png)
    return png
