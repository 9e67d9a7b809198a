"""``events.jsonl``: the worker's append-only log of what happened, one JSON object per line.

Every event has ``"t"`` (unix time), ``"kind"`` and ``"seq"`` (1, 2, 3, ... across resumes), plus
the kind's fields:

==========  =========================================================================
started     job (the job spec), info (device, versions, resumed_from, ...), pid
progress    epoch, iteration, of, losses {name: value}, speed (iterations/s)
validation  epoch, metrics
policy      iteration, tra {class: probabilities per group}, tea [probabilities]
preview     iteration, files (paths relative to the run folder)
checkpoint  iteration, path (relative to the run folder)
warning     message
error       message, traceback (the last lines)
finished    reason (completed, stopped, failed, budget), outputs, summary
==========  =========================================================================

Every helper takes extra keyword fields, which are written as they are.  Non-finite floats
(a diverged loss) are written as ``null`` so the file stays strict JSON; numpy / torch scalars
and arrays are written as numbers and lists.

:class:`EventWriter` writes one line per event with a single ``write`` and flushes and fsyncs it,
so a reader sees at most one half-written line: the last.  :class:`EventReader` remembers its byte
offset and returns only complete new lines; a poll with nothing new costs one ``os.stat``.

Imports neither torch nor numpy: the GUI process reads this.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
from typing import Any, Dict, Iterable, List, Optional

EVENTS_FILE = "events.jsonl"

KINDS = ("started", "progress", "validation", "policy", "preview", "checkpoint", "warning",
         "error", "finished")
FINISH_REASONS = ("completed", "stopped", "failed", "budget")
_RESERVED = ("t", "kind", "seq")

# The reader opens the file through this name so a test can count the bytes it reads.
_open = open

_TAIL_CHUNK = 1 << 16


def events_path(run_dir: str) -> str:
    return os.path.join(run_dir, EVENTS_FILE)


def traceback_tail(exc: Optional[BaseException] = None, lines: int = 20) -> str:
    """The last ``lines`` lines of the traceback of ``exc`` (default: the one being handled)."""
    if exc is None:
        text = traceback.format_exc()
        if text.strip() == "NoneType: None":
            return ""
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _plain(obj: Any) -> Any:
    """JSON-ready copy: non-finite floats -> None, numpy/torch values -> Python numbers/lists."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        try:
            return _plain(tolist())
        except Exception:
            pass
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return _plain(item())
        except Exception:
            pass
    to_dict = getattr(obj, "to_dict", None)  # a Job
    if callable(to_dict):
        return _plain(to_dict())
    return str(obj)


def _last_seq(f, end: int) -> int:
    """The ``seq`` of the last parseable line ending before ``end`` (0 if none); reads backwards
    in chunks, so reopening a long log costs one chunk in the usual case."""
    pos = end
    carry = b""
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        f.seek(start)
        block = f.read(pos - start) + carry
        pos = start
        lines = block.split(b"\n")
        # the first piece may be cut (unless we reached the file start): keep it for later
        carry = lines[0] if pos > 0 else b""
        for line in reversed(lines if pos == 0 else lines[1:]):
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and isinstance(ev.get("seq"), int):
                return ev["seq"]
    return 0


class EventWriter:
    """Append events to ``run_dir/events.jsonl``.

    Reopening an existing log (resume) continues its ``seq``; a half-written last line left by a
    killed worker is cut off first and a ``warning`` event says so.  Thread-safe.
    ``fsync=False`` skips the per-line fsync (tests, throwaway runs); lines are still flushed.
    """

    def __init__(self, run_dir: str, fsync: bool = True, filename: str = EVENTS_FILE):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, filename)
        self.fsync = fsync
        self._lock = threading.Lock()
        os.makedirs(run_dir, exist_ok=True)
        repaired = self._repair()
        self._f = open(self.path, "ab", buffering=0)
        if repaired:
            self.warning(repaired)

    def _repair(self) -> Optional[str]:
        """Cut a half-written last line; set ``self.seq`` to the last seq written."""
        self.seq = 0
        try:
            f = open(self.path, "r+b")
        except FileNotFoundError:
            return None
        message = None
        with f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            f.seek(size - 1)
            if f.read(1) != b"\n":
                # find the start of the unterminated tail
                pos = size
                start = 0
                while pos > 0:
                    lo = max(0, pos - _TAIL_CHUNK)
                    f.seek(lo)
                    block = f.read(pos - lo)
                    i = block.rfind(b"\n")
                    if i >= 0:
                        start = lo + i + 1
                        break
                    pos = lo
                f.seek(start)
                tail = f.read(size - start)
                complete = None
                try:
                    complete = json.loads(tail)
                except ValueError:
                    pass
                if isinstance(complete, dict) and isinstance(complete.get("seq"), int):
                    # the event was written whole, only its newline is missing: keep it
                    f.seek(size)
                    f.write(b"\n")
                    size += 1
                else:
                    f.truncate(start)
                    size = start
                    message = (f"{os.path.basename(self.path)}: cut off a half-written last line "
                               f"({len(tail)} bytes) left by an interrupted worker")
                f.flush()
                os.fsync(f.fileno())
            self.seq = _last_seq(f, size)
        return message

    # -- writing
    def emit(self, kind: str, **fields: Any) -> Dict[str, Any]:
        """Write one event; returns it as written."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; use one of {', '.join(KINDS)}")
        clash = [k for k in fields if k in _RESERVED]
        if clash:
            raise ValueError(f"event fields {clash} are reserved")
        with self._lock:
            if self._f is None:
                raise ValueError(f"{self.path}: the event writer is closed")
            self.seq += 1
            ev = {"t": round(time.time(), 3), "kind": kind, "seq": self.seq}
            ev.update(_plain(fields))
            data = (json.dumps(ev, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
            view = memoryview(data)
            while view:
                n = self._f.write(view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._f.fileno())
        return ev

    def _rel(self, p: Any) -> Any:
        """Paths inside the run folder are written relative to it (posix separators)."""
        if not isinstance(p, (str, os.PathLike)):
            return p
        p = os.fspath(p)
        if os.path.isabs(p):
            try:
                rel = os.path.relpath(p, self.run_dir)
            except ValueError:  # another drive on Windows
                return p
            if rel.startswith(os.pardir):
                return p
            p = rel
        return p.replace(os.sep, "/")

    def started(self, job: Any, info: Optional[Dict[str, Any]] = None, **extra) -> Dict[str, Any]:
        return self.emit("started", job=job, info=dict(info or {}), pid=os.getpid(), **extra)

    def progress(self, epoch: int, iteration: int, of: int, losses: Dict[str, float],
                 speed: Optional[float], **extra) -> Dict[str, Any]:
        return self.emit("progress", epoch=epoch, iteration=iteration, of=of,
                         losses=dict(losses), speed=speed, **extra)

    def validation(self, epoch: int, metrics: Dict[str, Any], **extra) -> Dict[str, Any]:
        return self.emit("validation", epoch=epoch, metrics=metrics, **extra)

    def policy(self, iteration: int, tra: Dict[str, Any], tea: Optional[Iterable[float]],
               **extra) -> Dict[str, Any]:
        return self.emit("policy", iteration=iteration, tra=tra,
                         tea=None if tea is None else list(tea), **extra)

    def preview(self, iteration: int, files: Any, **extra) -> Dict[str, Any]:
        if isinstance(files, dict):
            files = {k: self._rel(v) for k, v in files.items()}
        elif isinstance(files, (list, tuple)):
            files = [self._rel(v) for v in files]
        else:
            files = self._rel(files)
        return self.emit("preview", iteration=iteration, files=files, **extra)

    def checkpoint(self, iteration: int, path: str, **extra) -> Dict[str, Any]:
        return self.emit("checkpoint", iteration=iteration, path=self._rel(path), **extra)

    def warning(self, message: str, **extra) -> Dict[str, Any]:
        return self.emit("warning", message=str(message), **extra)

    def error(self, message: str, traceback_tail: Optional[str] = None,
              **extra) -> Dict[str, Any]:
        return self.emit("error", message=str(message), traceback=traceback_tail, **extra)

    def finished(self, reason: str, outputs: Optional[Dict[str, Any]] = None,
                 summary: Optional[Dict[str, Any]] = None, **extra) -> Dict[str, Any]:
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}; use one of "
                             f"{', '.join(FINISH_REASONS)}")
        outputs = {k: self._rel(v) for k, v in (outputs or {}).items()}
        return self.emit("finished", reason=reason, outputs=outputs, summary=dict(summary or {}),
                         **extra)

    # -- lifetime
    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class EventReader:
    """Incremental reader of ``run_dir/events.jsonl``.

    :meth:`poll` returns the events completed since the last poll.  A half-written last line is
    left for a later poll; a file that shrank or was replaced (different inode, or different
    first bytes) is read again from the start (``restarts`` counts this); lines that are not JSON
    objects are skipped and counted in ``invalid_lines``.  ``bytes_read`` counts what was read
    from disk.  A missing file is not an error (the worker has not started yet).
    """

    _HEAD = 64

    def __init__(self, run_dir: str, filename: str = EVENTS_FILE):
        self.path = os.path.join(run_dir, filename)
        self.offset = 0  # start of the first line not yet returned
        self.invalid_lines = 0
        self.restarts = 0
        self.bytes_read = 0
        self._file_id: Optional[tuple] = None  # (st_ino, st_dev) of the file being read
        self._seen: Optional[tuple] = None  # stat key after a read that reached the end
        self._head = b""  # the first line (up to _HEAD bytes), to notice a rewritten file

    def _restart(self) -> None:
        self.restarts += 1
        self.offset = 0
        self._head = b""
        self._seen = None

    def poll(self, max_bytes: Optional[int] = None) -> List[Dict[str, Any]]:
        """New complete events (possibly none).  ``max_bytes`` bounds one poll's read (the rest
        comes on later polls; a single longer line is still read whole)."""
        try:
            st = os.stat(self.path)
        except OSError:
            if self.offset or self._head:
                self._restart()
            self._file_id = self._seen = None
            return []
        key = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if key == self._seen:
            return []  # nothing changed since a read that reached the end: no open, no read
        if self._file_id is not None and (st.st_ino, st.st_dev) != self._file_id and (
                self.offset or self._head):
            self._restart()  # replaced by another file (rotated, new run)
        self._file_id = (st.st_ino, st.st_dev)
        try:
            f = _open(self.path, "rb")
        except FileNotFoundError:
            return []
        with f:
            if self._head and self.offset:
                head = f.read(len(self._head))
                self.bytes_read += len(head)
                if head != self._head:  # truncated and rewritten since the last poll
                    self._restart()
            size = f.seek(0, os.SEEK_END)
            if size < self.offset:  # truncated
                self._restart()
            start = self.offset
            f.seek(start)
            want = size - start
            if max_bytes is not None:
                want = min(want, max(1, max_bytes))
            data = f.read(want)
            self.bytes_read += len(data)
            end = data.rfind(b"\n")
            while end < 0 and start + len(data) < size:  # one line longer than max_bytes
                more = f.read(min(size - start - len(data), _TAIL_CHUNK))
                if not more:
                    break
                self.bytes_read += len(more)
                i = more.find(b"\n")
                if i >= 0:
                    end = len(data) + i
                data += more
        out: List[Dict[str, Any]] = []
        if end >= 0:
            if start == 0:
                self._head = data[:min(self._HEAD, end + 1)]
            for line in data[:end].split(b"\n"):
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    self.invalid_lines += 1
                    continue
                if not isinstance(ev, dict):
                    self.invalid_lines += 1
                    continue
                out.append(ev)
            self.offset = start + end + 1
        # remember the stat only when this read reached the end of the file, so the next poll
        # with an unchanged file returns at once (a half-written tail is re-read only once it
        # changes)
        self._seen = key if start + len(data) >= size and size == st.st_size else None
        return out


def read_events(run_dir: str) -> List[Dict[str, Any]]:
    """All complete events in ``run_dir/events.jsonl`` (skipping damaged lines)."""
    return EventReader(run_dir).poll()
