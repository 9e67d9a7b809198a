"""Thread settings that let the engine share a busy machine (the worker, predict, benchmarks).

Why: torch runs its CPU kernels on an OpenMP pool with one thread per core. Between two
parallel regions GNU OpenMP (libgomp, which the Linux torch wheels load) keeps its threads
spin-waiting on their cores, and a parallel region ends only when every thread has finished
its share. On a machine where other work holds cores -- the normal case beside Slicer's GUI,
or with a second job -- a spinning or descheduled pool thread stalls every kernel: measured in
issue 14 on a 2-core VM, ``bench augment`` fell from 231 to 8 patches/s with one other
CPU-bound process, and to 66 (not 8) with ``OMP_WAIT_POLICY=PASSIVE``.

What is set:

* ``OMP_WAIT_POLICY=PASSIVE`` (:data:`THREAD_ENVIRONMENT`): a pool thread with no work sleeps
  instead of spinning, so it gives its core back to whatever else runs. libgomp reads it once,
  when torch is first imported, so it must be in the environment *before* ``import torch``:
  :func:`thread_environment` gives the environment for a worker subprocess, and
  :func:`apply_thread_policy` sets it in this process (it takes effect for this process only
  if torch is not imported yet -- :attr:`ThreadPolicy.wait_policy_effective` says -- and for
  every process started from it). A value the user set is kept.
* ``torch.set_num_threads``: the number in ``JCSAUGMENT_NUM_THREADS`` when set (e.g. ``1`` on
  a machine that is always busy), else torch's own default (one per core); it can be changed
  at any time, unlike the wait policy.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Dict, Mapping, MutableMapping, Optional

#: what a process running the engine should have in its environment before importing torch
THREAD_ENVIRONMENT: Dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
#: the user's intra-op thread count for the engine (a whole number >= 1), if any
NUM_THREADS_VARIABLE = "JCSAUGMENT_NUM_THREADS"
#: environments (by id) whose wait policy this module set after torch was imported
_SET_TOO_LATE: set = set()


@dataclass(frozen=True)
class ThreadPolicy:
    """What :func:`apply_thread_policy` did."""
    #: OMP_WAIT_POLICY now in the environment
    wait_policy: str
    #: whether this process's OpenMP follows it: torch was not imported yet, or the variable
    #: was already in the environment (set when the process started)
    wait_policy_effective: bool
    #: torch's intra-op thread count afterwards (None: torch not imported, nothing set)
    num_threads: Optional[int]


def thread_environment(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``base`` (default ``os.environ``) with :data:`THREAD_ENVIRONMENT` added where the user
    did not set those variables: the environment to start a worker subprocess with."""
    env = dict(os.environ if base is None else base)
    for key, value in THREAD_ENVIRONMENT.items():
        env.setdefault(key, value)
    return env


def requested_threads(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The thread count in ``JCSAUGMENT_NUM_THREADS`` (None when unset); a value that is not a
    whole number >= 1 is an error that names the variable."""
    raw = (os.environ if environ is None else environ).get(NUM_THREADS_VARIABLE, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{NUM_THREADS_VARIABLE} must be a whole number >= 1, got {raw!r}")
    return int(raw)


def apply_thread_policy(num_threads: Optional[int] = None,
                        environ: Optional[MutableMapping[str, str]] = None) -> ThreadPolicy:
    """Set the wait policy in ``environ`` (default ``os.environ``) unless already set, and
    torch's thread count to ``num_threads`` (default: ``JCSAUGMENT_NUM_THREADS``; neither:
    torch's default is kept). Call it as early as possible: first thing in a worker or a
    command, before anything imports torch."""
    env = os.environ if environ is None else environ
    torch_loaded = "torch" in sys.modules
    # set before torch's import (by the user, by whoever started this process, or by an
    # earlier call made before the import) or now, before it: either way libgomp read it
    effective = not torch_loaded or ("OMP_WAIT_POLICY" in env and id(env) not in _SET_TOO_LATE)
    for key, value in THREAD_ENVIRONMENT.items():
        if key not in env:
            env[key] = value
            if torch_loaded:
                _SET_TOO_LATE.add(id(env))
    n = num_threads if num_threads is not None else requested_threads(env)
    threads = None
    if n is not None:
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"num_threads must be a whole number >= 1, got {n!r}")
        import torch
        torch.set_num_threads(int(n))
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    return ThreadPolicy(env["OMP_WAIT_POLICY"], effective, threads)
