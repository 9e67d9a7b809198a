"""Pictures for the panel: the learned policies (TRA pies per patch class, TEA bars) and the
training curves, as PNG bytes for a QLabel (``qt.QPixmap.loadFromData``).

The policy pictures come from :mod:`JCSAugmentLib.charts.policy_chart` (the same drawing as
``jcsaugment policy``), which needs matplotlib and torch: call :func:`policy_pngs` where those
may be imported, or, to keep them out of Slicer's GUI process, run it in a subprocess::

    cmd = policy_pngs_command(run_dir_or_policy_json, out_dir)   # python -m ...panel.pictures
    WorkerProcess.for_command(cmd, log_path=...).start()        # then read out_dir/*.png

Drawing the policies takes a fraction of a second: redraw when ``ViewState.policy_changed``,
at most every few seconds (the worker updates the policy every iteration).
:func:`curve_png` needs matplotlib only.

Imports matplotlib and torch only inside the functions that draw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..run.folder import RunFolder, load_preview_arrays

__all__ = ["policy_pngs", "write_policy_pngs", "policy_pngs_command", "curve_png",
           "section_pictures", "policy_dict_from_event", "preview_volumes", "PICTURE_NAMES"]

#: the keys of :func:`policy_pngs` (also the PNG file names written by write_policy_pngs)
PICTURE_NAMES = ("tra_foreground", "tra_background", "tea")

PolicySource = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def policy_dict_from_event(event: Mapping[str, Any]) -> Dict[str, Any]:
    """A ``policy.json``-style dict (probabilities) from a ``policy`` event's payload
    ``{"tra": {class: [probabilities per group]}, "tea": [probabilities]}``."""
    from ..augment.tables import TEA_OPS, TRA_GROUPS
    tra = event.get("tra")
    out: Dict[str, Any] = {"format": "jcsaugment-policy", "version": 1}
    if isinstance(tra, Mapping) and tra:
        classes = []
        for name, groups in tra.items():
            if not isinstance(groups, Sequence) or len(groups) != len(TRA_GROUPS):
                raise ValueError(f"policy event: class {name!r} needs {len(TRA_GROUPS)} groups")
            classes.append({"name": str(name), "groups": [
                {"group": g.name, "probabilities": _normalised(p, g.size, f"{name}/{g.name}")}
                for g, p in zip(TRA_GROUPS, groups)]})
        out["tra"] = {"classes": classes}
    tea = event.get("tea")
    if tea is not None:
        out["tea"] = {"probabilities": _normalised(tea, len(TEA_OPS), "tea")}
    if "iteration" in event:
        out["meta"] = {"iteration": event["iteration"]}
    return out


def _normalised(p: Any, n: int, where: str) -> List[float]:
    if not isinstance(p, Sequence) or len(p) != n:
        raise ValueError(f"policy event: {where} needs {n} probabilities")
    vals = [max(0.0, float(v)) if isinstance(v, (int, float)) and v == v else 0.0 for v in p]
    total = sum(vals)
    if total <= 0:
        return [1.0 / n] * n
    return [v / total for v in vals]


def _load(source: PolicySource):
    """(tra, tea, meta) from a policy.json path, a run folder, a policy dict or an event."""
    from ..policy.policy_json import load_policy, policy_from_dict
    if isinstance(source, Mapping):
        d = dict(source)
        if d.get("format") != "jcsaugment-policy":
            d = policy_dict_from_event(d)
        return policy_from_dict(d)
    path = os.fspath(source)
    if os.path.isdir(path):
        path = RunFolder(path).policy_path
    with open(path, "r", encoding="utf-8") as f:
        d = json.load(f)
    if isinstance(d, dict) and d.get("format") != "jcsaugment-policy" and "tra" in d:
        from ..policy.policy_json import policy_from_dict as _from
        return _from(policy_dict_from_event(d))
    return load_policy(path)


def _pick(names: List[str], want: str, fallback: int) -> int:
    lower = [n.lower() for n in names]
    if want in lower:
        return lower.index(want)
    return min(fallback, len(names) - 1)


def policy_pngs(source: PolicySource, initial: Optional[str] = "auto",
                backbone: Optional[str] = None,
                parts: Sequence[str] = PICTURE_NAMES) -> Dict[str, Optional[bytes]]:
    """``{"tra_foreground": PNG, "tra_background": PNG, "tea": PNG or None}``.

    ``source``: a ``policy.json`` path, a run folder, a policy dict, or a ``policy`` event
    (``ViewState.policy``).  ``initial``: the heuristic drawn for comparison (an outline on the
    TEA bars, an "initial" row of pies): a name (``"nnunet"``, ``"deepmedic"``), None for none,
    or ``"auto"`` for the policy file's own (``meta.init``; none for an event).  ``backbone``
    ("deepmedic" lists 4 TEA ops, else 8; default from the file's meta).  A policy with one
    class (the class-agnostic modes) gives the same picture for foreground and background.
    ``parts``: which of the three to draw (the others are None); each takes a few tenths of a
    second.
    """
    unknown = [p for p in parts if p not in PICTURE_NAMES]
    if unknown:
        raise ValueError(f"unknown picture(s) {unknown}; choose from {', '.join(PICTURE_NAMES)}")
    from ..charts.policy_chart import draw_tea_policy, draw_tra_policy
    from ..policy.initial import TEA_POLICY_NAMES, TRA_POLICY_NAMES
    from ..policy.policies import ClassSpecificTRAPolicy
    tra, tea, meta = _load(source)
    name = meta.get("init") if initial == "auto" else initial
    name = str(name).lower() if isinstance(name, str) and name else None
    backbone = backbone or meta.get("backbone")
    top = 4 if backbone == "deepmedic" else 8
    it = meta.get("iteration")
    at = f", iteration {it}" if it is not None else ""
    out: Dict[str, Optional[bytes]] = {k: None for k in PICTURE_NAMES}
    if tra is not None:
        names = list(tra.class_names)
        init_tra = name if name in TRA_POLICY_NAMES else None
        for key, want, fallback in (("tra_foreground", "foreground", 1),
                                    ("tra_background", "background", 0)):
            if key not in parts:
                continue
            k = _pick(names, want, fallback)
            label = names[k] if len(names) > 1 else "all patches"
            single = ClassSpecificTRAPolicy([tra.policies[k]], [label])
            out[key] = draw_tra_policy(single, initial=init_tra,
                                       title=f"Training-time augmentation: {label}{at}")
    if tea is not None and "tea" in parts:
        out["tea"] = draw_tea_policy(tea, initial=name if name in TEA_POLICY_NAMES else None,
                                     top=top, title=f"Test-time augmentation{at}")
    return out


def write_policy_pngs(source: PolicySource, out_dir: str, initial: Optional[str] = "auto",
                      backbone: Optional[str] = None) -> Dict[str, str]:
    """:func:`policy_pngs` written (atomically) as ``out_dir/<name>.png``; returns the paths."""
    from ..run.status import atomic_write_bytes
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for key, png in policy_pngs(source, initial, backbone).items():
        if png is not None:
            path = os.path.join(out_dir, f"{key}.png")
            atomic_write_bytes(path, png)
            paths[key] = path
    return paths


def policy_pngs_command(source: str, out_dir: str, python: Optional[str] = None,
                        initial: Optional[str] = "auto",
                        backbone: Optional[str] = None) -> List[str]:
    """The command that draws the policy pictures in a subprocess (so the GUI process imports
    neither torch nor matplotlib); ``source`` is a path (policy.json, a run folder, or a JSON
    file holding a policy event)."""
    from .worker_process import find_python_slicer
    cmd = [python or find_python_slicer(), "-m", "JCSAugmentLib.panel.pictures",
           os.path.abspath(os.fspath(source)), os.path.abspath(out_dir),
           "--initial", "none" if initial is None else initial]
    if backbone:
        cmd += ["--backbone", backbone]
    return cmd


# ----------------------------------------------------------------------------- previews

def preview_volumes(preview: Union[str, "os.PathLike[str]", RunFolder, Mapping[str, str]],
                    channel: int = 0) -> Dict[str, Any]:
    """The worker's preview patches as 3D arrays (z, y, x) for preview volume nodes:
    ``{"foreground original": a, "foreground sample 1": a, ..., "foreground label": a,
    "foreground sample 1 label": a, ..., "background ...": ...}``.

    ``preview``: ``ViewState.preview_files`` (its ``"arrays"`` entry), the ``.npz`` path (the
    format of :func:`~JCSAugmentLib.run.folder.save_preview_arrays`) or a :class:`RunFolder`
    (its latest preview).  Needs numpy (Slicer bundles it); imports it here, not at module
    import.
    """
    import numpy as np
    if isinstance(preview, RunFolder):
        path = preview.preview_path("npz")
    else:
        path = preview.get("arrays") if isinstance(preview, Mapping) else preview
    if not path:
        raise ValueError("the preview has no arrays file")
    arrays = load_preview_arrays(os.fspath(path))
    out: Dict[str, Any] = {}
    for row, images in arrays.images.items():
        labels = arrays.labels[row]
        for i in range(images.shape[0]):
            name = f"{row} original" if i == 0 else f"{row} sample {i}"
            img = images[i]
            out[name] = np.ascontiguousarray(img[min(channel, img.shape[0] - 1)]
                                             if img.ndim == 4 else img)
            if i < labels.shape[0]:
                out[f"{name} label" if i else f"{row} label"] = np.ascontiguousarray(labels[i])
    return out


# ----------------------------------------------------------------------------- curves

_CURVE_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "tea": "#2ca02c"}


def curve_png(view_state: Any, width: int = 900, height: int = 320,
              title: Optional[str] = None) -> bytes:
    """The loss curves (left, log scale when they span a decade) and the validation Dice
    (right) of a :class:`~.monitor.ViewState` as PNG bytes (matplotlib, no pyplot)."""
    import io
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_l = fig.add_axes((0.07, 0.16, 0.42, 0.70))
    ax_d = fig.add_axes((0.57, 0.16, 0.40, 0.70))
    curves = getattr(view_state, "loss_curves", {}) or {}
    ys_all = []
    for name, pts in curves.items():
        if not pts:
            continue
        xs, ys = zip(*pts)
        ys_all += [y for y in ys if y > 0]
        ax_l.plot(xs, ys, lw=1.3, label=name, color=_CURVE_COLOURS.get(name))
    if ys_all and max(ys_all) / max(min(ys_all), 1e-12) > 10:
        ax_l.set_yscale("log")
    ax_l.set_xlabel("iteration")
    ax_l.set_title("losses", fontsize=10)
    if curves:
        ax_l.legend(fontsize=8, frameon=False)
    ax_l.grid(alpha=0.3)
    dice = getattr(view_state, "dice_curve", []) or []
    if dice:
        xs, ys = zip(*dice)
        ax_d.plot(xs, ys, "o-", lw=1.3, ms=3, color="#d62728")
    ax_d.set_ylim(0, 1)
    ax_d.set_xlabel("epoch")
    ax_d.set_title("validation Dice (foreground)", fontsize=10)
    ax_d.grid(alpha=0.3)
    if title is None:
        title = getattr(view_state, "message", "") or ""
    if title:
        fig.suptitle(title if len(title) < 110 else title[:107] + "...", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def section_pictures(out_dir: str, run_dir: Optional[str] = None) -> Dict[str, str]:
    """README pictures of the panel's sections, from the same drawing code: ``curves.png``
    (curves), the policy PNGs and ``preview.png`` (the worker's preview grid), from
    ``run_dir``'s events, or, without a run, the nnU-Net heuristic policies."""
    import shutil
    from ..run.status import atomic_write_bytes
    from .monitor import RunMonitor
    os.makedirs(out_dir, exist_ok=True)
    paths: Dict[str, str] = {}
    policy_source: Any = None
    if run_dir is not None:
        view = RunMonitor(run_dir).poll_until_current()
        p = os.path.join(out_dir, "curves.png")  # not the run folder's progress.png
        atomic_write_bytes(p, curve_png(view))
        paths["progress"] = p
        if RunFolder(run_dir).has_policy():
            policy_source = run_dir
        elif view.policy is not None:
            policy_source = view.policy
        png = (view.preview_files or {}).get("png")
        if png and os.path.exists(png):
            dst = os.path.join(out_dir, "preview.png")
            shutil.copyfile(png, dst)
            paths["preview"] = dst
    if policy_source is None:
        from ..policy.initial import make_tea_policy, make_tra_policy
        from ..policy.policy_json import policy_to_dict
        policy_source = policy_to_dict(make_tra_policy("nnunet"), make_tea_policy("nnunet"),
                                       {"init": "nnunet"})
    paths.update(write_policy_pngs(policy_source, out_dir))
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m JCSAugmentLib.panel.pictures",
                                description="Draw a policy's panel pictures as PNG files.")
    p.add_argument("source", help="policy.json, a run folder, or a JSON file with a policy "
                                  "event")
    p.add_argument("out_dir")
    p.add_argument("--initial", default="auto", help="auto, none, nnunet or deepmedic")
    p.add_argument("--backbone", default=None)
    args = p.parse_args(argv)
    try:
        paths = write_policy_pngs(args.source, args.out_dir,
                                  None if args.initial == "none" else args.initial,
                                  args.backbone)
    except (OSError, ValueError) as e:
        print(f"pictures: error: {e}", file=sys.stderr)
        return 2
    for k, v in paths.items():
        print(f"wrote {v}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
