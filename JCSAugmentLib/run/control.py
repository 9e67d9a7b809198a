"""Controlling a run folder: cooperative stop, one worker per folder, writability.

- ``stop``: the GUI (or ``jcsaugment stop``) writes it atomically; the worker checks
  :func:`stop_requested` (one ``os.stat``) between iterations, saves a checkpoint and the
  policies, writes ``finished`` with reason "stopped" and exits 0.  The worker clears it with
  :func:`clear_stop` when it starts, so an old request does not stop a resumed run.
- ``run.lock``: :class:`RunLock` holds the folder for one worker.  It records the pid (and host)
  and, where the OS offers it, also holds an advisory lock on the file that the OS drops when the
  process dies.  A second worker is refused while the recorded pid is alive; a lock left by a
  dead process is taken over with a warning.
- :func:`check_writable`: fail early, with a clear message, on a read-only folder or a full disk.

Imports neither torch nor numpy: the GUI process uses this.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

from .status import atomic_write_json, open_no_follow

STOP_FILE = "stop"
LOCK_FILE = "run.lock"


class RunLockError(RuntimeError):
    """The run folder is in use by another live worker."""


class RunFolderError(OSError):
    """The run folder cannot be used (missing, not writable, disk full)."""


# ----------------------------------------------------------------------------- stop

def stop_path(run_dir: str) -> str:
    return os.path.join(run_dir, STOP_FILE)


def request_stop(run_dir: str, reason: str = "user") -> None:
    """Ask the worker of ``run_dir`` to stop after its current iteration."""
    atomic_write_json(stop_path(run_dir), {"reason": str(reason), "requested_at": time.time(),
                                           "by_pid": os.getpid()})


def stop_requested(run_dir: str) -> bool:
    """Cheap (one stat): has a stop been requested?"""
    return os.path.exists(stop_path(run_dir))


def read_stop(run_dir: str) -> Optional[Dict[str, Any]]:
    """The stop request (``{"reason", "requested_at", "by_pid"}``) or None; a damaged or empty
    stop file still counts as a request, with reason "unknown"."""
    try:
        with open(stop_path(run_dir), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {"reason": "unknown"}
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"reason": "unknown"}
    return d if isinstance(d, dict) else {"reason": "unknown"}


def clear_stop(run_dir: str) -> bool:
    """Remove a stop request; True if there was one."""
    try:
        os.remove(stop_path(run_dir))
        return True
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------- processes

def pid_alive(pid: Any) -> bool:
    """Is process ``pid`` running on this machine?  (Zombies count as dead.)"""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to another user
    except OSError:
        return False
    try:  # Linux: a zombie (exited, not yet reaped) is not a worker
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
        if state in (b"Z", b"X"):
            return False
    except OSError:
        pass
    return True


def process_start_time(pid: Any) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), or None where this cannot be
    told (not Linux, no such process).  Read from ``/proc``: the process's start in clock ticks
    after boot, plus the boot time."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2:].split()
        ticks = int(fields[19])  # field 22 of the whole line: starttime
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


#: seconds of slack when comparing start times (boot time is whole seconds, ticks 1/100 s)
_START_SLACK = 2.0


def pid_reused(record: Dict[str, Any]) -> bool:
    """Is the process now holding the lock record's pid provably not the one that wrote it?
    True when that process started after the record was written (or at another time than the
    record says its writer started): the writer died and the pid was given to another process,
    so the lock is stale.  False where start times cannot be read (not Linux)."""
    pid = record.get("pid")
    started = process_start_time(pid)
    if started is None:
        return False
    recorded = record.get("pid_started_at")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        return abs(started - float(recorded)) > _START_SLACK
    written = record.get("started_at")
    if isinstance(written, (int, float)) and not isinstance(written, bool):
        return started > float(written) + _START_SLACK
    return False


def live_worker(run_dir: str) -> Optional[Dict[str, Any]]:
    """The lock record of the worker that holds ``run_dir`` now, or None when none does (no
    run.lock, or one left by a process that died, or whose pid another process now has).
    Reads only: creates and changes nothing."""
    rec = read_lock(run_dir)
    if rec is None:
        return None
    try:
        fd = os.open(lock_path(run_dir), os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        fd = None
    if fd is not None:
        try:
            if not _os_lock(fd):  # held by a live process (the OS drops it when one dies)
                return rec or {"pid": "?"}
            _os_unlock(fd)
        finally:
            os.close(fd)
    if rec.get("host") not in (None, socket.gethostname()):
        return rec  # another machine's worker: cannot be told from here; assume it runs
    if pid_alive(rec.get("pid")) and not pid_reused(rec):
        return rec
    return None


def _pid_alive_windows(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes
    from ctypes import wintypes
    PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
    STILL_ACTIVE = 259
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it exists
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# ----------------------------------------------------------------------------- the lock

def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


def read_lock(run_dir: str) -> Optional[Dict[str, Any]]:
    """The lock record ``{"pid", "host", "started_at"}``, ``{}`` if unreadable, None if none."""
    try:
        with open(lock_path(run_dir), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _os_lock(fd: int) -> bool:
    """Non-blocking exclusive advisory lock; True if held (or the OS has none to offer)."""
    if os.name == "nt":  # pragma: no cover - Windows only
        import msvcrt
        try:
            # lock one byte far past the record, so readers can still read the pid
            os.lseek(fd, 1 << 30, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return True  # a file system without flock: rely on the pid record


def _os_unlock(fd: int) -> None:
    try:
        if os.name == "nt":  # pragma: no cover - Windows only
            import msvcrt
            os.lseek(fd, 1 << 30, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_UN)
    except (OSError, ImportError):
        pass


#: lock descriptors a worker keeps until its process exits (RunLock.release(until_exit=True))
_HELD_UNTIL_EXIT: List[int] = []


class RunLock:
    """One worker per run folder.

    ``with RunLock(run_dir) as lock: ...`` or ``lock.acquire()`` / ``lock.release()``.
    :meth:`acquire` raises :class:`RunLockError` naming the live pid that holds the folder; a
    lock left by a dead process (or an unreadable one) is taken over, and the warning goes to
    ``on_warning`` (default: ``warnings.warn``) and into :attr:`warnings`.
    """

    def __init__(self, run_dir: str, on_warning: Optional[Callable[[str], None]] = None):
        self.run_dir = run_dir
        self.path = lock_path(run_dir)
        self.on_warning = on_warning
        self.warnings: List[str] = []
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self.on_warning is not None:
            self.on_warning(msg)
        else:
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        os.makedirs(self.run_dir, exist_ok=True)
        me = os.getpid()
        host = socket.gethostname()
        for _attempt in range(20):
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _os_lock(fd):
                    rec = read_lock(self.run_dir) or {}
                    raise RunLockError(self._busy_message(rec))
                # the file may have been removed (and recreated) by the previous holder between
                # our open and our lock: then we hold a lock on a dead inode; try again
                # (Windows cannot delete an open file, so the race does not arise there)
                try:
                    same = os.name == "nt" or os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    fd = None
                    continue
                rec = _read_fd(fd)
                if rec is not None:
                    pid = rec.get("pid")
                    other_host = rec.get("host")
                    if pid == me and other_host in (None, host):
                        pass  # our own record (re-acquired in the same process)
                    elif other_host not in (None, host):
                        raise RunLockError(
                            f"run folder {self.run_dir} is locked by pid {pid} on another "
                            f"machine ({other_host}); if no worker runs there any more, delete "
                            f"{self.path}")
                    elif pid_alive(pid) and not pid_reused(rec):
                        raise RunLockError(self._busy_message(rec))
                    elif pid_alive(pid):
                        self._warn(f"{self.path}: took over a stale lock: pid {pid} now "
                                   f"belongs to another process, started after the lock was "
                                   f"written (its worker crashed or was killed)")
                    elif pid is None:
                        self._warn(f"{self.path}: took over an unreadable lock file")
                    elif rec.get("released_at") is not None:
                        pass  # a worker that ended cleanly and held the lock until its exit
                    else:
                        self._warn(f"{self.path}: took over a stale lock from pid {pid}, which "
                                   f"is no longer running (a worker that crashed or was killed)")
                record = {"pid": me, "host": host, "started_at": time.time(),
                          "pid_started_at": process_start_time(me),
                          "argv": list(sys.argv[:1])}
                data = json.dumps(record).encode("utf-8")
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
                os.fsync(fd)
                self._fd = fd
                fd = None
                return self
            finally:
                if fd is not None:
                    _os_unlock(fd)
                    os.close(fd)
        raise RunLockError(f"could not lock {self.path}: it keeps changing under us")

    def _busy_message(self, rec: Dict[str, Any]) -> str:
        pid = rec.get("pid", "?")
        if rec.get("released_at") is not None:
            return (f"run folder {self.run_dir}: the worker pid {pid} has ended its run and is "
                    f"still exiting; try again in a moment")
        started = rec.get("started_at")
        when = ""
        if isinstance(started, (int, float)):
            when = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        return (f"run folder {self.run_dir} is in use by worker pid {pid}{when}; stop that run "
                f"first (or use another run folder)")

    def release(self, until_exit: bool = False) -> None:
        """Give the folder back. ``until_exit`` (a worker process that is about to end): keep
        the OS lock until this process has really exited -- the kernel drops it then -- and
        mark the record released, so that no second worker starts on the folder (and on its
        GPU) while this one is still tearing down torch and CUDA; the next worker takes the
        lock over without a stale-lock warning. Only for a process's own last act: within one
        process a later lock on the same folder would find it held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if until_exit and os.name != "nt":
            try:
                rec = _read_fd(fd) or {}
                rec["released_at"] = time.time()
                data = json.dumps(rec).encode("utf-8")
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
            except OSError:
                pass  # the lock still holds; only the marker is missing
            _HELD_UNTIL_EXIT.append(fd)  # never closed: the process's exit releases it
            return
        if os.name == "nt":  # pragma: no cover - an open file cannot be removed there
            _os_unlock(fd)
            os.close(fd)
            try:
                os.remove(self.path)
            except OSError:
                pass
            return
        try:
            # remove the record while still holding the OS lock; a worker that opened the old
            # file meanwhile notices (samestat) and retries on the new one
            try:
                os.remove(self.path)
            except OSError:
                pass
        finally:
            _os_unlock(fd)
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def _read_fd(fd: int) -> Optional[Dict[str, Any]]:
    """The record in an open lock file: None if empty, {} if garbage."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        chunks.append(b)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


# ----------------------------------------------------------------------------- writability

_PROBE_BYTES = 4096


def _probe(folder: str) -> None:
    """Write, fsync and remove a small temp file in ``folder`` (raises OSError)."""
    fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
    try:
        view = memoryview(b"\0" * _PROBE_BYTES)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
        try:
            os.remove(tmp)
        except OSError:
            pass


def _free_bytes(folder: str) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB"


def check_writable(run_dir: str, min_free_bytes: int = 16 * 2 ** 20) -> None:
    """Create ``run_dir`` if needed and prove it can be written; raises :class:`RunFolderError`
    with a message a user can act on (read-only, permission denied, disk full, a file in the
    way, less than ``min_free_bytes`` free)."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunFolderError(errno.ENOTDIR, f"run folder {run_dir} is a file, not a folder")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise RunFolderError(e.errno, _explain(run_dir, e, "create")) from e
    try:
        _probe(run_dir)
    except OSError as e:
        raise RunFolderError(e.errno, _explain(run_dir, e, "write to")) from e
    free = _free_bytes(run_dir)
    if min_free_bytes and free is not None and free < min_free_bytes:
        raise RunFolderError(errno.ENOSPC,
                             f"the disk holding run folder {run_dir} is nearly full: "
                             f"{_mb(free)} free, a run needs at least {_mb(min_free_bytes)} for "
                             f"checkpoints and outputs; free some space or choose another folder")


def describe_os_error(e: OSError) -> str:
    """An OSError as a user reads it: ``"FILE: reason"``, where a full disk is always "no
    space left on device" (whichever layer noticed it) and a refused write says what to do."""
    reason = (e.strerror or os.strerror(e.errno)) if e.errno else str(e)
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        reason = "no space left on device; free some space or write somewhere else"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"{reason[:1].lower()}{reason[1:]}; choose a place you can write to"
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def _explain(run_dir: str, e: OSError, verb: str) -> str:
    code = e.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free = _free_bytes(run_dir) if os.path.isdir(run_dir) else None
        extra = f" ({_mb(free)} free)" if free is not None else ""
        what = "disk quota exceeded" if code != errno.ENOSPC else "the disk is full"
        return (f"cannot {verb} run folder {run_dir}: {what}{extra}; free some space or choose "
                f"another folder")
    if code == errno.EROFS:
        return f"cannot {verb} run folder {run_dir}: it is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return (f"cannot {verb} run folder {run_dir}: permission denied; choose a folder you "
                f"can write to")
    return f"cannot {verb} run folder {run_dir}: {e.strerror or e}"
