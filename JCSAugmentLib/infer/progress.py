"""Progress of ``predict``: one record per window batch, and the terminal line that shows it.

:func:`~JCSAugmentLib.infer.predict.predict_cases` calls its ``window_progress`` callback with
a :class:`PredictProgress` after every batch of windows: where the current case stands and
where all cases together stand, each with an ETA. The panel can take these records as they
come; the command line shows them as one line rewritten in place (:class:`ProgressLine`),
only on a terminal; and ``predict`` keeps the latest one in its output folder as
:data:`PROGRESS_FILE_NAME` (:class:`ProgressFile`) for the Slicer panel to poll
(:func:`JCSAugmentLib.panel.predict_progress.read_predict_progress`).

The progress file (JSON, one object, replaced atomically: written to a temporary file in the
same folder, then ``os.replace``)::

    {"format": "jcsaugment-predict-progress", "schema": 1,
     "state": "running" | "done" | "failed",
     "error": null | "one line: why it failed",
     "updated_unix": 1764600000.0, "pid": 1234,
     "case_index": 0, "cases_total": 2, "case_name": "ct_003.nii.gz",
     "case_windows_done": 4, "case_windows_total": 9,
     "case_elapsed_s": 1.9, "case_eta_s": 2.4,        (null before the case's first window)
     "windows_done": 4, "windows_total": 18, "elapsed_s": 1.9, "eta_s": 6.6}

It is written when the cases have been checked and the output folder exists (``running``,
no window done yet), then after window batches at most every
:data:`PROGRESS_MIN_INTERVAL_S` seconds, always when a case's last window is done, and once
more at the end: ``done`` (every window done), or ``failed`` with the error when
``predict`` raises (a process killed outright, e.g. by SIGKILL, leaves ``running``: the panel
tells that from the worker's exit).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional, TextIO

#: the progress file ``predict`` keeps in its output folder (the one place this name is set)
PROGRESS_FILE_NAME = "predict_progress.json"
#: its ``format`` marker and ``schema`` version (a reader refuses other values)
PROGRESS_FILE_FORMAT = "jcsaugment-predict-progress"
PROGRESS_FILE_SCHEMA = 1
#: states a progress file can be in
PROGRESS_STATES = ("running", "done", "failed")
#: at most one write per this many seconds while a case runs (~2 writes/s)
PROGRESS_MIN_INTERVAL_S = 0.5


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
    case_eta_s: Optional[float]
    #: the same over every case of the call (windows of all cases); the ETAs are None before
    #: the first window (a progress file's first record)
    windows_done: int
    windows_total: int
    elapsed_s: float
    eta_s: Optional[float]

    @property
    def fraction(self) -> float:
        """Windows done over all cases, 0..1."""
        return min(max(self.windows_done / max(self.windows_total, 1), 0.0), 1.0)


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


class ProgressFile:
    """Keeps the latest :class:`PredictProgress` of a ``predict`` call in
    ``folder``/:data:`PROGRESS_FILE_NAME` (the format: this module's docstring).

    :meth:`start` writes the first record, calling the instance with each record writes it
    when :data:`PROGRESS_MIN_INTERVAL_S` has passed since the last write or a case has just
    finished, and :meth:`finish` writes the last one (``done`` or ``failed``). A file that
    cannot be written (a full disk, a folder made read-only) never stops the prediction:
    ``on_error`` is told once and the file is left as it was."""

    def __init__(self, folder: str, min_interval_s: float = PROGRESS_MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 on_error: Optional[Callable[[str], None]] = None):
        self.path = os.path.join(folder, PROGRESS_FILE_NAME)
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self.on_error = on_error
        self.latest: Optional[PredictProgress] = None
        self.writes = 0
        self._last_write: Optional[float] = None
        self._broken = False

    def start(self, cases_total: int, windows_total: int, first_case: str) -> None:
        """The first record: nothing done yet, no ETA."""
        self.latest = PredictProgress(0, int(cases_total), first_case, 0, 0, 0.0, None, 0,
                                      int(windows_total), 0.0, None)
        self._write("running")

    def __call__(self, p: PredictProgress) -> None:
        self.latest = p
        now = self.clock()
        case_end = p.case_windows_done >= p.case_windows_total
        if case_end or self._last_write is None or \
                now - self._last_write >= self.min_interval_s:
            self._write("running")

    def finish(self, state: str = "done", error: Optional[str] = None) -> None:
        """The last record: ``done`` (every window counted done) or ``failed`` with ``error``
        (one line)."""
        if state not in PROGRESS_STATES or state == "running":
            raise ValueError(f"finish: state must be done or failed, got {state!r}")
        if state == "done" and self.latest is not None:
            p = self.latest
            self.latest = replace(p, case_windows_done=p.case_windows_total, case_eta_s=0.0,
                                  windows_done=p.windows_total, eta_s=0.0)
        self._write(state, None if error is None else " ".join(str(error).split())[:500])

    def record(self, state: str, error: Optional[str] = None) -> dict:
        """The JSON object written for ``state`` and the latest progress."""
        rec = {"format": PROGRESS_FILE_FORMAT, "schema": PROGRESS_FILE_SCHEMA, "state": state,
               "error": error, "updated_unix": time.time(), "pid": os.getpid()}
        if self.latest is not None:
            rec.update(asdict(self.latest))
        return rec

    def _write(self, state: str, error: Optional[str] = None) -> None:
        if self._broken:
            return
        text = json.dumps(self.record(state, error), indent=1)
        folder = os.path.dirname(self.path) or "."
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".predict_progress-", suffix=".tmp", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            _replace(tmp, self.path)
            tmp = None
            self.writes += 1
        except OSError as e:
            self._broken = True
            if self.on_error:
                self.on_error(f"{self.path}: progress not written ({e}); the prediction "
                              f"goes on")
        finally:
            if tmp is not None and os.path.exists(tmp):
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self._last_write = self.clock()


def _replace(tmp: str, path: str, tries: int = 20) -> None:
    """``os.replace``, retried for a moment where a reader holding the file open blocks it
    (Windows: a file open without FILE_SHARE_DELETE cannot be replaced)."""
    for attempt in range(tries):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if attempt == tries - 1:
                raise
            time.sleep(0.01)
