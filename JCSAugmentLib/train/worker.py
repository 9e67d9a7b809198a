"""The training worker: runs a job in a run folder and reports through the run-folder protocol.

``run_worker(run)`` (a :class:`~JCSAugmentLib.run.folder.RunFolder` or its path) is what
``jcsaugment train RUN_DIR`` and the Slicer panel's background process run.  Before anything is
written it refuses a folder with a symbolic link among its entries, takes the folder's lock,
applies the command line's overrides to the stored job and checks them (``--resume`` may not
change what the checkpoint was trained with), and refuses a folder that already holds a
checkpoint unless asked to ``--resume`` it or ``--restart`` it (the old checkpoints are kept).
Then it streams ``events.jsonl``, keeps ``status.json`` current, writes ``policy.json`` after
every policy update, previews every ``preview_every`` updates, checkpoints atomically every
``checkpoint_every`` iterations (best.pt before last.pt), and between iterations honours a stop
request (the ``stop`` file, or SIGTERM / SIGINT): it then saves a checkpoint and the policies
and finishes with reason ``stopped``.  ``resume=True`` continues from ``checkpoints/last.pt``
with the same iteration count, policies and random states.  Any failure is written as an
``error`` event with the traceback's tail; the last checkpoint stays.

Exit codes: 0 completed, stopped or out of time budget; 1 failed while running (out of memory,
no space left on device, a bug); 2 the job or the run folder was refused before training
started, or a case file turned out unusable (truncated, too large, NaN labels).  Every failure is
one line on stderr, even with ``quiet`` (quiet silences progress, never errors), and goes to
``status.json`` (failed, ``last_error``) and ``events.jsonl`` (``error``) with its reason.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, TextIO

from ..run.control import RunLockError
from ..run.events import traceback_tail
from ..run.folder import RunFolder, as_run_folder
from ..run.job import Job, JobError
from ..run.status import SymlinkRefused

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2

#: job fields that fix what a checkpoint holds (the network, the policies' shape, the data it
#: was trained on): ``--resume`` refuses to change them (start again with ``--restart``)
RESUME_FIXED_FIELDS = ("model.backbone", "model.patch_size", "model.base_features",
                       "model.deep_supervision", "training.mode", "training.init",
                       "data.dataset", "data.cases", "data.splits", "data.split_seed",
                       "data.split_fractions", "data.target_spacing", "data.normalisation")


class WorkerRefused(Exception):
    """The worker will not start on this folder as asked (exit 2, one line).  ``report``:
    also write it into the folder (an error event and a failed status) for a GUI; False where
    the refusal protects the folder as it is (another run's history, a finished run)."""

    def __init__(self, message: str, report: bool = False):
        super().__init__(message)
        self.report = report


class _Progress:
    """One terminal line with iteration, losses, speed and ETA (nothing when quiet)."""

    def __init__(self, total: int, stream: Optional[TextIO], deadline: Optional[float] = None):
        self.total, self.stream = total, stream
        self.t0 = time.perf_counter()
        self.first = None
        self.deadline = deadline  # time.time() at which a time budget ends the run
        self.tty = bool(stream and hasattr(stream, "isatty") and stream.isatty())

    def eta(self, done: int, start: int) -> Optional[float]:
        if self.first is None or done <= start:
            return None
        rate = (time.perf_counter() - self.first) / (done - start)
        eta = rate * (self.total - done)
        if self.deadline is not None:  # a time budget ends the run first
            eta = min(eta, max(0.0, self.deadline - time.time()))
        return eta

    def show(self, done: int, start: int, epoch: int, losses: Dict[str, float]):
        if not self.stream:
            return
        eta = self.eta(done, start)
        width = 24
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "-" * (width - filled)
        loss = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
        eta_s = "--:--" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
        line = f"[{bar}] {done}/{self.total} epoch {epoch} {loss} ETA {eta_s}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
        elif done == self.total or done % max(1, self.total // 20) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()


class _Silent:
    """Stands in for the event writer on ranks other than 0 (only rank 0 writes the folder)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def run_worker(run: "str | RunFolder", resume: bool = False, quiet: bool = False,
               stream: Optional[TextIO] = None, overrides: Optional[Dict[str, object]] = None,
               restart: bool = False, new_job: Optional[Job] = None,
               hold_lock_until_exit: bool = False, cache_dir: Optional[str] = None,
               also_stop: Optional[Callable[[], bool]] = None,
               context: Optional[Dict[str, object]] = None) -> int:
    """Run (or resume) the job of ``run``; returns the exit code.  Under torchrun every rank
    calls this; rank 0 owns the run folder. ``hold_lock_until_exit``: the calling process
    ends after this returns (``python -m JCSAugmentLib train``, the panel's worker): keep
    ``run.lock`` until it has exited, so no second worker starts during its teardown.
    ``cache_dir``: where preprocessed cases are cached (default the folder's ``cache/``; a
    comparison shares one between its halves).  ``also_stop``: called between iterations
    besides the folder's own stop file; True stops the run as a stop request does (a
    comparison's own ``stop``).  ``context``: fields added to the ``started`` and ``progress``
    events (a comparison's ``{"compare": {"method": ..., "seed": ..., "half": 1, ...}}``).

    In this order, so that a refused start changes nothing: the folder's entries are checked
    (no symbolic links), the lock is taken, ``overrides`` (dotted job fields, e.g.
    ``{"training.epochs": 5}``) are applied to the stored job (or to ``new_job``, a job for a
    new folder) and checked against it (``--resume`` keeps :data:`RESUME_FIXED_FIELDS`), a
    folder that already holds a checkpoint needs ``resume`` or ``restart`` (which sets the
    old checkpoints aside), and only then is job.json written."""
    from ..threads import apply_thread_policy
    apply_thread_policy()  # sleeping OpenMP threads beside a GUI, for this worker's children
    from .distributed import from_environment
    errors = stream or sys.stderr  # a refusal is said even when quiet
    stream = None if quiet else errors
    folder = as_run_folder(run)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:  # the other ranks run what rank 0 checks and writes; they write nothing
        try:
            base = new_job if new_job is not None else folder.job()
            job = base.with_overrides(dict(overrides)) if overrides else base
        except (JobError, WorkerRefused) as e:
            errors.write(f"jcsaugment train: error: {e}\n")
            return EXIT_REFUSED
        ctx = from_environment(job.device)
        try:
            return _train(folder, job, resume, _Silent(), None, {"name": None}, ctx,
                          options=_Options(cache_dir, None, context))
        finally:
            ctx.close()
    try:
        folder.refuse_symlinks()
        folder.check_writable()
    except OSError as e:
        _refuse(folder, str(e), errors, report=not isinstance(e, SymlinkRefused))
        return EXIT_REFUSED
    lock_warnings: List[str] = []
    try:
        lock = folder.lock(on_warning=lock_warnings.append).acquire()
    except (RunLockError, OSError) as e:  # nothing is written: the folder is the live worker's
        errors.write(f"jcsaugment train: error: {e}\n")
        return EXIT_REFUSED
    try:
        try:
            job = _prepare_folder(folder, overrides, new_job, resume, restart, lock_warnings)
        except (JobError, WorkerRefused, OSError) as e:
            _refuse(folder, str(e), errors, report=getattr(e, "report", True))
            return EXIT_REFUSED
        ctx = from_environment(job.device)
        try:
            return _run_main(folder, job, resume, stream, ctx, lock_warnings, errors,
                             _Options(cache_dir, also_stop, context))
        finally:
            ctx.close()
    finally:
        lock.release(until_exit=hold_lock_until_exit)


def _job_to_run(folder: RunFolder, overrides, new_job: Optional[Job], resume: bool) -> Job:
    """The job after ``overrides``, checked against the stored one (raises JobError or
    WorkerRefused)."""
    stored = folder.job() if folder.has_job() else None
    if new_job is not None and stored is not None and not resume:
        advice = (f"resume it with 'jcsaugment train {folder.path} --resume'"
                  if folder.has_checkpoint() else
                  f"it has no checkpoint yet: start it with 'jcsaugment train {folder.path}'")
        raise WorkerRefused(f"{folder.path} already holds a job.json: {advice}, or choose "
                            f"another folder")
    base = stored if stored is not None else new_job
    if base is None:
        folder.job()  # raises the JobError that names the missing file
    try:
        job = base.with_overrides(dict(overrides)) if overrides else base.validate()
    except JobError as e:
        if not overrides:
            raise
        raise WorkerRefused(f"{e}; job.json is unchanged") from None
    if resume and stored is not None:
        changed = [f for f in RESUME_FIXED_FIELDS if job.value(f) != stored.value(f)]
        if changed:
            raise WorkerRefused(
                f"--resume cannot change {', '.join(changed)} (the checkpoint was trained with "
                f"{', '.join(f'{f}={stored.value(f)!r}' for f in changed)}); job.json is "
                f"unchanged. Start the run again with --restart (the old checkpoints are kept), "
                f"or use a new run folder")
    return job


def _prepare_folder(folder: RunFolder, overrides, new_job, resume, restart,
                    warnings: List[str]) -> Job:
    """Holding the lock: the checked job, the checkpoint rule, the sweep, then job.json."""
    if resume and restart:
        raise WorkerRefused("--resume continues the run, --restart starts it again: give one")
    job = _job_to_run(folder, overrides, new_job, resume)
    _check_device(job.device)
    missing = folder.missing_files(job)
    if missing:
        field, path = missing[0]
        raise WorkerRefused(f"job.json: {field}: {path} does not exist"
                            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1
                               else ""), report=True)
    if resume and not os.path.isfile(folder.checkpoint_path("last")):
        raise WorkerRefused(f"--resume: no checkpoint at {folder.checkpoint_path('last')}; "
                            f"start the run without --resume")
    if not resume and folder.has_checkpoint():
        if not restart:
            it = folder.checkpoint_iteration("last")
            at = "" if it is None else f" at iteration {it}"
            raise WorkerRefused(
                f"{folder.path} already holds a checkpoint{at}: continue that run with "
                f"--resume, or start it again with --restart (its checkpoints are kept in "
                f"checkpoints/); nothing was changed")
        kept = folder.set_aside_checkpoints()
        if kept:
            warnings.append(f"--restart: the previous checkpoints were kept in "
                            f"{folder.relative(kept)}")
    removed = folder.sweep_temp_files()
    if removed:
        warnings.append(f"removed {len(removed)} temporary file(s) left by an interrupted "
                        f"write: {', '.join(folder.relative(p) for p in removed[:5])}")
    if folder.job_bytes() is None or job != folder.job():
        folder.save_job(job)
    return job


def _check_device(spec: str) -> None:
    """A job asking for CUDA on a machine without it is refused before anything is written."""
    if not isinstance(spec, str) or not spec.startswith("cuda"):
        return
    import torch
    if not torch.cuda.is_available():
        raise WorkerRefused(f"job.json: device: {spec!r} asked for, but torch sees no CUDA "
                            f"device here (torch {torch.__version__}); use --device cpu or "
                            f"auto", report=True)
    index = spec.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise WorkerRefused(f"job.json: device: {spec!r} asked for, but only "
                            f"{torch.cuda.device_count()} CUDA device(s) exist", report=True)


class _Options:
    """run_worker's options for a caller that runs the worker as part of something larger
    (a comparison): the shared cache, an extra stop test, event context."""

    def __init__(self, cache_dir: Optional[str] = None,
                 also_stop: Optional[Callable[[], bool]] = None,
                 context: Optional[Dict[str, object]] = None):
        self.cache_dir, self.also_stop, self.context = cache_dir, also_stop, dict(context or {})


def _run_main(folder: RunFolder, job: Job, resume, stream, ctx, lock_warnings,
              errors: Optional[TextIO] = None, options: Optional[_Options] = None) -> int:
    events = folder.event_writer()
    for w in lock_warnings:
        events.warning(w)
    stop_signal = {"name": None}

    def on_signal(signum, _frame):
        stop_signal["name"] = signal.Signals(signum).name

    # Signals reach the main thread only (a worker run from a thread relies on the stop file).
    old = ({s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
           if threading.current_thread() is threading.main_thread() else {})
    try:
        # A stop file left by the previous worker must not stop this one (resume included);
        # a stop asked for from now on is honoured.
        folder.clear_stop()
        return _train(folder, job, resume, events, stream, stop_signal, ctx, errors, options)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        events.close()


def _refuse(folder: RunFolder, message: str, stream, report: bool = True):
    """Say why the worker will not start; ``report``: also into the folder for a GUI that
    polls it (not when the refusal protects the folder as it is)."""
    stream.write(f"jcsaugment train: error: {message}\n")
    if not report:
        return
    try:
        with folder.event_writer() as ev:
            ev.error(message, None)
        folder.write_status("failed", last_error=message)
    except OSError:
        pass


def _train(folder: RunFolder, job: Job, resume, events, stream, stop_signal, ctx,
           errors: Optional[TextIO] = None, options: Optional[_Options] = None) -> int:
    from ..policy.policy_json import save_policy
    from .trainer import Trainer
    options = options or _Options()

    main = ctx.is_main
    started = time.time()
    if not main:  # only rank 0 touches status.json, policy.json, previews and checkpoints
        def _status(*_a, **_k):
            return None
        save_policy = _rank_policy_saver(folder, ctx)
    else:
        _status = folder.write_status
    _status("starting", started_at=started)
    trainer = None
    try:
        def progress(stage, done, total):
            _status("starting", started_at=started, stage=stage, done=done, of=total)
            if stream:
                stream.write(f"{stage} ({done}/{total})\n")

        trainer = Trainer(job, folder.path, cache_dir=options.cache_dir or folder.cache_dir,
                          progress=progress, dist=ctx)
        if resume:
            for w in trainer.load_state_dict(folder.load_checkpoint("last")):
                events.warning(w)
        t = trainer.job.training
        total = trainer.job.total_iterations
        info = {"device": str(trainer.device), "network": trainer.info.__dict__,
                "splits": trainer.splits, "num_classes": trainer.num_classes,
                "resumed_from": trainer.iteration if resume else None,
                "policy_classes": list(trainer.tra.class_names)}
        events.started(trainer.job.to_dict(), info, **options.context)
        budget = job.time_budget_minutes
        bar = _Progress(total, stream, None if budget is None else started + budget * 60)
        bar.first = time.perf_counter()
        start_iteration = trainer.iteration
        last_event = 0.0
        if trainer.iteration == 0 and main:
            _save_policy(folder, trainer, events, save_policy)
            _preview(folder, trainer, events)
        while trainer.iteration < total:
            reason = _stop_reason(folder, stop_signal, budget, started,
                                  options.also_stop) if main else None
            if ctx.any(reason is not None):  # rank 0 decides for all ranks
                return _finish(folder, trainer, events, save_policy, reason or "stopped",
                               started, ctx)
            res = trainer.step()
            it, epoch = trainer.iteration, (trainer.iteration - 1) // t.iterations_per_epoch
            now = time.time()
            if now - last_event > 2 or it == total or it == start_iteration + 1:
                speed = (it - start_iteration) / max(1e-9, time.perf_counter() - bar.first)
                events.progress(epoch, it, total, res.losses, round(speed, 4),
                                eta=bar.eta(it, start_iteration), **options.context)
                _status("running", started_at=started, iteration=it, of=total, epoch=epoch,
                        eta_seconds=bar.eta(it, start_iteration), losses=res.losses)
                last_event = now
            bar.show(it, start_iteration, epoch, res.losses)
            if not main:
                continue
            if res.policy_updated:
                _save_policy(folder, trainer, events, save_policy)
                if t.preview_every and trainer.policy_updates % t.preview_every == 0:
                    _preview(folder, trainer, events)
            if it % t.checkpoint_every == 0:
                _checkpoint(folder, trainer, events)
            if it % t.iterations_per_epoch == 0 and t.validate_every and \
                    (epoch + 1) % t.validate_every == 0 and it < total:
                _validate(folder, trainer, events, epoch)
        if stream and bar.tty:
            stream.write("\n")
        return _finish(folder, trainer, events, save_policy, "completed", started, ctx)
    except Exception as e:  # the worker's job is to report, not to crash silently
        message, code = failure_reason(e)
        try:  # on a full disk even these small writes may fail: the line below still comes
            events.error(message, traceback_tail(e))
            _status("failed", started_at=started, last_error=message,
                    iteration=getattr(trainer, "iteration", None))
        except OSError:
            pass
        out = errors or stream  # said even when quiet: quiet silences progress, not errors
        if out:
            out.write(("\n" if stream and getattr(stream, "isatty", lambda: False)() else "")
                      + f"jcsaugment train: error: {' '.join(message.split())}\n")
        return code


def failure_reason(e: BaseException):
    """(the reason in words, exit code) of a failure while training: the input's fault (a bad
    case file, job or checkpoint) is exit 2; out of memory and a full disk say so; anything
    else is exit 1 with the exception's type."""
    from ..data.dataset import DataError
    from ..io.volume import VolumeError
    from ..policy.policy_json import PolicyFileError
    from ..run.checkpoint import CheckpointError
    from ..run.control import describe_os_error
    chain, seen = [], set()
    while e is not None and id(e) not in seen:  # the error and what caused it
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    first = chain[0]
    for err in chain:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            # a checkpoint's own message names the checkpoint and says "no space left"
            text = str(first) if isinstance(first, CheckpointError) else describe_os_error(err)
            return text, EXIT_FAILED
    text = str(first)
    if isinstance(first, MemoryError) or "out of memory" in text.lower() or \
            "can't allocate memory" in text.lower():
        return (f"out of memory ({type(first).__name__}: {' '.join(text.split())[:200]}); use "
                f"a smaller batch_size or patch_size, or a machine with more memory"), EXIT_FAILED
    if isinstance(first, (DataError, VolumeError, JobError, CheckpointError, PolicyFileError)):
        return text, EXIT_REFUSED
    if isinstance(first, OSError):
        return describe_os_error(first), EXIT_FAILED
    return f"{type(first).__name__}: {text}", EXIT_FAILED


def _stop_reason(folder: RunFolder, stop_signal, budget, started,
                 also_stop: Optional[Callable[[], bool]] = None) -> Optional[str]:
    if stop_signal["name"] or folder.stop_requested() or (also_stop is not None and also_stop()):
        return "stopped"
    if budget is not None and time.time() - started > budget * 60:
        return "budget"
    return None


def _save_policy(folder: RunFolder, trainer, events, save_policy):
    save_policy(folder.policy_path, trainer.tra, trainer.tea,
                meta={"iteration": trainer.iteration, "mode": trainer.job.training.mode,
                      "backbone": trainer.job.model.backbone,
                      "init": trainer.job.training.init})
    summary = trainer.policy_summary()
    events.policy(trainer.iteration, summary["tra"], summary["tea"])


def _preview(folder: RunFolder, trainer, events):
    from ..augment.preview import make_preview
    from ..charts.preview_grid import draw_preview_grid
    import numpy as np
    case = trainer.train_cases[0]
    patch = tuple(min(p, s) for p, s in zip(trainer.info.input_size, case.image.shape[1:]))
    rows = make_preview(case.image, case.label[None].astype(np.int64), trainer.tra, n=3,
                        patch_size=patch, seed=trainer.iteration, roi=case.roi)

    def draw(png):
        draw_preview_grid([r.as_grid_row() for r in rows], out_path=png,
                          title=f"{case.case_id}, iteration {trainer.iteration}")
    files = folder.write_preview(rows, trainer.iteration, case.case_id, draw=draw)
    events.preview(trainer.iteration, files)


def _checkpoint(folder: RunFolder, trainer, events, best=False):
    path = folder.save_checkpoint(trainer.state_dict(), best=best)
    events.checkpoint(trainer.iteration, path, best=best)
    return path


def _progress_png(folder: RunFolder, events):
    """Redraw progress.png from the events; a picture that fails is a warning, not a failed
    run (training does not depend on it)."""
    from ..charts.progress_chart import write_progress_png
    try:
        write_progress_png(folder)
    except Exception as e:  # noqa: BLE001 - any drawing problem
        events.warning(f"progress.png not drawn: {type(e).__name__}: {e}")


def _validate(folder: RunFolder, trainer, events, epoch):
    metrics = trainer.validate()
    events.validation(epoch, metrics)
    _progress_png(folder, events)
    score = metrics.get("dice_foreground", -math.inf)
    if score > trainer.best_metric:
        trainer.best_metric = score
        _checkpoint(folder, trainer, events, best=True)
    return metrics


def _rank_policy_saver(folder: RunFolder, ctx):
    """Ranks other than 0 keep their final policies beside rank 0's (to check they agree)."""
    def save(path, tra, tea, meta=None):
        from ..policy.policy_json import save_policy
        os.makedirs(folder.ranks_dir, exist_ok=True)
        save_policy(folder.rank_policy_path(ctx.rank), tra, tea, meta)
    return save


def _finish(folder: RunFolder, trainer, events, save_policy, reason, started, ctx) -> int:
    if not ctx.is_main:
        _save_policy(folder, trainer, events, save_policy)
        return EXIT_OK
    if ctx.active:  # rank 0's copy for the same check
        _save_policy(folder, trainer, events, _rank_policy_saver(folder, ctx))
    t = trainer.job.training
    epoch = max(0, (trainer.iteration - 1) // t.iterations_per_epoch)
    metrics = _validate(folder, trainer, events, epoch) if reason == "completed" else {}
    path = _checkpoint(folder, trainer, events)
    _save_policy(folder, trainer, events, save_policy)
    stop = folder.read_stop() if reason == "stopped" else None
    summary = {"iterations": trainer.iteration, "seconds": round(time.time() - started, 1),
               "validation": metrics, "best_dice_foreground": trainer.best_metric,
               "stop": stop}
    events.finished(reason, {"checkpoint": path, "policy": folder.policy_path}, summary)
    folder.write_status("stopped" if reason == "stopped" else "finished", started_at=started,
                        iteration=trainer.iteration, of=trainer.job.total_iterations,
                        reason=reason)
    return EXIT_OK
