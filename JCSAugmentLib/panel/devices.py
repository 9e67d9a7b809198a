"""The devices a worker could train on, asked of a short subprocess (never of torch in the GUI).

Importing torch in Slicer's GUI process would take seconds and memory, and initialising CUDA
there would hold GPU memory for the whole session; so the interpreter the worker will use
(``PythonSlicer``) is asked, in a subprocess, to print what ``torch.cuda`` and MPS see, as JSON.
The answer is cached per interpreter.  The CPU is always listed; when the probe fails (no torch,
a timeout, a crash) the list is the CPU alone, with a ``note`` saying why.

:func:`list_devices` blocks until the probe ends (up to ``timeout``); a GUI can use
:class:`DeviceProbe` instead (``start()``, then ``poll()`` from its timer).

Each device is ``{"id", "label", "memory_gb"}``: ``id`` is what the panel's settings and the
worker take (``"cpu"``, ``"cuda:0"``, ...).  Apple's MPS, when torch sees it, is reported in the
CPU entry's ``note`` (the engine trains on CUDA or the CPU).

Imports neither torch nor numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Dict, List, Optional

__all__ = ["list_devices", "DeviceProbe", "parse_probe_output", "low_memory_warning",
           "clear_cache", "PROBE_CODE", "CPU"]

#: the entry always present
CPU = {"id": "cpu", "label": "CPU", "memory_gb": None}

#: printed by the probe subprocess: one JSON object on the last line
PROBE_CODE = r"""
import json, sys
out = {"torch": None, "cuda": None, "devices": [], "mps": False, "error": None}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = getattr(torch.version, "cuda", None)
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["devices"].append({"index": i, "name": p.name,
                                   "memory_bytes": int(p.total_memory),
                                   "capability": [p.major, p.minor]})
    mps = getattr(torch.backends, "mps", None)
    out["mps"] = bool(mps is not None and mps.is_available())
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
sys.stdout.write("\n" + json.dumps(out) + "\n")
"""

_CACHE: Dict[str, List[Dict[str, Any]]] = {}
_WINDOWS = os.name == "nt"


def clear_cache() -> None:
    _CACHE.clear()


def _cpu(note: Optional[str] = None) -> Dict[str, Any]:
    d = dict(CPU)
    if note:
        d["note"] = note
    return d


def parse_probe_output(stdout: str, returncode: int = 0, stderr: str = "") -> List[Dict[str, Any]]:
    """The device list from the probe's output (see :data:`PROBE_CODE`)."""
    info = None
    for line in reversed((stdout or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                info = json.loads(line)
                break
            except ValueError:
                continue
    if not isinstance(info, dict):
        last = [s for s in (stderr or "").strip().splitlines() if s.strip()]
        why = last[-1].strip() if last else f"exit code {returncode}"
        return [_cpu(f"could not ask the Python interpreter about GPUs ({why}); training "
                     f"runs on the CPU")]
    if info.get("torch") is None:
        return [_cpu("PyTorch is not installed for this Python"
                     + (f" ({info['error']})" if info.get("error") else "")
                     + ": install it (Slicer: the PyTorch extension) to train")]
    notes = []
    if info.get("error"):
        notes.append(f"GPU query failed: {info['error']}")
    if not info.get("devices"):
        notes.append(f"no CUDA GPU found (torch {info['torch']}"
                     + (f", CUDA {info['cuda']}" if info.get("cuda") else ", a CPU-only build")
                     + ")")
    if info.get("mps"):
        notes.append("Apple MPS is available, but the engine trains on CUDA GPUs or the CPU")
    out = [_cpu("; ".join(notes) or None)]
    for d in info.get("devices") or []:
        try:
            idx = int(d["index"])
        except (KeyError, TypeError, ValueError):
            continue
        mem = d.get("memory_bytes")
        gb = round(mem / 2 ** 30, 1) if isinstance(mem, (int, float)) else None
        name = str(d.get("name") or "GPU")
        label = f"GPU {idx}: {name}" + (f" ({gb:g} GB)" if gb is not None else "")
        out.append({"id": f"cuda:{idx}", "label": label, "memory_gb": gb, "name": name})
    return out


class DeviceProbe:
    """A non-blocking probe: ``start()``, then ``poll()`` returns None until the list is known
    (from the cache at once when it is there)."""

    def __init__(self, python: Optional[str] = None, timeout: float = 20.0):
        if python is None:
            from .worker_process import find_python_slicer
            python = find_python_slicer()
        self.python = python
        self.timeout = float(timeout)
        self.result: Optional[List[Dict[str, Any]]] = _CACHE.get(python)
        self._proc: Optional[subprocess.Popen] = None
        self._t0 = 0.0

    def start(self) -> "DeviceProbe":
        if self.result is not None or self._proc is not None:
            return self
        from .worker_process import worker_env
        env = worker_env()
        # own process group: a launcher (PythonSlicer) and its python die together on timeout
        kwargs = ({"creationflags": 0x08000000 | 0x00000200} if _WINDOWS
                  else {"start_new_session": True})
        try:
            self._proc = subprocess.Popen([self.python, "-c", PROBE_CODE],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=env, text=True,
                                          errors="replace", **kwargs)
        except OSError as e:
            self._finish([_cpu(f"could not run {self.python!r} ({e.strerror or e}); training "
                               f"runs on the CPU")], cache=False)
        self._t0 = time.monotonic()
        return self

    def _finish(self, result, cache: bool = True):
        self.result = result
        if cache:
            _CACHE[self.python] = result
        self._proc = None
        return result

    @property
    def done(self) -> bool:
        return self.result is not None

    def poll(self) -> Optional[List[Dict[str, Any]]]:
        if self.result is not None:
            return self.result
        if self._proc is None:
            self.start()
            if self.result is not None:
                return self.result
        p = self._proc
        if p.poll() is None:
            if time.monotonic() - self._t0 < self.timeout:
                return None
            _kill_tree(p)
            return self._finish([_cpu(f"the GPU query did not answer within {self.timeout:g} s;"
                                      f" training runs on the CPU")], cache=False)
        try:
            # the launcher has exited; a child it left holding the pipes must not hang the GUI
            stdout, stderr = p.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:
            _kill_tree(p)
            return self._finish([_cpu("the GPU query exited but left a process holding its "
                                      "output; training runs on the CPU")], cache=False)
        return self._finish(parse_probe_output(stdout, p.returncode, stderr),
                            cache=p.returncode == 0)

    def wait(self) -> List[Dict[str, Any]]:
        while True:
            r = self.poll()
            if r is not None:
                return r
            time.sleep(0.05)


def _kill_tree(p: subprocess.Popen) -> None:
    try:
        if _WINDOWS:  # pragma: no cover - Windows only
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(p.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
                           creationflags=0x08000000)
        else:
            import signal
            os.killpg(p.pid, signal.SIGKILL)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        p.kill()
    except OSError:
        pass
    try:
        p.communicate(timeout=2)
    except subprocess.TimeoutExpired:  # a pipe still held open: give up on the output
        for stream in (p.stdout, p.stderr):
            try:
                stream.close()
            except (OSError, AttributeError):
                pass
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass


def list_devices(python: Optional[str] = None, timeout: float = 20.0,
                 refresh: bool = False) -> List[Dict[str, Any]]:
    """``[{"id": "cpu", ...}, {"id": "cuda:0", "label": "GPU 0: ... (79.1 GB)",
    "memory_gb": 79.1}, ...]`` for the interpreter ``python`` (default: PythonSlicer), cached;
    blocks up to ``timeout`` seconds the first time."""
    probe = DeviceProbe(python, timeout)
    if refresh:
        _CACHE.pop(probe.python, None)
        probe.result = None
    return [dict(d) for d in probe.start().wait()]


def low_memory_warning(device: Dict[str, Any], min_gb: float = 8.0,
                       backbone: str = "unet3d") -> Optional[str]:
    """A sentence when a GPU has less memory than the default settings want, else None."""
    gb = device.get("memory_gb") if isinstance(device, dict) else None
    if not isinstance(gb, (int, float)) or gb >= min_gb:
        return None
    return (f"{device.get('label', device.get('id'))} has {gb:g} GB of memory; the default "
            f"{'3D U-Net' if backbone == 'unet3d' else 'DeepMedic'} settings want about "
            f"{min_gb:g} GB: lower the batch or patch size if training runs out of memory.")
