"""The panel's timer decisions, without Qt: what to poll, when to redraw the policies, when a
job has ended, when the panel is busy and whether the timer keeps running.

The widget (JCSAugment/JCSAugment.py) describes one tick as a :class:`TickFacts` (what it
knows: the run's view state, which processes it started are still alive, what is pending) and
performs the :class:`TickActions` that :func:`decide` returns. Everything here is a pure
function of its inputs, so each rule is a unit test (Testing/Python/test_panel_controller.py).

The rule that matters most: **the timer runs while any process this panel started is alive or
stopping**, not only while the run's events say it is busy. A worker that has written its
``finished`` event can still hang in interpreter teardown (or its launcher can), holding the GPU
and the run folder; the panel then stops it (stop request, SIGTERM, SIGKILL, each after a
timeout) and says so, and offers no second start while it lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: run states after which no more events are expected
FINAL_STATES = ("idle", "done", "stopped", "failed")


@dataclass(frozen=True)
class TickFacts:
    """What the widget knows at one timer tick."""

    now: float
    view_state: Optional[str] = None  #: the run's ViewState.state, None: nothing attached
    view_busy: bool = False  #: ViewState.busy (starting, running, stopping, importing)
    catching_up: bool = False  #: the monitor has more old events to read
    training_alive: bool = False  #: the training process tree this panel started is alive
    comparison_live: bool = False  #: it trains a comparison that has halves left: a half's
    #: end is not the process's end (JCSAugmentLib.run.compare)
    stop_phase: Optional[str] = None  #: WorkerProcess.stop_phase of that process
    final_since: Optional[float] = None  #: ``now`` when the run was first seen ended while
    #: its process lived (None: not so)
    exit_grace_s: float = 10.0  #: how long an ended run's process may take to exit by itself
    foreign_stop_since: Optional[float] = None  #: ``now`` when Stop was asked of a run this
    #: panel re-attached to (its process was started elsewhere: no WorkerProcess to drive)
    foreign_signalled: Optional[str] = None  #: None, "term" or "kill": sent to it so far
    stop_timeout_s: float = 30.0  #: stop request -> SIGTERM
    term_grace_s: float = 10.0  #: SIGTERM -> SIGKILL
    prediction_pending: bool = False  #: a prediction job exists (not yet imported)
    prediction_alive: bool = False  #: its process tree is alive
    pictures_alive: bool = False  #: a policy-picture job is running
    gallery_pending: bool = False  #: a gallery job exists (its picture not yet shown)
    gallery_alive: bool = False  #: its process tree is alive
    scene_work_pending: bool = False  #: results still to show or load into the scene (a
    #: comparison's table and label maps, one piece per tick)
    probe_pending: bool = False  #: the device probe has not answered
    policy_dirty: bool = False  #: the policy changed since the last redraw
    policy_available: bool = False  #: the run has a policy to draw
    last_policy_draw: float = 0.0  #: ``now`` of the last redraw
    policy_interval_s: float = 2.0  #: the least time between two redraws


@dataclass(frozen=True)
class TickActions:
    """What the widget does at this tick, in this order."""

    drive_stop: bool = False  #: call WorkerProcess.poll_stop() (a stop is under way)
    stop_lingering: bool = False  #: the run ended exit_grace_s ago, its process lives: stop it
    ended_alive: bool = False  #: the run has ended and its process lives (start the clock)
    signal_foreign: Optional[str] = None  #: "term" / "kill": signal the re-attached worker
    finish_prediction: bool = False  #: the prediction process has ended: import its results
    finish_gallery: bool = False  #: the gallery process has ended: show its picture
    redraw_policies: bool = False  #: redraw the policy pictures now
    keep_timer: bool = True  #: keep the timer running after this tick
    processes_alive: bool = False  #: a process this panel started is alive (no new start)


def processes_alive(f: TickFacts) -> bool:
    """A process this panel started is alive (training, prediction, pictures, gallery,
    probe)."""
    return (f.training_alive or f.prediction_alive or f.pictures_alive or f.gallery_alive
            or f.probe_pending)


def decide(f: TickFacts) -> TickActions:
    """The actions for one tick (see the module docstring)."""
    stopping = f.stop_phase not in (None, "done")
    ended_alive = (f.training_alive and not stopping and f.view_state in FINAL_STATES
                   and not f.catching_up and not f.comparison_live)
    # a normal exit takes a moment after the last event (teardown): only then is it hung
    lingering = ended_alive and f.final_since is not None \
        and f.now - f.final_since >= f.exit_grace_s
    finish = f.prediction_pending and not f.prediction_alive
    redraw = (f.policy_dirty and f.policy_available and not f.pictures_alive
              and f.now - f.last_policy_draw >= f.policy_interval_s)
    waiting_to_redraw = f.policy_dirty and f.policy_available
    alive = processes_alive(f)
    signal = None
    if f.foreign_stop_since is not None and f.view_busy:
        elapsed = f.now - f.foreign_stop_since
        if f.foreign_signalled is None and elapsed >= f.stop_timeout_s:
            signal = "term"
        elif f.foreign_signalled == "term" and elapsed >= f.stop_timeout_s + f.term_grace_s:
            signal = "kill"
    keep = (f.view_busy or f.catching_up or alive or stopping or ended_alive
            or f.prediction_pending or f.gallery_pending or f.scene_work_pending
            or waiting_to_redraw)
    return TickActions(drive_stop=stopping and f.training_alive, stop_lingering=lingering,
                       ended_alive=ended_alive, signal_foreign=signal,
                       finish_prediction=finish,
                       finish_gallery=f.gallery_pending and not f.gallery_alive,
                       redraw_policies=redraw, keep_timer=keep,
                       processes_alive=alive)


def lingering_message(grace_s: float, term_grace_s: float) -> str:
    return (f"The run has ended but its worker process had not exited {grace_s:.0f} s later: it "
            f"is terminated now (killed if still alive {term_grace_s:.0f} s later).")


def stop_outcome_message(forced: Optional[str], timeout_s: float) -> Optional[str]:
    """What the panel says once a stop it drove is complete (None: the worker exited by
    itself)."""
    if forced == "terminate":
        return (f"The worker did not exit within {timeout_s:.0f} s of the stop request and was "
                f"terminated (SIGTERM); its last checkpoint is kept.")
    if forced in ("kill", "user-kill"):
        return ("The worker did not exit and was killed (SIGKILL); its last checkpoint is "
                "kept.")
    return None
