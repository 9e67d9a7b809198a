"""The panel's timer decisions (JCSAugmentLib/panel/controller.py), without Qt."""

from JCSAugmentLib.panel.controller import (TickFacts, decide, lingering_message,
                                            stop_outcome_message)


def test_nothing_attached_stops_the_timer():
    a = decide(TickFacts(now=0.0))
    assert not a.keep_timer and not a.processes_alive and not a.stop_lingering


def test_running_run_keeps_polling():
    a = decide(TickFacts(now=0.0, view_state="running", view_busy=True, training_alive=True))
    assert a.keep_timer and a.processes_alive and not a.stop_lingering and not a.drive_stop


def test_ended_run_whose_process_lives_is_stopped_and_polled():
    """The hung-worker case: events say done/stopped, the process tree is alive."""
    for state in ("done", "stopped", "failed"):
        # just ended: a normal exit takes a moment; the clock starts, the timer keeps going
        a = decide(TickFacts(now=0.0, view_state=state, training_alive=True))
        assert a.ended_alive and not a.stop_lingering and a.keep_timer, state
        a = decide(TickFacts(now=5.0, view_state=state, training_alive=True, final_since=0.0,
                             exit_grace_s=10.0))
        assert not a.stop_lingering and a.keep_timer, state
        a = decide(TickFacts(now=10.0, view_state=state, training_alive=True, final_since=0.0,
                             exit_grace_s=10.0))
        assert a.stop_lingering and a.keep_timer and a.processes_alive, state
    # not while the monitor still reads old events (the final state may not be final yet)
    assert not decide(TickFacts(now=20.0, view_state="done", training_alive=True,
                                final_since=0.0, catching_up=True)).stop_lingering


def test_stop_under_way_is_driven_until_the_tree_is_gone():
    for phase in ("requested", "terminating", "killing"):
        a = decide(TickFacts(now=0.0, view_state="stopped", training_alive=True,
                             stop_phase=phase))
        assert a.drive_stop and a.keep_timer and not a.stop_lingering, phase
    a = decide(TickFacts(now=0.0, view_state="stopped", training_alive=False, stop_phase="done"))
    assert not a.drive_stop and not a.keep_timer


def test_prediction_finishes_once_its_process_ended():
    a = decide(TickFacts(now=0.0, view_state="importing", view_busy=True,
                         prediction_pending=True, prediction_alive=True))
    assert not a.finish_prediction and a.keep_timer
    a = decide(TickFacts(now=0.0, view_state="importing", view_busy=True,
                         prediction_pending=True, prediction_alive=False))
    assert a.finish_prediction and a.keep_timer


def test_a_comparisons_finished_half_is_no_ended_run():
    """Between the halves of a comparison the half just monitored has finished while the
    worker goes on with the next: never stop it as a lingering process."""
    facts = dict(now=100.0, view_state="done", training_alive=True, final_since=0.0)
    assert decide(TickFacts(**facts)).stop_lingering
    a = decide(TickFacts(**facts, comparison_live=True))
    assert not a.stop_lingering and not a.ended_alive and a.keep_timer
    # the comparison has ended: its table and label maps still keep the timer
    assert decide(TickFacts(now=0.0, view_state="done", scene_work_pending=True)).keep_timer


def test_gallery_is_shown_once_its_process_ended_also_on_a_finished_run():
    a = decide(TickFacts(now=0.0, view_state="done", gallery_pending=True, gallery_alive=True))
    assert not a.finish_gallery and a.keep_timer and a.processes_alive
    a = decide(TickFacts(now=0.0, view_state="done", gallery_pending=True))
    assert a.finish_gallery and a.keep_timer and not a.processes_alive
    a = decide(TickFacts(now=0.0, view_state="done"))
    assert not a.finish_gallery and not a.keep_timer


def test_policy_redraw_is_rate_limited_and_waits_for_a_running_drawing():
    base = dict(view_state="running", view_busy=True, training_alive=True, policy_dirty=True,
                policy_available=True, policy_interval_s=2.0)
    assert decide(TickFacts(now=10.0, last_policy_draw=7.0, **base)).redraw_policies
    assert not decide(TickFacts(now=10.0, last_policy_draw=9.0, **base)).redraw_policies
    assert not decide(TickFacts(now=10.0, last_policy_draw=0.0, pictures_alive=True,
                                **base)).redraw_policies
    # a finished run with a pending redraw keeps the timer until it is drawn
    a = decide(TickFacts(now=10.0, last_policy_draw=9.0, view_state="done", policy_dirty=True,
                         policy_available=True, policy_interval_s=2.0))
    assert a.keep_timer and not a.redraw_policies
    assert decide(TickFacts(now=12.0, last_policy_draw=9.0, view_state="done",
                            policy_dirty=True, policy_available=True,
                            policy_interval_s=2.0)).redraw_policies


def test_probe_or_pictures_alone_keep_the_timer():
    assert decide(TickFacts(now=0.0, probe_pending=True)).keep_timer
    assert decide(TickFacts(now=0.0, pictures_alive=True)).processes_alive


def test_messages_say_what_happened():
    assert "10 s later" in lingering_message(10.0, 5.0)
    assert "SIGTERM" in stop_outcome_message("terminate", 5.0)
    assert "killed" in stop_outcome_message("kill", 5.0)
    assert stop_outcome_message(None, 5.0) is None


def test_reattached_run_stop_escalates_to_term_then_kill():
    base = dict(view_state="stopping", view_busy=True, foreign_stop_since=0.0,
                stop_timeout_s=30.0, term_grace_s=10.0)
    assert decide(TickFacts(now=29.0, **base)).signal_foreign is None
    assert decide(TickFacts(now=30.0, **base)).signal_foreign == "term"
    assert decide(TickFacts(now=35.0, foreign_signalled="term", **base)).signal_foreign is None
    assert decide(TickFacts(now=40.0, foreign_signalled="term", **base)).signal_foreign == "kill"
    assert decide(TickFacts(now=99.0, foreign_signalled="kill", **base)).signal_foreign is None
    # the run ended by itself: nothing to signal
    ended = dict(base, view_state="stopped", view_busy=False)
    assert decide(TickFacts(now=99.0, **ended)).signal_foreign is None
