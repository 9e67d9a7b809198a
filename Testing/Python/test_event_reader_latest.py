"""EventReader.poll_latest: the fast catch-up on a long events log (a monitor re-attaching).

It must give what a full read gives, except the policy / preview events that a later one of
the same kind replaces, whatever the budget, block size or where the caller stops; and keep
the reader's own bookkeeping (offset, head, restarts) so the ordinary polls continue from it.
"""

import json
import os

from JCSAugmentLib.run.events import (EventReader, EventWriter, PolicyUpdate, PreviewWritten,
                                      Progress, WarningEvent)

THINNED = ("policy", "preview")
# JSON escapes the quotes inside a string: this message must never be taken for a policy line
TRICKY = 'looks like "kind":"policy","seq": but is a warning'


def write_log(run, n=2000, policy_every=1):
    """A log well over EventReader.LATEST_MIN_BACKLOG: progress, policies (large, as the
    trainer's), previews, validations and warnings."""
    tra = {"background": [[0.2] * 5] * 15, "foreground": [[0.2] * 5] * 15}
    with EventWriter(run, fsync=False) as w:
        w.started({"schema": 1}, {"device": "cpu"})
        for i in range(1, n + 1):
            w.progress(0, i, n, {"train": 1.0 / i}, 2.0)
            if i % policy_every == 0:
                w.policy(i, tra, [1.0 / 84] * 84)
            if i % 50 == 0:
                w.preview(i, {"png": "previews/preview_latest.png"})
                w.validation(i // 50, {"dice_foreground": i / n})
            if i % 300 == 0:
                w.warning(TRICKY if i == 600 else f"note {i}")
    size = os.path.getsize(os.path.join(run, "events.jsonl"))
    assert size > 2 * EventReader.LATEST_MIN_BACKLOG
    return size


def seqs(events, kinds=None):
    return [e.seq for e in events if kinds is None or e.kind in kinds]


def kept_kinds(events):
    return [e for e in events if e.kind not in THINNED]


def test_a_catch_up_gives_the_full_read_but_for_the_replaced_policies(tmp_path):
    run = str(tmp_path)
    size = write_log(run)
    full = EventReader(run).poll_events()
    r = EventReader(run)
    fast = list(r.poll_latest(THINNED))
    assert size - r.offset < EventReader.LATEST_MIN_BACKLOG
    fast += r.poll_events()  # the short rest, through the tolerant path
    assert r.offset == size and r.invalid_lines == 0 and r.unknown_kinds == 0
    assert seqs(kept_kinds(fast)) == seqs(kept_kinds(full))  # nothing else lost or doubled
    assert seqs(fast) == sorted(set(seqs(fast)))  # in file order
    assert set(seqs(fast)) < set(seqs(full))
    assert len(seqs(fast, ["policy"])) < len(seqs(full, ["policy"])) / 100  # the speed-up
    for cls in (PolicyUpdate, PreviewWritten):  # the latest of each kind is there, typed
        latest = [e for e in full if isinstance(e, cls)][-1]
        assert [e for e in fast if isinstance(e, cls)][-1] == latest
    assert TRICKY in [e.message for e in fast if isinstance(e, WarningEvent)]
    assert all(isinstance(e, Progress) for e in fast if e.kind == "progress")
    assert r.poll_events() == [] and list(r.poll_latest()) == []  # nothing new: nothing read


def test_a_budget_spreads_the_catch_up_and_always_holds_the_latest_read(tmp_path):
    run = str(tmp_path)
    size = write_log(run)
    full = EventReader(run).poll_events()
    # where each line ends, to know which policy is the latest before an offset
    ends, pos = [], 0
    with open(os.path.join(run, "events.jsonl"), "rb") as f:
        for line in f:
            pos += len(line)
            ends.append((pos, json.loads(line)))
    r = EventReader(run)
    got, calls = [], 0
    while True:
        before = r.offset
        got += list(r.poll_latest(THINNED, budget_s=0.0, block_bytes=16 * 1024))
        calls += 1
        if r.offset == before:
            break
        passed = [d["seq"] for end, d in ends if end <= r.offset and d["kind"] == "policy"]
        assert max(seqs(got, ["policy"]), default=None) == (passed[-1] if passed else None), \
            "the latest policy read past is held"
    got += r.poll_events()
    assert calls > 10 and r.offset == size
    assert seqs(kept_kinds(got)) == seqs(kept_kinds(full))
    assert len(seqs(got)) == len(set(seqs(got)))


def test_a_caller_that_stops_early_loses_no_event_it_needs(tmp_path):
    run = str(tmp_path)
    write_log(run)
    full = EventReader(run).poll_events()
    r = EventReader(run)
    got = []
    for k, ev in enumerate(r.poll_latest(THINNED)):
        got.append(ev)
        if k == 500:
            break
    got += list(r.poll_latest(THINNED)) + r.poll_events()
    assert seqs(kept_kinds(got)) == seqs(kept_kinds(full))
    assert got[-1] == full[-1] or seqs(got, ["policy"])[-1] == seqs(full, ["policy"])[-1]


def test_a_short_backlog_is_left_to_poll_events(tmp_path):
    run = str(tmp_path)
    with EventWriter(run, fsync=False) as w:
        for i in range(20):
            w.policy(i, {}, None)
    r = EventReader(run)
    assert list(r.poll_latest(THINNED)) == [] and r.offset == 0
    assert len(r.poll_events()) == 20


def test_a_replaced_log_is_read_again_from_its_start(tmp_path):
    run = str(tmp_path)
    write_log(run, n=1500)
    r = EventReader(run)
    list(r.poll_latest(THINNED))
    r.poll_events()
    os.remove(os.path.join(run, "events.jsonl"))  # a new run in the same folder
    write_log(run, n=1800)
    fresh = list(r.poll_latest(THINNED)) + r.poll_events()
    assert r.restarts == 1 and fresh[0].kind == "started" and fresh[0].seq == 1
    assert [e.iteration for e in fresh if e.kind == "progress"][-1] == 1800


def test_wrong_typed_fields_read_as_their_defaults(tmp_path):
    run = str(tmp_path)
    good = {"t": 1.0, "kind": "progress", "seq": 1, "epoch": 0, "iteration": 1, "of": 9,
            "losses": {"train": 0.5}, "speed": 1.0}
    bad = {"t": "noon", "kind": "progress", "seq": 2, "epoch": "one", "iteration": "two",
           "of": [9], "losses": [0.5], "speed": "fast"}
    with open(os.path.join(run, "events.jsonl"), "w") as f:
        for i in range(EventReader.LATEST_MIN_BACKLOG // 100):
            f.write(json.dumps(dict(good, seq=3 + i, iteration=3 + i)) + "\n")
        f.write(json.dumps(bad) + "\n")
    r = EventReader(run)
    evs = list(r.poll_latest(THINNED)) + r.poll_events()
    last = evs[-1]
    assert isinstance(last, Progress) and last.seq == 2
    assert (last.t, last.epoch, last.iteration, last.of, last.losses, last.speed) == (
        None, None, None, None, {}, None)
