"""Progress of ``predict``: one record per window batch, and the terminal line that shows it.

:func:`~JCSAugmentLib.infer.predict.predict_cases` calls its ``window_progress`` callback with
a :class:`PredictProgress` after every batch of windows: where the current case stands and
where all cases together stand, each with an ETA. The panel can take these records as they
come; the command line shows them as one line rewritten in place (:class:`ProgressLine`),
only on a terminal.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, TextIO


@dataclass(frozen=True)
class PredictProgress:
    """Where a ``predict`` call stands after a batch of windows."""
    #: the case being predicted (0-based), of how many, and its first file's name
    case_index: int
    cases_total: int
    case_name: str
    #: this case's windows predicted, of how many; seconds since its first window, and the
    #: estimate for its rest
    case_windows_done: int
    case_windows_total: int
    case_elapsed_s: float
    case_eta_s: float
    #: the same over every case of the call (windows of all cases)
    windows_done: int
    windows_total: int
    elapsed_s: float
    eta_s: float


def format_seconds(seconds: Optional[float]) -> str:
    """``1:05`` (minutes:seconds), ``1:02:05`` past an hour, ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(p: PredictProgress) -> str:
    """``case 2/3 ct_004.nii.gz: windows 12/32, ETA 0:14 | all: 44/96 windows, ETA 1:02``."""
    return (f"case {p.case_index + 1}/{p.cases_total} {p.case_name}: windows "
            f"{p.case_windows_done}/{p.case_windows_total}, ETA {format_seconds(p.case_eta_s)}"
            f" | all: {p.windows_done}/{p.windows_total} windows, "
            f"ETA {format_seconds(p.eta_s)}")


class ProgressLine:
    """Shows :class:`PredictProgress` records as one line rewritten in place on ``stream``
    (default stderr) when it is a terminal; elsewhere (a log file, a pipe) shows nothing, so
    logs keep one line per event. :meth:`clear` removes the line before other output."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: Optional[bool] = None):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else bool(enabled)
        self._width = 0

    def __call__(self, p: PredictProgress) -> None:
        if not self.enabled:
            return
        text = describe(p)
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
