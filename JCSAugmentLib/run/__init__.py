"""The run folder: the only interface between the GUI (or a script) and the training worker.

::

    run_dir/
      job.json            what to do (job.py), versioned, validated on read
      events.jsonl        what happened, one JSON object per line (events.py)
      status.json         the latest state, replaced atomically (status.py)
      stop                a cooperative stop request (control.py)
      run.lock            the worker holding the folder (control.py)
      checkpoints/        last.pt, best.pt (checkpoint.py; torch.load(weights_only=True))
      policy.json         the learned policies
      previews/           FG/BG preview images
      predictions/        label maps (and uncertainty maps) with the input's geometry
      worker.log          the worker's output when the panel started it

:class:`RunFolder` (folder.py) owns every one of these paths; no module outside this package
spells them.

Importing this package does not import torch or numpy (the GUI process polls the folder with
it); the checkpoint names are loaded on first use.
"""

from .control import (LOCK_FILE, STOP_FILE, RunFolderError, RunLock, RunLockError,
                      check_writable, clear_stop, pid_alive, read_lock, read_stop, request_stop,
                      stop_requested)
from .events import (EVENT_TYPES, EVENTS_FILE, FINISH_REASONS, KINDS, CheckpointWritten,
                     ErrorEvent, Event, EventReader, EventWriter, Finished, PolicyUpdate,
                     PreviewWritten, Progress, Started, Validation, WarningEvent, parse_event,
                     read_events, traceback_tail)
from .job import (JOB_FILE, MODES, SCHEMA, Case, DataSpec, InferenceSpec, Job, JobError,
                  ModelSpec, TrainingSpec, load_job, parse_job, resolve_path, save_job)
from .status import (FINAL_STATES, STATES, STATUS_FILE, SymlinkRefused, atomic_write_bytes,
                     atomic_write_json, atomic_write_text, read_status, update_status,
                     write_status)

from .folder import (CHECKPOINT_DIR, POLICY_FILE, PREDICTIONS_DIR, PREVIEWS_DIR, WORKER_LOG,
                     CheckpointChoice, PreviewArrays, RunFolder, as_run_folder,
                     load_preview_arrays, save_preview_arrays)

_CHECKPOINT_NAMES = ("CheckpointError", "save_checkpoint", "save_run_checkpoint",
                     "load_checkpoint", "checkpoint_info", "pack_rng_states", "unpack_rng_states",
                     "last_checkpoint_path", "best_checkpoint_path", "numpy_generator_from_plain",
                     "numpy_state_to_plain", "numpy_state_from_plain", "ndarray_to_plain")


def __getattr__(name):  # PEP 562: torch only when a checkpoint name is asked for
    if name in _CHECKPOINT_NAMES:
        from . import checkpoint
        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RunFolder", "as_run_folder", "CheckpointChoice", "PreviewArrays", "save_preview_arrays",
    "load_preview_arrays", "WORKER_LOG", "SymlinkRefused",
    "Event", "EVENT_TYPES", "Started", "Progress", "Validation", "PolicyUpdate",
    "PreviewWritten", "CheckpointWritten", "WarningEvent", "ErrorEvent", "Finished",
    "parse_event",
    "JOB_FILE", "EVENTS_FILE", "STATUS_FILE", "STOP_FILE", "LOCK_FILE", "POLICY_FILE",
    "PREVIEWS_DIR", "PREDICTIONS_DIR", "CHECKPOINT_DIR", "SCHEMA", "MODES", "KINDS",
    "FINISH_REASONS", "STATES", "FINAL_STATES",
    "Job", "DataSpec", "ModelSpec", "TrainingSpec", "InferenceSpec", "Case", "JobError",
    "load_job", "save_job", "parse_job", "resolve_path",
    "EventWriter", "EventReader", "read_events", "traceback_tail",
    "write_status", "read_status", "update_status", "atomic_write_bytes", "atomic_write_text",
    "atomic_write_json",
    "request_stop", "stop_requested", "read_stop", "clear_stop", "RunLock", "RunLockError",
    "read_lock", "pid_alive", "check_writable", "RunFolderError",
] + list(_CHECKPOINT_NAMES)
