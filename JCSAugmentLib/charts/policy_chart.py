"""Policy charts: what a learned (or heuristic) augmentation policy looks like.

* :func:`draw_tra_policy`: the paper's Fig. 3 style. One row per patch class (plus an
  ``initial`` row for comparison), one pie per TRA group (15 columns). Each wedge is one option
  of the group; white is identity, grey darkness is the magnitude (light = small, dark =
  large), the 90-degree rotation, the flip and the sharpen options have their own colours (see
  :data:`OPTION_STYLES`). The number under a pie is P(applied) = 1 - P(identity).
* :func:`draw_tea_policy`: the 84 TEA op probabilities as bars ordered by kind (identity,
  spatial, intensity, filter/noise), the initial policy as an outline over each bar, the ``top``
  most probable ops (what inference averages) highlighted and listed with their weights
  renormalised over those ``top``.
* :func:`draw_policy_figure`: both in one figure (TRA on top, TEA below).
* :func:`draw_policy_file`: a ``policy.json`` (``jcsaugment policy RUN_DIR --out PNG``).

Every function returns the PNG bytes and, given ``out_path``, also writes them atomically.
Only the object-oriented matplotlib API is used (``Figure`` + ``FigureCanvasAgg``): nothing
here imports ``pyplot``, selects a backend or changes ``rcParams``.
"""

from __future__ import annotations

import io
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator
from matplotlib.transforms import Affine2D

from ..augment.labels import tea_op_label, tra_group_title
from ..augment.tables import TEA_OPS, TRA_GROUPS
from ..policy.initial import (TEA_POLICY_NAMES, TRA_POLICY_NAMES, tea_probabilities,
                              tra_probabilities)
from ..policy.policies import ClassSpecificTRAPolicy, TEAPolicy, TRAPolicy
from ..run.status import atomic_write_bytes

__all__ = ["draw_tra_policy", "draw_tea_policy", "draw_policy_figure", "draw_policy_file",
           "option_style", "OPTION_STYLES", "TRA_COLUMN_TITLES"]

PathLike = Union[str, "os.PathLike[str]"]

# ---- the colour mapping of TRA options: the one table -------------------------------------
# category -> colours (weakest to strongest; one colour = no magnitude ramp), hatch, legend text.
# An option's category comes from its op (``_option_category``); within a category the option's
# strength rank inside its group picks the colour (``option_style``).
OPTION_STYLES: Dict[str, dict] = {
    "identity": {"colours": ("#ffffff",), "hatch": None, "label": "identity"},
    "magnitude": {"colours": ("#e4e4e4", "#bebebe", "#959595", "#686868", "#383838"),
                  "hatch": None, "label": "magnitude"},
    "sharpen": {"colours": ("#fdd7ae", "#f39c4f", "#c85a0c"), "hatch": None,
                "label": "sharpen"},
    "rot90": {"colours": ("#3c7dd4",), "hatch": "////", "label": "90\u00b0 rotation"},
    "flip": {"colours": ("#7fa886",), "hatch": None, "label": "flip"},
}
_WEDGE_EDGE = "#505050"
_HATCH_COLOUR = "#ffffff"

# Short column titles, in TRA_GROUPS order, from the op registry's short labels.
TRA_COLUMN_TITLES: Tuple[str, ...] = tuple(tra_group_title(g) for g in TRA_GROUPS)

# Column bands above the TRA pies (first column, last column, text).
_TRA_BANDS = ((0, 6, "spatial"), (7, 11, "intensity"), (12, 14, "filter / noise / resolution"))

# TEA kinds: order, bar colour, heading.
_TEA_KINDS = (
    ("identity", "#3a3a3a", "identity"),
    ("spatial", "#2a9d8f", "spatial"),
    ("intensity", "#e76f51", "intensity"),
    ("filter_noise", "#7b5ea7", "filter / noise"),
)
_TEA_KIND_COLOUR = {k: c for k, c, _ in _TEA_KINDS}
_TEA_DIM_ALPHA = 0.38  # bars outside the top-z
_INITIAL_EDGE = "#2b2b2b"

# ---- layout, in pixels at _DPI ---------------------------------------------------------------
_DPI = 100
_W = 1600  # figure width
_MARGIN = 14
_TITLE_H = 36
_SECTION_H = 26  # section heading
_GAP_SECTIONS = 18

# TRA
_TRA_LEFT = 150  # row names
_TRA_LEGEND_H = 30
_TRA_BAND_H = 18
_TRA_HEADER_H = 20
_PIE = 82  # pie box
_TRA_VALUE_H = 18  # P(applied) under a pie
_TRA_ROW_H = _PIE + _TRA_VALUE_H + 12
_TRA_COL = (_W - _TRA_LEFT - _MARGIN) // len(TRA_GROUPS)

# TEA
_TEA_LEFT = 66  # y axis
_TEA_PANEL_W = 300  # top-z list on the right
_TEA_PANEL_GAP = 30
_TEA_LEGEND_H = 28
_TEA_KIND_H = 22
_TEA_PLOT_H = 250
_TEA_TICKS_H = 96
_TEA_LIST_ROW = 19
_TEA_LIST_HEAD = 46
_TEA_LIST_MAX = 24
_TEA_RANK_MARKS = 12  # rank numbers over the bars only up to this many top ops
_BOTTOM = 10


# ============================================================================================
# Option colours
# ============================================================================================

def _option_category(op: str) -> str:
    if op in ("identity", "rot90", "sharpen", "flip"):
        return op
    return "magnitude"


def option_style(group_index: int, option_index: int) -> Tuple[str, Optional[str]]:
    """(face colour, hatch or None) of option ``option_index`` of TRA group ``group_index``.

    Identity is white; a magnitude option is grey, darker for a stronger option (its rank among
    the group's options with the same op, in table order, which is weakest first in every
    group); sharpen uses its own ramp, a 90-degree rotation and a flip a single colour each.
    """
    group = TRA_GROUPS[group_index]
    option = group.options[option_index]
    style = OPTION_STYLES[_option_category(option.op)]
    colours = style["colours"]
    same = [i for i, o in enumerate(group.options) if o.op == option.op]
    rank, n = same.index(option_index), len(same)
    if len(colours) == 1:
        k = 0
    elif n == 1:
        k = len(colours) // 2
    else:
        k = int(round(rank * (len(colours) - 1) / (n - 1)))
    return colours[k], style["hatch"]


# ============================================================================================
# Inputs
# ============================================================================================

def _np(t) -> np.ndarray:
    a = np.asarray(t.detach().double().cpu().numpy() if hasattr(t, "detach") else t,
                   dtype=np.float64).reshape(-1)
    return np.clip(np.nan_to_num(a, nan=0.0), 0.0, None)


def _tra_rows_of(policy, what: str) -> List[Tuple[str, List[np.ndarray]]]:
    """(row name, per-group probability arrays) for each class of ``policy``."""
    if isinstance(policy, ClassSpecificTRAPolicy):
        return [(str(n), [_np(p) for p in pol.probabilities()])
                for n, pol in zip(policy.class_names, policy.policies)]
    if isinstance(policy, TRAPolicy):
        return [("all patches", [_np(p) for p in policy.probabilities()])]
    raise TypeError(f"{what}: expected a ClassSpecificTRAPolicy or TRAPolicy, got "
                    f"{type(policy).__name__}")


def _tra_initial_rows(initial) -> List[Tuple[str, List[np.ndarray]]]:
    if initial is None:
        return []
    if isinstance(initial, str):
        return [(f"initial ({initial.lower()})",
                 [np.asarray(p, dtype=np.float64) for p in tra_probabilities(initial)])]
    rows = _tra_rows_of(initial, "initial")
    first = rows[0][1]
    if all(all(np.allclose(a, b, atol=1e-6) for a, b in zip(first, r[1])) for r in rows[1:]):
        return [("initial", first)]
    return [(f"initial: {name}", probs) for name, probs in rows]


def _tea_probs_of(policy, what: str) -> np.ndarray:
    if isinstance(policy, TEAPolicy):
        return _np(policy.probabilities())
    raise TypeError(f"{what}: expected a TEAPolicy, got {type(policy).__name__}")


def _tea_initial(initial) -> Tuple[Optional[np.ndarray], str]:
    if initial is None:
        return None, ""
    if isinstance(initial, str):
        return np.asarray(tea_probabilities(initial), dtype=np.float64), \
            f"initial ({initial.lower()})"
    return _tea_probs_of(initial, "initial"), "initial"


def _check_top(top) -> int:
    top = int(top)
    if not 1 <= top <= len(TEA_OPS):
        raise ValueError(f"top must be in [1, {len(TEA_OPS)}], got {top}")
    return top


# ============================================================================================
# Pixel canvas
# ============================================================================================

class _Canvas:
    """A Figure addressed in pixels from the top-left corner."""

    def __init__(self, width: int, height: int):
        self.W, self.H = int(width), int(height)
        self.fig = Figure(figsize=(self.W / _DPI, self.H / _DPI), dpi=_DPI, facecolor="white")
        FigureCanvasAgg(self.fig)
        self._renderer = None
        # pixels with y up (origin bottom-left), for patches such as pie wedges
        self.px_up = Affine2D().scale(1.0 / self.W, 1.0 / self.H) + self.fig.transFigure

    def axes(self, x: float, y: float, w: float, h: float):
        return self.fig.add_axes([x / self.W, 1.0 - (y + h) / self.H, w / self.W, h / self.H])

    def text(self, x: float, y: float, s: str, **kw):
        return self.fig.text(x / self.W, 1.0 - y / self.H, s, **kw)

    def line(self, x0, y0, x1, y1, **kw):
        from matplotlib.lines import Line2D
        ln = Line2D([x0 / self.W, x1 / self.W], [1.0 - y0 / self.H, 1.0 - y1 / self.H],
                    transform=self.fig.transFigure, **kw)
        self.fig.add_artist(ln)
        return ln

    def rect(self, x, y, w, h, **kw):
        r = Rectangle((x / self.W, 1.0 - (y + h) / self.H), w / self.W, h / self.H,
                      transform=self.fig.transFigure, **kw)
        self.fig.add_artist(r)
        return r

    def text_width(self, t) -> float:
        if self._renderer is None:
            self._renderer = self.fig.canvas.get_renderer()
        return t.get_window_extent(renderer=self._renderer).width

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
        return buf.getvalue()


def _set_hatch(patch, hatch: Optional[str]) -> None:
    if not hatch:
        return
    patch.set_hatch(hatch)
    if hasattr(patch, "set_hatchcolor"):  # matplotlib >= 3.10
        patch.set_hatchcolor(_HATCH_COLOUR)
    if hasattr(patch, "set_hatch_linewidth"):
        patch.set_hatch_linewidth(0.8)


def _legend_items(cv: _Canvas, x: float, y: float, items) -> float:
    """Draw legend items left to right at baseline centre ``y``; returns the x reached.

    ``items``: list of ``("swatch", [(colour, hatch), ...], text)``, ``("text", text)`` or
    ``("custom", draw(x, y) -> width, text)``.
    """
    sw, gap = 14, 5
    for item in items:
        if item[0] == "text":
            t = cv.text(x, y, item[1], ha="left", va="center", fontsize=8.5, color="#333333")
            x += cv.text_width(t) + 18
            continue
        if item[0] == "swatch":
            for colour, hatch in item[1]:
                r = cv.rect(x, y - sw / 2, sw, sw, facecolor=colour, edgecolor=_WEDGE_EDGE,
                            linewidth=0.6)
                _set_hatch(r, hatch)
                x += sw + 1
        else:
            x += item[1](x, y)
        t = cv.text(x + gap, y, item[2], ha="left", va="center", fontsize=8.5,
                    color="#222222")
        x += gap + cv.text_width(t) + 20
    return x


# ============================================================================================
# TRA section
# ============================================================================================

def _tra_height(n_rows: int) -> int:
    return _SECTION_H + _TRA_LEGEND_H + _TRA_BAND_H + _TRA_HEADER_H + n_rows * _TRA_ROW_H


def _tra_rows_top(y0: float) -> float:
    return y0 + _SECTION_H + _TRA_LEGEND_H + _TRA_BAND_H + _TRA_HEADER_H


def _tra_pie_box(row: int, group: int, title: Optional[str] = None) -> Tuple[int, int, int, int]:
    """(x, y, width, height) in pixels of a pie of the TRA section (which always comes first)."""
    y = _tra_rows_top(_TITLE_H if title else 8) + row * _TRA_ROW_H + 2
    x = _TRA_LEFT + group * _TRA_COL + _TRA_COL / 2 - _PIE / 2
    return int(round(x)), int(round(y)), _PIE, _PIE


def _render_tra(cv: _Canvas, y0: float, rows, n_learned: int) -> None:
    cv.text(_MARGIN, y0 + _SECTION_H / 2, "TRA \u2014 training-time augmentation policy "
            "(one row per patch class, one pie per group)", ha="left", va="center",
            fontsize=11, fontweight="bold", color="#111111")
    y = y0 + _SECTION_H

    # legend
    mag = OPTION_STYLES["magnitude"]["colours"]
    sharp = OPTION_STYLES["sharpen"]["colours"]
    _legend_items(cv, _MARGIN, y + _TRA_LEGEND_H / 2, [
        ("swatch", [(OPTION_STYLES["identity"]["colours"][0], None)], "identity (not applied)"),
        ("swatch", [(c, None) for c in mag], "magnitude: small \u2192 large"),
        ("swatch", [(c, None) for c in sharp], "sharpen: weak \u2192 strong (blur is grey)"),
        ("swatch", [(OPTION_STYLES["rot90"]["colours"][0], OPTION_STYLES["rot90"]["hatch"])],
         OPTION_STYLES["rot90"]["label"]),
        ("swatch", [(OPTION_STYLES["flip"]["colours"][0], None)], "flip"),
        ("text", "number under a pie: P(applied) = 1 \u2212 P(identity)"),
    ])
    y += _TRA_LEGEND_H

    # kind bands and column titles
    for c0, c1, name in _TRA_BANDS:
        xa = _TRA_LEFT + c0 * _TRA_COL + 6
        xb = _TRA_LEFT + (c1 + 1) * _TRA_COL - 6
        cv.line(xa, y + _TRA_BAND_H - 3, xb, y + _TRA_BAND_H - 3, color="#9a9a9a",
                linewidth=0.9)
        cv.text((xa + xb) / 2, y + _TRA_BAND_H / 2 - 2, name, ha="center", va="center",
                fontsize=8.5, color="#555555", style="italic",
                bbox=dict(facecolor="white", edgecolor="none", pad=1.5))
    y += _TRA_BAND_H
    for c, title in enumerate(TRA_COLUMN_TITLES):
        cv.text(_TRA_LEFT + c * _TRA_COL + _TRA_COL / 2, y + _TRA_HEADER_H / 2, title,
                ha="center", va="center", fontsize=9.5, fontweight="bold", color="#222222")
    y += _TRA_HEADER_H

    # light separators between kinds
    rows_top, rows_bottom = y, y + len(rows) * _TRA_ROW_H - 6
    for c0, _c1, _n in _TRA_BANDS[1:]:
        x = _TRA_LEFT + c0 * _TRA_COL
        cv.line(x, rows_top, x, rows_bottom, color="#d4d4d4", linewidth=0.8)

    for r, (name, probs) in enumerate(rows):
        is_initial = r >= n_learned
        if is_initial and r == n_learned:
            cv.line(_MARGIN, y - 3, _W - _MARGIN, y - 3, color="#9a9a9a", linewidth=0.8,
                    linestyle=(0, (4, 3)))
        cv.text(_TRA_LEFT - 12, y + _PIE / 2 + 2, name, ha="right", va="center",
                fontsize=10.5 if not is_initial else 9.5,
                fontweight="bold" if not is_initial else "normal",
                style="italic" if is_initial else "normal",
                color="#111111" if not is_initial else "#555555")
        for gi, p in enumerate(probs):
            xc = _TRA_LEFT + gi * _TRA_COL + _TRA_COL / 2
            # the pie fills the box _tra_pie_box(r, gi) but for a small margin
            _draw_pie(cv, xc, y + 2 + _PIE / 2, _PIE / 2 * 0.96, gi, p)
            applied = float(max(0.0, 1.0 - p[0] / max(p.sum(), 1e-300)))
            cv.text(xc, y + 2 + _PIE + _TRA_VALUE_H / 2 + 1, f"{applied:.2f}", ha="center",
                    va="center", fontsize=9.5, color="#111111" if not is_initial else "#555555")
        y += _TRA_ROW_H


def _draw_pie(cv: "_Canvas", xc: float, yc: float, radius: float, group_index: int,
              p: np.ndarray) -> None:
    """One pie at pixel centre (xc, yc): identity from 12 o'clock clockwise, then the options
    in table order (weakest first), so the strongest ends just left of 12 o'clock."""
    from matplotlib.patches import Circle, Wedge
    total = float(p.sum())
    p = p / total if total > 0 else np.eye(len(p))[0]
    centre = (xc, cv.H - yc)  # y up for the patches
    angle = 90.0
    for oi, v in enumerate(p):
        if v <= 1e-6:
            continue
        colour, hatch = option_style(group_index, oi)
        sweep = 360.0 * float(v)
        w = Wedge(centre, radius, angle - sweep, angle, facecolor=colour, edgecolor=_WEDGE_EDGE,
                  linewidth=0.5 if v < 0.999999 else 0.0, transform=cv.px_up)
        _set_hatch(w, hatch)
        cv.fig.add_artist(w)
        angle -= sweep
    cv.fig.add_artist(Circle(centre, radius, facecolor="none", edgecolor=_WEDGE_EDGE,
                             linewidth=0.8, transform=cv.px_up))


# ============================================================================================
# TEA section
# ============================================================================================

def _tea_order() -> List[int]:
    """TEA op indices ordered by kind, then table order; the all-axes flip joins the flips."""
    order: List[int] = []
    for kind, _c, _t in _TEA_KINDS:
        ops = [op for op in TEA_OPS if op.kind == kind and op.op != "flip_all"]
        order.extend(op.index for op in ops)
        if kind == "spatial":
            last_flip = max(i for i, k in enumerate(order) if TEA_OPS[k].op == "flip")
            flip_all = [op.index for op in TEA_OPS if op.op == "flip_all"]
            order[last_flip + 1:last_flip + 1] = flip_all
    assert sorted(order) == list(range(len(TEA_OPS)))
    return order


def _tea_family(op) -> str:
    if op.op in ("flip", "flip_all"):
        return "flip"
    return op.op if op.axis is None else f"{op.op}{op.axis}"


def tea_short_name(index: int) -> str:
    """A compact label of TEA op ``index`` (``rot0 +15``, ``rot90 ax2 180``, ``scale 1/1.05``),
    from the op registry's tick label (``augment.labels.tea_op_label``)."""
    return tea_op_label(TEA_OPS[index])


def _tea_height(top: int) -> int:
    listed = min(top, _TEA_LIST_MAX) + (1 if top > _TEA_LIST_MAX else 0)
    panel = _TEA_LIST_HEAD + listed * _TEA_LIST_ROW + 40
    plot = _TEA_KIND_H + _TEA_PLOT_H + _TEA_TICKS_H
    return _SECTION_H + _TEA_LEGEND_H + max(plot, panel)


def _render_tea(cv: _Canvas, y0: float, p: np.ndarray, init: Optional[np.ndarray],
                init_label: str, top: int) -> None:
    n = len(TEA_OPS)
    total = float(p.sum())
    p = p / total if total > 0 else np.full(n, 1.0 / n)
    top_idx = [int(i) for i in np.argsort(-p, kind="stable")[:top]]
    weights = p[top_idx] / max(float(p[top_idx].sum()), 1e-300)
    rank_of = {i: r for r, i in enumerate(top_idx)}

    cv.text(_MARGIN, y0 + _SECTION_H / 2, f"TEA \u2014 test-time augmentation policy "
            f"({n} ops by kind; the top {top} are averaged at inference)", ha="left",
            va="center", fontsize=11, fontweight="bold", color="#111111")
    y = y0 + _SECTION_H

    # legend
    def outline_swatch(x, yc):
        cv.rect(x, yc - 7, 14, 14, facecolor="none", edgecolor=_INITIAL_EDGE, linewidth=1.0)
        return 14

    def uniform_swatch(x, yc):
        cv.line(x, yc, x + 22, yc, color="#777777", linewidth=1.0, linestyle=(0, (3, 2)))
        return 22

    items = [("swatch", [(c, None)], t) for _k, c, t in _TEA_KINDS]
    items.append(("custom", lambda x, yc: _dim_swatch(cv, x, yc), f"not in the top {top}"))
    if init is not None:
        items.append(("custom", outline_swatch, init_label))
    items.append(("custom", uniform_swatch, f"uniform 1/{n}"))
    _legend_items(cv, _MARGIN, y + _TEA_LEGEND_H / 2, items)
    y += _TEA_LEGEND_H

    plot_w = _W - _TEA_LEFT - _MARGIN - _TEA_PANEL_W - _TEA_PANEL_GAP
    ax = cv.axes(_TEA_LEFT, y + _TEA_KIND_H, plot_w, _TEA_PLOT_H)
    order = _tea_order()
    xs = np.arange(n)
    vals = p[order]
    ymax = float(max(vals.max(), init.max() if init is not None else 0.0, 1.0 / n))
    ymax = ymax * 1.16 if ymax > 0 else 1.0
    in_top = [i in rank_of for i in order]
    ax.bar(xs, vals, width=0.66, zorder=2,
           color=[to_rgba(_TEA_KIND_COLOUR[TEA_OPS[i].kind], 1.0 if t else _TEA_DIM_ALPHA)
                  for i, t in zip(order, in_top)],
           edgecolor=["#111111" if t else "none" for t in in_top],
           linewidth=[0.7 if t else 0.0 for t in in_top])
    if init is not None:
        ax.bar(xs, init[order], width=0.9, facecolor="none", edgecolor=_INITIAL_EDGE,
               linewidth=0.7, zorder=3)
    ax.axhline(1.0 / n, color="#777777", linewidth=0.9, linestyle=(0, (3, 2)), zorder=1)
    for x, i in zip(xs, order):
        if i in rank_of and top <= _TEA_RANK_MARKS:
            h = max(p[i], init[i] if init is not None else 0.0)
            ax.text(x, h + ymax * 0.012, str(rank_of[i] + 1), ha="center", va="bottom",
                    fontsize=7.5, fontweight="bold", color="#111111", zorder=4)

    # separators: kinds (solid, with headings), op families (faint)
    kinds = [TEA_OPS[i].kind for i in order]
    fams = [_tea_family(TEA_OPS[i]) for i in order]
    start = 0
    for x in range(1, n + 1):
        if x == n or kinds[x] != kinds[x - 1]:
            kind = kinds[x - 1]
            heading = dict((k, t) for k, _c, t in _TEA_KINDS)[kind]
            count = x - start
            label = heading if kind == "identity" else f"{heading} ({count})"
            ax.text((start + x - 1) / 2, 1.015, label, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=9, fontweight="bold",
                    color=_TEA_KIND_COLOUR[kind])
            if x < n:
                ax.axvline(x - 0.5, color="#7a7a7a", linewidth=1.0, zorder=1)
            start = x
        elif fams[x] != fams[x - 1]:
            ax.axvline(x - 0.5, color="#e0e0e0", linewidth=0.7, zorder=0)

    ax.set_xlim(-0.6, n - 0.4)
    ax.set_yscale("function", functions=(_sqrt, np.square))
    ax.set_ylim(0, ymax)
    ticks: List[float] = []
    for t in _SQRT_TICKS:  # keep ticks at least 7 % of the axis apart (in sqrt units)
        if t <= ymax and (not ticks or _sqrt(t) - _sqrt(ticks[-1]) >= 0.07 * _sqrt(ymax)):
            ticks.append(t)
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xticks(xs)
    ax.set_xticklabels([tea_short_name(i) for i in order], rotation=90, fontsize=7.5)
    for lab, i in zip(ax.get_xticklabels(), order):
        if i in rank_of:
            lab.set_fontweight("bold")
            lab.set_color("#111111")
        else:
            lab.set_color("#555555")
    ax.tick_params(axis="x", length=2, pad=2)
    ax.tick_params(axis="y", labelsize=8.5)
    ax.set_ylabel("probability (square-root scale)", fontsize=9)
    ax.grid(axis="y", color="#ececec", linewidth=0.7, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    # top-z list
    px = _W - _MARGIN - _TEA_PANEL_W
    py = y + _TEA_KIND_H - 4
    cv.text(px, py, f"Top {top}: the ops inference averages", ha="left", va="top",
            fontsize=9.5, fontweight="bold", color="#111111")
    hy = py + 26
    col_rank, col_sw, col_name, col_p, col_w = px + 14, px + 22, px + 42, px + 210, px + 290
    cv.text(col_name, hy, "op", ha="left", va="center", fontsize=8, color="#666666")
    cv.text(col_p, hy, "p", ha="right", va="center", fontsize=8, color="#666666")
    cv.text(col_w, hy, "weight", ha="right", va="center", fontsize=8, color="#666666")
    cv.line(px, hy + 9, px + _TEA_PANEL_W - 4, hy + 9, color="#bbbbbb", linewidth=0.7)
    ry = hy + 9 + _TEA_LIST_ROW / 2 + 1
    for r, (i, w) in enumerate(zip(top_idx, weights)):
        if r >= _TEA_LIST_MAX:
            cv.text(col_name, ry, f"\u2026 and {top - _TEA_LIST_MAX} more", ha="left",
                    va="center", fontsize=8.5, color="#555555")
            ry += _TEA_LIST_ROW
            break
        cv.text(col_rank, ry, f"{r + 1}", ha="right", va="center", fontsize=8.5,
                color="#333333")
        cv.rect(col_sw, ry - 6, 12, 12, facecolor=_TEA_KIND_COLOUR[TEA_OPS[i].kind],
                edgecolor="#111111", linewidth=0.5)
        cv.text(col_name, ry, TEA_OPS[i].name, ha="left", va="center", fontsize=8.5,
                color="#111111")
        cv.text(col_p, ry, f"{p[i]:.3f}", ha="right", va="center", fontsize=8.5,
                color="#333333")
        cv.text(col_w, ry, f"{w:.3f}", ha="right", va="center", fontsize=8.5,
                fontweight="bold", color="#111111")
        ry += _TEA_LIST_ROW
    cv.text(px, ry + 4, f"weight: p renormalised over the top {top}\n"
            f"(the top {top} hold {float(p[top_idx].sum()):.0%} of the probability)", ha="left",
            va="top", fontsize=8, color="#555555", linespacing=1.3)


_SQRT_TICKS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
               0.8, 0.9, 1.0)


def _sqrt(v):
    return np.sqrt(np.clip(v, 0.0, None))


def _dim_swatch(cv: _Canvas, x: float, yc: float) -> float:
    for k, (_kind, c, _t) in enumerate(_TEA_KINDS[1:]):
        cv.rect(x + k * 15, yc - 7, 14, 14, facecolor=to_rgba(c, _TEA_DIM_ALPHA),
                edgecolor="none")
    return 3 * 15 - 1


# ============================================================================================
# Figures
# ============================================================================================

def _stack_height(heights: Sequence[int], title: Optional[str]) -> int:
    return int((_TITLE_H if title else 8) + sum(heights)
               + _GAP_SECTIONS * (len(heights) - 1) + _BOTTOM)


def _compose(tra_rows, n_learned, tea, title, top) -> bytes:
    parts = []
    if tra_rows:
        parts.append(("tra", _tra_height(len(tra_rows))))
    if tea is not None:
        parts.append(("tea", _tea_height(top)))
    if not parts:
        raise ValueError("nothing to draw: both the TRA and the TEA policy are None")
    top_px = _TITLE_H if title else 8
    cv = _Canvas(_W, _stack_height([h for _k, h in parts], title))
    if title:
        cv.text(_W / 2, _TITLE_H / 2 + 2, str(title), ha="center", va="center", fontsize=13,
                fontweight="bold", color="#111111")
    y = top_px
    for k, (kind, h) in enumerate(parts):
        if k:
            cv.line(_MARGIN, y - _GAP_SECTIONS / 2, _W - _MARGIN, y - _GAP_SECTIONS / 2,
                    color="#cfcfcf", linewidth=1.0)
        if kind == "tra":
            _render_tra(cv, y, tra_rows, n_learned)
        else:
            _render_tea(cv, y, *tea, top)
        y += h
    return cv.png()


def _finish(png: bytes, out_path: Optional[PathLike]) -> bytes:
    if out_path is not None:
        atomic_write_bytes(os.fspath(out_path), png)
    return png


def _tra_input(tra, initial):
    if tra is None:
        return [], 0
    rows = _tra_rows_of(tra, "tra")
    return rows + _tra_initial_rows(initial), len(rows)


def _tea_input(tea, initial):
    if tea is None:
        return None
    init, label = _tea_initial(initial)
    return _tea_probs_of(tea, "tea"), init, label


def draw_tra_policy(tra, initial=None, out_path: Optional[PathLike] = None,
                    title: Optional[str] = None) -> bytes:
    """Draw a TRA policy as pies (one row per class, one column per group); PNG bytes.

    ``tra``: a ``ClassSpecificTRAPolicy`` (one row per class) or a ``TRAPolicy`` (one row).
    ``initial``: optional policy to compare with, drawn as a last row ``initial`` (a
    ``ClassSpecificTRAPolicy``, a ``TRAPolicy`` or a heuristic name such as ``"nnunet"``).
    """
    if tra is None:
        raise ValueError("draw_tra_policy: tra is None")
    rows, n_learned = _tra_input(tra, initial)
    return _finish(_compose(rows, n_learned, None, title, 8), out_path)


def draw_tea_policy(tea, initial=None, top: int = 8, out_path: Optional[PathLike] = None,
                    title: Optional[str] = None) -> bytes:
    """Draw a TEA policy as bars ordered by kind with the ``top`` ops highlighted; PNG bytes.

    ``initial``: optional ``TEAPolicy`` or heuristic name (``"nnunet"``, ``"deepmedic"``,
    ``"none"``) drawn as an outline over each bar. ``top``: how many ops inference averages
    (8 for the U-Net, 4 for DeepMedic); they are listed with their renormalised weights.
    """
    if tea is None:
        raise ValueError("draw_tea_policy: tea is None")
    top = _check_top(top)
    return _finish(_compose([], 0, _tea_input(tea, initial), title, top), out_path)


def _figure_size_px(n_tra_rows: int = 0, tea: bool = False, top: int = 8,
                    title: Optional[str] = None) -> Tuple[int, int]:
    """(width, height) of the PNG for ``n_tra_rows`` pie rows and/or the TEA section."""
    parts = ([_tra_height(n_tra_rows)] if n_tra_rows else []) + ([_tea_height(top)] if tea else [])
    return _W, _stack_height(parts, title)


def draw_policy_figure(tra, tea, initial_tra=None, initial_tea=None,
                       out_path: Optional[PathLike] = None, title: Optional[str] = None,
                       top: int = 8) -> bytes:
    """TRA pies on top, TEA bars below, in one figure; either policy may be None (not both)."""
    top = _check_top(top)
    rows, n_learned = _tra_input(tra, initial_tra)
    return _finish(_compose(rows, n_learned, _tea_input(tea, initial_tea), title, top),
                   out_path)


def draw_policy_file(policy_json_path: PathLike, out_path: Optional[PathLike],
                     initial: Optional[str] = "nnunet") -> bytes:
    """Load a ``policy.json`` and draw it (``jcsaugment policy RUN_DIR --out PNG``).

    The heuristic to compare with is the file's ``meta["init"]`` when present, else
    ``initial`` (None: no comparison). The number of TEA ops listed follows
    ``meta["backbone"]`` (4 for DeepMedic, else 8).
    """
    from ..policy.policy_json import load_policy
    path = os.fspath(policy_json_path)
    tra, tea, meta = load_policy(path)
    init = meta.get("init")
    name = init if isinstance(init, str) and init else initial
    if name is not None:
        name = str(name).lower()
        if name not in TRA_POLICY_NAMES and name not in TEA_POLICY_NAMES:
            raise ValueError(f"unknown initial policy {name!r}; choose one of "
                             f"{', '.join(TRA_POLICY_NAMES)}")
    init_tra = name if name in TRA_POLICY_NAMES else None
    init_tea = name if name in TEA_POLICY_NAMES else None
    top = 4 if meta.get("backbone") == "deepmedic" else 8
    where = os.path.basename(os.path.dirname(os.path.abspath(path)))
    title = f"Policy {os.path.join(where, os.path.basename(path)) if where else path}"
    details = [f"{k} {meta[k]}" for k in ("mode", "backbone", "iteration") if k in meta]
    if details:
        title += " \u2014 " + ", ".join(details)
    return draw_policy_figure(tra, tea, init_tra, init_tea, out_path=out_path, title=title,
                              top=top)
