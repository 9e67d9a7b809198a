"""What the panel shows while ``predict`` runs: its progress file, read on the GUI's timer.

``python -m JCSAugmentLib predict ... --out DIR`` keeps its latest progress in
``DIR``/:data:`~JCSAugmentLib.infer.progress.PROGRESS_FILE_NAME` (``predict_progress.json``;
the format: :mod:`JCSAugmentLib.infer.progress`), replaced atomically at most about twice a
second. :func:`read_predict_progress` turns it into a :class:`PredictProgressStatus` -- a
one-line :meth:`~PredictProgressStatus.describe` text for a status label and a
:attr:`~PredictProgressStatus.fraction` 0..1 for a progress bar -- or None while there is
nothing to show (no file yet, an empty, half-written or foreign file, another schema): it never
raises, so a 500 ms poll can call it as it is. A file saying ``running`` after the worker
process has exited means the process was killed; the worker's exit tells that, not this file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional

from ..infer.progress import (PROGRESS_FILE_FORMAT, PROGRESS_FILE_NAME, PROGRESS_FILE_SCHEMA,
                              PROGRESS_STATES, PredictProgress, describe as describe_progress,
                              format_seconds)

#: larger files are not progress files (a real one is well under 1 kB)
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class PredictProgressStatus:
    """One reading of a ``predict`` call's progress file."""
    #: "running", "done" or "failed"
    state: str
    #: where the call stood when the file was written
    progress: PredictProgress
    #: failed: why (one line); otherwise None
    error: Optional[str]
    #: when the file was written (seconds since the epoch) and by which process
    updated_unix: float
    pid: Optional[int]
    schema: int = PROGRESS_FILE_SCHEMA

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def fraction(self) -> float:
        """Windows done over all cases, 0..1 (1 when done), for a progress bar."""
        return 1.0 if self.state == "done" else self.progress.fraction

    def describe(self) -> str:
        """One line for a status label: the windows and ETAs while running (as the command
        line's progress line), the cases and time when done, the error when failed."""
        p = self.progress
        if self.state == "done":
            cases = f"{p.cases_total} case{'' if p.cases_total == 1 else 's'}"
            return (f"done: {cases}, {p.windows_total} windows in "
                    f"{format_seconds(p.elapsed_s)}")
        if self.state == "failed":
            return (f"failed in case {p.case_index + 1}/{p.cases_total} {p.case_name}: "
                    f"{self.error or 'no reason given'}")
        if p.windows_done == 0 and p.eta_s is None:
            return (f"starting: {p.cases_total} case{'' if p.cases_total == 1 else 's'}, "
                    f"{p.windows_total} windows")
        return describe_progress(p)


def predict_progress_path(out_dir: "str | os.PathLike") -> str:
    """Where ``predict --out out_dir`` keeps its progress."""
    return os.path.join(os.fspath(out_dir), PROGRESS_FILE_NAME)


def read_predict_progress(out_dir: "str | os.PathLike") -> Optional[PredictProgressStatus]:
    """The progress ``predict --out out_dir`` wrote last, or None when there is none to show
    (missing, empty, unreadable, truncated, not JSON, another program's or another schema's
    file). Never raises."""
    try:
        path = predict_progress_path(out_dir)
        with open(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
        if not raw or len(raw) > _MAX_BYTES:
            return None
        return parse_predict_progress(json.loads(raw.decode("utf-8")))
    except Exception:  # noqa: BLE001 - a poll must never raise
        return None


def parse_predict_progress(rec) -> Optional[PredictProgressStatus]:
    """:func:`read_predict_progress` for an already parsed JSON value."""
    if not isinstance(rec, dict) or rec.get("format") != PROGRESS_FILE_FORMAT:
        return None
    if _int(rec.get("schema")) != PROGRESS_FILE_SCHEMA or rec.get("state") not in PROGRESS_STATES:
        return None
    ints = {k: _int(rec.get(k)) for k in ("case_index", "cases_total", "case_windows_done",
                                          "case_windows_total", "windows_done",
                                          "windows_total")}
    times = {k: _seconds(rec.get(k)) for k in ("case_elapsed_s", "elapsed_s", "updated_unix")}
    etas = {k: rec.get(k) for k in ("case_eta_s", "eta_s")}
    if any(v is None or v < 0 for v in ints.values()) or None in times.values():
        return None
    if any(v is not None and _seconds(v) is None for v in etas.values()):
        return None
    if ints["windows_done"] > ints["windows_total"] or \
            ints["case_windows_done"] > ints["case_windows_total"]:
        return None
    name, error, pid = rec.get("case_name"), rec.get("error"), rec.get("pid")
    if not isinstance(name, str) or not (error is None or isinstance(error, str)):
        return None
    progress = PredictProgress(
        ints["case_index"], ints["cases_total"], name, ints["case_windows_done"],
        ints["case_windows_total"], times["case_elapsed_s"],
        None if etas["case_eta_s"] is None else float(etas["case_eta_s"]),
        ints["windows_done"], ints["windows_total"], times["elapsed_s"],
        None if etas["eta_s"] is None else float(etas["eta_s"]))
    return PredictProgressStatus(rec["state"], progress, error, times["updated_unix"],
                                 _int(pid), PROGRESS_FILE_SCHEMA)


def _int(v) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _seconds(v) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and v >= 0 else None
