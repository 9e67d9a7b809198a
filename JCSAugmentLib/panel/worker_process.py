"""The background worker process: start it, watch it, stop it, and say why it ended.

Training runs in its own process, started with Slicer's own interpreter (``PythonSlicer``), so
the GUI never blocks and GPU memory is freed when the process ends::

    PythonSlicer -m JCSAugmentLib train RUN_DIR [--resume | --restart]

- Its stdout and stderr are appended to the run folder's worker log (``RunFolder.
  worker_log_path``: a file, not a pipe: nothing can fill up and block, and no reader thread
  is needed); :meth:`WorkerProcess.log_tail` and :meth:`WorkerProcess.exit_reason` read it
  back.
- POSIX: the process starts a new session (``start_new_session=True``), so it and everything
  it starts (``PythonSlicer`` is a launcher: the real python is its child; ``torchrun`` ranks)
  share one process group that :meth:`~WorkerProcess.kill` ends with ``os.killpg``.  Windows:
  ``CREATE_NEW_PROCESS_GROUP`` and ``taskkill /T /F`` for the tree.
- Stopping: first the cooperative request (the run folder's stop request: the worker saves a
  checkpoint and the policies between iterations and finishes with reason "stopped"), then, if
  it has not ended within ``timeout``, SIGTERM to the group (the worker treats it as a stop
  request too), then SIGKILL.  :meth:`~WorkerProcess.stop` does this blocking (scripts, tests,
  Slicer exiting); a GUI calls :meth:`~WorkerProcess.begin_stop` once and
  :meth:`~WorkerProcess.poll_stop` from its timer, which never blocks.
- ``CUDA_VISIBLE_DEVICES`` names the chosen GPU (``device="cuda:N"``), and ``PYTHONPATH`` gets
  the folder holding ``JCSAugmentLib``, so the interpreter finds the engine wherever Slicer
  installed it.

Imports neither torch nor numpy: this runs in Slicer's GUI process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

from ..run.control import pid_alive
from ..run.folder import RunFolder
from ..run.job import TEA_CHOICES

__all__ = ["WorkerProcess", "find_python_slicer", "predict_command", "train_command",
           "worker_env", "describe_exit", "run_folder_busy", "parse_predict_log",
           "PACKAGE_PARENT"]
#: the folder that holds the JCSAugmentLib package (put on the worker's PYTHONPATH)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WINDOWS = os.name == "nt"
_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000
_TAIL_BYTES = 64 * 1024


# ----------------------------------------------------------------------------- commands

def find_python_slicer() -> str:
    """Slicer's ``PythonSlicer`` (beside ``sys.executable``, then on PATH), else
    ``sys.executable`` (plain Python, tests, the command line)."""
    exe = sys.executable or ""
    names = ("PythonSlicer.exe", "PythonSlicer") if _WINDOWS else ("PythonSlicer",)
    folder = os.path.dirname(os.path.abspath(exe)) if exe else ""
    if os.path.basename(exe).lower().startswith("pythonslicer"):
        return exe
    for name in names:
        cand = os.path.join(folder, name) if folder else ""
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return exe or "python"


def train_command(run_dir: str, python: Optional[str] = None, resume: bool = False,
                  extra_args: Sequence[str] = (), restart: bool = False) -> List[str]:
    """``[python, -m, JCSAugmentLib, train, RUN_DIR, (--resume | --restart), *extra_args]``.

    ``restart``: start a folder that holds a checkpoint again from iteration 0 (the worker
    keeps the old checkpoints in ``checkpoints/before-restart-TIME/``); without it (or
    ``resume``) the worker refuses such a folder."""
    if resume and restart:
        raise ValueError("resume continues the run, restart starts it again: choose one")
    cmd = [python or find_python_slicer(), "-m", "JCSAugmentLib", "train",
           os.path.abspath(run_dir)]
    if resume:
        cmd.append("--resume")
    if restart:
        cmd.append("--restart")
    return cmd + [str(a) for a in extra_args]


def predict_command(run_dir: str, images: Optional[Sequence], out_dir: str,
                    tea: str = "learned", uncertainty: bool = False,
                    python: Optional[str] = None, checkpoint: str = "best",
                    device: Optional[str] = None, z: Optional[int] = None,
                    split: Optional[str] = None) -> List[str]:
    """``python -m JCSAugmentLib predict --run RUN (--image F ... | --split S) --out DIR
    --tea TEA ...``: the one place the panel and the Slicer module build a predict command.

    ``images``: one entry per case, a path or a list of channel paths (joined by commas, as the
    command line wants); or None with ``split`` (``"test"``): every case of that split of the
    run's dataset folder.  ``device`` ``cuda:N`` is passed as ``--device cuda``: start the
    command with ``WorkerProcess.for_command(..., device="cuda:N")`` so the environment names
    that GPU; ``"auto"`` (the command's default) is left out.
    """
    if tea not in TEA_CHOICES:
        raise ValueError(f"tea must be learned, heuristic or none, got {tea!r}")
    if (images is None) == (split is None):
        raise ValueError("give the images to predict, or a split of the run's dataset "
                         "(not both)")
    if images is not None and not images:
        raise ValueError("no images to predict")
    cmd = [python or find_python_slicer(), "-m", "JCSAugmentLib", "predict",
           "--run", os.path.abspath(run_dir)]
    if split is not None:
        cmd += ["--split", str(split)]
    for case in images or ():
        files = [case] if isinstance(case, (str, os.PathLike)) else list(case)
        if not files:
            raise ValueError("a case without image files")
        files = [os.path.abspath(os.fspath(f)) for f in files]
        if any("," in f for f in files):
            raise ValueError(f"image paths must not contain commas (the command line joins a "
                             f"case's channels with them): {files}")
        cmd += ["--image", ",".join(files)]
    cmd += ["--out", os.path.abspath(out_dir), "--tea", tea, "--checkpoint", checkpoint]
    if uncertainty:
        cmd.append("--uncertainty")
    if z is not None:
        cmd += ["--z", str(int(z))]
    d = (device or "auto").strip().lower()
    if d != "auto":
        cmd += ["--device", "cuda" if d.startswith("cuda:") else d]
    return cmd


def evaluate_command(pred_dir: str, ref_dir: str, json_path: str,
                     python: Optional[str] = None) -> List[str]:
    """``python -m JCSAugmentLib evaluate --pred DIR --ref DIR --ignore-unreferenced --json
    FILE``: the metrics of a prediction folder against the references exported beside it,
    computed in their own process (HD95 of a whole volume can take seconds: never in the GUI).
    Predictions without a reference (cases nobody labelled, uncertainty maps) are left out."""
    return [python or find_python_slicer(), "-m", "JCSAugmentLib", "evaluate",
            "--pred", os.path.abspath(pred_dir), "--ref", os.path.abspath(ref_dir),
            "--ignore-unreferenced", "--json", os.path.abspath(json_path)]


def parse_predict_log(text: str) -> List[Dict[str, str]]:
    """``[{"prediction": path, "uncertainty": path?}, ...]`` from the predict command's output
    (its ``wrote FILE [and FILE]`` lines)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("wrote "):
            continue
        rest = line[len("wrote "):]
        if " and " in rest:
            pred, unc = rest.split(" and ", 1)
            out.append({"prediction": pred.strip(), "uncertainty": unc.strip()})
        else:
            out.append({"prediction": rest.strip()})
    return out


def worker_env(device: Optional[str] = None, base: Optional[Mapping[str, str]] = None,
               extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The worker's environment: ``base`` (default ``os.environ``), ``PYTHONPATH`` with the
    folder holding JCSAugmentLib first, unbuffered output, and for ``device="cuda:N"``
    ``CUDA_VISIBLE_DEVICES`` naming that GPU (the N-th of an existing
    ``CUDA_VISIBLE_DEVICES`` list, since the panel's device list was made under it), and
    ``OMP_WAIT_POLICY=PASSIVE`` unless set (see ``JCSAugmentLib/threads.py``)."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PACKAGE_PARENT not in paths:
        paths.insert(0, PACKAGE_PARENT)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    # the worker shares the machine with Slicer's GUI: idle OpenMP threads must sleep, and
    # libgomp reads the policy when the worker imports torch (threads.py)
    from ..threads import thread_environment
    env = thread_environment(env)
    d = (device or "").strip().lower()
    if d.startswith("cuda:"):
        index = int(d.split(":", 1)[1])
        visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",")
                   if v.strip()]
        if "CUDA_VISIBLE_DEVICES" in env and visible:
            if index >= len(visible):
                raise ValueError(f"device {device!r}: CUDA_VISIBLE_DEVICES lists only "
                                 f"{len(visible)} GPU(s) ({env['CUDA_VISIBLE_DEVICES']})")
            env["CUDA_VISIBLE_DEVICES"] = visible[index]
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def run_folder_busy(run: "str | RunFolder") -> Optional[str]:
    """A sentence when a live worker holds the run folder (its lock), else None."""
    run_dir = os.fspath(run)
    rec = RunFolder(run).lock_record()
    if not rec:
        return None
    pid = rec.get("pid")
    host = rec.get("host")
    import socket
    if host not in (None, socket.gethostname()):
        return (f"The run folder {run_dir} is locked by a worker on another machine ({host}, "
                f"pid {pid}).")
    if pid_alive(pid):
        return f"A worker (pid {pid}) is already running in {run_dir}: stop it first."
    return None


def signal_run_worker(run: "str | RunFolder", kill: bool = False) -> Optional[int]:
    """SIGTERM (``kill``: SIGKILL) to the process group of the worker holding ``run``'s lock:
    the kill path for a run the panel re-attached to (its process was started elsewhere).
    Only a live pid on this host whose command line names JCSAugmentLib is signalled (a pid
    reused by another program is left alone), never this process's own group. Returns the pid
    signalled, or None."""
    import socket
    rec = RunFolder(run).lock_record()
    pid = rec.get("pid") if rec else None
    if not isinstance(pid, int) or rec.get("host") not in (None, socket.gethostname()) \
            or not pid_alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"jcsaugment" not in f.read().lower():
                return None
    except OSError:
        pass  # no /proc (macOS): the lock's pid is alive, trust it
    if _WINDOWS:  # pragma: no cover - Windows only
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30, creationflags=_CREATE_NO_WINDOW)
        return pid
    sig = signal.SIGKILL if kill else signal.SIGTERM
    try:
        group = os.getpgid(pid)
        if group == os.getpgrp():
            os.kill(pid, sig)
        else:
            os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        return None
    return pid


# ----------------------------------------------------------------------------- exit reasons

_SIGNAL_HINTS = {
    "SIGKILL": "out of memory?",
    "SIGSEGV": "a crash",
    "SIGBUS": "a crash",
    "SIGILL": "a crash",
    "SIGFPE": "a crash",
    "SIGABRT": "aborted",
    "SIGTERM": "terminated",
    "SIGINT": "interrupted",
    "SIGHUP": "its terminal closed",
}
_WINDOWS_CODES = {
    0xC0000005: "a crash: access violation",
    0xC00000FD: "a crash: stack overflow",
    0xC0000409: "a crash: stack buffer overrun",
    0xC0000017: "out of memory",
    0xC000013A: "interrupted (Ctrl+C)",
    0xC0000142: "it could not start (DLL initialisation failed)",
}


def _signal_number_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except (ValueError, AttributeError):
        return f"signal {num}"


def describe_exit(returncode: Optional[int], last_line: str = "", forced: Optional[str] = None,
                  what: str = "worker", timeout: Optional[float] = None) -> Optional[str]:
    """One sentence on how a process ended (None while it runs).

    ``forced``: ``"terminate"`` or ``"kill"`` when we ended it after it did not stop within
    ``timeout`` seconds; ``"user-kill"`` when it was killed at once on request.
    ``last_line``: the last line of its log, quoted for exit codes >= 1.
    """
    if returncode is None:
        return None
    rc = int(returncode)
    tail = f": {last_line}" if last_line else ""
    if forced == "user-kill":
        how = "ended (taskkill /T /F)" if _WINDOWS else "killed (SIGKILL)"
        return f"the {what} was {how} on request; its last checkpoint is kept"
    if forced:
        within = f" within {timeout:g} s" if timeout is not None else ""
        how = "killed" if forced == "kill" else "terminated"
        sig = "SIGKILL" if forced == "kill" else "SIGTERM"
        if _WINDOWS:
            return (f"the {what} did not stop{within} and was ended (taskkill); its last "
                    f"checkpoint is kept")
        return (f"the {what} did not stop{within} and was {how} ({sig}); its last checkpoint "
                f"is kept")
    if rc == 0:
        return f"the {what} exited normally (code 0)"
    sig = None
    if rc < 0:
        sig = -rc
    elif not _WINDOWS and 128 < rc < 128 + 65:  # a shell or launcher passing a signal on
        sig = rc - 128
    if sig is not None:
        name = _signal_number_name(sig)
        hint = _SIGNAL_HINTS.get(name)
        via = "" if rc < 0 else f" (exit code {rc})"
        return (f"the {what} was killed by signal {sig}{via}"
                + (f" ({hint})" if hint else f" ({name})") + tail)
    if _WINDOWS or rc > 0xFFFF:
        code = rc & 0xFFFFFFFF
        if code in _WINDOWS_CODES:
            return f"the {what} ended with code 0x{code:08X} ({_WINDOWS_CODES[code]}){tail}"
    if rc == 2:
        return f"the {what} exited with code 2 (the job or the run folder was refused){tail}"
    return f"the {what} exited with code {rc}{tail}"


# ----------------------------------------------------------------------------- process groups

def _group_alive(pgid: int) -> bool:
    """Does a live (non-zombie) process of group ``pgid`` remain?  POSIX only."""
    if os.path.isdir("/proc/self"):
        try:
            entries = os.listdir("/proc")
        except OSError:
            entries = []
        for name in entries:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            rest = stat[stat.rfind(b")") + 2:].split()
            # rest: state, ppid, pgrp, ...
            if len(rest) >= 3 and int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


#: the detached stop's watchdog (python -c WATCHDOG PGID TIMEOUT GRACE): waits for the process
#: group to end, SIGTERM after TIMEOUT s, SIGKILL GRACE s later (Windows: taskkill /T /F)
_WATCHDOG = """
import os, signal, subprocess, sys, time
pid, timeout, grace = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
def alive():
    if os.name == "nt":
        out = subprocess.run(["tasklist", "/FI", "PID eq %d" % pid], capture_output=True,
                             text=True).stdout
        return str(pid) in out
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
def wait(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not alive():
            sys.exit(0)
        time.sleep(0.2)
wait(timeout)
if os.name == "nt":
    subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True)
    sys.exit(0)
try:
    os.killpg(pid, signal.SIGTERM)
except OSError:
    sys.exit(0)
wait(grace)
try:
    os.killpg(pid, signal.SIGKILL)
except OSError:
    pass
"""


# ----------------------------------------------------------------------------- the process

class WorkerProcess:
    """A worker process (training by default, or any command with :meth:`for_command`).

    ``run_dir``: the run folder (the log goes to its worker log).  ``python``: the
    interpreter (default :func:`find_python_slicer`).  ``resume``: ``--resume``; ``restart``:
    ``--restart`` (see :func:`train_command`).  ``device``:
    the panel's device choice; ``"cuda:N"`` sets ``CUDA_VISIBLE_DEVICES``.  ``env``: extra
    environment variables.  Nothing happens until :meth:`start`.
    """

    def __init__(self, run_dir: Optional[str], python: Optional[str] = None,
                 resume: bool = False, extra_args: Sequence[str] = (),
                 device: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                 log_path: Optional[str] = None, what: str = "worker", restart: bool = False):
        self.run_dir = None if run_dir is None else os.fspath(RunFolder(run_dir))
        self.command: List[str] = (train_command(self.run_dir, python, resume, extra_args,
                                                 restart=restart)
                                   if self.run_dir is not None else [])
        if log_path is None and self.run_dir is None:
            raise ValueError("give a run folder or a log path")
        self.log_path = os.path.abspath(log_path or RunFolder(self.run_dir).worker_log_path)
        self.cwd = self.run_dir
        self.device = device
        self.extra_env = dict(env or {})
        self.what = what
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log_start = 0
        self._group_done = False
        self._forced: Optional[str] = None
        self._stop_phase: Optional[str] = None  # None, requested, terminating, killing, done
        self._stop_deadline = 0.0
        self._stop_timeout: Optional[float] = None
        self._term_grace = 10.0

    @classmethod
    def for_command(cls, args: Sequence[str], log_path: str, cwd: Optional[str] = None,
                    env: Optional[Mapping[str, str]] = None, device: Optional[str] = None,
                    run_dir: Optional[str] = None, what: str = "process") -> "WorkerProcess":
        """Any command (prediction: :func:`predict_command`) with the same log, kill and exit
        handling.  ``run_dir`` given: :meth:`request_stop` writes its stop file."""
        w = cls(None, log_path=log_path, device=device, env=env, what=what)
        w.command = [str(a) for a in args]
        w.cwd = cwd or os.path.dirname(w.log_path)
        w.run_dir = None if run_dir is None else os.path.abspath(run_dir)
        return w

    # -- starting
    def start(self) -> "WorkerProcess":
        """Start the process (returns at once).  Raises OSError with a sentence when the
        interpreter cannot be started."""
        if self._proc is not None:
            raise RuntimeError("this worker was already started; make a new WorkerProcess")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        env = worker_env(self.device, extra=self.extra_env)
        log = open(self.log_path, "ab")
        try:
            self._log_start = log.seek(0, os.SEEK_END)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"===== {stamp} starting: {subprocess.list2cmdline(self.command)}"
            if self.device:
                header += f" (device {self.device})"
            log.write((header + "\n").encode("utf-8", "replace"))
            log.flush()
            self._log_start = log.tell()
            kwargs = {}
            if _WINDOWS:
                kwargs["creationflags"] = _CREATE_NEW_PROCESS_GROUP | _CREATE_NO_WINDOW
            else:
                kwargs["start_new_session"] = True
            self.started_at = time.time()  # before the child can write any event
            try:
                self._proc = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.cwd if self.cwd and os.path.isdir(self.cwd) else None, env=env,
                    close_fds=True, **kwargs)
            except OSError as e:
                self.started_at = None
                msg = f"cannot start {self.command[0]!r}: {e.strerror or e}"
                log.write(f"{msg}\n".encode("utf-8", "replace"))
                raise OSError(e.errno, msg) from e
            except BaseException:
                self.started_at = None
                raise
        finally:
            log.close()  # the child holds its own copy
        return self

    # -- state
    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def log_start(self) -> int:
        """Where this process's output begins in its log (earlier runs' output comes before)."""
        return self._log_start

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    def poll(self) -> Optional[int]:
        """The process's exit code, or None while it runs (never blocks)."""
        if self._proc is None:
            return None
        rc = self._proc.poll()
        if rc is not None and self.ended_at is None and not self.running:
            self.ended_at = time.time()
        return rc

    @property
    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        """True while the process, or anything of its process tree, is alive (a launcher may
        exit while the python it started still saves a checkpoint)."""
        if self._proc is None:
            return False
        if self._proc.poll() is None:
            return True
        if _WINDOWS or self._group_done:
            return False
        if _group_alive(self._proc.pid):
            return True
        self._group_done = True
        if self.ended_at is None:
            self.ended_at = time.time()
        return False

    @property
    def stop_phase(self) -> Optional[str]:
        """None, "requested" (stop file written), "terminating" (SIGTERM sent), "killing"
        (SIGKILL sent) or "done"."""
        return self._stop_phase

    @property
    def forced(self) -> Optional[str]:
        """"terminate" or "kill" when a stop that timed out ended the process, "user-kill" when
        :meth:`kill` was called directly; None when it ended by itself."""
        return self._forced

    # -- stopping
    def request_stop(self, reason: str = "user") -> bool:
        """Ask the worker to stop after its current iteration (the run folder's stop request);
        False when there is no run folder to ask through."""
        if self.run_dir is None:
            return False
        RunFolder(self.run_dir).request_stop(reason)
        return True

    def begin_stop(self, timeout: float = 30.0, term_grace: float = 10.0,
                   reason: str = "user", request: bool = True) -> None:
        """Start stopping without blocking: the stop request now, SIGTERM after ``timeout``
        seconds, SIGKILL ``term_grace`` seconds later; drive it with :meth:`poll_stop`.
        ``request=False``: no stop request in the run folder (the run has already ended and
        only its process is left), SIGTERM at once."""
        if self._proc is None or self._stop_phase is not None:
            return
        self._stop_timeout = float(timeout)
        self._term_grace = float(term_grace)
        if request and self.request_stop(reason):
            self._stop_phase = "requested"
            self._stop_deadline = time.monotonic() + float(timeout)
        else:  # nothing cooperative to ask: terminate at once
            self._stop_timeout = 0.0
            self._stop_phase = "requested"
            self._stop_deadline = time.monotonic()
        self.poll_stop()

    def poll_stop(self) -> bool:
        """One non-blocking step of a stop begun by :meth:`begin_stop`; True once the whole
        process tree is gone."""
        if self._proc is None:
            return True
        if not self.running:
            if self._stop_phase is not None:
                self._stop_phase = "done"
            return True
        now = time.monotonic()
        if self._stop_phase == "requested" and now >= self._stop_deadline:
            self.terminate(_forced=True)
            self._stop_deadline = now + self._term_grace
        elif self._stop_phase == "terminating" and now >= self._stop_deadline:
            self.kill()
        elif self._stop_phase == "killing" and now >= self._stop_deadline:
            self.kill()  # again, for anything that appeared meanwhile
            self._stop_deadline = now + 1.0
        if self.running:
            return False
        self._stop_phase = "done"
        return True

    def stop_detached(self, timeout: float = 30.0, term_grace: float = 10.0,
                      python: Optional[str] = None) -> Optional[subprocess.Popen]:
        """Stop without waiting, for a GUI that is going away (Slicer's cleanup at exit): the
        stop request now, and a small detached watchdog process (stdlib only, its own session)
        that sends SIGTERM to the process group after ``timeout`` seconds and SIGKILL
        ``term_grace`` seconds later if anything of it is still alive. Returns the watchdog
        (None when nothing runs)."""
        if self._proc is None or not self.running:
            return None
        self.request_stop("the Slicer panel closed")
        self._stop_phase = self._stop_phase or "requested"
        args = [python or find_python_slicer(), "-c", _WATCHDOG, str(self._proc.pid),
                str(float(timeout)), str(float(term_grace))]
        kwargs: Dict[str, object] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                                     "stderr": subprocess.DEVNULL, "close_fds": True}
        if _WINDOWS:  # pragma: no cover - Windows only
            kwargs["creationflags"] = _CREATE_NO_WINDOW | getattr(
                subprocess, "DETACHED_PROCESS", 0x8)
        else:
            kwargs["start_new_session"] = True
        try:
            return subprocess.Popen(args, **kwargs)
        except OSError:  # no interpreter to run it: the stop request stays
            return None

    def stop(self, timeout: float = 30.0, term_grace: float = 10.0,
             poll_interval: float = 0.1) -> Optional[int]:
        """Blocking stop: cooperative request, then SIGTERM after ``timeout`` s, SIGKILL after
        ``term_grace`` more; returns the exit code.  (The GUI uses begin_stop/poll_stop.)"""
        self.begin_stop(timeout, term_grace)
        while not self.poll_stop():
            time.sleep(poll_interval)
        return self.returncode

    def terminate(self, _forced: bool = False) -> None:
        """SIGTERM to the whole process group (POSIX; the worker then stops as if asked);
        on Windows the tree is ended at once (taskkill /T /F)."""
        if self._proc is None or not self.running:
            return
        if _forced:  # a stop that timed out (begin_stop/poll_stop)
            self._forced = self._forced or "terminate"
            if self._stop_phase != "killing":
                self._stop_phase = "terminating"
        if _WINDOWS:
            self.kill()
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """End the whole process tree now (POSIX: SIGKILL to the group; Windows: taskkill /T
        /F), and reap the process."""
        if self._proc is None:
            return
        alive = self.running
        if not alive:
            return
        # through a stop that timed out: "kill"; called directly: "user-kill"
        self._forced = "kill" if self._stop_phase in ("requested", "terminating") else (
            self._forced if self._forced == "kill" else "user-kill")
        self._stop_phase = "killing"
        self._stop_deadline = time.monotonic() + 1.0
        if _WINDOWS:  # pragma: no cover - Windows only
            try:
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=30, creationflags=_CREATE_NO_WINDOW)
            except (OSError, subprocess.SubprocessError):
                pass
            try:
                self._proc.kill()
            except OSError:
                pass
        else:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep (D state)
            pass
        deadline = time.monotonic() + 5
        while self.running and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Block until the process tree has ended (or ``timeout``); returns the exit code."""
        if self._proc is None:
            return None
        end = None if timeout is None else time.monotonic() + timeout
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        while self.running:
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(0.02)
        return self._proc.returncode

    # -- reporting
    def _read_tail(self, max_bytes: int = _TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(self._log_start, size - max_bytes)
                f.seek(start)
                data = f.read(size - start)
        except OSError:
            return ""
        text = data.decode("utf-8", "replace").replace("\r\n", "\n")
        if start > self._log_start:  # cut mid-line
            text = text.split("\n", 1)[-1]
        return "\n".join(part.split("\r")[-1] for part in text.split("\n"))

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines this process wrote to its log."""
        lines = self._read_tail().rstrip("\n").split("\n")
        return "\n".join(lines[-n:]) if lines != [""] else ""

    def last_line(self) -> str:
        """The last meaningful line of the log (a progress bar is skipped)."""
        for line in reversed(self._read_tail(16 * 1024).split("\n")):
            s = line.strip()
            if s and not s.startswith("[#") and not s.startswith("[-"):
                return s if len(s) <= 300 else s[:297] + "..."
        return ""

    def exit_reason(self) -> Optional[str]:
        """One sentence on how the process ended (None while it runs)."""
        if self._proc is None or self.running:
            return None
        rc = self._proc.returncode
        last = self.last_line() if rc not in (0, None) or self._forced else ""
        return describe_exit(rc, "" if self._forced else last, self._forced, self.what,
                             self._stop_timeout)

    def __repr__(self) -> str:
        state = ("not started" if self._proc is None else "running" if self.running
                 else f"exited {self._proc.returncode}")
        return f"<WorkerProcess pid={self.pid} {state}: {' '.join(self.command[1:4])} ...>"
