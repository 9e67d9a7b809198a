"""Turn a run folder (and the worker process, when the panel started it) into what the panel shows.

:class:`RunMonitor` is polled by the GUI's timer; each :meth:`RunMonitor.poll` reads only what
was appended to the folder's events since the last one (the :class:`~JCSAugmentLib.run.folder.
RunFolder`'s :class:`~JCSAugmentLib.run.events.EventReader`: a poll with nothing new costs one
``os.stat``), folds the typed events into its running state, and returns a fresh
:class:`ViewState`, which the module binds to widgets as it is.

States (``ViewState.state``)::

    idle      nothing running and nothing to show yet (no run, or a job.json not started)
    starting  the worker was started and has not yet written its ``started`` event
              (loading PyTorch, reading and preprocessing the cases)
    running   training
    stopping  a stop was asked for; the worker is saving a checkpoint (or being terminated)
    importing predictions are being made / loaded into the scene (begin_import .. end_import)
    failed    an ``error`` event, a worker that died without finishing, or a folder this
              version cannot read; ``error``, ``traceback``, ``exit_reason`` and ``log_tail``
              say why
    done      finished with reason "completed" or "budget"
    stopped   finished with reason "stopped" (or killed after a stop that timed out)

Re-attaching: a new monitor on an existing folder reads the whole events file (over several
polls when it is long, ``catching_up`` meanwhile, each poll bounded to ``poll_budget_s``; a long
backlog through :meth:`EventReader.poll_latest`, which parses only the latest policy and
preview) and reproduces the state; a worker it did not start is watched through its pid (the
folder's status / the ``started`` event, checked at most once a second): if that process is
gone (or, on Linux, the pid now belongs to a program that is not a JCSAugment worker) without
a ``finished`` event, the run failed.

Memory and time stay bounded however long the run: each curve keeps at most ``max_points``
points (every other point is dropped, and the stride doubled, when it fills; the newest point is
always shown), only the latest policy and preview are kept, warnings are capped.

Imports neither torch nor numpy: this runs in Slicer's GUI process.
"""

from __future__ import annotations

import collections
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..run.control import pid_alive
from ..run.events import (CheckpointWritten, ErrorEvent, Event, Finished, PolicyUpdate,
                          PreviewWritten, Progress, Started, Validation, WarningEvent)
from ..run.folder import RunFolder, as_run_folder
from ..run.job import Job, JobError

__all__ = ["ViewState", "RunMonitor", "STATES", "format_duration", "Curve"]

STATES = ("idle", "starting", "running", "stopping", "importing", "failed", "done", "stopped")
BUSY_STATES = ("starting", "running", "stopping", "importing")

#: the kinds of which a view shows only the latest (a long backlog skips the others)
_LATEST_ONLY_KINDS = ("policy", "preview")
_MAX_WARNINGS = 100
_MESSAGE_MAX = 240


def format_duration(seconds: Optional[float]) -> str:
    """``"45 s"``, ``"3 min 20 s"``, ``"2 h 05 min"``; ``""`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s:02d} s" if m < 10 else f"{m} min"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60:02d} min"


def _finite(v: Any) -> bool:
    """A real number that is not NaN or infinite (a metric the worker could not compute is
    written as null)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _one_line(text: Any, limit: int = _MESSAGE_MAX) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 1] + "\u2026"


class Curve:
    """A bounded curve: at most ``max_points`` evenly thinned points plus the newest one.

    Points are kept with a stride that doubles whenever the list fills (then every other point
    is dropped), so memory and the cost of drawing stay bounded and the curve keeps its shape.
    """

    def __init__(self, max_points: int = 2000):
        self.max_points = max(4, int(max_points))
        self._points: List[Tuple[float, float]] = []
        self._stride = 1
        self._count = 0
        self._tail: Optional[Tuple[float, float]] = None  # newest point when skipped by stride
        self._view: Optional[List[Tuple[float, float]]] = None

    def add(self, x: float, y: float) -> None:
        self._view = None
        if self._count % self._stride == 0:
            self._points.append((x, y))
            self._tail = None
            if len(self._points) > self.max_points:
                self._points = self._points[::2]
                self._stride *= 2
        else:
            self._tail = (x, y)
        self._count += 1

    def truncate(self, x_max: float) -> None:
        """Drop the points after ``x_max`` (a run resumed from an earlier checkpoint)."""
        self._view = None
        self._points = [p for p in self._points if p[0] <= x_max]
        if self._tail is not None and self._tail[0] > x_max:
            self._tail = None

    def clear(self) -> None:
        self.__init__(self.max_points)

    @property
    def points(self) -> List[Tuple[float, float]]:
        """The points to draw (a list that is replaced, never changed, when points arrive)."""
        if self._view is None:
            self._view = self._points + ([self._tail] if self._tail is not None else [])
        return self._view

    def __len__(self) -> int:
        return len(self._points) + (self._tail is not None)


@dataclass
class ViewState:
    """Everything the panel shows; built by :meth:`RunMonitor.poll`, read-only for the module.

    Curves are lists of ``(x, y)``: ``loss_curves[name]`` over the iteration (names as the
    trainer reports them: ``train``, ``val``, ``tea``), ``dice_curve`` the validation Dice of
    the foreground over the number of epochs finished.  The ``*_changed`` flags are True only
    on the poll that brought something new (redraw then).  Paths are absolute.
    """
    state: str = "idle"
    message: str = ""
    iteration: int = 0
    total: Optional[int] = None
    epoch: Optional[int] = None  # 1-based epoch in progress
    epochs: Optional[int] = None
    eta_seconds: Optional[float] = None
    fraction: float = 0.0
    speed: Optional[float] = None  # iterations per second
    elapsed_seconds: Optional[float] = None
    time_budget_seconds: Optional[float] = None
    loss_curves: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    dice_curve: List[Tuple[float, float]] = field(default_factory=list)
    last_losses: Dict[str, Optional[float]] = field(default_factory=dict)
    best_dice: Optional[float] = None
    curves_changed: bool = False
    # the latest policy as panel.pictures draws it: {"kind", "iteration", "tra", "tea"}
    policy: Optional[Dict[str, Any]] = None
    policy_iteration: Optional[int] = None
    policy_changed: bool = False
    preview_files: Optional[Dict[str, str]] = None
    preview_iteration: Optional[int] = None
    preview_changed: bool = False
    warnings: List[str] = field(default_factory=list)
    warnings_changed: bool = False
    error: Optional[str] = None
    traceback: Optional[str] = None
    exit_reason: Optional[str] = None
    finished_reason: Optional[str] = None
    summary: Optional[Dict[str, Any]] = None
    outputs: Optional[Dict[str, str]] = None
    checkpoint: Optional[str] = None
    checkpoint_iteration: Optional[int] = None
    log_tail: str = ""
    run_dir: Optional[str] = None
    pid: Optional[int] = None
    device: Optional[str] = None
    backbone: Optional[str] = None
    mode: Optional[str] = None
    init: Optional[str] = None
    stop_phase: Optional[str] = None
    predictions: List[Dict[str, str]] = field(default_factory=list)
    import_ready: bool = False
    catching_up: bool = False
    changed: bool = False

    @property
    def busy(self) -> bool:
        """A worker is (or may be) running: the Train button reads Cancel."""
        return self.state in BUSY_STATES

    @property
    def can_stop(self) -> bool:
        return self.state in ("starting", "running") and not self.catching_up

    @property
    def can_start(self) -> bool:
        return self.state in ("idle", "failed", "done", "stopped") and not self.catching_up

    @property
    def can_resume(self) -> bool:
        """A checkpoint exists and the run did not complete."""
        return (self.state in ("stopped", "failed") and self.checkpoint is not None
                and not self.catching_up)

    @property
    def progress_text(self) -> str:
        """``"120 / 1000"`` for a progress bar's format."""
        if not self.total:
            return ""
        return f"{self.iteration} / {self.total}"


class _LogTail:
    """The last lines of a log file, re-read only when the file changed."""

    def __init__(self, path: str, lines: int = 30):
        self.path, self.lines = path, lines
        self._key = None
        self.text = ""

    def read(self, start: int = 0) -> str:
        try:
            st = os.stat(self.path)
        except OSError:
            self._key, self.text = None, ""
            return ""
        key = (st.st_size, st.st_mtime_ns, start)
        if key == self._key:
            return self.text
        self._key = key
        try:
            with open(self.path, "rb") as f:
                begin = max(start, st.st_size - 32 * 1024)
                f.seek(begin)
                data = f.read()
        except OSError:
            return self.text
        text = data.decode("utf-8", "replace").replace("\r\n", "\n")
        if begin > start:
            text = text.split("\n", 1)[-1]
        parts = [p.split("\r")[-1] for p in text.rstrip("\n").split("\n")]
        self.text = "\n".join(parts[-self.lines:])
        return self.text


@dataclass
class _Import:
    """What :meth:`RunMonitor.begin_import` started: the prediction worker (or None: only
    loading into the scene), its message and case count, its log and what it wrote so far."""
    worker: Any
    message: Optional[str]
    total: Optional[int]
    log: Optional[_LogTail]
    log_read: Optional[str] = None
    written: List[Dict[str, str]] = field(default_factory=list)


def _looks_like_worker(pid: int) -> bool:
    """False when ``pid`` is visibly another program (Linux: its command line does not name
    JCSAugmentLib or jcsaugment, e.g. a pid reused after a reboot); True when unsure."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().lower()
    except OSError:
        return True
    if not cmdline:  # a kernel thread or a process that is going away
        return True
    return b"jcsaugment" in cmdline


class RunMonitor:
    """Poll a run folder into :class:`ViewState` (see the module's docstring).

    ``run``: a :class:`~JCSAugmentLib.run.folder.RunFolder` or its path (None: no run).
    ``max_points``: per curve.  ``poll_budget_s``: how long one poll may spend reading a backlog
    (the first poll after attaching may spend ``attach_budget_s``); the rest comes on the next
    polls, with ``catching_up`` True (the GUI may poll again at once while it is); None reads
    everything at once (scripts, tests).  A poll
    stops reading at the first ``chunk_bytes`` boundary after its budget.  ``clock``: for
    tests.
    """

    def __init__(self, run: "str | os.PathLike | RunFolder | None", max_points: int = 2000,
                 poll_budget_s: Optional[float] = 0.010,
                 attach_budget_s: Optional[float] = 0.010,
                 chunk_bytes: int = 64 * 1024, pid_check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.time):
        self.folder: Optional[RunFolder] = None if run is None else as_run_folder(run)
        self.run_dir = None if self.folder is None else self.folder.path
        self.max_points = max_points
        self.poll_budget_s = poll_budget_s
        self.attach_budget_s = attach_budget_s
        self.chunk_bytes = chunk_bytes
        self.pid_check_every_s = pid_check_every_s
        self.clock = clock
        self.events_read = 0
        self._reader = self.folder.event_reader() if self.folder else None
        self._first_poll = True
        self._catching_up = False
        self._worker = None
        self._import: Optional[_Import] = None
        self._import_note: Optional[str] = None
        self._import_error: Optional[str] = None
        self._log = _LogTail(self.folder.worker_log_path) if self.folder else None
        # job
        self._job_key = None
        self._job_info: Dict[str, Any] = {}
        self._incompatible: Optional[str] = None
        self._job_error: Optional[str] = None
        # folded events
        self._curves: Dict[str, Curve] = {}
        self._dice = Curve(max_points)
        self._best_dice: Optional[float] = None
        self._last_losses: Dict[str, Optional[float]] = {}
        self._started: Optional[Started] = None
        self._progress: Optional[Progress] = None
        self._policy: Optional[PolicyUpdate] = None
        self._preview: Optional[PreviewWritten] = None
        self._checkpoint: Optional[CheckpointWritten] = None
        self._error: Optional[ErrorEvent] = None
        self._finished: Optional[Finished] = None
        self._warnings: Deque[str] = collections.deque(maxlen=_MAX_WARNINGS)
        self._nonfinite_noted = set()
        # status.json and the pid of a worker we did not start
        self._status: Optional[Dict[str, Any]] = None
        self._status_key = None
        self._status_checked = 0.0
        self._pid_checked = 0.0
        self._pid_dead: Optional[int] = None
        self._other_host: Optional[str] = None
        # change flags for the next ViewState
        self._flags = {"curves": True, "policy": False, "preview": False, "warnings": False}
        self._last_state: Optional[ViewState] = None
        if self.folder:
            self._read_job()
            lock = self.folder.lock_record()
            host = lock.get("host") if lock else None
            if host and host != socket.gethostname():
                self._other_host = host

    # ------------------------------------------------------------------ the panel's hooks
    def set_worker(self, worker) -> None:
        """Watch this :class:`~.worker_process.WorkerProcess` (the one the panel started):
        its exit code and log tail decide a failure the events do not report.  Events written
        before it started (an earlier run or session in the folder) stay as history: curves,
        policy and preview are kept, their ``finished`` / ``error`` no longer decide the state."""
        self._worker = worker
        self._pid_dead = None
        self._import_note = self._import_error = None
        self._read_job()

    @property
    def worker(self):
        return self._worker

    def begin_import(self, worker=None, message: Optional[str] = None,
                     total: Optional[int] = None) -> None:
        """State "importing" until :meth:`end_import`: predicting (``worker``: a prediction
        :class:`~.worker_process.WorkerProcess`, whose ``wrote ...`` lines fill
        ``ViewState.predictions``; ``total`` cases expected) and/or loading results into the
        scene.  A prediction worker that fails turns the state to "failed"."""
        self._import = _Import(worker, message, total,
                               _LogTail(worker.log_path, 200) if worker is not None else None)
        self._import_note = self._import_error = None

    def end_import(self, error: Optional[str] = None, note: Optional[str] = None) -> None:
        """Leave "importing": back to the run's state (with ``note`` added to its message), or
        "failed" with ``error``."""
        self._import = None
        self._import_error = _one_line(error, 1000) if error else None
        self._import_note = note

    # ------------------------------------------------------------------ reading
    def _read_job(self) -> None:
        """The job's numbers for the view, re-read only when job.json changed (one stat).  A
        folder whose job.json this version cannot read at all (its schema) is "incompatible":
        the view says so whatever its events hold."""
        if self.folder is None:
            return
        try:
            st = os.stat(self.folder.job_path)
        except OSError:
            self._job_key = None
            return
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if key == self._job_key:
            return
        self._job_key = key
        self._incompatible = self._job_error = None
        try:
            job = self.folder.job()
        except JobError as e:
            if e.field == "schema":  # job.py says which version wrote it
                self._incompatible = str(e)
            else:
                self._job_error = str(e)
            return
        self._set_job_info(job.resolved())

    def _set_job_info(self, job: Job) -> None:
        t = job.training
        self._job_info = {"total": job.total_iterations, "epochs": t.epochs,
                          "ipe": t.iterations_per_epoch, "budget": job.time_budget_minutes,
                          "backbone": job.model.backbone, "mode": t.mode, "init": t.init,
                          "device": job.device}

    def _fold(self, ev: Event) -> None:
        """One typed event into the running state (its fields already have their types: a
        field of the wrong type on disk reads as its default)."""
        if isinstance(ev, Progress):
            self._progress = ev
            if ev.iteration is not None and ev.losses:
                for name, v in ev.losses.items():
                    self._last_losses[name] = v
                    if v is not None and math.isfinite(v):
                        curve = self._curves.get(name)
                        if curve is None:
                            curve = self._curves[name] = Curve(self.max_points)
                        curve.add(ev.iteration, v)
                    elif name not in self._nonfinite_noted:
                        self._nonfinite_noted.add(name)
                        self._warn(f"the {name} loss is not a finite number at iteration "
                                   f"{ev.iteration} (training may have diverged)")
                self._flags["curves"] = True
        elif isinstance(ev, PolicyUpdate):
            self._policy = ev
            self._flags["policy"] = True
        elif isinstance(ev, PreviewWritten):
            self._preview = ev
            self._flags["preview"] = True
        elif isinstance(ev, Validation):
            d = ev.metrics.get("dice_foreground")
            if _finite(d) and ev.epoch is not None:
                self._dice.add(ev.epoch + 1, float(d))
                self._best_dice = d if self._best_dice is None else max(self._best_dice, d)
                self._flags["curves"] = True
        elif isinstance(ev, CheckpointWritten):
            self._checkpoint = ev
        elif isinstance(ev, WarningEvent):
            self._warn(ev.message)
        elif isinstance(ev, ErrorEvent):
            self._error = ev
        elif isinstance(ev, Finished):
            self._finished = ev
        elif isinstance(ev, Started):
            self._on_started(ev)

    def _on_started(self, ev: Started) -> None:
        resumed = ev.resumed_from
        if resumed is not None:
            for c in self._curves.values():
                c.truncate(resumed)
        elif self._started is not None or self._curves:
            # a fresh run in the same folder starts its curves again
            for c in self._curves.values():
                c.clear()
            self._dice.clear()
            self._best_dice = None
        self._started = ev
        self._error = self._finished = None
        self._progress = None
        self._pid_dead = None
        self._flags["curves"] = True
        if ev.job:
            try:
                self._set_job_info(Job.from_dict(ev.job).resolved())
            except (JobError, TypeError, ValueError):
                pass

    def _warn(self, message: str) -> None:
        message = message.strip()
        if message and (not self._warnings or self._warnings[-1] != message):
            self._warnings.append(message)
            self._flags["warnings"] = True

    def _read_events(self, budget: Optional[float]) -> None:
        """What was appended since the last poll, within ``budget`` seconds (None: all of it).
        A long backlog (re-attaching) is read by the reader's fast catch-up first."""
        reader = self._reader
        if reader is None:
            return
        t0 = time.perf_counter()
        start = reader.offset
        for ev in reader.poll_latest(_LATEST_ONLY_KINDS, budget,
                                     None if budget is None else 4 * self.chunk_bytes):
            self._fold(ev)
            self.events_read += 1
        if reader.offset != start and budget is not None and \
                time.perf_counter() - t0 >= budget and reader.offset < reader.file_size:
            self._catching_up = True  # the fast path used this poll's time
            return
        more = False
        while True:
            before = reader.offset
            evs = reader.poll_events(max_bytes=self.chunk_bytes)
            self._fold_all(evs)
            if reader.offset == before:  # nothing complete left (or a half-written line)
                more = False
                break
            more = True
            if budget is not None and time.perf_counter() - t0 >= budget:
                break
        self._catching_up = more

    def _fold_all(self, events: List[Event]) -> None:
        for ev in events:
            self._fold(ev)
        self.events_read += len(events)

    def _read_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_checked < 0.5:
            return
        self._status_checked = now
        try:
            st = os.stat(self.folder.status_path)
        except OSError:
            self._status = None
            self._status_key = None
            return
        key = (st.st_size, st.st_mtime_ns)
        if key != self._status_key:
            self._status_key = key
            self._status = self.folder.status()

    # ------------------------------------------------------------------ polling
    def poll(self, budget_s: Optional[float] = -1.0) -> ViewState:
        """Read what is new and return the view.  ``budget_s``: time for a backlog (default the
        monitor's budget; None = read everything now)."""
        if budget_s == -1.0:
            budget_s = self.attach_budget_s if self._first_poll else self.poll_budget_s
        # the worker's end is noted before reading, so every event it wrote is read below
        worker = self._worker
        worker_ended = worker is not None and worker.started and not worker.running
        imp = self._import
        import_ended = (imp is not None and imp.worker is not None
                        and not imp.worker.running)
        if self.run_dir is not None:
            self._read_job()  # one stat unless job.json changed (written after attaching)
            self._read_events(budget_s)
            if self._first_poll:
                self._read_status(force=True)
        self._first_poll = False
        view = self._view(worker_ended, import_ended)
        self._last_state = view
        return view

    def poll_until_current(self, max_seconds: float = 60.0) -> ViewState:
        """Poll until the whole events file is read (re-attaching in a script or a test)."""
        end = time.monotonic() + max_seconds
        view = self.poll(budget_s=None)
        while view.catching_up and time.monotonic() < end:
            view = self.poll(budget_s=None)
        return view

    # ------------------------------------------------------------------ the view
    def _session(self, ev: Optional[Event]) -> Optional[Event]:
        """``ev`` if it belongs to the attached worker's session (written after it started)."""
        if ev is None:
            return None
        w = self._worker
        if w is None or w.started_at is None:
            return ev
        return ev if ev.t is not None and ev.t >= w.started_at - 0.002 else None

    def _abs(self, p: Any) -> Any:
        if isinstance(p, str) and self.run_dir and not os.path.isabs(p):
            return os.path.normpath(os.path.join(self.run_dir, p))
        return p

    def _view(self, worker_ended: bool, import_ended: bool) -> ViewState:
        now = self.clock()
        info = self._job_info
        v = ViewState(run_dir=self.run_dir, catching_up=self._catching_up,
                      backbone=info.get("backbone"), mode=info.get("mode"),
                      init=info.get("init"), epochs=info.get("epochs"), total=info.get("total"))
        flags = self._flags
        v.changed = any(flags.values())
        v.curves_changed = flags["curves"]
        v.policy_changed = flags["policy"]
        v.preview_changed = flags["preview"]
        v.warnings_changed = flags["warnings"]
        self._flags = {k: False for k in flags}
        v.loss_curves = {k: c.points for k, c in self._curves.items()}
        v.dice_curve = self._dice.points
        v.best_dice = self._best_dice
        v.last_losses = dict(self._last_losses)
        v.warnings = list(self._warnings)
        if self._job_error and not self._incompatible:
            v.warnings.append(self._job_error)
        if self._policy is not None:
            p = self._policy
            v.policy = {"kind": p.kind, "iteration": p.iteration, "tra": p.tra, "tea": p.tea}
            v.policy_iteration = p.iteration
        if self._preview is not None:
            v.preview_files = {k: self._abs(p) for k, p in self._preview.files.items()}
            v.preview_iteration = self._preview.iteration
        if self._checkpoint is not None:
            v.checkpoint = self._abs(self._checkpoint.path)
            v.checkpoint_iteration = self._checkpoint.iteration

        started = self._session(self._started)
        finished = self._session(self._finished)
        error = self._session(self._error)
        progress = self._progress if (self._worker is None or started is not None) else None
        if started is not None:
            device = started.info.get("device")
            v.device = device if isinstance(device, str) else None
            v.pid = started.pid
        if progress is not None:
            v.iteration = progress.iteration or 0
            v.total = progress.of or v.total
            v.epoch = None if progress.epoch is None else progress.epoch + 1
            v.speed = progress.speed
        elif self._worker is not None and self._started is not None and self._progress:
            # a new session has not reported yet: show where the last one got to
            v.iteration = self._progress.iteration or 0
        if finished is not None:
            v.summary = finished.summary
            v.finished_reason = finished.reason
            v.outputs = {k: self._abs(p) for k, p in finished.outputs.items()}
            iterations = finished.summary.get("iterations")
            if isinstance(iterations, int) and not isinstance(iterations, bool):
                v.iteration = iterations
        if v.total:
            v.fraction = min(1.0, v.iteration / v.total)
        budget = info.get("budget")
        if budget:
            v.time_budget_seconds = float(budget) * 60.0
        if started is not None and started.t is not None:
            end_t = finished.t if finished is not None else None
            if end_t is None and error is not None:
                end_t = error.t
            v.elapsed_seconds = max(0.0, (end_t if end_t is not None else now) - started.t)

        # the worker process, when the panel started it
        w = self._worker
        if w is not None:
            v.stop_phase = w.stop_phase
            if worker_ended:
                v.exit_reason = w.exit_reason()
            if w.started:
                v.pid = v.pid or w.pid
        v.log_tail = self._log_text(w)

        if finished is None and error is None:
            self._eta(v, progress, now)
        state, message = self._state(v, started, finished, error, progress, worker_ended, now)
        v.state = state
        if state not in ("running", "stopping"):
            v.eta_seconds = None
        if state == "done":
            v.fraction = 1.0
        if self._import is not None or import_ended or self._import_error:
            state, message = self._import_state(v, import_ended, state, message)
            v.state = state
        if self._catching_up:
            size = self._reader.file_size
            pct = int(100 * self._reader.offset / size) if size else 100
            message = f"Reading the run's history ({pct}%)\u2026"
        elif self._import_note and state in ("done", "stopped"):
            message = f"{message} {self._import_note}"
        v.message = _one_line(message)
        last = self._last_state
        if last is None or (last.state, last.message, last.iteration, last.log_tail,
                            last.stop_phase) != (v.state, v.message, v.iteration, v.log_tail,
                                                 v.stop_phase):
            v.changed = True
        return v

    def _log_text(self, w) -> str:
        if w is not None and getattr(w, "log_path", None):
            if self._log is None or self._log.path != w.log_path:
                self._log = _LogTail(w.log_path)
            return self._log.read(getattr(w, "log_start", 0))
        if self._log is not None:
            return self._log.read()
        return ""

    def _eta(self, v: ViewState, progress: Optional[Progress], now: float) -> None:
        """Seconds left: the worker's estimate, counted down since it was written, capped by
        what is left of the time budget (which also moves the progress fraction)."""
        eta = None
        if progress is not None:
            eta = progress.eta
            if eta is None and v.speed and v.total:
                eta = (v.total - v.iteration) / v.speed if v.speed > 0 else None
            if eta is not None and progress.t is not None:
                eta = max(0.0, eta - max(0.0, now - progress.t))
        if v.time_budget_seconds and v.elapsed_seconds is not None:
            left = max(0.0, v.time_budget_seconds - v.elapsed_seconds)
            eta = left if eta is None else min(eta, left)
            v.fraction = max(v.fraction, min(1.0, v.elapsed_seconds / v.time_budget_seconds))
        v.eta_seconds = eta

    def _state(self, v: ViewState, started: Optional[Started], finished: Optional[Finished],
               error: Optional[ErrorEvent], progress: Optional[Progress], worker_ended: bool,
               now: float) -> Tuple[str, str]:
        w = self._worker
        if self._incompatible:
            v.error = self._incompatible
            return "failed", self._incompatible
        if finished is not None:
            reason = finished.reason
            if reason == "failed":
                v.error = (error.message if error is not None else "") or "the run failed"
                v.traceback = error.traceback if error is not None else None
                return "failed", f"Failed: {v.error}"
            if reason == "stopped":
                where = f"iteration {v.iteration}" + (f" of {v.total}" if v.total else "")
                return "stopped", (f"Stopped at {where}; the checkpoint is saved: Resume "
                                   f"continues from there.")
            seconds = (v.summary or {}).get("seconds")
            took = f" in {format_duration(seconds)}" if _finite(seconds) else ""
            dice = (f"; validation Dice {v.dice_curve[-1][1]:.3f}" if v.dice_curve else "")
            if reason == "budget":
                return "done", (f"Done: the time budget ended the run after {v.iteration} "
                                f"iterations{took}{dice}.")
            return "done", f"Done: {v.iteration} iterations{took}{dice}."
        if error is not None:
            v.error = error.message or "the worker reported an error"
            v.traceback = error.traceback
            return "failed", f"Failed: {v.error}"
        if w is not None and w.started:
            if worker_ended:
                forced = w.forced
                if forced in ("terminate", "kill", "user-kill"):
                    ck = (f"; the last checkpoint (iteration {v.checkpoint_iteration}) is kept"
                          if v.checkpoint_iteration is not None else "")
                    v.finished_reason = None
                    return "stopped", f"Stopped by force: {v.exit_reason}{ck}."
                v.error = (v.exit_reason or "the worker ended") + (
                    "" if w.returncode not in (0, None) else " without reporting a result")
                return "failed", f"Failed: {v.error}"
            if w.stop_phase in ("requested", "terminating", "killing"):
                return "stopping", self._stopping_message(w.stop_phase)
            if started is None:
                return "starting", self._starting_message(w.started_at, now)
            # the worker clears an old stop file before it reports "started": one seen now is a
            # new request (e.g. `jcsaugment stop RUN` from a terminal)
            if self.folder is not None and self.folder.stop_requested():
                return "stopping", self._stopping_message("requested")
            return "running", self._running_message(v, progress)
        # no worker of ours: the folder's own account
        status = self._status
        if started is None:
            if status and status.get("state") in ("starting", "running", "stopping"):
                if not self._catching_up and self._worker_gone(status.get("pid")):
                    return self._died(v, status.get("pid"))
                return "starting", self._starting_message(status.get("started_at"), now)
            if status and status.get("state") == "failed":
                v.error = str(status.get("last_error") or "the run failed")
                return "failed", f"Failed: {v.error}"
            if status and status.get("state") == "unknown":
                v.warnings.append(str(status.get("error")))
            if not self.run_dir or not os.path.isdir(self.run_dir):
                return "idle", "No run yet: choose the cases and settings, then Train."
            if self._job_key is None:
                return "idle", "No run in this folder yet."
            if self._job_error:
                v.error = self._job_error
                return "failed", f"The job cannot run: {self._job_error}"
            return "idle", "Ready: the job is written; Train starts it."
        pid = (status or {}).get("pid") if status and status.get("state") != "unknown" \
            else started.pid
        if not self._catching_up and self._worker_gone(pid):
            return self._died(v, pid)
        if self.folder.stop_requested():
            return "stopping", self._stopping_message("requested")
        return "running", self._running_message(v, progress)

    def _worker_gone(self, pid: Any) -> bool:
        """Throttled: is the worker we did not start gone? (Unknown on another machine.)"""
        if self._other_host or not isinstance(pid, int):
            return False
        if self._pid_dead == pid:
            return True
        now = time.monotonic()
        if now - self._pid_checked < self.pid_check_every_s and self._pid_checked:
            return False
        self._pid_checked = now
        if pid_alive(pid) and _looks_like_worker(pid):
            return False
        # the worker may have finished between our read and the check: read once more
        self._read_events(None)
        if self._finished is not None or self._error is not None:
            return False
        self._pid_dead = pid
        return True

    def _died(self, v: ViewState, pid) -> Tuple[str, str]:
        v.exit_reason = (f"the worker (pid {pid}) is no longer running and did not report an "
                         f"end: it was killed (out of memory?), crashed, or the computer "
                         f"restarted")
        v.error = v.exit_reason
        if self._finished is not None or self._error is not None:  # read just now
            return self._state(v, self._started, self._finished, self._error, self._progress,
                               False, self.clock())
        ck = (f"; the last checkpoint (iteration {v.checkpoint_iteration}) is kept: Resume "
              f"continues from it" if v.checkpoint_iteration is not None else "")
        return "failed", f"Failed: {v.exit_reason}{ck}."

    def _starting_message(self, since: Any, now: float) -> str:
        self._read_status()
        st = self._status or {}
        stage = st.get("stage") if st.get("state") == "starting" else None
        if stage:
            done, of = st.get("done"), st.get("of")
            count = f" ({done}/{of})" if done is not None and of else ""
            return f"Preparing: {stage}{count}\u2026"
        wait = ""
        if isinstance(since, (int, float)) and now - since >= 5:
            wait = f" ({format_duration(now - since)})"
        return f"Starting the worker (loading PyTorch){wait}\u2026"

    def _stopping_message(self, phase: Optional[str]) -> str:
        if phase == "terminating":
            return "The worker did not stop in time: terminating it\u2026"
        if phase == "killing":
            return "Killing the worker\u2026"
        return "Stopping: the worker saves a checkpoint after its current iteration\u2026"

    def _running_message(self, v: ViewState, progress) -> str:
        if progress is None:
            where = f" on {v.device}" if v.device else ""
            return f"Training started{where}: waiting for the first iteration\u2026"
        parts = [f"Iteration {v.iteration}" + (f"/{v.total}" if v.total else "")
                 + (f" ({100 * v.fraction:.0f}%)" if v.total else "")]
        if v.epoch is not None and v.epochs:
            parts.append(f"epoch {min(v.epoch, v.epochs)}/{v.epochs}")
        if isinstance(v.speed, (int, float)) and v.speed > 0:
            parts.append(f"{v.speed:.2f} it/s" if v.speed < 10 else f"{v.speed:.0f} it/s")
        if v.eta_seconds is not None:
            by_budget = (v.time_budget_seconds is not None and v.elapsed_seconds is not None
                         and v.eta_seconds >= v.time_budget_seconds - v.elapsed_seconds - 0.5)
            parts.append(f"about {format_duration(v.eta_seconds)} left"
                         + (" (time budget)" if by_budget else ""))
        return ", ".join(parts)

    def _import_state(self, v: ViewState, import_ended: bool, state: str, message: str
                      ) -> Tuple[str, str]:
        if self._import is None:  # ended with an error by end_import
            v.error = self._import_error
            return "failed", f"Failed: {self._import_error}"
        imp = self._import
        w = imp.worker
        if w is not None:
            text = imp.log.read(getattr(w, "log_start", 0))
            if text != imp.log_read:
                from .worker_process import parse_predict_log
                imp.log_read = text
                imp.written = parse_predict_log(text)
            v.predictions = list(imp.written)
            v.log_tail = text
            if import_ended:
                if w.returncode != 0:
                    v.exit_reason = w.exit_reason()
                    v.error = f"prediction failed: {v.exit_reason}"
                    return "failed", f"Failed: {v.error}"
                v.import_ready = True
                n = len(v.predictions)
                return "importing", (f"{n} result{'s' if n != 1 else ''} written: loading "
                                     f"{'them' if n != 1 else 'it'} into the scene\u2026")
            total, n = imp.total, len(v.predictions)
            count = (f" ({n} of {total} written)" if total else
                     f" ({n} written)" if n else "")
            base = (imp.message or "Predicting with TEA").rstrip("\u2026. ")
            return "importing", f"{base}{count}\u2026"
        v.import_ready = True
        return "importing", imp.message or "Importing the results into the scene\u2026"
