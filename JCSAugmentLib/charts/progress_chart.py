"""``progress.png``: a run's training at a glance, for the user without the Slicer panel.

Four panels over the training iterations, all read from the run's events (``events.jsonl``):

* training loss (and the validation loss of the meta-gradient steps, where the mode has them);
* validation Dice per foreground class and overall (each ``validation`` event);
* learning rates: the network's, the TRA policy's and the TEA policy's, each only where the
  mode uses it -- worked out from the job the ``started`` event records (its rates and the poly
  decay over the epochs, as the trainer applies them), since the events do not log them;
* policy entropy per class (foreground TRA, background TRA, TEA) from each ``policy`` event:
  the TRA entropy is the sum over the operation groups of each group's entropy, in nats; a
  falling entropy is a policy becoming sure of its choice.

The worker redraws it at each validation (:func:`write_progress_png`); the file is written
atomically (a temp file in the run folder, then ``os.replace``), so a reader sees the previous
picture or the new one. Only the object-oriented matplotlib API with the Agg canvas is used:
no backend is selected and no global matplotlib state changes.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..run.events import Event, PolicyUpdate, Progress, Started, Validation
from ..run.status import atomic_write_bytes

__all__ = ["ProgressSeries", "progress_series", "draw_progress_chart", "write_progress_png"]

Points = List[Tuple[float, float]]


@dataclass
class ProgressSeries:
    """What the chart draws, each curve a list of ``(iteration, value)``."""
    losses: Dict[str, Points] = field(default_factory=dict)  # "train", "val", "tea"
    dice: Dict[str, Points] = field(default_factory=dict)  # "foreground", per class
    learning_rates: Dict[str, Points] = field(default_factory=dict)  # "network", "TRA", "TEA"
    entropy: Dict[str, Points] = field(default_factory=dict)  # "TRA foreground", ..., "TEA"
    total_iterations: Optional[int] = None

    def is_empty(self) -> bool:
        return not any((self.losses, self.dice, self.learning_rates, self.entropy))


def _entropy(probabilities: Sequence[Any]) -> Optional[float]:
    """Entropy (nats) of one distribution; None for something that is not one."""
    try:
        ps = [float(p) for p in probabilities]
    except (TypeError, ValueError):
        return None
    if not ps or any(not math.isfinite(p) or p < 0 for p in ps):
        return None
    return -sum(p * math.log(p) for p in ps if p > 0)


def _tra_entropy(groups: Any) -> Optional[float]:
    """The entropy of a TRA policy of one class: the groups are drawn independently, so it is
    the sum of the groups' entropies."""
    if not isinstance(groups, list) or not groups:
        return None
    parts = [_entropy(g) for g in groups]
    return None if any(h is None for h in parts) else sum(parts)


def _poly(epoch: int, epochs: int, power: float) -> float:
    from ..train.trainer import poly_factor  # the trainer's own decay, not a copy of it
    return poly_factor(epoch, epochs, power)


def _learning_rates(job: Dict[str, Any], iterations: Sequence[int]) -> Dict[str, Points]:
    """The rates the trainer applied at each of ``iterations`` (the step that reached it), from
    the job the run started with."""
    from ..run.modes import MODE_TABLE
    t = job.get("training") if isinstance(job, dict) else None
    if not isinstance(t, dict):
        return {}
    spec = MODE_TABLE.get(t.get("mode"))
    try:
        ipe, epochs = int(t["iterations_per_epoch"]), int(t["epochs"])
        power = float(t["poly_power"])
    except (KeyError, TypeError, ValueError):
        return {}
    if spec is None or ipe < 1:
        return {}
    rates = {"network": t.get("lr") if spec.train_model else None,
             "TRA policy": t.get("policy_lr") if spec.learn_tra else None,
             "TEA policy": t.get("tea_lr") if spec.learn_tea else None}
    out: Dict[str, Points] = {}
    for name, rate in rates.items():
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            # the step that reached iteration i ran at epoch (i - 1) // ipe
            out[name] = [(i, rate * _poly((i - 1) // ipe, epochs, power)) for i in iterations]
    return out


def progress_series(events: Sequence[Event]) -> ProgressSeries:
    """The curves of a run's typed events (``RunFolder.read_events()``). A resumed or
    restarted run keeps only the latest value at an iteration that was trained twice."""
    s = ProgressSeries()
    job: Dict[str, Any] = {}
    ipe = 1
    losses: Dict[str, Dict[int, float]] = {}
    dice: Dict[str, Dict[int, float]] = {}
    entropy: Dict[str, Dict[int, float]] = {}
    for ev in events:
        if isinstance(ev, Started):
            job = ev.job
            t = job.get("training") if isinstance(job, dict) else None
            if isinstance(t, dict) and isinstance(t.get("iterations_per_epoch"), int):
                ipe = max(1, t["iterations_per_epoch"])
                if isinstance(t.get("epochs"), int):
                    s.total_iterations = ipe * t["epochs"]
        elif isinstance(ev, Progress) and ev.iteration is not None:
            for name, v in ev.losses.items():
                if v is not None and math.isfinite(v):
                    losses.setdefault(name, {})[ev.iteration] = v
        elif isinstance(ev, Validation) and ev.epoch is not None:
            at = (ev.epoch + 1) * ipe  # validation runs at the end of its epoch
            for k, v in ev.metrics.items():
                if k.startswith("dice_") and isinstance(v, (int, float)) and \
                        not isinstance(v, bool) and math.isfinite(v):
                    dice.setdefault(k[len("dice_"):], {})[at] = float(v)
        elif isinstance(ev, PolicyUpdate) and ev.iteration is not None:
            for cls, groups in ev.tra.items():
                h = _tra_entropy(groups)
                if h is not None:
                    entropy.setdefault(f"TRA {cls}", {})[ev.iteration] = h
            if ev.tea is not None:
                h = _entropy(ev.tea)
                if h is not None:
                    entropy.setdefault("TEA", {})[ev.iteration] = h

    def points(d: Dict[int, float]) -> Points:
        return sorted(d.items())

    s.losses = {k: points(v) for k, v in losses.items()}
    s.dice = {k: points(v) for k, v in dice.items()}
    s.entropy = {k: points(v) for k, v in entropy.items()}
    iterations = sorted({i for v in losses.values() for i in v})
    s.learning_rates = _learning_rates(job, iterations) if iterations else {}
    return s


_DPI = 100
#: the trainer's loss names (IterationResult.losses) as the legend says them
_LOSS_NAMES = {"train": "training", "val": "validation (TRA policy step)",
               "tea": "TEA validation (TEA policy step)"}


def _named(curves: Dict[str, Points], names: Dict[str, str], prefix: str = "") -> Dict[str, Points]:
    return {names.get(k, prefix + k): v for k, v in curves.items()}


def draw_progress_chart(series: ProgressSeries, title: str = "",
                        out_path: Optional[str] = None) -> bytes:
    """Draw the four panels of ``series``; return the PNG bytes and, given ``out_path``, write
    them there atomically. A panel with no data yet says so."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    panels = [
        (axes[0][0], _named(series.losses, _LOSS_NAMES), "loss", "losses", False),
        (axes[0][1], _named(series.dice, {"foreground": "foreground (all classes)"},
                            "class "), "Dice", "validation Dice", False),
        (axes[1][0], series.learning_rates, "learning rate", "learning rates", True),
        (axes[1][1], series.entropy, "entropy (nats)", "policy entropy per class", False),
    ]
    for ax, curves, ylabel, name, log in panels:
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        drawn = False
        for label, pts in curves.items():
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3,
                    linewidth=1.2, label=label)
            drawn = True
        if drawn:
            if log and all(y > 0 for pts in curves.values() for _, y in pts):
                ax.set_yscale("log")
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    for ax in axes[1]:
        ax.set_xlabel("iteration")
    if series.total_iterations:
        axes[1][0].set_xlim(0, series.total_iterations)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    png = buf.getvalue()
    if out_path is not None:
        atomic_write_bytes(os.fspath(out_path), png)
    return png


def write_progress_png(folder: Any) -> str:
    """Redraw the run folder's ``progress.png`` from its events; returns its path.
    ``folder`` is a :class:`~JCSAugmentLib.run.folder.RunFolder` or a path to one."""
    from ..run.folder import as_run_folder
    run = as_run_folder(folder)
    series = progress_series(run.read_events())
    title = os.path.basename(os.path.normpath(run.path))
    path = run.progress_png_path
    draw_progress_chart(series, title=title, out_path=path)
    return path
