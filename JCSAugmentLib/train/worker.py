"""The training worker: runs a job in a run folder and reports through the run-folder protocol.

``run_worker(run_dir)`` is what ``jcsaugment train RUN_DIR`` and the Slicer panel's background
process run. It reads ``job.json``, takes the folder's lock, streams ``events.jsonl``, keeps
``status.json`` current, writes ``policy.json`` after every policy update, previews every
``preview_every`` updates, checkpoints atomically every ``checkpoint_every`` iterations, and
between iterations honours a stop request (the ``stop`` file, or SIGTERM / SIGINT): it then saves
a checkpoint and the policies and finishes with reason ``stopped``. ``resume=True`` continues
from ``checkpoints/last.pt`` with the same iteration count, policies and random states. Any
failure is written as an ``error`` event with the traceback's tail; the last checkpoint stays.

Exit codes: 0 completed, stopped or out of time budget; 1 failed while running; 2 the job or the
run folder was refused before training started.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from typing import Dict, Optional, TextIO

from ..run.checkpoint import last_checkpoint_path, load_checkpoint, save_run_checkpoint
from ..run.control import (RunLock, RunLockError, check_writable, clear_stop, read_stop,
                           stop_requested)
from ..run.events import EventWriter, traceback_tail
from ..run.job import JobError, load_job
from ..run.status import write_status

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


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


def _write_status(run_dir, state, **fields):
    fields.setdefault("pid", os.getpid())
    fields["state"] = state
    fields["updated_at"] = time.time()
    write_status(run_dir, fields)


class _Silent:
    """Stands in for the event writer on ranks other than 0 (only rank 0 writes the folder)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def run_worker(run_dir: str, resume: bool = False, quiet: bool = False,
               stream: Optional[TextIO] = None) -> int:
    """Run (or resume) the job in ``run_dir``; returns the exit code. Under torchrun every
    rank calls this; rank 0 owns the run folder."""
    from .distributed import from_environment
    stream = None if quiet else (stream or sys.stderr)
    run_dir = os.path.abspath(run_dir)
    try:
        job = load_job(run_dir)
        check_writable(run_dir)
    except (JobError, OSError) as e:
        _refuse(run_dir, str(e), stream)
        return EXIT_REFUSED
    ctx = from_environment(job.device)
    try:
        if not ctx.is_main:
            return _train(run_dir, job, resume, _Silent(), None, {"name": None}, ctx)
        return _run_main(run_dir, job, resume, stream, ctx)
    finally:
        ctx.close()


def _run_main(run_dir, job, resume, stream, ctx) -> int:
    lock_warnings = []
    try:
        lock = RunLock(run_dir, on_warning=lock_warnings.append).acquire()
    except RunLockError as e:
        if stream:
            stream.write(f"jcsaugment train: {e}\n")
        return EXIT_REFUSED
    events = EventWriter(run_dir)
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
        clear_stop(run_dir)
        return _train(run_dir, job, resume, events, stream, stop_signal, ctx)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        events.close()
        lock.release()


def _refuse(run_dir: str, message: str, stream):
    if stream:
        stream.write(f"jcsaugment train: error: {message}\n")
    try:  # tell a GUI that polls the folder, if the folder takes writes at all
        with EventWriter(run_dir) as ev:
            ev.error(message, None)
        _write_status(run_dir, "failed", last_error=message)
    except OSError:
        pass


def _train(run_dir, job, resume, events, stream, stop_signal, ctx) -> int:
    from ..policy.policy_json import save_policy
    from .trainer import Trainer

    main = ctx.is_main
    started = time.time()
    if not main:  # only rank 0 touches status.json, policy.json, previews and checkpoints
        def _status(*_a, **_k):
            return None
        save_policy = _rank_policy_saver(run_dir, ctx)
    else:
        _status = _write_status
    _status(run_dir, "starting", started_at=started)
    trainer = None
    try:
        def progress(stage, done, total):
            _status(run_dir, "starting", started_at=started, stage=stage, done=done, of=total)
            if stream:
                stream.write(f"{stage} ({done}/{total})\n")

        trainer = Trainer(job, run_dir, progress=progress, dist=ctx)
        if resume:
            path = last_checkpoint_path(run_dir)
            if not os.path.exists(path):
                raise FileNotFoundError(f"--resume: no checkpoint at {path}; start the run "
                                        f"without --resume")
            for w in trainer.load_state_dict(load_checkpoint(path)):
                events.warning(w)
        t = trainer.job.training
        total = trainer.job.total_iterations
        info = {"device": str(trainer.device), "network": trainer.info.__dict__,
                "splits": trainer.splits, "num_classes": trainer.num_classes,
                "resumed_from": trainer.iteration if resume else None,
                "policy_classes": list(trainer.tra.class_names)}
        events.started(trainer.job.to_dict(), info)
        budget = job.time_budget_minutes
        bar = _Progress(total, stream, None if budget is None else started + budget * 60)
        bar.first = time.perf_counter()
        start_iteration = trainer.iteration
        last_event = 0.0
        if trainer.iteration == 0 and main:
            _save_policy(run_dir, trainer, events, save_policy)
            _preview(run_dir, trainer, events)
        while trainer.iteration < total:
            reason = _stop_reason(run_dir, stop_signal, budget, started) if main else None
            if ctx.any(reason is not None):  # rank 0 decides for all ranks
                return _finish(run_dir, trainer, events, save_policy, reason or "stopped",
                               started, ctx)
            res = trainer.step()
            it, epoch = trainer.iteration, (trainer.iteration - 1) // t.iterations_per_epoch
            now = time.time()
            if now - last_event > 2 or it == total or it == start_iteration + 1:
                speed = (it - start_iteration) / max(1e-9, time.perf_counter() - bar.first)
                events.progress(epoch, it, total, res.losses, round(speed, 4),
                                eta=bar.eta(it, start_iteration))
                _status(run_dir, "running", started_at=started, iteration=it, of=total,
                        epoch=epoch, eta_seconds=bar.eta(it, start_iteration), losses=res.losses)
                last_event = now
            bar.show(it, start_iteration, epoch, res.losses)
            if not main:
                continue
            if res.policy_updated:
                _save_policy(run_dir, trainer, events, save_policy)
                if t.preview_every and trainer.policy_updates % t.preview_every == 0:
                    _preview(run_dir, trainer, events)
            if it % t.checkpoint_every == 0:
                _checkpoint(run_dir, trainer, events)
            if it % t.iterations_per_epoch == 0 and t.validate_every and \
                    (epoch + 1) % t.validate_every == 0 and it < total:
                _validate(run_dir, trainer, events, epoch)
        if stream and bar.tty:
            stream.write("\n")
        return _finish(run_dir, trainer, events, save_policy, "completed", started, ctx)
    except Exception as e:  # the worker's job is to report, not to crash silently
        message = f"{type(e).__name__}: {e}"
        events.error(message, traceback_tail(e))
        _status(run_dir, "failed", started_at=started, last_error=message,
                iteration=getattr(trainer, "iteration", None))
        if stream:
            stream.write(f"\njcsaugment train: failed: {message}\n")
        return EXIT_FAILED


def _stop_reason(run_dir, stop_signal, budget, started) -> Optional[str]:
    if stop_signal["name"] or stop_requested(run_dir):
        return "stopped"
    if budget is not None and time.time() - started > budget * 60:
        return "budget"
    return None


def _save_policy(run_dir, trainer, events, save_policy):
    save_policy(os.path.join(run_dir, "policy.json"), trainer.tra, trainer.tea,
                meta={"iteration": trainer.iteration, "mode": trainer.job.training.mode,
                      "backbone": trainer.job.model.backbone,
                      "init": trainer.job.training.init})
    summary = trainer.policy_summary()
    events.policy(trainer.iteration, summary["tra"], summary["tea"])


def _preview(run_dir, trainer, events):
    from ..augment.preview import make_preview
    from ..charts.preview_grid import draw_preview_grid
    from ..policy.policy_json import write_json_atomic
    import numpy as np
    case = trainer.train_cases[0]
    patch = tuple(min(p, s) for p, s in zip(trainer.info.input_size, case.image.shape[1:]))
    rows = make_preview(case.image, case.label[None].astype(np.int64), trainer.tra, n=3,
                        patch_size=patch, seed=trainer.iteration, roi=case.roi)
    folder = os.path.join(run_dir, "previews")
    os.makedirs(folder, exist_ok=True)
    png = os.path.join(folder, "preview_latest.png")
    draw_preview_grid([r.as_grid_row() for r in rows], out_path=png,
                      title=f"{case.case_id}, iteration {trainer.iteration}")
    arrays = os.path.join(folder, "preview_latest.npz")
    tmp = arrays + ".tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **{f"{r.name.split()[0]}_{k}": np.stack(getattr(r, k))
                                  for r in rows for k in ("images", "labels")})
    os.replace(tmp, arrays)
    write_json_atomic(os.path.join(folder, "preview_latest.json"),
                      {"iteration": trainer.iteration, "case": case.case_id,
                       "rows": [{"name": r.name, "centre": list(r.centre),
                                 "captions": r.captions} for r in rows]})
    events.preview(trainer.iteration, {"png": png, "arrays": arrays})


def _checkpoint(run_dir, trainer, events, best=False):
    path = save_run_checkpoint(run_dir, trainer.state_dict(), best=best)
    events.checkpoint(trainer.iteration, path, best=best)
    return path


def _validate(run_dir, trainer, events, epoch):
    metrics = trainer.validate()
    events.validation(epoch, metrics)
    score = metrics.get("dice_foreground", -math.inf)
    if score > trainer.best_metric:
        trainer.best_metric = score
        _checkpoint(run_dir, trainer, events, best=True)
    return metrics


def _rank_policy_saver(run_dir, ctx):
    """Ranks other than 0 keep their final policies beside rank 0's (to check they agree)."""
    def save(path, tra, tea, meta=None):
        from ..policy.policy_json import save_policy
        folder = os.path.join(run_dir, "ranks")
        os.makedirs(folder, exist_ok=True)
        save_policy(os.path.join(folder, f"policy_rank{ctx.rank}.json"), tra, tea, meta)
    return save


def _finish(run_dir, trainer, events, save_policy, reason, started, ctx) -> int:
    if not ctx.is_main:
        _save_policy(run_dir, trainer, events, save_policy)
        return EXIT_OK
    if ctx.active:  # rank 0's copy for the same check
        _save_policy(run_dir, trainer, events, _rank_policy_saver(run_dir, ctx))
    t = trainer.job.training
    epoch = max(0, (trainer.iteration - 1) // t.iterations_per_epoch)
    metrics = _validate(run_dir, trainer, events, epoch) if reason == "completed" else {}
    path = _checkpoint(run_dir, trainer, events)
    _save_policy(run_dir, trainer, events, save_policy)
    stop = read_stop(run_dir) if reason == "stopped" else None
    summary = {"iterations": trainer.iteration, "seconds": round(time.time() - started, 1),
               "validation": metrics, "best_dice_foreground": trainer.best_metric,
               "stop": stop}
    events.finished(reason, {"checkpoint": path, "policy": os.path.join(run_dir, "policy.json")},
                    summary)
    _write_status(run_dir, "stopped" if reason == "stopped" else "finished", started_at=started,
            iteration=trainer.iteration, of=trainer.job.total_iterations, reason=reason)
    return EXIT_OK
