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
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar, Dict, Iterable, Iterator, List, Optional

from .status import open_no_follow

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
        self._f = os.fdopen(open_no_follow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT),
                            "ab", buffering=0)
        if repaired:
            self.warning(repaired)

    def _repair(self) -> Optional[str]:
        """Cut a half-written last line; set ``self.seq`` to the last seq written."""
        self.seq = 0
        try:
            f = os.fdopen(open_no_follow(self.path, os.O_RDWR), "r+b")
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

    def write(self, event: "Event") -> Dict[str, Any]:
        """Write a typed event (its ``t`` and ``seq`` are the writer's); returns the line."""
        fields = event.fields()
        for name in ("path",):
            if name in fields:
                fields[name] = self._rel(fields[name])
        for name in ("files", "outputs"):
            if isinstance(fields.get(name), dict):
                fields[name] = {k: self._rel(v) for k, v in fields[name].items()}
        return self.emit(event.kind, **fields)

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
    from disk; ``offset`` is how far the file has been read and ``file_size`` its size at the
    last poll (together: how much of a backlog is left).  A missing file is not an error (the
    worker has not started yet).

    :meth:`poll_events` gives the same events typed; :meth:`poll_latest` catches up on a long
    backlog fast, for a reader that needs only the latest event of some kinds.
    """

    _HEAD = 64
    #: a backlog shorter than this is left to :meth:`poll` by :meth:`poll_latest` (the tolerant
    #: path for the last, possibly half-written, line)
    LATEST_MIN_BACKLOG = 256 * 1024
    #: what :meth:`poll_latest` reads at once when not told
    LATEST_BLOCK = 4 * 1024 * 1024
    # EventWriter writes {"t":...,"kind":"...","seq":...}: the kind is in a line's first bytes
    _KIND_WINDOW = 64

    def __init__(self, run_dir: str, filename: str = EVENTS_FILE):
        self.path = os.path.join(run_dir, filename)
        self.offset = 0  # start of the first line not yet returned
        self.file_size = 0  # the file's size when it was last opened
        self.invalid_lines = 0
        self.restarts = 0
        self.bytes_read = 0
        self.unknown_kinds = 0
        self._file_id: Optional[tuple] = None  # (st_ino, st_dev) of the file being read
        self._seen: Optional[tuple] = None  # stat key after a read that reached the end
        self._head = b""  # the first line (up to _HEAD bytes), to notice a rewritten file

    def _restart(self) -> None:
        self.restarts += 1
        self.offset = 0
        self._head = b""
        self._seen = None

    def _open_if_changed(self):
        """``(file, stat key, size)`` when the file may hold something not yet read, else None
        (missing, or unchanged since a read that reached its end: one ``os.stat``).  A file
        that was replaced, truncated or rewritten since the last read is read again from the
        start.  The caller closes the file."""
        try:
            st = os.stat(self.path)
        except OSError:
            if self.offset or self._head:
                self._restart()
            self._file_id = self._seen = None
            return None
        key = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if key == self._seen:
            return None  # nothing changed since a read that reached the end: no open, no read
        if self._file_id is not None and (st.st_ino, st.st_dev) != self._file_id and (
                self.offset or self._head):
            self._restart()  # replaced by another file (rotated, new run)
        self._file_id = (st.st_ino, st.st_dev)
        try:
            f = _open(self.path, "rb")
        except FileNotFoundError:
            return None
        try:
            if self._head and self.offset:
                head = f.read(len(self._head))
                self.bytes_read += len(head)
                if head != self._head:  # truncated and rewritten since the last poll
                    self._restart()
            size = f.seek(0, os.SEEK_END)
        except BaseException:
            f.close()
            raise
        if size < self.offset:  # truncated
            self._restart()
        self.file_size = size
        return f, key, size

    def _parse_line(self, line: bytes) -> Optional[Dict[str, Any]]:
        """One line as a dict; None for a blank line or (counted in ``invalid_lines``) one that
        is not a JSON object."""
        line = line.strip()
        if not line:
            return None
        try:
            ev = json.loads(line)
        except ValueError:
            self.invalid_lines += 1
            return None
        if not isinstance(ev, dict):
            self.invalid_lines += 1
            return None
        return ev

    def _typed(self, d: Optional[Dict[str, Any]]) -> Optional["Event"]:
        """:func:`parse_event` of a parsed line; a kind this version does not know (a newer
        JCSAugment) is counted in ``unknown_kinds``."""
        if d is None:
            return None
        ev = parse_event(d)
        if ev is None:
            self.unknown_kinds += 1
        return ev

    def poll(self, max_bytes: Optional[int] = None) -> List[Dict[str, Any]]:
        """New complete events (possibly none).  ``max_bytes`` bounds one poll's read (the rest
        comes on later polls; a single longer line is still read whole)."""
        opened = self._open_if_changed()
        if opened is None:
            return []
        f, key, size = opened
        with f:
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
                ev = self._parse_line(line)
                if ev is not None:
                    out.append(ev)
            self.offset = start + end + 1
        # remember the stat only when this read reached the end of the file, so the next poll
        # with an unchanged file returns at once (a half-written tail is re-read only once it
        # changes)
        self._seen = key if start + len(data) >= size and size == key[2] else None
        return out

    def poll_events(self, max_bytes: Optional[int] = None) -> List["Event"]:
        """:meth:`poll`, parsed into typed events (:func:`parse_event`); lines of an unknown
        kind (a newer JCSAugment) are skipped and counted in ``unknown_kinds``."""
        out: List[Event] = []
        for d in self.poll(max_bytes):
            ev = self._typed(d)
            if ev is not None:
                out.append(ev)
        return out

    def poll_latest(self, thin_kinds: Iterable[str] = ("policy", "preview"),
                    budget_s: Optional[float] = None,
                    block_bytes: Optional[int] = None) -> Iterator["Event"]:
        """Catch up on a long backlog fast: yields the typed events of the complete lines read,
        in file order, except that of each kind in ``thin_kinds`` only the latest line among
        those read together is parsed (a view that shows only the latest policy and preview
        need not parse the thousands before them, which is most of the cost of a long log).

        Reads blocks of ``block_bytes`` (default :data:`LATEST_BLOCK`) while at least
        :data:`LATEST_MIN_BACKLOG` bytes are left and ``budget_s`` seconds (None: no limit)
        have not passed, counting the time the caller spends on each event; yields nothing
        for a shorter backlog, which :meth:`poll_events` then reads (with its half-written
        last line).  When the budget runs out inside a block, the latest line of each thinned
        kind passed over so far comes last, so the caller has the latest it has read past.

        A generator, so that each event can be used and dropped before the next is made (a
        long log does not pile up objects for the garbage collector): ``offset`` follows the
        lines as they are yielded, and a caller that stops early loses nothing but the thinned
        lines before its stop."""
        t0 = time.perf_counter()
        # the writer's compact form; a line spelled otherwise is simply parsed
        markers = {f'"kind":"{k}","seq":'.encode(): k for k in thin_kinds}
        opened = self._open_if_changed()
        if opened is None:
            return
        f, key, size = opened
        with f:
            while size - self.offset >= self.LATEST_MIN_BACKLOG:
                start = self.offset
                f.seek(start)
                data = f.read(block_bytes or self.LATEST_BLOCK)
                self.bytes_read += len(data)
                end = data.rfind(b"\n")
                if end < 0:
                    break  # one line longer than a block: poll reads it whole
                if start == 0:
                    self._head = data[:min(self._HEAD, data.find(b"\n") + 1)]
                lines = data[:end].split(b"\n")
                kinds = [next((k for m, k in markers.items()
                               if line.find(m, 0, self._KIND_WINDOW) >= 0), None)
                         for line in lines]
                last = {k: i for i, k in enumerate(kinds) if k is not None}
                passed_over: Dict[str, bytes] = {}  # kind -> latest line skipped so far
                pos = start
                out_of_time = False
                for i, (line, kind) in enumerate(zip(lines, kinds)):
                    pos += len(line) + 1
                    self.offset = pos
                    if kind is not None and last[kind] != i:
                        passed_over[kind] = line
                    else:
                        ev = self._typed(self._parse_line(line))
                        if kind is not None:
                            passed_over.pop(kind, None)
                        if ev is not None:
                            yield ev
                    # a look at the clock costs far less than parsing a line
                    if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                        out_of_time = True
                        break
                if out_of_time:  # (nothing was passed over when the block was read to its end)
                    for line in passed_over.values():
                        ev = self._typed(self._parse_line(line))
                        if ev is not None:
                            yield ev
                    return
        self._seen = key if self.offset >= size else None


def read_events(run_dir: str) -> List[Dict[str, Any]]:
    """All complete events in ``run_dir/events.jsonl`` as plain dicts (skipping damaged
    lines); :meth:`RunFolder.read_events` gives them typed."""
    return EventReader(run_dir).poll()


# ----------------------------------------------------------------------------- typed events
#
# One dataclass per kind: what the worker writes and every reader gets back.  Parsing is
# tolerant: a field of the wrong type reads as its default (an older or damaged line still
# shows what it can); fields this version does not know are kept in ``extra``.


def _num(v: Any) -> Optional[float]:
    t = type(v)  # exact types first: this runs for every number of every line read
    if t is float:
        return v
    if t is int:
        return float(v)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> Optional[int]:
    if type(v) is int:
        return v
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return None


def _dict(v: Any) -> Dict[str, Any]:
    return dict(v) if isinstance(v, dict) else {}


def _str(v: Any, default: str = "") -> str:
    return v if isinstance(v, str) else default


@dataclass
class Event:
    """Fields every event has: unix time ``t``, ``seq`` (1, 2, ... across resumes), and the
    fields this version does not know (``extra``)."""
    t: Optional[float] = None
    seq: Optional[int] = None
    extra: Dict[str, Any] = dataclass_field(default_factory=dict, compare=False)

    kind: ClassVar[str] = ""

    def fields(self) -> Dict[str, Any]:
        """The kind's own fields (what :meth:`EventWriter.write` puts on the line)."""
        out = {f.name: getattr(self, f.name) for f in dataclass_fields(self)
               if f.name not in ("t", "seq", "extra")}
        out.update(self.extra)
        return out


@dataclass
class Started(Event):
    job: Dict[str, Any] = dataclass_field(default_factory=dict)
    info: Dict[str, Any] = dataclass_field(default_factory=dict)
    pid: Optional[int] = None
    kind: ClassVar[str] = "started"

    @property
    def resumed_from(self) -> Optional[int]:
        return _int(self.info.get("resumed_from"))


@dataclass
class Progress(Event):
    epoch: Optional[int] = None
    iteration: Optional[int] = None
    of: Optional[int] = None
    losses: Dict[str, Optional[float]] = dataclass_field(default_factory=dict)
    speed: Optional[float] = None  # iterations per second
    eta: Optional[float] = None  # seconds left
    kind: ClassVar[str] = "progress"


@dataclass
class Validation(Event):
    epoch: Optional[int] = None
    metrics: Dict[str, Any] = dataclass_field(default_factory=dict)
    kind: ClassVar[str] = "validation"


@dataclass
class PolicyUpdate(Event):
    iteration: Optional[int] = None
    tra: Dict[str, Any] = dataclass_field(default_factory=dict)  # class -> probabilities
    tea: Optional[List[float]] = None
    kind: ClassVar[str] = "policy"


@dataclass
class PreviewWritten(Event):
    iteration: Optional[int] = None
    files: Dict[str, str] = dataclass_field(default_factory=dict)  # relative to the run folder
    kind: ClassVar[str] = "preview"


@dataclass
class CheckpointWritten(Event):
    iteration: Optional[int] = None
    path: Optional[str] = None  # relative to the run folder
    best: bool = False
    kind: ClassVar[str] = "checkpoint"


@dataclass
class WarningEvent(Event):
    message: str = ""
    kind: ClassVar[str] = "warning"


@dataclass
class ErrorEvent(Event):
    message: str = ""
    traceback: Optional[str] = None
    kind: ClassVar[str] = "error"


@dataclass
class Finished(Event):
    reason: str = ""
    outputs: Dict[str, Any] = dataclass_field(default_factory=dict)
    summary: Dict[str, Any] = dataclass_field(default_factory=dict)
    kind: ClassVar[str] = "finished"


EVENT_TYPES = {cls.kind: cls for cls in (Started, Progress, Validation, PolicyUpdate,
                                         PreviewWritten, CheckpointWritten, WarningEvent,
                                         ErrorEvent, Finished)}
assert tuple(EVENT_TYPES) == KINDS

# how each field of a kind is read from a line (anything else gives the field's default)
_READERS = {
    "job": _dict, "info": _dict, "pid": _int, "epoch": _int, "iteration": _int, "of": _int,
    "losses": lambda v: {str(k): _num(x) for k, x in v.items()} if isinstance(v, dict) else {},
    "speed": _num, "eta": _num, "metrics": _dict, "tra": _dict,
    "tea": lambda v: [_num(x) for x in v] if isinstance(v, list) else None,
    "files": lambda v: ({str(k): x for k, x in v.items() if isinstance(x, str)}
                        if isinstance(v, dict) else
                        ({"png": v} if isinstance(v, str) else {})),
    "path": lambda v: v if isinstance(v, str) else None, "best": lambda v: v is True,
    "message": lambda v: "" if v is None else str(v),
    "traceback": lambda v: v if isinstance(v, str) else None,
    "reason": _str, "outputs": _dict, "summary": _dict,
}


def parse_event(d: Any) -> Optional[Event]:
    """The typed event of one parsed line, or None for a line that is not an event this
    version knows (not an object, or an unknown ``kind``)."""
    if not isinstance(d, dict):
        return None
    cls = EVENT_TYPES.get(d.get("kind"))
    if cls is None:
        return None
    names = _KIND_FIELDS[cls]
    kwargs, extra = {}, {}
    for k, v in d.items():
        if k in names:
            kwargs[k] = _READERS[k](v)
        elif k not in _RESERVED:
            extra[k] = v
    return cls(t=_num(d.get("t")), seq=_int(d.get("seq")), extra=extra, **kwargs)


# each kind's own fields, worked out once (a re-attaching panel parses thousands of lines)
_KIND_FIELDS = {cls: frozenset(f.name for f in dataclass_fields(cls)) - {"t", "seq", "extra"}
                for cls in EVENT_TYPES.values()}
