"""Compare with the heuristic: one folder holding paired runs, and what the panel reads of it.

``jcsaugment train ... --compare heuristic [--seeds N]`` trains, for each seed, the job twice --
heuristic TRA (mode ``heuristic``) and the chosen learned mode (``learned``, ``class-specific``
or ``joint``) -- on the same cases, splits, backbone, budget and seed, one after the other in one
worker process; after each half it segments the test split with the run's TEA and without TEA
and scores every case.  The orchestration is ``JCSAugmentLib/train/compare.py``; this module is
the folder's layout, its plan, the comparison record and the Qt-free readers::

    RUN/
      compare.json        the plan and its state (ComparePlan): baseline, learned mode, seeds,
                          the base job, per half its folder, whether it trained, its speed and
                          its per-case results; replaced atomically after every change
      comparison.json     the comparison record (Comparison), rewritten atomically after every
                          half's results (and when the run stops): what exists so far
      comparison.md       the same as readable tables (per case, means, paired differences)
      run.lock, stop      the comparison's worker lock and stop request (``jcsaugment stop RUN``)
      cache/              preprocessed cases, shared by every half (computed once)
      job.json            only when a GUI wrote one there as the input; never trained in RUN
      seed<k>/heuristic/  an ordinary run folder (job.json with mode heuristic, seed k;
                          events.jsonl, status.json, checkpoints/, policy.json, ...)
        predictions/compare-tea-heuristic/   test-split label maps with the half's TEA
        predictions/compare-tea-none/        ... and without TEA
      seed<k>/<learned>/  an ordinary run folder of the learned mode (predictions/compare-tea-
                          learned/ for joint, compare-tea-heuristic/ for the TRA-only modes)

Each half is a complete ordinary run folder: ``predict --run RUN/seed0/joint``, ``policy``,
``evaluate`` and the panel's monitor work on it unchanged.  The halves' jobs name the cases by
paths relative to their own folder (rebased from RUN), so the whole folder can move.

The panel needs three calls, none of which raises on a missing or half-written file:

* :func:`compare_status` -> :class:`CompareStatus` or None: which half to monitor now
  (``current_folder``, an ordinary run folder for the existing RunMonitor), every half's state,
  iteration and ETA (the running half's from its status.json; a pending half's estimated from the
  speed measured so far), and the total ETA.
* :func:`read_comparison` -> :class:`Comparison` or None: the metrics table (``cases``: per
  seed, case, method and TEA; ``means``; ``differences``: learned minus heuristic with a 95 %
  bootstrap interval and sign test, over test cases and, with several seeds, over seeds), the
  ``verdict`` sentence, and the label maps with display names (``label_maps``).
* :func:`is_comparison` -> whether a folder is a comparison (re-attaching).

Starting one: the panel writes RUN/job.json as for one run (the learned mode) and starts
``train RUN`` with :func:`compare_arguments` (``--compare heuristic --seeds N``); resume is
``train RUN --resume``; stop is RUN's stop file (``RunFolder(RUN).request_stop()``), and the
comparison's worker holds RUN/run.lock for its whole life (``CompareStatus.live``), while each
half's lock is held only while that half trains.

Imports neither torch nor numpy at import time (numpy only inside :func:`build_comparison`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .control import live_worker
from .folder import (COMPARE_FILE, COMPARE_PREDICTIONS_PREFIX, COMPARISON_FILE,
                     COMPARISON_MD_FILE, PREDICTIONS_DIR)
from .modes import MODE_TABLE
from .status import atomic_write_json, atomic_write_text, read_status

COMPARE_SCHEMA = 1
#: what ``--compare`` accepts: the method the learned mode is compared with
BASELINES = ("heuristic",)
#: the modes a comparison trains against the heuristic: those that learn TRA and train a model
LEARNED_MODES = tuple(m for m, s in MODE_TABLE.items() if s.learn_tra and s.train_model)
#: the two predictions of each half: with the run's own TEA, and without TEA
VARIANTS = ("tea", "none")
#: the per-case metrics kept (evaluate/metrics.py's definitions)
METRICS = ("dsc", "sensitivity", "precision", "hd95")
METRIC_TITLES = {"dsc": "DSC", "sensitivity": "SEN", "precision": "PRC", "hd95": "HD95 (mm)"}
#: plan states: what the comparison's worker was doing when it last wrote compare.json
PLAN_STATES = ("training", "predicting", "stopped", "failed", "finished")
#: a learned mode's cost per policy update relative to a plain (heuristic) step, for the ETA of
#: a half whose method has not run yet: measured on the 2-core CPU (README, threads table:
#: joint 0.474 s vs heuristic 0.136 s per step; method.md: the TRA meta step 3.1x); rough
LEARNED_STEP_COST = {"joint": 3.5, "learned": 3.1, "class-specific": 3.1}


class CompareError(ValueError):
    """A comparison folder or request that cannot go on as asked (one line, exit 2)."""


# ---------------------------------------------------------------------------- the plan

def half_folder_name(seed: int, method: str) -> str:
    """``seed<k>/<method>``: a half's run folder, relative to the comparison folder."""
    return f"seed{int(seed)}/{method}"


def prediction_folder_name(tea: str) -> str:
    """A half's prediction folder for TEA ``tea``, relative to the half's run folder."""
    return f"{PREDICTIONS_DIR}/{COMPARE_PREDICTIONS_PREFIX}{tea}"


@dataclass
class VariantResult:
    """One prediction of a half's test cases: the TEA used (``learned``, ``heuristic`` or
    ``none``), the label-map folder (relative to the comparison folder) and per case
    ``{"prediction": path relative to the comparison folder, "metrics": {label: {metric:
    value or None}}}``."""
    tea: str
    folder: str
    cases: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> Optional["VariantResult"]:
        if not isinstance(d, dict) or not isinstance(d.get("tea"), str):
            return None
        cases = d.get("cases") if isinstance(d.get("cases"), dict) else {}
        return cls(d["tea"], str(d.get("folder") or ""),
                   {str(k): v for k, v in cases.items() if isinstance(v, dict)})


@dataclass
class HalfPlan:
    """One half of a pair: its seed, method (a mode name), role (``baseline`` / ``learned``),
    folder (relative), total iterations, whether its training is done, the measured seconds per
    iteration, and its results per variant (``tea``, ``none``) once predicted and scored."""
    seed: int
    method: str
    role: str
    folder: str
    iterations: int
    trained: bool = False
    seconds_per_iteration: Optional[float] = None
    results: Dict[str, VariantResult] = field(default_factory=dict)

    @property
    def has_results(self) -> bool:
        return all(v in self.results for v in VARIANTS)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["results"] = {k: asdict(v) for k, v in self.results.items()}
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Optional["HalfPlan"]:
        try:
            results = {}
            for k, v in (d.get("results") or {}).items():
                r = VariantResult.from_dict(v)
                if r is not None and k in VARIANTS:
                    results[k] = r
            spi = d.get("seconds_per_iteration")
            half = cls(int(d["seed"]), str(d["method"]), str(d["role"]), str(d["folder"]),
                       int(d["iterations"]), d.get("trained") is True,
                       float(spi) if isinstance(spi, (int, float)) and spi > 0 else None,
                       results)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        # a half lives where its seed and method say, inside the comparison folder, nowhere else
        if half.method not in MODE_TABLE or half.folder != half_folder_name(half.seed,
                                                                            half.method):
            return None
        return half


@dataclass
class ComparePlan:
    """``compare.json``: what the comparison trains (``baseline`` vs ``learned`` over
    ``seeds``, the base ``job`` both halves derive from), its halves in training order
    (per seed: baseline first), which one is ``current`` and the ``state``
    (:data:`PLAN_STATES`), with ``message`` saying why it stopped or failed."""
    baseline: str
    learned: str
    seeds: List[int]
    job: Dict[str, Any]
    halves: List[HalfPlan]
    state: str = "training"
    current: Optional[int] = None
    message: Optional[str] = None
    policy_every: int = 1
    time_budget_minutes: Optional[float] = None
    created_at: float = field(default_factory=time.time)
    updated_at: Optional[float] = None
    schema: int = COMPARE_SCHEMA

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["halves"] = [h.to_dict() for h in self.halves]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ComparePlan":
        """Raises :class:`CompareError` naming what is wrong."""
        if not isinstance(d, dict):
            raise CompareError("expected a JSON object")
        if d.get("schema") != COMPARE_SCHEMA:
            raise CompareError(f"schema {d.get('schema')!r} is not {COMPARE_SCHEMA}")
        halves = [HalfPlan.from_dict(h) for h in d.get("halves") or []]
        if not halves or any(h is None for h in halves):
            raise CompareError("its halves are missing or damaged")
        try:
            plan = cls(str(d["baseline"]), str(d["learned"]), [int(s) for s in d["seeds"]],
                       dict(d["job"]), halves, str(d.get("state") or "training"),
                       d.get("current") if isinstance(d.get("current"), int) else None,
                       d.get("message") if isinstance(d.get("message"), str) else None,
                       int(d.get("policy_every") or 1),
                       float(d["time_budget_minutes"]) if isinstance(
                           d.get("time_budget_minutes"), (int, float)) else None,
                       float(d.get("created_at") or 0.0),
                       d.get("updated_at") if isinstance(d.get("updated_at"), (int, float))
                       else None)
        except (KeyError, TypeError, ValueError) as e:
            raise CompareError(f"a field is missing or damaged ({e})") from None
        if plan.baseline not in BASELINES or plan.learned not in LEARNED_MODES:
            raise CompareError(f"it compares {plan.learned!r} with {plan.baseline!r}, which "
                               f"this version does not do")
        return plan

    def half(self, seed: int, method: str) -> Optional[HalfPlan]:
        return next((h for h in self.halves if h.seed == seed and h.method == method), None)


def plan_halves(baseline: str, learned: str, seeds: Sequence[int],
                iterations: int) -> List[HalfPlan]:
    """The halves in training order: per seed the baseline, then the learned mode."""
    return [HalfPlan(s, m, role, half_folder_name(s, m), iterations)
            for s in seeds for m, role in ((baseline, "baseline"), (learned, "learned"))]


def compare_arguments(seeds: int = 1, baseline: str = "heuristic") -> List[str]:
    """The ``train`` options that start a comparison (for ``panel.worker_process.
    train_command(run_dir, extra_args=...)``): ``["--compare", "heuristic", "--seeds", "N"]``.
    Resuming needs none: ``train RUN --resume`` continues a comparison folder."""
    if baseline not in BASELINES:
        raise ValueError(f"compare with one of {', '.join(BASELINES)}, not {baseline!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a whole number >= 1, got {seeds!r}")
    return ["--compare", baseline, "--seeds", str(seeds)]


def compare_path(run_dir: str) -> str:
    return os.path.join(os.fspath(run_dir), COMPARE_FILE)


def is_comparison(run_dir: "str | os.PathLike") -> bool:
    """Whether ``run_dir`` is a comparison folder (holds compare.json)."""
    return os.path.isfile(compare_path(os.fspath(run_dir)))


def load_plan(run_dir: str) -> ComparePlan:
    """compare.json, checked (raises :class:`CompareError` naming the file)."""
    path = compare_path(run_dir)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{path} not found: {run_dir} is not a comparison folder") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CompareError(f"{path} is not readable JSON ({e})") from None
    try:
        return ComparePlan.from_dict(data)
    except CompareError as e:
        raise CompareError(f"{path}: {e}") from None


def read_plan(run_dir: str) -> Optional[ComparePlan]:
    """compare.json, or None when there is none or it is damaged (never raises)."""
    try:
        return load_plan(os.fspath(run_dir))
    except CompareError:
        return None


def save_plan(run_dir: str, plan: ComparePlan) -> None:
    plan.updated_at = time.time()
    atomic_write_json(compare_path(run_dir), plan.to_dict())


# ---------------------------------------------------------------------------- live status

@dataclass
class HalfStatus:
    """One half as the panel shows it.  ``state``: pending (not started), running, stopped,
    failed, trained (training done, not yet predicted), predicting, done (results scored).
    ``eta_seconds``: training time left (the running half's own ETA; a pending or stopped
    half's estimated from the speed measured so far, ``eta_estimated`` True); None when
    unknown, 0 when trained."""
    index: int
    seed: int
    method: str
    role: str
    folder: str  # absolute path of the half's ordinary run folder
    state: str
    iteration: Optional[int]
    of: int
    eta_seconds: Optional[float]
    eta_estimated: bool
    has_results: bool

    @property
    def title(self) -> str:
        return f"{method_title(self.method)} (seed {self.seed})"


@dataclass
class CompareStatus:
    """A comparison folder's state for the panel.  ``current_folder``: the half to monitor now
    (the running one; else the one that was running when it stopped; else the last one), an
    ordinary run folder.  ``live``: the comparison's worker holds RUN/run.lock.
    ``eta_seconds``: training time left over every half (None if any is unknown)."""
    run_dir: str
    state: str
    live: bool
    baseline: str
    learned: str
    seeds: List[int]
    current: Optional[int]
    current_folder: Optional[str]
    halves: List[HalfStatus]
    eta_seconds: Optional[float]
    message: Optional[str] = None

    @property
    def current_half(self) -> Optional[HalfStatus]:
        return None if self.current is None else self.halves[self.current]

    def describe(self) -> str:
        """One line: which half trains and both ETAs, e.g. "training half 1 of 2: heuristic
        TRA (seed 0) running ETA 0:03:10; joint learned TRA (seed 0) pending ETA ~0:11:05"
        (``~``: estimated from the other method's speed)."""
        parts = []
        for h in self.halves:
            eta = "unknown" if h.eta_seconds is None else _clock(h.eta_seconds)
            mark = "~" if h.eta_estimated and h.eta_seconds is not None else ""
            parts.append(f"{h.title} {h.state}" + ("" if h.state in ("done", "trained")
                                                  else f" ETA {mark}{eta}"))
        head = self.state if self.current is None else (
            f"{self.state} half {self.current + 1} of {len(self.halves)}")
        return f"{head}: " + "; ".join(parts)


def method_title(method: str) -> str:
    return {"heuristic": "heuristic TRA", "joint": "joint learned TRA",
            "learned": "learned TRA", "class-specific": "class-specific learned TRA"
            }.get(method, method)


def _clock(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def learned_cost_factor(method: str, policy_every: int) -> float:
    """Seconds per iteration of ``method`` relative to a heuristic step (1 for heuristic)."""
    r = LEARNED_STEP_COST.get(method)
    return 1.0 if r is None else 1.0 + (r - 1.0) / max(1, int(policy_every))


def compare_status(run_dir: "str | os.PathLike") -> Optional[CompareStatus]:
    """The comparison's live state (None when ``run_dir`` holds no readable compare.json)."""
    run_dir = os.path.abspath(os.fspath(run_dir))
    plan = read_plan(run_dir)
    if plan is None:
        return None
    live = live_worker(run_dir) is not None
    statuses = [read_status(os.path.join(run_dir, h.folder)) or {} for h in plan.halves]
    # seconds per iteration measured so far, per method
    speed: Dict[str, float] = {}
    for h, st in zip(plan.halves, statuses):
        if h.seconds_per_iteration:
            speed.setdefault(h.method, h.seconds_per_iteration)
        elif st.get("state") == "running" and _num(st.get("eta_seconds")) is not None:
            it, of = _int(st.get("iteration")), _int(st.get("of"))
            if it is not None and of and of > it:
                speed.setdefault(h.method, float(st["eta_seconds"]) / (of - it))

    def per_iteration(method: str) -> Tuple[Optional[float], bool]:
        if method in speed:
            return speed[method], False
        for other, s in speed.items():  # from the other method's speed and the cost ratio
            return (s * learned_cost_factor(method, plan.policy_every)
                    / learned_cost_factor(other, plan.policy_every)), True
        return None, True

    budget = None if plan.time_budget_minutes is None else plan.time_budget_minutes * 60
    halves: List[HalfStatus] = []
    for i, (h, st) in enumerate(zip(plan.halves, statuses)):
        sub = st.get("state")
        it, of = _int(st.get("iteration")), _int(st.get("of")) or h.iterations
        running = live and sub in ("starting", "running") and plan.current == i
        if h.has_results:
            state = "done"
        elif h.trained:
            state = "predicting" if live and plan.current == i and plan.state == "predicting" \
                else "trained"
        elif running:
            state = "running"
        elif sub in ("stopped", "failed"):
            state = sub
        elif sub in ("starting", "running"):  # its worker is gone (killed): resumable
            state = "stopped"
        else:
            state = "pending"
        eta, estimated = None, False
        if h.trained:
            eta = 0.0
        elif running and _num(st.get("eta_seconds")) is not None:
            eta = float(st["eta_seconds"])
        else:
            spi, estimated = per_iteration(h.method)
            if spi is not None:
                eta = spi * max(0, of - (it or 0))
                if budget is not None:
                    eta = min(eta, budget)
        halves.append(HalfStatus(i, h.seed, h.method, h.role, os.path.join(run_dir, h.folder),
                                 state, it, of, eta, estimated, h.has_results))
    current = plan.current
    if current is None or not 0 <= current < len(halves):
        started = [h.index for h in halves if h.state != "pending"]
        current = started[-1] if started else (0 if halves else None)
    etas = [h.eta_seconds for h in halves]
    total = None if any(e is None for e in etas) else float(sum(etas))
    state = plan.state
    if not live and state in ("training", "predicting"):
        state = "stopped"  # its worker is gone (killed): --resume continues
    return CompareStatus(run_dir, state, live, plan.baseline, plan.learned, list(plan.seeds),
                         current, None if current is None else halves[current].folder, halves,
                         total, plan.message)


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and \
        math.isfinite(v) else None


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# ---------------------------------------------------------------------------- the comparison

@dataclass
class CaseRow:
    """One test case segmented by one half: ``variant`` ``tea`` (with the half's TEA, named in
    ``tea``) or ``none``; ``metrics`` {label: {metric: value or None}}; ``prediction`` the
    label map (relative to the comparison folder) and ``name`` its display name."""
    seed: int
    case: str
    method: str
    variant: str
    tea: str
    metrics: Dict[str, Dict[str, Optional[float]]]
    prediction: Optional[str] = None
    name: str = ""


@dataclass
class MeanRow:
    """The mean of one metric of one label over every scored (seed, case) of a method and
    variant (None values, e.g. HD95 of an empty prediction, left out and counted)."""
    method: str
    variant: str
    tea: str
    label: str
    metric: str
    mean: Optional[float]
    n: int
    undefined: int


@dataclass
class DifferenceRow:
    """learned minus baseline for one variant, label and metric, paired ``over`` test
    ``cases`` (each seed's cases; n = seeds x cases) or ``seeds`` (each seed's mean over its
    cases): mean with its 95 % percentile-bootstrap interval, how many pairs went up / down,
    the exact two-sided sign test p; None values where no pair exists."""
    variant: str
    label: str
    metric: str
    over: str
    n: int
    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    up: int
    down: int
    ties: int
    p_sign: Optional[float]
    excludes_zero: bool
    baseline_mean: Optional[float]
    learned_mean: Optional[float]


@dataclass
class HalfSummary:
    """A half in the comparison: ``results`` False marks a half without results (and
    ``note`` says why: not trained yet, stopped at iteration i of n, failed)."""
    seed: int
    method: str
    role: str
    folder: str
    trained: bool
    results: bool
    note: str = ""


@dataclass
class Comparison:
    """``comparison.json``.  ``headline`` names the (variant, label, metric) the ``verdict``
    is about (foreground DSC with TEA); ``complete`` is True once every half has results."""
    baseline: str
    learned: str
    seeds: List[int]
    labels: List[str]
    halves: List[HalfSummary]
    cases: List[CaseRow]
    means: List[MeanRow]
    differences: List[DifferenceRow]
    verdict: str
    headline: Dict[str, str]
    complete: bool
    state: str = ""
    updated_at: float = field(default_factory=time.time)
    schema: int = COMPARE_SCHEMA

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Comparison":
        return cls(str(d["baseline"]), str(d["learned"]), [int(s) for s in d["seeds"]],
                   [str(x) for x in d["labels"]],
                   [HalfSummary(**h) for h in d["halves"]], [CaseRow(**r) for r in d["cases"]],
                   [MeanRow(**r) for r in d["means"]],
                   [DifferenceRow(**r) for r in d["differences"]], str(d["verdict"]),
                   dict(d["headline"]), bool(d["complete"]), str(d.get("state") or ""),
                   float(d.get("updated_at") or 0.0), int(d.get("schema") or COMPARE_SCHEMA))

    def mean(self, method: str, variant: str, label: str, metric: str) -> Optional[float]:
        return next((r.mean for r in self.means if (r.method, r.variant, r.label, r.metric)
                     == (method, variant, label, metric)), None)

    def difference(self, variant: str, label: str, metric: str,
                   over: str = "cases") -> Optional[DifferenceRow]:
        return next((r for r in self.differences if (r.variant, r.label, r.metric, r.over)
                     == (variant, label, metric, over)), None)

    @property
    def label_maps(self) -> List[Tuple[str, str]]:
        """(display name, label map path relative to the comparison folder) of every
        prediction, for the scene (one node per method, TEA and case)."""
        return [(r.name, r.prediction) for r in self.cases if r.prediction]


def variant_title(method: str, variant: str, tea: str) -> str:
    """"heuristic TRA + heuristic TEA", "joint learned TRA + TEA, no TEA", ..."""
    if variant == "none" or tea == "none":
        return f"{method_title(method)}, no TEA"
    return f"{method_title(method)} + {tea} TEA"


def _label_names(plan: ComparePlan) -> List[str]:
    names: List[str] = []
    for h in plan.halves:
        for v in h.results.values():
            for c in v.cases.values():
                for name in (c.get("metrics") or {}):
                    if name not in names:
                        names.append(name)
    return names


def _headline_label(labels: Sequence[str]) -> Optional[str]:
    return "foreground" if "foreground" in labels else (labels[0] if labels else None)


def build_comparison(plan: ComparePlan, notes: Optional[Dict[int, str]] = None,
                     resamples: int = 10000) -> Comparison:
    """The comparison record of what ``plan`` holds so far (halves without results are listed
    as such).  ``notes``: per half index, why it has no results (e.g. "stopped at iteration 3
    of 10")."""
    from ..evaluate.paired import paired_difference
    labels = _label_names(plan)
    rows: List[CaseRow] = []
    for h in plan.halves:
        for variant in VARIANTS:
            res = h.results.get(variant)
            if res is None:
                continue
            for cid, c in sorted(res.cases.items()):
                metrics = {lab: {m: _num((c.get("metrics") or {}).get(lab, {}).get(m))
                                 for m in METRICS} for lab in labels}
                rows.append(CaseRow(h.seed, cid, h.method, variant, res.tea, metrics,
                                    c.get("prediction"),
                                    f"{cid} {variant_title(h.method, variant, res.tea)} "
                                    f"(seed {h.seed})"))
    tea_of = {(r.method, r.variant): r.tea for r in rows}
    means: List[MeanRow] = []
    for method in (plan.baseline, plan.learned):
        for variant in VARIANTS:
            mine = [r for r in rows if r.method == method and r.variant == variant]
            if not mine:
                continue
            for lab in labels:
                for m in METRICS:
                    vals = [r.metrics[lab][m] for r in mine]
                    good = [v for v in vals if v is not None]
                    means.append(MeanRow(method, variant, tea_of[(method, variant)], lab, m,
                                         sum(good) / len(good) if good else None, len(good),
                                         len(vals) - len(good)))
    diffs: List[DifferenceRow] = []
    def pair_done(seed: int) -> bool:
        halves = (plan.half(seed, plan.baseline), plan.half(seed, plan.learned))
        return all(h is not None and h.has_results for h in halves)
    seeds_done = [s for s in plan.seeds if pair_done(s)]

    def index(method, variant):
        return {(r.seed, r.case): r for r in rows
                if r.method == method and r.variant == variant}

    for variant in VARIANTS:
        a, b = index(plan.baseline, variant), index(plan.learned, variant)
        keys = sorted(set(a) & set(b))
        if not keys:
            continue
        for lab in labels:
            for m in METRICS:
                xa = [a[k].metrics[lab][m] for k in keys]
                xb = [b[k].metrics[lab][m] for k in keys]
                diffs.append(_difference_row(variant, lab, m, "cases", xa, xb,
                                             paired_difference, resamples))
                if len(seeds_done) > 1:
                    sa = [_seed_mean(a, s, lab, m) for s in seeds_done]
                    sb = [_seed_mean(b, s, lab, m) for s in seeds_done]
                    diffs.append(_difference_row(variant, lab, m, "seeds", sa, sb,
                                                 paired_difference, resamples))
    halves = []
    for i, h in enumerate(plan.halves):
        note = (notes or {}).get(i) or ("" if h.has_results else
                                        ("trained, not yet predicted" if h.trained
                                         else "not trained yet"))
        halves.append(HalfSummary(h.seed, h.method, h.role, h.folder, h.trained,
                                  h.has_results, note))
    head_label = _headline_label(labels)
    headline = {"variant": "tea", "label": head_label or "", "metric": "dsc"}
    over = "seeds" if len(seeds_done) > 1 else "cases"
    head = next((d for d in diffs if (d.variant, d.label, d.metric, d.over)
                 == ("tea", head_label, "dsc", over)), None)
    verdict = _verdict(plan, head, len(seeds_done), tea_of)
    return Comparison(plan.baseline, plan.learned, list(plan.seeds), labels, halves, rows,
                      means, diffs, verdict, headline, all(h.has_results for h in plan.halves),
                      plan.state)


def _seed_mean(index: Dict, seed: int, lab: str, m: str) -> Optional[float]:
    vals = [r.metrics[lab][m] for (s, _c), r in index.items() if s == seed]
    good = [v for v in vals if v is not None]
    return sum(good) / len(good) if good else None


def _difference_row(variant, lab, m, over, xa, xb, paired_difference,
                    resamples) -> DifferenceRow:
    d = paired_difference(xa, xb, resamples=resamples)
    pairs = [(x, y) for x, y in zip(xa, xb) if x is not None and y is not None]
    ma = sum(x for x, _ in pairs) / len(pairs) if pairs else None
    mb = sum(y for _, y in pairs) / len(pairs) if pairs else None
    if d.n == 0:
        return DifferenceRow(variant, lab, m, over, 0, None, None, None, 0, 0, 0, None, False,
                             None, None)
    return DifferenceRow(variant, lab, m, over, d.n, d.mean, d.low, d.high, d.up, d.down,
                         d.ties, d.p_sign, d.excludes_zero, ma, mb)


def _verdict(plan: ComparePlan, d: Optional[DifferenceRow], n_seeds: int,
             tea_of: Dict) -> str:
    learned = variant_title(plan.learned, "tea", tea_of.get((plan.learned, "tea"), "?"))
    base = variant_title(plan.baseline, "tea", tea_of.get((plan.baseline, "tea"), "?"))
    if d is None or d.mean is None:
        missing = [f"{method_title(h.method)} (seed {h.seed})" for h in plan.halves
                   if not h.has_results]
        return ("no pair has both halves' results yet, so nothing is compared; without "
                "results: " + ", ".join(missing))
    what = f"{learned} minus {base}, {d.label} DSC: {d.mean:+.3f}"
    if d.n < 2:
        return (f"{what} from a single pair: one seed cannot tell noise from gain; run more "
                f"seeds (--seeds N) and more test cases")
    unit = "seeds" if d.over == "seeds" else ("test cases" if n_seeds == 1
                                             else "(seed, test case) pairs")
    ci = (f"95 % interval [{d.low:+.3f}, {d.high:+.3f}] over {d.n} {unit}, {d.up} up / "
          f"{d.down} down, sign test p = {d.p_sign:.3g}")
    if not d.excludes_zero:
        if n_seeds < 2:
            return (f"{what} ({ci}): the interval includes 0, so this is not distinguishable "
                    f"from noise; one seed cannot tell noise from gain; run more seeds "
                    f"(--seeds N)")
        return (f"{what} ({ci}): the interval includes 0, so this is not distinguishable "
                f"from noise at {n_seeds} seeds; run more seeds")
    side = "higher" if d.low > 0 else "lower"
    if n_seeds < 2:
        return (f"{what} ({ci}): {side} beyond the spread of the test cases, but one seed "
                f"cannot tell training noise from gain; run more seeds (--seeds N) to confirm")
    return f"{what} ({ci}): {side} than the heuristic beyond the noise of {n_seeds} seeds"


# ---------------------------------------------------------------------------- files

def comparison_path(run_dir: str) -> str:
    return os.path.join(os.fspath(run_dir), COMPARISON_FILE)


def comparison_md_path(run_dir: str) -> str:
    return os.path.join(os.fspath(run_dir), COMPARISON_MD_FILE)


def write_comparison(run_dir: str, comparison: Comparison) -> None:
    """comparison.json and comparison.md, each atomically (the table first: a reader that
    sees the new JSON finds the matching table)."""
    atomic_write_text(comparison_md_path(run_dir), comparison_markdown(comparison))
    atomic_write_json(comparison_path(run_dir), comparison.to_dict())


def read_comparison(run_dir: "str | os.PathLike") -> Optional[Comparison]:
    """comparison.json, or None when there is none yet or it is unreadable (never raises)."""
    try:
        with open(comparison_path(os.fspath(run_dir)), "rb") as f:
            return Comparison.from_dict(json.loads(f.read().decode("utf-8")))
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None


def _f(v: Optional[float], metric: str = "dsc", sign: bool = False) -> str:
    if v is None:
        return "n/a"
    digits = 2 if metric == "hd95" else 3
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def comparison_markdown(c: Comparison) -> str:
    """The comparison as Markdown: verdict, halves, means, paired differences, per case."""
    title = f"{method_title(c.learned)} vs {method_title(c.baseline)}"
    lines = [f"# Comparison: {title}", "",
             f"Seeds: {', '.join(map(str, c.seeds))}. Each seed trains both halves on the same "
             f"cases, splits, backbone and budget; both segment the test split with their TEA "
             f"and without TEA.", "", f"**Verdict.** {c.verdict}", "",
             "## Halves", "", "| seed | method | run folder | results |", "|---|---|---|---|"]
    for h in c.halves:
        lines.append(f"| {h.seed} | {method_title(h.method)} | `{h.folder}` | "
                     + ("yes" if h.results else f"no results: {h.note}") + " |")
    if c.means:
        lines += ["", "## Means over the test cases" + (" and seeds" if len(c.seeds) > 1
                                                        else ""), "",
                  "| method | label | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        groups: Dict[Tuple[str, str, str], Dict[str, MeanRow]] = {}
        for r in c.means:
            groups.setdefault((r.method, r.variant, r.label), {})[r.metric] = r
        for (method, variant, lab), by in groups.items():
            tea = next(iter(by.values())).tea
            lines.append(f"| {variant_title(method, variant, tea)} | {lab} | "
                         + " | ".join(_f(by[m].mean, m) if m in by else "n/a" for m in METRICS)
                         + " |")
    if c.differences:
        lines += ["", f"## Paired difference: {method_title(c.learned)} minus "
                      f"{method_title(c.baseline)} (95 % bootstrap interval, sign test; "
                      f"HD95: lower is better)", "",
                  "| TEA | label | metric | over | n | mean | 95 % interval | up/down | sign p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in c.differences:
            ci = "n/a" if d.low is None else f"[{_f(d.low, d.metric, True)}, " \
                                             f"{_f(d.high, d.metric, True)}]"
            p = "n/a" if d.p_sign is None else f"{d.p_sign:.3g}"
            lines.append(f"| {'with' if d.variant == 'tea' else 'without'} | {d.label} | "
                         f"{METRIC_TITLES[d.metric]} | {d.over} | {d.n} | "
                         f"{_f(d.mean, d.metric, True)} | {ci} | {d.up}/{d.down} | {p} |")
    if c.cases:
        lines += ["", "## Per case", "",
                  "| seed | case | method | label | " + " | ".join(
                      METRIC_TITLES[m] for m in METRICS) + " |",
                  "|---|---|---|---|" + "---|" * len(METRICS)]
        for r in c.cases:
            for lab in c.labels:
                lines.append(f"| {r.seed} | {r.case} | {variant_title(r.method, r.variant, r.tea)}"
                             f" | {lab} | " + " | ".join(_f(r.metrics[lab][m], m)
                                                        for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["COMPARE_SCHEMA", "BASELINES", "LEARNED_MODES", "VARIANTS", "METRICS",
           "CompareError", "VariantResult", "HalfPlan", "ComparePlan", "HalfStatus",
           "CompareStatus", "CaseRow", "MeanRow", "DifferenceRow", "HalfSummary", "Comparison",
           "half_folder_name", "prediction_folder_name", "plan_halves", "is_comparison",
           "compare_arguments",
           "load_plan", "read_plan", "save_plan", "compare_status", "build_comparison",
           "write_comparison", "read_comparison", "comparison_markdown", "method_title",
           "variant_title", "learned_cost_factor"]
