"""Checkpoints: ``checkpoints/last.pt`` (and ``best.pt``), written atomically, read as data only.

A checkpoint file holds ``{"format": "jcsaugment-checkpoint", "version": 1, "jcsaugment": ...,
"torch": ..., "saved_at": ..., "state": {...}}``.  ``state`` is the trainer's: model and optimiser
state dicts, policies, iteration, and :func:`pack_rng_states` so a resumed run continues
bit-for-bit.  Everything in it must load with ``torch.load(weights_only=True)`` (tensors, dicts,
lists, tuples, numbers, strings, None): :func:`save_checkpoint` refuses anything else up front,
naming where it is, rather than writing a file that cannot be read back.  A run folder is data,
never code.
"""

from __future__ import annotations

import collections
import os
import pickle
import random
import re
import shutil
import struct
import tempfile
import time
import warnings
import zipfile
from typing import Any, Dict, List, Mapping, Optional

import torch

from .folder import BEST_CHECKPOINT as BEST, CHECKPOINT_DIR, LAST_CHECKPOINT as LAST
from .control import describe_os_error
from .status import fsync_dir, replace_with_retry

FORMAT = "jcsaugment-checkpoint"
VERSION = 1

_NDARRAY_TAG = "__ndarray__"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, or read back as a JCSAugment checkpoint."""


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR)


def last_checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR, LAST)


def best_checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR, BEST)


# ----------------------------------------------------------------------------- plain data check

# exact types: a subclass (e.g. torch's TorchVersion, a str subclass) is pickled as its own
# class, which weights_only refuses
_PLAIN_SCALARS = (str, int, float, complex, bool, bytes, type(None))
_PLAIN_TORCH = (torch.Tensor, torch.dtype, torch.device)
_PLAIN_KEYS = (str, int, float, bool, type(None), tuple)


def _check_plain(obj: Any, where: str, depth: int = 0) -> None:
    if depth > 100:
        raise CheckpointError(f"{where}: nested too deeply (a reference cycle?)")
    t = type(obj)
    if t in _PLAIN_SCALARS or t is torch.Size or isinstance(obj, _PLAIN_TORCH):
        return
    if t in (dict, collections.OrderedDict):
        for k, v in obj.items():
            if type(k) not in _PLAIN_KEYS:
                raise CheckpointError(f"{where}: key {k!r} of type {type(k).__name__} is not "
                                      f"plain data")
            _check_plain(v, f"{where}[{k!r}]", depth + 1)
        return
    if t in (list, tuple, set):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]", depth + 1)
        return
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    hint = (" (convert numpy arrays with ndarray_to_plain, or torch.from_numpy)"
            if type(obj).__module__.startswith("numpy") else "")
    raise CheckpointError(f"{where} is a {kind}, which torch.load(weights_only=True) cannot read "
                          f"back; store tensors, numbers, strings, lists and dicts only{hint}")


# ----------------------------------------------------------------------------- save / load

def save_checkpoint(path: str, state: Dict[str, Any]) -> str:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, os.replace).

    Raises :class:`CheckpointError` for state that would not load with weights_only, or when the
    file cannot be written (the message carries the OS reason, e.g. no space left on device);
    a failed write leaves the previous checkpoint untouched.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    from .. import __version__
    payload = {"format": FORMAT, "version": VERSION, "jcsaugment": __version__,
               "torch": str(torch.__version__), "saved_at": time.time(), "state": state}
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=folder)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        replace_with_retry(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write checkpoint {path}: "
                                  f"{describe_os_error(_without_filename(e))}") from e
        if isinstance(e, RuntimeError) and _disk_full(folder):
            # torch's zip writer turns a failed write into "enforce fail at
            # inline_container.cc"; on a full disk say what the user can act on
            raise CheckpointError(f"cannot write checkpoint {path}: no space left on device; "
                                  f"free some space (the previous checkpoint is kept)") from e
        raise
    fsync_dir(folder)
    return path


def _without_filename(e: OSError) -> OSError:
    return OSError(e.errno, e.strerror) if e.errno is not None else e


def _disk_full(folder: str, below: int = 16 * 2 ** 20) -> bool:
    """Is the disk holding ``folder`` (nearly) full?"""
    try:
        return shutil.disk_usage(folder).free < below
    except OSError:
        return False


def save_run_checkpoint(run_dir: str, state: Dict[str, Any], best: bool = False) -> str:
    """``checkpoints/last.pt`` always; also ``checkpoints/best.pt`` (written first) when
    ``best``.  Returns the path of last.pt.  See :meth:`RunFolder.save_checkpoint`."""
    from .folder import RunFolder
    return RunFolder(run_dir).save_checkpoint(state, best=best)


def _pickled_global(path: str, limit: int = 1 << 24) -> Optional[str]:
    """The first global (``module.name``) a plain pickle file would import, or None.

    torch names the blocked global only for its zip format; for a bare pickle (the legacy
    format, or a hand-made file) its weights-only reader stops at the first opcode it does not
    know.  :mod:`pickletools` walks the opcodes without executing any of them."""
    import pickletools
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
        if data[:2] == b"PK":  # torch's zip format: torch names the global itself
            return None
        strings: List[str] = []
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                return arg.replace(" ", ".")
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
            if op.name == "STOP":
                break
    except Exception:  # not a pickle at all: no global to name
        return None
    return None


def _refusal(path: str, torch_message: str) -> str:
    """The message for a file ``torch.load(weights_only=True)`` refused to unpickle.

    torch's own text advises re-running with ``weights_only=False``, which would run the code
    in the file: that advice is never passed on.  The blocked global is named (torch 2.13:
    "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"; older:
    "Unsupported global: GLOBAL x.y"; for a bare pickle: read from its opcodes)."""
    m = re.search(r"GLOBAL\s+([A-Za-z_][\w.]*)", torch_message)
    name = m.group(1) if m else _pickled_global(path)
    if name:
        return (f"checkpoint {path} holds code, not plain data (it would import and call "
                f"{name}), and was refused; JCSAugment never writes such a file. Delete it, "
                f"or replace it with a checkpoint from a run you trust")
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", torch_message, re.S)
    why = " ".join(m.group(1).split())[:200] if m else "not plain data"
    return f"checkpoint {path} is corrupt or not a checkpoint (unpickling refused: {why})"


def _read_payload(path: str, map_location: Any) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was never written "
                              f"completely")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_refusal(path, str(e))) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            AttributeError, IndexError, TypeError, struct.error, MemoryError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated "
                              f"({type(e).__name__}{': ' + first if first else ''})"
                              ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a JCSAugment checkpoint (no "
                              f"\"format\": \"{FORMAT}\" in it)")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path} has an invalid version {version!r}")
    if version > VERSION:
        raise CheckpointError(f"checkpoint {path} has version {version}, newer than this "
                              f"JCSAugment (reads {VERSION}; written by JCSAugment "
                              f"{payload.get('jcsaugment', '?')}); update JCSAugment")
    if not isinstance(payload.get("state"), dict):
        raise CheckpointError(f"checkpoint {path} has no state")
    return payload


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """The ``state`` saved by :func:`save_checkpoint`, loaded with ``weights_only=True``.

    Raises :class:`CheckpointError` for a missing, corrupt, foreign or newer-version file.
    """
    return _read_payload(path, map_location)["state"]


def checkpoint_info(path: str) -> Dict[str, Any]:
    """The checkpoint's header: format, version, jcsaugment and torch versions, saved_at."""
    payload = _read_payload(path, "cpu")
    return {k: v for k, v in payload.items() if k != "state"}


# ----------------------------------------------------------------------------- RNG states

def ndarray_to_plain(a: Any) -> Dict[str, Any]:
    """A numpy array as ``{"__ndarray__": nested lists, "dtype": str}`` (weights_only safe)."""
    return {_NDARRAY_TAG: a.tolist(), "dtype": str(a.dtype)}


def _to_plain(obj: Any) -> Any:
    mod = type(obj).__module__
    if mod == "numpy" or mod.startswith("numpy."):
        import numpy as np
        if isinstance(obj, np.ndarray):
            return ndarray_to_plain(obj)
        if isinstance(obj, np.generic):
            return obj.item()
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_plain(v) for v in obj)
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY_TAG, "dtype"}:
            import numpy as np
            return np.asarray(obj[_NDARRAY_TAG], dtype=obj["dtype"])
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_from_plain(v) for v in obj)
    if isinstance(obj, list):
        return [_from_plain(v) for v in obj]
    return obj


def numpy_state_to_plain(state: Any) -> Any:
    """A numpy ``bit_generator.state`` (or legacy ``np.random.get_state()``) as plain data."""
    return _to_plain(state)


def numpy_state_from_plain(plain: Any) -> Any:
    """Inverse of :func:`numpy_state_to_plain`."""
    return _from_plain(plain)


def numpy_generator_from_plain(plain: Dict[str, Any]):
    """A new ``numpy.random.Generator`` in the saved state (its bit generator by name)."""
    import numpy as np
    state = _from_plain(plain)
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


def pack_rng_states(numpy_generators: Optional[Mapping[str, Any]] = None,
                    torch_generators: Optional[Mapping[str, torch.Generator]] = None
                    ) -> Dict[str, Any]:
    """Every random state a run uses, as weights_only-safe data.

    Always: torch's CPU generator, Python's ``random``, numpy's legacy global state (when numpy
    is importable); CUDA generators when CUDA is initialised in this process; plus the named
    ``numpy.random.Generator`` and ``torch.Generator`` objects the trainer passes.
    """
    out: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                           "cuda": None, "numpy_global": None, "numpy": {}, "torch_generators": {}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    try:
        import numpy as np
        out["numpy_global"] = _to_plain(np.random.get_state())
    except ImportError:
        pass
    for name, gen in (numpy_generators or {}).items():
        out["numpy"][str(name)] = _to_plain(gen.bit_generator.state)
    for name, gen in (torch_generators or {}).items():
        out["torch_generators"][str(name)] = gen.get_state()
    return out


def unpack_rng_states(packed: Dict[str, Any],
                      numpy_generators: Optional[Mapping[str, Any]] = None,
                      torch_generators: Optional[Mapping[str, torch.Generator]] = None
                      ) -> List[str]:
    """Restore what :func:`pack_rng_states` saved, into this process's generators and the named
    ones passed here (set in place).  Returns warnings (CUDA states saved but no CUDA now, a
    named generator missing from the checkpoint, ...) for the caller to report."""
    warnings: List[str] = []
    if not isinstance(packed, dict) or "torch" not in packed:
        raise CheckpointError("the checkpoint's RNG states are missing or damaged")
    torch.set_rng_state(packed["torch"].cpu() if isinstance(packed["torch"], torch.Tensor)
                        else torch.as_tensor(packed["torch"], dtype=torch.uint8))
    py = packed.get("python")
    if py is not None:
        random.setstate(_as_tuple(py))
    cuda = packed.get("cuda")
    if cuda:
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            if n != len(cuda):
                warnings.append(f"the checkpoint has RNG states for {len(cuda)} CUDA device(s), "
                                f"this machine has {n}: restoring the first {min(n, len(cuda))}")
            for i, s in enumerate(cuda[:n]):
                torch.cuda.set_rng_state(s.cpu(), i)
        else:
            warnings.append("the checkpoint has CUDA RNG states but CUDA is not available: "
                            "the run continues, but not bit-for-bit")
    if packed.get("numpy_global") is not None:
        try:
            import numpy as np
            np.random.set_state(_from_plain(packed["numpy_global"]))
        except ImportError:
            warnings.append("numpy is not installed: its global RNG state was not restored")
    saved_np = packed.get("numpy") or {}
    for name, gen in (numpy_generators or {}).items():
        if name in saved_np:
            gen.bit_generator.state = _from_plain(saved_np[name])
        else:
            warnings.append(f"no saved state for numpy generator {name!r}")
    saved_t = packed.get("torch_generators") or {}
    for name, gen in (torch_generators or {}).items():
        if name in saved_t:
            gen.set_state(saved_t[name])
        else:
            warnings.append(f"no saved state for torch generator {name!r}")
    return warnings


def _as_tuple(obj: Any) -> Any:
    """random.setstate needs tuples all the way down (lists would be refused)."""
    if isinstance(obj, (list, tuple)):
        return tuple(_as_tuple(v) for v in obj)
    return obj
