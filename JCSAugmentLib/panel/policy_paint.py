"""The policy pictures of the panel as display lists: what to paint (pies, bars, texts), read
from ``policy.json`` alone, with neither torch nor matplotlib nor Qt.

The widget paints a :class:`Picture` with a ``QPainter`` onto a ``QPixmap`` in Slicer's GUI
process (a few milliseconds), so redrawing the learned policies costs no subprocess.
``jcsaugment policy`` and :func:`JCSAugmentLib.panel.pictures.policy_pngs` still draw the
full matplotlib figures for reports.

- TRA (``tra_foreground``, ``tra_background``): one pie per augmentation group (15), its
  slices the options' probabilities, clockwise from 12 o'clock, the identity option first.
- TEA (``tea``): bars of the ``top`` most probable test-time operations.

Angles are Qt's: 1/16 degree, counter-clockwise from 3 o'clock (``QPainter.drawPie``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..run.folder import RunFolder

RGB = Tuple[int, int, int]

#: the colours of the slices: identity white, magnitude ramps grey (weak -> strong), the
#: special options their own (as in the matplotlib chart)
IDENTITY: RGB = (255, 255, 255)
GREYS: Tuple[RGB, ...] = ((228, 228, 228), (190, 190, 190), (149, 149, 149), (104, 104, 104),
                          (56, 56, 56))
ROT90: RGB = (60, 125, 212)
FLIP: RGB = (127, 168, 134)
SHARPEN: RGB = (243, 156, 79)
TEA_BAR: RGB = (70, 130, 180)
OUTLINE: RGB = (80, 80, 80)
TEXT: RGB = (20, 20, 20)


@dataclass(frozen=True)
class Pie:
    """One slice: ``drawPie(QRectF(x, y, size, size), start16, span16)`` filled with ``rgb``."""
    x: float
    y: float
    size: float
    start16: int
    span16: int
    rgb: RGB


@dataclass(frozen=True)
class Box:
    """A filled rectangle (a TEA bar)."""
    x: float
    y: float
    width: float
    height: float
    rgb: RGB


@dataclass(frozen=True)
class Text:
    """``drawText(QRectF(x, y, width, height), alignment, text)``; ``align``: "left",
    "center" or "right" (vertically centred)."""
    x: float
    y: float
    width: float
    height: float
    text: str
    align: str = "center"
    bold: bool = False


@dataclass
class Picture:
    """A display list of ``width`` x ``height`` pixels on white."""
    width: int
    height: int
    pies: List[Pie] = field(default_factory=list)
    boxes: List[Box] = field(default_factory=list)
    texts: List[Text] = field(default_factory=list)


def option_colour(name: str, rank: int, count: int) -> RGB:
    """The colour of TRA option ``name``, the ``rank``-th non-identity option (0-based) of
    ``count`` in its group."""
    low = name.lower()
    if low == "identity":
        return IDENTITY
    if "rot90" in low:
        return ROT90
    if "flip" in low or "mirror" in low:
        return FLIP
    if "sharpen" in low:
        return SHARPEN
    if count <= 1:
        return GREYS[len(GREYS) // 2]
    return GREYS[int(round(rank * (len(GREYS) - 1) / (count - 1)))]


def _probabilities(entry: Mapping[str, Any]) -> List[float]:
    p = entry.get("probabilities")
    if p is None and entry.get("logits") is not None:  # a hand-written file: softmax
        logits = [float(v) for v in entry["logits"]]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        p = [v / sum(e) for v in e]
    values = [max(0.0, float(v)) if v == v else 0.0 for v in (p or [])]
    total = sum(values)
    return [v / total for v in values] if total > 0 else values


def read_policy(source) -> Dict[str, Any]:
    """The policy dict of a ``policy.json`` path or run folder (plain JSON)."""
    path = os.fspath(source)
    if os.path.isdir(path):
        path = RunFolder(path).policy_path
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != "jcsaugment-policy":
        raise ValueError(f"{path} is not a JCSAugment policy file")
    return data


def _class_entry(policy: Mapping[str, Any], want: str, fallback: int):
    classes = (policy.get("tra") or {}).get("classes") or []
    if not classes:
        return None, None
    names = [str(c.get("name", "")) for c in classes]
    k = names.index(want) if want in names else min(fallback, len(classes) - 1)
    return classes[k], (names[k] if len(classes) > 1 else "all patches")


def tra_picture(policy: Mapping[str, Any], which: str = "foreground", width: int = 420,
                columns: int = 5) -> Optional[Picture]:
    """The pies of the TRA policy for ``which`` patches ("foreground" or "background"); None
    when the policy has no TRA part."""
    entry, label = _class_entry(policy, which, 1 if which == "foreground" else 0)
    if entry is None:
        return None
    groups = entry.get("groups") or []
    rows = max(1, math.ceil(len(groups) / columns))
    cell = width / columns
    size = cell * 0.68
    title_h, caption_h = 22.0, 16.0
    height = int(title_h + rows * (size + caption_h + 8) + 4)
    picture = Picture(width=width, height=height)
    it = (policy.get("meta") or {}).get("iteration")
    title = f"Training-time augmentation: {label}" + (f", iteration {it}" if it is not None
                                                      else "")
    picture.texts.append(Text(0, 0, width, title_h, title, bold=True))
    for g, group in enumerate(groups):
        row, col = divmod(g, columns)
        x = col * cell + (cell - size) / 2
        y = title_h + row * (size + caption_h + 8)
        options = [str(o) for o in group.get("options") or []]
        p = _probabilities(group)
        count = sum(1 for o in options if o.lower() != "identity")
        start = 90 * 16  # 12 o'clock, clockwise (negative spans)
        rank = 0
        for name, prob in zip(options, p):
            span = -int(round(prob * 360 * 16))
            if name.lower() == "identity":
                colour = IDENTITY
            else:
                colour = option_colour(name, rank, count)
                rank += 1
            if span:
                picture.pies.append(Pie(x, y, size, start, span, colour))
            start += span
        picture.texts.append(Text(col * cell, y + size + 2, cell, caption_h,
                                  str(group.get("group", g)).replace("_", " ")))
    return picture


def tea_picture(policy: Mapping[str, Any], width: int = 420, top: int = 8) -> Optional[Picture]:
    """Bars of the ``top`` most probable TEA operations; None without a TEA part."""
    tea = policy.get("tea")
    if not tea:
        return None
    names = [str(o) for o in tea.get("options") or []]
    p = _probabilities(tea)
    order = sorted(range(len(p)), key=lambda i: -p[i])[:top]
    title_h, bar_h, gap, label_w = 22.0, 16.0, 4.0, width * 0.42
    height = int(title_h + len(order) * (bar_h + gap) + 4)
    picture = Picture(width=width, height=height)
    it = (policy.get("meta") or {}).get("iteration")
    picture.texts.append(Text(0, 0, width, title_h, "Test-time augmentation" + (
        f", iteration {it}" if it is not None else ""), bold=True))
    scale = (width - label_w - 50) / max(p[order[0]] if order else 1.0, 1e-9)
    for k, i in enumerate(order):
        y = title_h + k * (bar_h + gap)
        name = names[i] if i < len(names) else str(i)
        picture.texts.append(Text(0, y, label_w - 6, bar_h, name, align="right"))
        picture.boxes.append(Box(label_w, y, max(1.0, p[i] * scale), bar_h, TEA_BAR))
        picture.texts.append(Text(label_w + p[i] * scale + 4, y, 46, bar_h, f"{p[i]:.2f}",
                                  align="left"))
    return picture


def policy_pictures(source, width: int = 420, top: Optional[int] = None) -> Dict[str, Picture]:
    """{"tra_foreground", "tra_background", "tea"} -> Picture for what the policy has.
    ``top``: TEA bars (default 4 for DeepMedic runs, else 8, as the matplotlib chart)."""
    policy = read_policy(source)
    if top is None:
        top = 4 if (policy.get("meta") or {}).get("backbone") == "deepmedic" else 8
    out = {}
    for key, which in (("tra_foreground", "foreground"), ("tra_background", "background")):
        picture = tra_picture(policy, which, width)
        if picture is not None:
            out[key] = picture
    picture = tea_picture(policy, width, top)
    if picture is not None:
        out["tea"] = picture
    return out
