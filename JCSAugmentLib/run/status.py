"""``status.json``: the run's latest state, replaced atomically.

The worker rewrites the whole file (temp file in the same folder, fsync, ``os.replace``), so a GUI
that reloads or restarts reads either the previous state or the new one, never a mix.  The atomic
write helpers here are shared by the other run-folder files (``job.json``, ``stop``).

Fields (all present in every file the worker writes; unknown extra keys are kept):

=============  ==============================================================================
state          starting, running, stopping, finished, failed, stopped
pid            the worker's process id
iteration      global iteration reached (0-based count of finished iterations)
of             total iterations planned
epoch          current epoch
started_at     unix time the run (or the resumed run) started
updated_at     unix time of this write (set by :func:`write_status`)
eta_seconds    estimated seconds left, or null
last_error     the last error message, or null
=============  ==============================================================================

Imports neither torch nor numpy: the GUI process reads this.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from typing import IO, Any, Callable, Dict, Optional

STATUS_FILE = "status.json"

STATES = ("starting", "running", "stopping", "finished", "failed", "stopped")
#: states after which the worker has exited (or is about to)
FINAL_STATES = ("finished", "failed", "stopped")
STATUS_FIELDS = ("state", "pid", "iteration", "of", "epoch", "started_at", "updated_at",
                 "eta_seconds", "last_error")

# os.replace onto a file another process has open fails on Windows with a sharing violation;
# the reader holds it for microseconds, so a short retry is enough.
_REPLACE_TRIES = 50
_REPLACE_WAIT_S = 0.01


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_with_retry(src: str, dst: str) -> None:
    """``os.replace`` that rides out a reader briefly holding ``dst`` open on Windows."""
    for attempt in range(_REPLACE_TRIES):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == _REPLACE_TRIES - 1:
                raise
            time.sleep(_REPLACE_WAIT_S)


def atomic_write_stream(path: str, write: Callable[[IO], Any], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` so readers see the old or the new content, nothing
    else: the one atomic-write helper of the package (policies, charts, caches, status).

    Temp file in the same folder (same file system, so the rename is atomic), flushed and
    fsync'd, then ``os.replace``; the temp file is removed on any failure, which leaves an
    existing ``path`` as it was.  A file replaced keeps its permission bits.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        perms = os.stat(path).st_mode & 0o777
    except OSError:
        perms = None
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if perms is not None:
            os.chmod(tmp, perms)
        replace_with_retry(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


class SymlinkRefused(OSError):
    """A run-folder entry is a symbolic link: the worker never writes through one (it could
    point anywhere outside the run folder)."""


def open_no_follow(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (``O_NOFOLLOW`` where the OS has
    it, a check before opening elsewhere); raises :class:`SymlinkRefused` naming the file."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if not nofollow and os.path.islink(path):  # pragma: no cover - Windows
        raise SymlinkRefused(errno.ELOOP, symlink_message(path))
    try:
        return os.open(path, flags | nofollow | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        if e.errno == errno.ELOOP or (os.path.islink(path) and e.errno in (errno.EMLINK,
                                                                           errno.ENOTDIR)):
            raise SymlinkRefused(errno.ELOOP, symlink_message(path)) from None
        raise


def symlink_message(path: str) -> str:
    return (f"{path} is a symbolic link; JCSAugment does not write through links in a run "
            f"folder (it could point outside it): remove the link")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_stream`)."""
    atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def status_path(run_dir: str) -> str:
    return os.path.join(run_dir, STATUS_FILE)


def write_status(run_dir: str, status: Dict[str, Any]) -> Dict[str, Any]:
    """Replace ``status.json`` atomically; returns what was written.

    Missing standard fields are written as null (``pid`` defaults to this process), and
    ``updated_at`` is always now.  Raises ``ValueError`` for an unknown state.
    """
    state = status.get("state")
    if state not in STATES:
        raise ValueError(f"status state {state!r} is not one of {', '.join(STATES)}")
    out: Dict[str, Any] = {k: None for k in STATUS_FIELDS}
    out["pid"] = os.getpid()
    out.update(status)
    out["updated_at"] = time.time()
    atomic_write_json(status_path(run_dir), out)
    return out


def update_status(run_dir: str, **changes: Any) -> Dict[str, Any]:
    """Read the current status (if any, and readable), apply ``changes``, write it back."""
    current = read_status(run_dir)
    base = dict(current) if current and current.get("state") != "unknown" else {}
    base.update(changes)
    return write_status(run_dir, base)


def read_status(run_dir: str) -> Optional[Dict[str, Any]]:
    """The last status written, or ``None`` when there is none yet.

    Never raises for a damaged file: garbage (not JSON, not an object, unreadable) gives
    ``{"state": "unknown", "error": "<why>"}``.
    """
    path = status_path(run_dir)
    raw = None
    for attempt in range(_REPLACE_TRIES):
        try:
            with open(path, "rb") as f:
                raw = f.read()
            break
        except FileNotFoundError:
            return None
        except PermissionError as e:  # Windows: the writer is replacing it right now
            if os.name != "nt" or attempt == _REPLACE_TRIES - 1:
                return {"state": "unknown", "error": f"cannot read {path}: {e}"}
            time.sleep(_REPLACE_WAIT_S)
        except OSError as e:
            if e.errno == errno.EISDIR or os.path.isdir(path):
                return {"state": "unknown", "error": f"{path} is a folder, not a file"}
            return {"state": "unknown", "error": f"cannot read {path}: {e}"}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return {"state": "unknown", "error": f"{path} is not valid JSON: {e}"}
    if not isinstance(data, dict):
        return {"state": "unknown",
                "error": f"{path} holds a JSON {type(data).__name__}, not an object"}
    if data.get("state") not in STATES:
        data = dict(data)
        data["error"] = f"{path}: unknown state {data.get('state')!r}"
        data["state"] = "unknown"
    return data
