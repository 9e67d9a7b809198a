"""The run folder as one object: every path in it, the job, the events, the status, the lock,
the stop request, the policies, the preview, the checkpoints and the prediction folders.

::

    run = RunFolder("runs/prostate")
    job = run.job()                      # job.json, validated (JobError names the field)
    run.resolve(job.data.dataset)        # a path of the job, relative to the run folder
    with run.lock(), run.event_writer() as events:
        events.progress(...)             # events.jsonl
    for ev in run.read_events():         # typed: Started, Progress, ..., Finished
        ...
    run.pick_checkpoint("best")          # which checkpoint predict uses, and why

No module outside ``JCSAugmentLib.run`` spells a run-folder file name: they ask a
:class:`RunFolder`.  The lower-level modules (job.py, events.py, status.py, control.py,
checkpoint.py) keep their functions on a folder path; this class is the one way in for
everything else.

Safe by construction: the worker never writes through a symbolic link in the folder
(:meth:`refuse_symlinks`, and every file the worker appends to is opened with ``O_NOFOLLOW``),
temporary files have unpredictable names (``tempfile.mkstemp``) and those left by a killed
write are swept when a worker starts (:meth:`sweep_temp_files`), and a checkpoint pair is
written best-first so a kill at any point leaves ``best.pt`` and ``last.pt`` that
:meth:`pick_checkpoint` can name.

Imports neither torch nor numpy at import time: the GUI process uses this.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .control import (LOCK_FILE, STOP_FILE, RunFolderError, RunLock, check_writable, clear_stop,
                      read_lock, read_stop, request_stop, stop_requested)
from .events import EVENTS_FILE, Event, EventReader, EventWriter, parse_event
from .job import JOB_FILE, Job, load_job, resolve_path, save_job
from .status import (STATUS_FILE, SymlinkRefused, atomic_write_json, atomic_write_stream,
                     read_status, symlink_message, write_status)

POLICY_FILE = "policy.json"
PROGRESS_PNG_FILE = "progress.png"
PREVIEWS_DIR = "previews"
PREDICTIONS_DIR = "predictions"
CHECKPOINT_DIR = "checkpoints"
CACHE_DIR = "cache"
WORKER_LOG = "worker.log"
RANKS_DIR = "ranks"
#: where the Slicer module exports the cases of its case table (the job names them relative)
INPUTS_DIR = "inputs"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
#: where ``--restart`` keeps the checkpoints of the run it restarts (inside checkpoints/)
SET_ASIDE_PREFIX = "before-restart-"
#: a comparison folder (``train --compare heuristic``, run/compare.py): the plan and its state,
#: the comparison record and its table; each half is an ordinary run folder inside it
COMPARE_FILE = "compare.json"
COMPARISON_FILE = "comparison.json"
COMPARISON_MD_FILE = "comparison.md"
#: a half's prediction folders for the comparison: predictions/compare-tea-<tea>/
COMPARE_PREDICTIONS_PREFIX = "compare-tea-"

PREVIEW_STEM = "preview_latest"
#: the patch rows of a preview, in the order they are drawn
PREVIEW_ROWS = ("foreground", "background")

# every entry the worker writes: none may be a symbolic link
_WRITTEN_ENTRIES = (JOB_FILE, EVENTS_FILE, STATUS_FILE, STOP_FILE, LOCK_FILE, POLICY_FILE,
                    PREVIEWS_DIR, CHECKPOINT_DIR, PREDICTIONS_DIR, CACHE_DIR, WORKER_LOG,
                    RANKS_DIR)
# temp files of our atomic writes: ".NAME.<random>.tmp" (mkstemp), and the fixed-name ".tmp"
# files older versions wrote
_TEMP_PATTERNS = (".*.tmp", "*.tmp")


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint a command will use: its path, which one it is, the iteration it holds
    (None when unreadable) and, when it is not the one asked for, why (``note``)."""
    path: str
    which: str  # "best" or "last"
    iteration: Optional[int]
    note: Optional[str] = None

    def describe(self) -> str:
        it = "" if self.iteration is None else f", iteration {self.iteration}"
        return f"{os.path.basename(self.path)} ({self.which}{it})" + (
            f"; {self.note}" if self.note else "")


@dataclass
class PreviewArrays:
    """The latest preview as arrays: per row (``foreground``, ``background``) the images
    ``(samples, C, D, H, W)`` (the original patch first) and labels ``(samples, D, H, W)``,
    plus what ``preview_latest.json`` says (iteration, case, captions)."""
    images: Dict[str, Any]
    labels: Dict[str, Any]
    meta: Dict[str, Any]


def save_preview_arrays(path: str, rows: Sequence[Any]) -> None:
    """Write preview rows (``augment.preview.PreviewRow``) as an .npz: ``<row>_images`` and
    ``<row>_labels`` per row, row named by the first word of its name.  Atomic."""
    import numpy as np
    arrays = {f"{_row_key(r.name)}_{k}": np.stack(getattr(r, k)) for r in rows
              for k in ("images", "labels")}
    # a file object: numpy would append .npz to a name
    atomic_write_stream(path, lambda f: np.savez_compressed(f, **arrays))


def load_preview_arrays(path: str) -> PreviewArrays:
    """Read an .npz written by :func:`save_preview_arrays` (never pickle); raises ValueError
    naming the file when it holds no preview rows."""
    import numpy as np
    images, labels = {}, {}
    with np.load(path, allow_pickle=False) as data:
        for row in PREVIEW_ROWS:
            if f"{row}_images" in data.files and f"{row}_labels" in data.files:
                images[row] = np.asarray(data[f"{row}_images"])
                labels[row] = np.asarray(data[f"{row}_labels"])
    if not images:
        raise ValueError(f"{path} holds no preview patches")
    return PreviewArrays(images, labels, {})


def _row_key(name: str) -> str:
    return name.split()[0]


class RunFolder:
    """One run folder (see the module's docstring).  ``path`` is made absolute; nothing is
    created until something is written."""

    def __init__(self, path: "str | os.PathLike | RunFolder"):
        if isinstance(path, RunFolder):
            path = path.path
        self.path = os.path.abspath(os.fspath(path))
        self._job_cache = None  # ((size, mtime_ns), Job)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def __fspath__(self) -> str:
        return self.path

    def __eq__(self, other) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------ paths
    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def job_path(self) -> str:
        return self.file(JOB_FILE)

    @property
    def events_path(self) -> str:
        return self.file(EVENTS_FILE)

    @property
    def status_path(self) -> str:
        return self.file(STATUS_FILE)

    @property
    def stop_path(self) -> str:
        return self.file(STOP_FILE)

    @property
    def lock_path(self) -> str:
        return self.file(LOCK_FILE)

    @property
    def policy_path(self) -> str:
        return self.file(POLICY_FILE)

    @property
    def progress_png_path(self) -> str:
        """``progress.png``: losses, validation Dice, learning rates and policy entropy, redrawn
        by the worker at each validation (charts/progress_chart.py)."""
        return self.file(PROGRESS_PNG_FILE)

    @property
    def worker_log_path(self) -> str:
        return self.file(WORKER_LOG)

    @property
    def cache_dir(self) -> str:
        return self.file(CACHE_DIR)

    @property
    def previews_dir(self) -> str:
        return self.file(PREVIEWS_DIR)

    def preview_path(self, ext: str) -> str:
        """``previews/preview_latest.<ext>`` (png, npz or json)."""
        return os.path.join(self.previews_dir, f"{PREVIEW_STEM}.{ext}")

    @property
    def checkpoints_dir(self) -> str:
        return self.file(CHECKPOINT_DIR)

    def checkpoint_path(self, which: str = "last") -> str:
        """``checkpoints/last.pt`` or ``checkpoints/best.pt``."""
        if which not in ("last", "best"):
            raise ValueError(f"checkpoint {which!r}: choose 'best' or 'last'")
        name = LAST_CHECKPOINT if which == "last" else BEST_CHECKPOINT
        return os.path.join(self.checkpoints_dir, name)

    @property
    def predictions_dir(self) -> str:
        return self.file(PREDICTIONS_DIR)

    @property
    def inputs_dir(self) -> str:
        """``inputs/``: the case files a GUI exported for this run (the worker only reads
        them, through the paths in job.json)."""
        return self.file(INPUTS_DIR)

    @property
    def ranks_dir(self) -> str:
        return self.file(RANKS_DIR)

    def rank_policy_path(self, rank: int) -> str:
        return os.path.join(self.ranks_dir, f"policy_rank{int(rank)}.json")

    def resolve(self, p: Optional[str]) -> Optional[str]:
        """A path from job.json: ``~`` expanded, relative ones relative to the run folder."""
        return None if p is None else resolve_path(self.path, p)

    def relative(self, p: str) -> str:
        """``p`` relative to the run folder when it lies inside it (posix separators)."""
        p = os.path.abspath(p)
        rel = os.path.relpath(p, self.path)
        return p if rel.startswith(os.pardir) else rel.replace(os.sep, "/")

    # ------------------------------------------------------------------ the job
    def has_job(self) -> bool:
        return os.path.isfile(self.job_path)

    def job(self) -> Job:
        """``job.json``, read and validated (raises ``JobError``); cached until the file
        changes, so a GUI may ask on every poll."""
        try:
            st = os.stat(self.job_path)
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            key = None
        if key is not None and self._job_cache is not None and self._job_cache[0] == key:
            return self._job_cache[1]
        job = load_job(self.path)
        if key is not None:
            self._job_cache = (key, job)
        return job

    def job_bytes(self) -> Optional[bytes]:
        """job.json as it is on disk (None if there is none)."""
        try:
            with open(self.job_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def save_job(self, job: "Job | Dict[str, Any]") -> str:
        self._job_cache = None
        return save_job(self.path, job)

    def missing_files(self, job: Optional[Job] = None):
        """``(field, path)`` for each file the job names that does not exist."""
        return (job or self.job()).missing_files(self.path)

    # ------------------------------------------------------------------ events and status
    def event_writer(self, fsync: bool = True) -> EventWriter:
        return EventWriter(self.path, fsync=fsync)

    def event_reader(self) -> EventReader:
        return EventReader(self.path)

    def read_events(self) -> List[Event]:
        """Every complete event, typed (damaged lines and unknown kinds skipped)."""
        return self.event_reader().poll_events()

    def status(self) -> Optional[Dict[str, Any]]:
        """``status.json`` (None before the worker wrote one; never raises)."""
        return read_status(self.path)

    def write_status(self, state: str, **fields: Any) -> Dict[str, Any]:
        fields.setdefault("pid", os.getpid())
        fields["state"] = state
        return write_status(self.path, fields)

    # ------------------------------------------------------------------ control
    def lock(self, on_warning: Optional[Callable[[str], None]] = None) -> RunLock:
        """The folder's worker lock (not yet acquired: ``with run.lock(): ...``)."""
        return RunLock(self.path, on_warning=on_warning)

    def lock_record(self) -> Optional[Dict[str, Any]]:
        return read_lock(self.path)

    def request_stop(self, reason: str = "user") -> None:
        if not os.path.isdir(self.path):
            raise RunFolderError(f"{self.path} is not a run folder (no such folder)")
        request_stop(self.path, reason)

    def stop_requested(self) -> bool:
        return stop_requested(self.path)

    def read_stop(self) -> Optional[Dict[str, Any]]:
        return read_stop(self.path)

    def clear_stop(self) -> bool:
        return clear_stop(self.path)

    def check_writable(self) -> None:
        check_writable(self.path)

    def refuse_symlinks(self) -> None:
        """Raise :class:`SymlinkRefused` if any entry the worker writes is a symbolic link
        (or the checkpoint / preview files inside their folders are)."""
        inner = [self.checkpoint_path("last"), self.checkpoint_path("best")] + [
            self.preview_path(e) for e in ("png", "npz", "json")]
        for p in [self.file(n) for n in _WRITTEN_ENTRIES] + inner:
            if os.path.islink(p):
                raise SymlinkRefused(errno.ELOOP, symlink_message(p))

    def sweep_temp_files(self) -> List[str]:
        """Remove the temp files that killed writes left (in the folder, checkpoints/ and
        previews/); returns what was removed.  Only call it holding the lock."""
        removed = []
        for folder in (self.path, self.checkpoints_dir, self.previews_dir):
            for pattern in _TEMP_PATTERNS:
                for p in glob.glob(os.path.join(glob.escape(folder), pattern)):
                    try:
                        if os.path.islink(p) or not os.path.isfile(p):
                            continue
                        os.remove(p)
                        removed.append(p)
                    except OSError:
                        pass
        return sorted(set(removed))

    # ------------------------------------------------------------------ policies and previews
    def has_policy(self) -> bool:
        return os.path.isfile(self.policy_path)

    def write_preview(self, rows: Sequence[Any], iteration: int, case_id: str,
                      draw: Optional[Callable[[str], None]] = None) -> Dict[str, str]:
        """Write the preview of ``rows`` (``augment.preview.PreviewRow``): the arrays, the
        metadata and (``draw(png_path)``) the picture.  Returns ``{"png", "arrays"}``."""
        os.makedirs(self.previews_dir, exist_ok=True)
        files = {}
        if draw is not None:
            files["png"] = self.preview_path("png")
            draw(files["png"])
        files["arrays"] = self.preview_path("npz")
        save_preview_arrays(files["arrays"], rows)
        atomic_write_json(self.preview_path("json"),
                          {"iteration": int(iteration), "case": case_id,
                           "rows": [{"name": r.name, "centre": [int(c) for c in r.centre],
                                     "captions": list(r.captions)} for r in rows]})
        return files

    def read_preview(self) -> Optional[PreviewArrays]:
        """The latest preview's arrays and metadata, or None when there is none yet."""
        path = self.preview_path("npz")
        if not os.path.exists(path):
            return None
        preview = load_preview_arrays(path)
        try:
            with open(self.preview_path("json"), "rb") as f:
                meta = json.loads(f.read().decode("utf-8"))
            preview.meta = meta if isinstance(meta, dict) else {}
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        return preview

    # ------------------------------------------------------------------ checkpoints
    def has_checkpoint(self) -> bool:
        return any(os.path.isfile(self.checkpoint_path(w)) for w in ("last", "best"))

    def save_checkpoint(self, state: Dict[str, Any], best: bool = False) -> str:
        """``checkpoints/last.pt`` always, ``checkpoints/best.pt`` too when ``best``; returns
        the path of last.pt.

        best.pt is written first: a kill between the two writes leaves the new best.pt and the
        previous last.pt, from which a resumed run validates again.  (Last-first would leave a
        last.pt whose best metric names a best.pt that was never written, so the best model of
        that validation would be lost for good.)"""
        from .checkpoint import save_checkpoint
        if best:
            save_checkpoint(self.checkpoint_path("best"), state)
        return save_checkpoint(self.checkpoint_path("last"), state)

    def load_checkpoint(self, which: str = "last", map_location: Any = "cpu") -> Dict[str, Any]:
        from .checkpoint import load_checkpoint
        return load_checkpoint(self.checkpoint_path(which), map_location=map_location)

    def checkpoint_iteration(self, which: str) -> Optional[int]:
        """The iteration saved in a checkpoint (None when it is missing or unreadable)."""
        from .checkpoint import CheckpointError, load_checkpoint
        path = self.checkpoint_path(which)
        if not os.path.isfile(path):
            return None
        try:
            it = load_checkpoint(path).get("iteration")
        except CheckpointError:
            return None
        return it if isinstance(it, int) and not isinstance(it, bool) else None

    def pick_checkpoint(self, which: str = "best",
                        read_iteration: bool = True) -> CheckpointChoice:
        """The checkpoint to predict with.  ``best`` is the best validated model; when the run
        has none yet (no validation finished) ``last`` is used and ``note`` says so.  Raises
        :class:`RunFolderError` when there is no checkpoint at all.  ``read_iteration=False``
        leaves ``iteration`` None for a caller that loads the file anyway (a checkpoint is
        large: read it once)."""
        if which not in ("best", "last"):
            raise ValueError(f"checkpoint {which!r}: choose 'best' or 'last'")

        def iteration(w):
            return self.checkpoint_iteration(w) if read_iteration else None
        if which == "best" and os.path.isfile(self.checkpoint_path("best")):
            return CheckpointChoice(self.checkpoint_path("best"), "best", iteration("best"))
        if os.path.isfile(self.checkpoint_path("last")):
            note = None if which == "last" else (
                "the run has no best.pt yet (no validation has finished), so the last "
                "checkpoint is used")
            return CheckpointChoice(self.checkpoint_path("last"), "last", iteration("last"),
                                    note)
        raise RunFolderError(f"{self.path}: no trained checkpoint ({CHECKPOINT_DIR}/"
                             f"{BEST_CHECKPOINT} or {LAST_CHECKPOINT}); train the run first")

    def set_aside_checkpoints(self) -> Optional[str]:
        """Move the checkpoints of the run being restarted into
        ``checkpoints/before-restart-<time>/`` (never deleted); returns that folder, or None
        when there was nothing to keep.  Only call it holding the lock."""
        names = [n for n in (LAST_CHECKPOINT, BEST_CHECKPOINT)
                 if os.path.isfile(os.path.join(self.checkpoints_dir, n))]
        if not names:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = os.path.join(self.checkpoints_dir, SET_ASIDE_PREFIX + stamp)
        k = 2
        while os.path.exists(dest):
            dest, k = os.path.join(self.checkpoints_dir, f"{SET_ASIDE_PREFIX}{stamp}-{k}"), k + 1
        os.makedirs(dest)
        for n in names:
            os.replace(os.path.join(self.checkpoints_dir, n), os.path.join(dest, n))
        return dest

    # ------------------------------------------------------------------ predictions
    def new_predictions_folder(self, prefix: str = "run") -> str:
        """A new, empty ``predictions/<prefix>-<time>[-k]`` folder (created here)."""
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", prefix).strip("_") or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        os.makedirs(self.predictions_dir, exist_ok=True)
        k = 1
        while True:
            name = f"{prefix}-{stamp}" + ("" if k == 1 else f"-{k}")
            path = os.path.join(self.predictions_dir, name)
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                k += 1


def as_run_folder(run: "str | os.PathLike | RunFolder") -> RunFolder:
    """``run`` as a :class:`RunFolder` (a path is wrapped, a RunFolder returned as it is)."""
    return run if isinstance(run, RunFolder) else RunFolder(run)


__all__ = ["RunFolder", "RunFolderError", "CheckpointChoice", "PreviewArrays", "as_run_folder",
           "save_preview_arrays", "load_preview_arrays", "parse_event", "POLICY_FILE",
           "PREVIEWS_DIR", "PREDICTIONS_DIR", "CHECKPOINT_DIR", "CACHE_DIR", "WORKER_LOG",
           "PREVIEW_ROWS"]
