"""Memory-allocator settings for a process that runs inference on a CPU (predict, the worker's
prediction phase, ``bench infer``): :func:`~.infer.sliding_window.prepare_for_inference` applies
them.

Why: torch's CPU tensors come from the C library's ``malloc``. glibc serves a large request
(over 128 KB at first, its "mmap threshold") with a fresh ``mmap`` and hands it back to the
kernel on ``free``, and it trims the top of its heap whenever more than a little is free
there. A 3-D network allocates and frees tens of MB per layer (a 2 x 10 x 64^3 activation is
21 MB), so every call asks the kernel for the same pages again and touches each one for the
first time: ~0.25 M page faults per second of U-Net inference on a 2-core VM. Keeping freed
memory in the process for the next layer removes most of them: measured 2026-12-01 on that VM
(2-core AMD EPYC, torch 2.13 CPU, base-10 U-Net, calls of two 64^3 windows, medians of 6):
a call took 171 ms with glibc's defaults and 134 ms with this policy (0.33 M -> 0.10 M page
faults in the run).

What is set (Linux with glibc only; elsewhere nothing):

* ``M_MMAP_THRESHOLD`` = 32 MB (glibc's largest): requests up to 32 MB come from the heap,
  which keeps their pages after ``free``;
* ``M_TRIM_THRESHOLD`` = 1 GB: the heap's top is returned to the kernel only when more than
  1 GB of it is free.

The cost: the process's resident memory stays near its peak instead of shrinking between
calls (the memory is reused, not leaked). Slicer's own process never runs inference, so it
never gets it. Training is left alone: ``bench meta`` showed no change beyond the noise, and
``bench augment`` beside a CPU-bound process was, if anything, a little slower with it (4
interleaved pairs, 2026-12-01: a median 2.57x against 3.56x batchgeneratorsv2, the runs
spanning 2.4-4.1x). ``JCSAUGMENT_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from typing import Mapping, Optional

#: mallopt(3) parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the values set (bytes); 32 MB is the largest mmap threshold glibc accepts on 64-bit
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
#: "0" turns the policy off
KEEP_FREED_MEMORY_VARIABLE = "JCSAUGMENT_KEEP_FREED_MEMORY"

_applied: Optional["AllocatorPolicy"] = None


@dataclass(frozen=True)
class AllocatorPolicy:
    """What :func:`apply_allocator_policy` did."""
    #: whether freed memory is now kept for reuse
    keeps_freed_memory: bool
    #: why not, when it does not (a sentence), else ""
    reason: str = ""


def apply_allocator_policy(environ: Optional[Mapping[str, str]] = None) -> AllocatorPolicy:
    """Keep freed memory in this process for reuse (module docstring), once per process;
    a later call returns the first call's result. Never raises: where it cannot be applied
    (not glibc, turned off) the returned record says why."""
    global _applied
    if _applied is not None:
        return _applied
    env = os.environ if environ is None else environ
    if env.get(KEEP_FREED_MEMORY_VARIABLE, "").strip() == "0":
        policy = AllocatorPolicy(False, f"{KEEP_FREED_MEMORY_VARIABLE}=0")
    elif not sys.platform.startswith("linux"):
        policy = AllocatorPolicy(False, f"not Linux ({sys.platform}): the C library's "
                                        f"defaults are kept")
    else:
        policy = _set_glibc_thresholds()
    _applied = policy
    return policy


def _set_glibc_thresholds() -> AllocatorPolicy:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:  # musl and others have no mallopt
        return AllocatorPolicy(False, f"no glibc mallopt here ({e})")
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 when glibc refuses the value
    if not (mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) and
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)):
        return AllocatorPolicy(False, "glibc refused the thresholds")
    return AllocatorPolicy(True)
