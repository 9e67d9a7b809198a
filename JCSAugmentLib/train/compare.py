"""``jcsaugment train ... --compare heuristic [--seeds N]``: the paired comparison, run.

:func:`run_compare` takes the comparison folder's lock, writes (or, with ``resume``, reads) the
plan ``compare.json`` (run/compare.py documents the layout), then for each seed trains the
heuristic half and the learned half one after the other in this process -- each an ordinary run
folder trained by :func:`~JCSAugmentLib.train.worker.run_worker`, sharing one preprocessed
cache -- and after each half segments the test split with the half's TEA and without TEA
(:func:`~JCSAugmentLib.infer.predict.predict_cases`) and scores every case (DSC, sensitivity,
precision, HD95 per label).  After every half's results, and when it stops or fails,
``comparison.json`` / ``comparison.md`` are rewritten from what exists.

Cost: exactly the halves' training plus their predictions: a half whose TEA is ``none`` is
predicted once (its no-TEA label maps serve both rows), the cases are preprocessed once for all
halves, and a resumed comparison neither retrains a trained half nor re-predicts a scored one.

Stop (``jcsaugment stop RUN``, the RUN/stop file, SIGTERM / SIGINT): the training half stops
after its current iteration with a checkpoint (the ordinary worker's stop), and no further half
starts; ``--resume`` continues the half that was running (from its last.pt) and then the rest.
A half that has finished training is segmented and scored before a stop takes effect, so the
table shows its results.

Exit codes are the worker's: 0 finished or stopped, 1 failed while running, 2 refused before
anything was trained (one line ``jcsaugment train: error: ...``).
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import threading
from typing import Callable, Dict, List, Optional, TextIO

from ..run.compare import (BASELINES, LEARNED_MODES, CompareError, ComparePlan, HalfPlan,
                           VariantResult, build_comparison, compare_status, is_comparison,
                           load_plan, method_title, plan_halves, prediction_folder_name,
                           save_plan, write_comparison)
from ..run.control import RunLockError
from ..run.folder import (COMPARE_FILE, COMPARISON_FILE, COMPARISON_MD_FILE, RunFolder,
                          as_run_folder)
from ..run.job import Job, JobError, resolve_path
from ..run.status import SymlinkRefused
from .worker import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, failure_reason, run_worker

#: job fields a ``--resume`` of a comparison may change (both halves must train alike)
RESUMABLE_OVERRIDES = ("device",)


def run_compare(run: "str | RunFolder", baseline: str = "heuristic",
                seeds: Optional[int] = None, resume: bool = False, quiet: bool = False,
                stream: Optional[TextIO] = None,
                overrides: Optional[Dict[str, object]] = None, new_job: Optional[Job] = None,
                hold_lock_until_exit: bool = False) -> int:
    """Run (or resume) the comparison in ``run``; returns the exit code.

    A new comparison's base job is ``new_job`` (``--dataset``) or ``run``'s job.json, with
    ``overrides`` (dotted job fields) applied; its mode is the learned mode compared with
    ``baseline``.  ``seeds``: how many pairs (seeds job.seed, job.seed + 1, ...; default 1); on
    ``resume`` a larger number adds pairs to the comparison (never removes any)."""
    errors = stream or sys.stderr
    stream = None if quiet else errors
    folder = as_run_folder(run)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        errors.write("jcsaugment train: error: --compare runs its halves in one process; "
                     "start it without torchrun\n")
        return EXIT_REFUSED
    try:
        _refuse_links(folder)
        folder.check_writable()
    except OSError as e:
        errors.write(f"jcsaugment train: error: {e}\n")
        return EXIT_REFUSED
    try:
        lock = folder.lock(on_warning=lambda m: _say(stream, f"comparison: {m}")).acquire()
    except (RunLockError, OSError) as e:
        errors.write(f"jcsaugment train: error: {e}\n")
        return EXIT_REFUSED
    try:
        try:
            plan = _prepare_plan(folder, baseline, seeds, resume, overrides, new_job)
        except (CompareError, JobError, OSError) as e:
            errors.write(f"jcsaugment train: error: {' '.join(str(e).split())}\n")
            return EXIT_REFUSED
        except Exception as e:  # a dataset that cannot be read, a bad splits entry
            message, code = failure_reason(e)
            errors.write(f"jcsaugment train: error: {' '.join(message.split())}\n")
            return code if code != EXIT_OK else EXIT_FAILED
        return _run_plan(folder, plan, stream, errors)
    finally:
        lock.release(until_exit=hold_lock_until_exit)


def _refuse_links(folder: RunFolder) -> None:
    folder.refuse_symlinks()
    from ..run.status import symlink_message
    import errno
    for name in (COMPARE_FILE, COMPARISON_FILE, COMPARISON_MD_FILE):
        p = folder.file(name)
        if os.path.islink(p):
            raise SymlinkRefused(errno.ELOOP, symlink_message(p))


# ---------------------------------------------------------------------------- the plan

def _prepare_plan(folder: RunFolder, baseline: str, seeds: Optional[int], resume: bool,
                  overrides, new_job: Optional[Job]) -> ComparePlan:
    """Holding the lock: the plan to run, checked, written (a refusal writes nothing)."""
    if baseline not in BASELINES:
        raise CompareError(f"--compare {baseline!r}: the method to compare with is one of "
                           f"{', '.join(BASELINES)}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int)
                              or seeds < 1):
        raise CompareError(f"--seeds must be a whole number of at least 1 (each seed trains "
                           f"one pair), got {seeds!r}")
    overrides = dict(overrides or {})
    if is_comparison(folder.path):
        if not resume:
            raise CompareError(f"{folder.path} already holds a comparison ({COMPARE_FILE}): "
                               f"continue it with 'jcsaugment train {folder.path} --resume', "
                               f"or choose another folder")
        plan = load_plan(folder.path)
        if plan.baseline != baseline:
            raise CompareError(f"--resume: this comparison is with {plan.baseline!r}, not "
                               f"{baseline!r}")
        base = Job.from_dict(plan.job)
        changed = [k for k, v in overrides.items()
                   if k not in RESUMABLE_OVERRIDES and base.value(k) != v]
        if changed:
            raise CompareError(f"--resume of a comparison cannot change {', '.join(changed)}: "
                               f"both halves must train alike (start a new comparison folder "
                               f"instead); nothing was changed")
        if overrides:
            plan.job = base.with_overrides(overrides).to_dict()
        if seeds is not None and seeds < len(plan.seeds):
            raise CompareError(f"--seeds {seeds}: this comparison already has "
                               f"{len(plan.seeds)} seeds; --seeds can only add seeds")
        if seeds is not None and seeds > len(plan.seeds):
            first = plan.seeds[0]
            added = [first + k for k in range(len(plan.seeds), seeds)]
            plan.seeds += added
            plan.halves += plan_halves(plan.baseline, plan.learned, added,
                                       plan.halves[0].iterations)
        for h in plan.halves:  # every derived job still validates (a device override)
            _half_job(folder, plan, h)
        save_plan(folder.path, plan)
        return plan
    if resume:
        raise CompareError(f"--resume: {folder.path} holds no comparison ({COMPARE_FILE}) to "
                           f"resume; start one without --resume")
    if folder.has_checkpoint():
        raise CompareError(f"{folder.path} holds a trained run (checkpoints/); a comparison "
                           f"trains its own two runs: give a new folder")
    if new_job is not None:
        base = new_job.with_overrides(overrides) if overrides else new_job
    else:
        stored = folder.job()  # raises the JobError naming the missing or bad job.json
        base = stored.with_overrides(overrides) if overrides else stored
    learned = base.training.mode
    if learned == baseline:
        raise CompareError(f"--compare {baseline} compares a learned mode with heuristic TRA, "
                           f"but the mode is {learned!r} itself: choose --mode "
                           f"{' / '.join(LEARNED_MODES)}")
    if learned not in LEARNED_MODES:
        raise CompareError(f"--compare {baseline} compares a mode that learns TRA "
                           f"({', '.join(LEARNED_MODES)}) with heuristic TRA; mode is "
                           f"{learned!r}")
    missing = base.missing_files(folder.path)
    if missing:
        field, path = missing[0]
        raise CompareError(f"job.json: {field}: {path} does not exist")
    _check_test_split(folder, base)
    first = int(base.seed)
    n = 1 if seeds is None else seeds
    seed_list = [first + k for k in range(n)]
    plan = ComparePlan(baseline, learned, seed_list, base.to_dict(),
                       plan_halves(baseline, learned, seed_list, base.total_iterations),
                       policy_every=int(base.training.policy_every),
                       time_budget_minutes=base.time_budget_minutes)
    for h in plan.halves:  # each derived job is valid before anything is written
        _half_job(folder, plan, h)
    save_plan(folder.path, plan)
    return plan


def _check_test_split(folder: RunFolder, job: Job) -> None:
    from .trainer import dataset_and_splits
    dataset, splits = dataset_and_splits(job, folder.path)
    if not splits["test"]:
        raise CompareError("--compare scores both runs on the test split, and this job's test "
                           "split is empty: give splits with test cases")
    unlabelled = [cid for cid in splits["test"] if dataset.case(cid).label is None]
    if unlabelled:
        raise CompareError(f"--compare scores the test cases against their labels; test case "
                           f"{unlabelled[0]!r} has no label")


def _half_job(folder: RunFolder, plan: ComparePlan, half: HalfPlan) -> Job:
    """The half's job: the base job with the half's mode and seed, its relative paths rebased
    from the comparison folder onto the half's folder (raises JobError)."""
    d = copy.deepcopy(plan.job)
    d["seed"] = half.seed
    if half.role == "baseline":
        d["training"]["mode"] = half.method
        if d.get("inference", {}).get("tea") == "learned":  # the heuristic learns no TEA
            d["inference"]["tea"] = "auto"
    sub = os.path.join(folder.path, half.folder)

    def rebase(p):
        if not isinstance(p, str) or os.path.isabs(os.path.expanduser(p)):
            return p
        full = resolve_path(folder.path, p)
        try:
            return os.path.relpath(full, sub).replace(os.sep, "/")
        except ValueError:  # another drive (Windows)
            return full
    data = d.get("data") or {}
    if data.get("dataset") is not None:
        data["dataset"] = rebase(data["dataset"])
    for c in data.get("cases") or []:
        c["images"] = [rebase(p) for p in c.get("images") or []]
        for k in ("label", "roi"):
            if c.get(k) is not None:
                c[k] = rebase(c[k])
    if d.get("training", {}).get("pretrained") is not None:
        d["training"]["pretrained"] = rebase(d["training"]["pretrained"])
    return Job.from_dict(d)


# ---------------------------------------------------------------------------- running it

class _Stopper:
    """True once a stop was asked for the comparison: RUN/stop, or SIGTERM / SIGINT."""

    def __init__(self, folder: RunFolder):
        self.folder, self.signal = folder, None

    def __call__(self) -> bool:
        return self.signal is not None or self.folder.stop_requested()

    def on_signal(self, signum, _frame):
        self.signal = signal.Signals(signum).name


def _say(stream: Optional[TextIO], text: str) -> None:
    if stream:
        stream.write(text + "\n")
        stream.flush()


def _run_plan(folder: RunFolder, plan: ComparePlan, stream, errors) -> int:
    stopper = _Stopper(folder)
    folder.clear_stop()  # a stop left by the previous worker must not stop this one
    old = ({s: signal.signal(s, stopper.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
           if threading.current_thread() is threading.main_thread() else {})
    notes: Dict[int, str] = {}
    try:
        for i, half in enumerate(plan.halves):
            if half.has_results:
                continue
            if not half.trained:
                if stopper():
                    return _stopped(folder, plan, i, notes, stream)
                plan.current, plan.state, plan.message = i, "training", None
                save_plan(folder.path, plan)
                status = compare_status(folder.path)
                _say(stream, f"comparison: training half {i + 1} of {len(plan.halves)}: "
                             f"{method_title(half.method)} (seed {half.seed}) in "
                             f"{half.folder}" + (f" [{status.describe()}]" if status else ""))
                try:
                    outcome, code, note = _train_half(folder, plan, i, stopper, stream, errors)
                except Exception as e:  # noqa: BLE001 - e.g. a case file gone since the start
                    message, code = failure_reason(e)
                    errors.write(f"jcsaugment train: error: {' '.join(message.split())}\n")
                    outcome, note = "failed", f"training failed: {message}"
                if outcome == "stopped":
                    notes[i] = note
                    return _stopped(folder, plan, i, notes, stream)
                if outcome == "failed":
                    notes[i] = note
                    return _failed(folder, plan, i, notes, note, code)
            # a half that has trained is segmented before a stop takes effect: the table then
            # shows its results (a stop during training stops the half itself)
            plan.current, plan.state = i, "predicting"
            save_plan(folder.path, plan)
            try:
                _predict_half(folder, plan, half, stream, stopper)
            except Exception as e:  # noqa: BLE001 - reported, the comparison keeps its state
                message, code = failure_reason(e)
                errors.write(f"jcsaugment train: error: {' '.join(message.split())}\n")
                notes[i] = f"prediction failed: {message}"
                return _failed(folder, plan, i, notes, message, code)
            _write(folder, plan, notes)
        plan.state, plan.message = "finished", None
        save_plan(folder.path, plan)
        comparison = _write(folder, plan, notes)
        _say(stream, f"comparison: wrote {folder.file(COMPARISON_MD_FILE)}")
        _say(stream, f"comparison: {comparison.verdict}")
        return EXIT_OK
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _write(folder: RunFolder, plan: ComparePlan, notes: Dict[int, str]):
    """comparison.json / .md from the plan; a half without results says why (its own
    status: stopped at iteration i of n, failed, not started)."""
    notes = dict(notes)
    for i, h in enumerate(plan.halves):
        if h.has_results or i in notes:
            continue
        st = RunFolder(os.path.join(folder.path, h.folder)).status() or {}
        if h.trained:
            notes[i] = "trained, not yet segmented"
        elif st.get("state") in ("stopped", "running", "starting"):
            notes[i] = (f"stopped at iteration {st.get('iteration') or 0} of "
                        f"{st.get('of') or h.iterations}; --resume continues it")
        elif st.get("state") == "failed":
            notes[i] = f"failed: {st.get('last_error') or 'see its events.jsonl'}"
        else:
            notes[i] = "not trained yet"
    comparison = build_comparison(plan, notes)
    write_comparison(folder.path, comparison)
    return comparison


def _stopped(folder, plan, i, notes, stream) -> int:
    plan.current, plan.state = i, "stopped"
    half = plan.halves[i]
    started = RunFolder(os.path.join(folder.path, half.folder)).has_checkpoint()
    plan.message = (f"stopped {'during' if started else 'before'} half {i + 1} of "
                    f"{len(plan.halves)} ({method_title(half.method)}, seed {half.seed}): "
                    f"'jcsaugment train {folder.path} --resume' continues")
    save_plan(folder.path, plan)
    _write(folder, plan, notes)
    _say(stream, f"comparison: {plan.message}")
    return EXIT_OK


def _failed(folder, plan, i, notes, message, code) -> int:
    plan.current, plan.state, plan.message = i, "failed", message
    save_plan(folder.path, plan)
    try:
        _write(folder, plan, notes)
    except OSError:
        pass
    return code if code != EXIT_OK else EXIT_FAILED


def _train_half(folder: RunFolder, plan: ComparePlan, i: int, stopper: Callable[[], bool],
                stream, errors):
    """Train (or continue) half ``i``: ("trained" | "stopped" | "failed", exit code, note)."""
    half = plan.halves[i]
    sub = RunFolder(os.path.join(folder.path, half.folder))
    st = sub.status() or {}
    if not (st.get("state") == "finished" and sub.has_checkpoint()):
        os.makedirs(sub.path, exist_ok=True)
        resume = os.path.isfile(sub.checkpoint_path("last"))
        new_job = None if sub.has_job() else _half_job(folder, plan, half)
        overrides = None
        if sub.has_job():  # a device override on --resume reaches a half already written
            device = plan.job.get("device")
            if device is not None and sub.job().device != device:
                overrides = {"device": device}
        context = {"compare": {"half": i + 1, "halves": len(plan.halves), "seed": half.seed,
                               "method": half.method, "role": half.role,
                               "baseline": plan.baseline, "learned": plan.learned}}
        rc = run_worker(sub, resume=resume, quiet=stream is None, stream=errors,
                        overrides=overrides, new_job=new_job, cache_dir=folder.cache_dir,
                        also_stop=stopper, context=context)
        st = sub.status() or {}
        if rc != EXIT_OK or st.get("state") == "failed":
            why = st.get("last_error") or f"the worker exited {rc}"
            return "failed", rc or EXIT_FAILED, f"training failed: {why}"
        if st.get("state") == "stopped":
            return "stopped", EXIT_OK, (f"stopped at iteration {st.get('iteration')} of "
                                        f"{st.get('of')}; --resume continues it")
        if st.get("state") != "finished":
            return "failed", EXIT_FAILED, f"training ended in state {st.get('state')!r}"
    half.trained = True
    half.iterations = int(st.get("of") or half.iterations)
    half.seconds_per_iteration = _measured_seconds_per_iteration(sub)
    save_plan(folder.path, plan)
    return "trained", EXIT_OK, ""


def _measured_seconds_per_iteration(sub: RunFolder) -> Optional[float]:
    from ..run.events import Progress
    speeds = [e.speed for e in sub.read_events() if isinstance(e, Progress) and e.speed]
    return 1.0 / speeds[-1] if speeds and speeds[-1] > 0 else None


# ---------------------------------------------------------------------------- predictions

def _predict_half(folder: RunFolder, plan: ComparePlan, half: HalfPlan, stream,
                  stopper: Callable[[], bool]) -> None:
    """Segment the test split with the half's TEA and without TEA (once when its TEA is
    none), score every case, and record the results in the plan after each prediction."""
    from ..infer.predict import predict_cases
    from .trainer import dataset_and_splits
    sub = RunFolder(os.path.join(folder.path, half.folder))
    job = sub.job()
    tea = job.resolved().inference.tea
    dataset, splits = dataset_and_splits(job, sub.path)
    ids = list(splits["test"])
    images = [dataset.case(cid).images for cid in ids]
    refs = [dataset.case(cid).label for cid in ids]
    labels = _label_spec(dataset, refs)
    plans = [("tea", tea), ("none", "none")]
    for variant, mode in plans:
        if variant in half.results:
            continue
        same = next((half.results[v] for v, m in plans if v != variant and m == mode
                     and v in half.results), None)
        if same is not None:  # TEA none: the no-TEA label maps serve both rows
            half.results[variant] = VariantResult(same.tea, same.folder, dict(same.cases))
            save_plan(folder.path, plan)
            continue
        out = os.path.join(sub.path, prediction_folder_name(mode))
        _say(stream, f"comparison: {method_title(half.method)} (seed {half.seed}) segments "
                     f"{len(ids)} test case(s) with TEA {mode}")
        records = predict_cases(sub, images, out, tea=mode, device=job.device,
                                overwrite=True)  # what an interrupted attempt left is redone
        cases = {}
        for cid, rec, ref in zip(ids, records, refs):
            cases[cid] = {"prediction": folder.relative(rec["prediction"]),
                          "metrics": _score(rec["prediction"], ref, labels)}
        half.results[variant] = VariantResult(mode, folder.relative(out), cases)
        save_plan(folder.path, plan)


def _label_spec(dataset, refs: List[str]) -> Dict[str, List[int]]:
    """The labels scored: each foreground value (named as the dataset names it) found in the
    dataset's label table or in a test reference, and ``foreground`` (all of them) when there
    are several; the same for every half (it depends on the data only)."""
    import numpy as np
    import SimpleITK as sitk
    values = {int(v): str(name) for name, v in (dataset.labels or {}).items() if int(v) > 0}
    for ref in refs:
        for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(ref))):
            if int(v) > 0:
                values.setdefault(int(v), str(int(v)))
    ordered = sorted(values)
    if len(ordered) <= 1:
        return {"foreground": ordered or [1]}
    spec = {values[v]: [v] for v in ordered}
    spec["foreground"] = ordered
    return spec


def _score(pred_path: str, ref_path: str, labels: Dict[str, List[int]]) -> Dict[str, Dict]:
    """DSC, sensitivity, precision and HD95 per label of one case (evaluate/metrics.py)."""
    import SimpleITK as sitk
    from ..evaluate.metrics import case_metrics
    pred, ref = sitk.ReadImage(pred_path), sitk.ReadImage(ref_path)
    if pred.GetSize() != ref.GetSize():
        raise CompareError(f"{pred_path}: the label map's grid {pred.GetSize()} is not its "
                           f"reference's {ref.GetSize()} ({ref_path})")
    p = sitk.GetArrayFromImage(pred).astype("int64")
    r = sitk.GetArrayFromImage(ref).astype("int64")
    m = case_metrics(p, r, tuple(reversed(ref.GetSpacing())), labels)
    return {name: {k: m[name].get(k) for k in ("dsc", "sensitivity", "precision", "hd95")}
            for name in labels}


__all__ = ["run_compare", "RESUMABLE_OVERRIDES"]
