"""The run-folder protocol: job.json, events.jsonl, status.json, checkpoints, stop and lock.

All on CPU, in temporary folders, in seconds.
"""

import copy
import errno
import json
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from JCSAugmentLib.run import checkpoint as ckpt
from JCSAugmentLib.run import control, events, job as jobmod, status as statusmod
from JCSAugmentLib.run import (CheckpointError, EventReader, EventWriter, Job, JobError, RunLock,
                               RunLockError, RunFolderError, check_writable, clear_stop,
                               load_checkpoint, load_job, pack_rng_states, read_events,
                               read_status, request_stop, save_checkpoint, save_job,
                               stop_requested, unpack_rng_states, update_status, write_status)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASE = {"schema": 1, "data": {"dataset": "data/task"}}
CASES = [{"id": c, "images": [f"{c}_t1.nrrd", f"{c}_t2.nrrd"], "label": f"{c}_seg.nrrd"}
         for c in ("a", "b", "c", "d")]


def _job(**sections):
    d = copy.deepcopy(BASE)
    for k, v in sections.items():
        d[k] = v
    return d


def _leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


# ============================================================================= job.json

def test_job_defaults_are_the_reference_defaults():
    j = Job.from_dict(BASE)
    t = j.training
    assert (j.schema, j.model.backbone, t.mode, j.device, j.seed) == (
        1, "unet3d", "joint", "auto", 0)
    assert (t.lr, t.momentum, t.nesterov, t.weight_decay, t.grad_clip) == (
        1e-2, 0.99, True, 3e-5, 12.0)
    assert (t.tea_copies, t.policy_every, t.meta_grad, t.fg_fraction) == (10, 1, "exact", 0.5)
    assert j.time_budget_minutes is None and j.data.normalisation == "auto"
    r = j.resolved()
    assert r.model.patch_size == [64, 64, 64] and r.training.init == "nnunet"
    assert r.training.policy_lr == 5e-4 and r.training.tea_lr == 5e-5
    assert r.inference.tea == "learned" and r.inference.tea_top_z == 8
    dm = j.with_overrides({"model.backbone": "deepmedic", "training.mode": "class-specific"})
    r = dm.resolved()
    assert r.model.patch_size == [21, 21, 21] and r.training.init == "deepmedic"
    assert r.training.policy_lr == 1e-3 and r.inference.tea == "heuristic"
    assert r.inference.tea_top_z == 4
    tea = j.with_overrides({"training.mode": "tea-only", "training.pretrained": "m.pt"})
    assert tea.resolved().training.tea_lr == 5e-3
    # explicit values win over the backbone's defaults
    assert j.with_overrides({"training.policy_lr": 1e-4}).resolved().training.policy_lr == 1e-4
    assert j.total_iterations == 100 * 100


def test_job_round_trip_through_the_run_folder(tmp_path):
    d = _job(data={"cases": CASES, "splits": {"train": ["a", "b"], "validation": ["c"],
                                              "test": ["d"]}, "target_spacing": [3, 1.5, 1.5]},
             model={"backbone": "unet3d", "patch_size": [32, 48, 48], "base_features": 16,
                    "deep_supervision": False},
             training={"mode": "class-specific", "epochs": 3, "lr": 1, "val_loss": "dice"},
             device="cuda:1", seed=7, time_budget_minutes=30)
    j = Job.from_dict(d)
    assert j.data.cases[0].images == ["a_t1.nrrd", "a_t2.nrrd"] and j.data.cases[0].roi is None
    assert j.training.lr == 1.0 and isinstance(j.training.lr, float)
    assert j.data.target_spacing == [3.0, 1.5, 1.5]
    assert Job.from_dict(j.to_dict()) == j
    assert json.loads(json.dumps(j.to_dict())) == j.to_dict()
    path = save_job(str(tmp_path), j)
    assert path == str(tmp_path / "job.json") and _leftovers(str(tmp_path)) == []
    on_disk = json.loads((tmp_path / "job.json").read_text())
    assert on_disk["schema"] == 1 and on_disk["training"]["mode"] == "class-specific"
    assert load_job(str(tmp_path)) == j
    assert load_job(path) == j  # the file itself works too
    # splits missing keys mean empty
    j2 = Job.from_dict(_job(data={"cases": CASES, "splits": {"train": ["a"], "validation": ["b"]}}))
    assert j2.data.splits == {"train": ["a"], "validation": ["b"], "test": []}


def test_unlabelled_cases_are_allowed_only_in_test():
    cases = copy.deepcopy(CASES)
    cases[3]["label"] = None
    ok = Job.from_dict(_job(data={"cases": cases, "splits": {"train": ["a"], "validation": ["b"],
                                                             "test": ["c", "d"]}}))
    assert ok.data.cases[3].label is None
    with pytest.raises(JobError) as e:
        Job.from_dict(_job(data={"cases": cases, "splits": {"train": ["a", "d"],
                                                            "validation": ["b"]}}))
    assert e.value.field == "data.cases[3].label" and "train split but has no label" in str(e.value)
    with pytest.raises(JobError) as e:
        Job.from_dict(_job(data={"cases": cases}))
    assert e.value.field == "data.cases[3].label"


def _cases_with(**changes):
    cases = copy.deepcopy(CASES)
    for k, v in changes.items():
        i, key = k.split("_", 1)
        if v is _DELETE:
            del cases[int(i)][key]
        else:
            cases[int(i)][key] = v
    return cases


_DELETE = object()

# (change to the base job, field named, words in the message)
JOB_ERRORS = [
    ({"schema": 0}, "schema", "positive integer schema version"),
    ({"schema": "1"}, "schema", "got \"1\" (string)"),
    ({"epochs": 3}, "epochs", "belongs in training.epochs"),
    ({"trainig": {}}, "trainig", "did you mean 'training'"),
    ({"training": {"epoch": 3}}, "training.epoch", "did you mean 'training.epochs'"),
    ({"training": {"bath_size": 3, "lr_x": 1}}, "training.bath_size",
     "unknown keys in training: 'training.bath_size' (did you mean 'training.batch_size'?), "
     "'training.lr_x'"),
    ({"model": {"features": 3}}, "model.features", "unknown key in model"),
    ({"training": {"mode": "jiont"}}, "training.mode", "unknown mode 'jiont'; choose one of none"),
    ({"training": {"mode": "jiont"}}, "training.mode", "did you mean 'joint'"),
    ({"training": {"mode": 3}}, "training.mode", "expected a string"),
    ({"model": {"backbone": "unet"}}, "model.backbone", "unknown backbone 'unet'"),
    ({"model": {"backbone": "unet"}}, "model.backbone", "did you mean 'unet3d'"),
    ({"training": {"init": "nnUnet"}}, "training.init", "unknown initial policy"),
    ({"training": {"meta_grad": "fd"}}, "training.meta_grad", "exact, finite-difference"),
    ({"training": {"val_loss": "bce"}}, "training.val_loss", "unknown validation loss"),
    ({"model": {"patch_size": [64, 64]}}, "model.patch_size", "3 positive integers"),
    ({"model": {"patch_size": [64, 0, 64]}}, "model.patch_size", "3 positive integers"),
    ({"model": {"patch_size": [64, 64.5, 64]}}, "model.patch_size", "3 positive integers"),
    ({"model": {"patch_size": "64"}}, "model.patch_size", "3 positive integers"),
    ({"model": {"patch_size": [64, True, 64]}}, "model.patch_size", "3 positive integers"),
    ({"model": {"deep_supervision": 1}}, "model.deep_supervision", "expected true or false"),
    ({"training": {"epochs": "10"}}, "training.epochs", "expected an integer, got \"10\" (string)"),
    ({"training": {"epochs": 2.5}}, "training.epochs", "expected an integer"),
    ({"training": {"epochs": True}}, "training.epochs", "got true (boolean)"),
    ({"training": {"epochs": None}}, "training.epochs", "must not be null"),
    ({"training": {"epochs": 0}}, "training.epochs", "0 is out of range: must be in [1, "),
    ({"training": {"batch_size": 200000}}, "training.batch_size",
     "200000 is out of range: must be in [1, 1024]"),
    ({"training": {"batch_size": -2}}, "training.batch_size", "out of range"),
    ({"training": {"lr": 0}}, "training.lr", "must be > 0"),
    ({"training": {"lr": float("nan")}}, "training.lr", "finite"),
    ({"training": {"momentum": 1.0}}, "training.momentum", "must be in [0, 1)"),
    ({"training": {"fg_fraction": 1.5}}, "training.fg_fraction", "must be in [0, 1]"),
    ({"training": {"weight_decay": -1e-5}}, "training.weight_decay", "must be >= 0"),
    ({"training": {"grad_clip": 0}}, "training.grad_clip", "null turns clipping off"),
    ({"training": {"momentum": 0.0}}, "training.nesterov", "needs momentum > 0"),
    ({"training": {"mode": "tea-only"}}, "training.pretrained", "trained model"),
    ({"device": "gpu"}, "device", "unknown device"),
    ({"device": "cuda:x"}, "device", "'cuda:N'"),
    ({"seed": -1}, "seed", "out of range"),
    ({"time_budget_minutes": 0}, "time_budget_minutes", "must be > 0"),
    ({"inference": {"tea": "learned"}, "training": {"mode": "heuristic"}}, "inference.tea",
     "needs a mode that learns it"),
    ({"inference": {"predict": ["tset"]}}, "inference.predict", "did you mean 'test'"),
    ({"data": {}}, "data", "no data"),
    ({"data": {"dataset": "x", "cases": CASES}}, "data", "not both"),
    ({"data": {"dataset": ""}}, "data.dataset", "empty path"),
    ({"data": {"dataset": "x", "target_spacing": [1, 1]}}, "data.target_spacing",
     "3 positive numbers"),
    ({"data": {"dataset": "x", "normalisation": "z"}}, "data.normalisation", "unknown normal"),
    ({"data": {"dataset": "x", "split_fractions": {"train": 0.5, "validation": 0.1}}},
     "data.split_fractions", "add up to 0.6, not 1"),
    ({"data": {"dataset": "x", "split_fractions": {"train": 1.0}}},
     "data.split_fractions.validation", "learns its policies on validation data"),
    ({"data": {"cases": []}}, "data.cases", "at least one case"),
    ({"data": {"cases": _cases_with(**{"1_id": "a"})}}, "data.cases[1].id",
     "case 'a' is listed twice (also data.cases[0])"),
    ({"data": {"cases": _cases_with(**{"0_images": "a.nrrd"})}}, "data.cases[0].images",
     "expected an array of image paths"),
    ({"data": {"cases": _cases_with(**{"2_images": ["c.nrrd"]})}}, "data.cases[2].images",
     "same channels"),
    ({"data": {"cases": _cases_with(**{"0_lable": "x"})}}, "data.cases[0].lable",
     "did you mean 'data.cases[0].label'"),
    ({"data": {"cases": _cases_with(**{"0_id": _DELETE})}}, "data.cases[0].id", "missing"),
    ({"data": {"cases": CASES, "splits": {"train": ["a", "a"], "validation": ["b"]}}},
     "data.splits.train", "case 'a' is listed twice"),
    ({"data": {"cases": CASES, "splits": {"train": ["a", "b"], "validation": ["c"],
                                          "test": ["a"]}}},
     "data.splits.test", "case 'a' is listed twice (also in data.splits.train)"),
    ({"data": {"cases": CASES, "splits": {"train": ["a", "x"], "validation": ["c"]}}},
     "data.splits.train", "case 'x' is not in data.cases"),
    ({"data": {"cases": CASES, "splits": {"train": ["a"], "valdation": ["c"]}}},
     "data.splits.valdation", "did you mean 'data.splits.validation'"),
    ({"data": {"cases": CASES, "splits": {"train": ["a"]}}}, "data.splits.validation",
     "is empty"),
    ({"data": {"cases": CASES, "splits": {"train": [], "validation": ["a"]}}},
     "data.splits.train", "at least one case"),
]


@pytest.mark.parametrize("change,field,words", JOB_ERRORS,
                         ids=[f"{i}-{f}" for i, (_c, f, _w) in enumerate(JOB_ERRORS)])
def test_job_errors_name_the_field_and_the_problem(change, field, words):
    d = copy.deepcopy(BASE)
    for k, v in change.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict) and k != "data":
            d[k].update(copy.deepcopy(v))
        else:
            d[k] = copy.deepcopy(v)
    with pytest.raises(JobError) as e:
        Job.from_dict(d)
    assert e.value.field == field, str(e.value)
    assert words in str(e.value), str(e.value)
    assert str(e.value).startswith(f"job.json: {field}: ")


def test_job_schema_versions():
    with pytest.raises(JobError) as e:
        Job.from_dict({"schema": 2, "data": {"dataset": "x"}})
    assert str(e.value).startswith("job.json schema 2 is newer than this JCSAugment (reads 1)")
    with pytest.raises(JobError, match="schema: missing"):
        Job.from_dict({"data": {"dataset": "x"}})
    with pytest.raises(JobError, match="top level"):
        Job.from_dict([1, 2])


def test_job_file_errors(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        load_job(str(tmp_path))
    (tmp_path / "job.json").write_text('{"schema": 1,\n "data": {"dataset": "x"},,}')
    with pytest.raises(JobError, match=r"not valid JSON: .*\(line 2, column"):
        load_job(str(tmp_path))
    (tmp_path / "job.json").write_text('{"schema": 1, "data": {"dataset": "x"}, "seed": 1, '
                                       '"seed": 2}')
    with pytest.raises(JobError, match="'seed' appears twice"):
        load_job(str(tmp_path))
    # an invalid job is refused before anything is written
    out = tmp_path / "run"
    bad = _job(training={"epochs": 0})
    with pytest.raises(JobError):
        save_job(str(out), bad)
    assert not (out / "job.json").exists()
    # a Job edited in code is validated on save
    j = Job.from_dict(BASE)
    j.training.mode = "nope"
    with pytest.raises(JobError, match="training.mode"):
        save_job(str(out), j)


def test_job_with_overrides():
    j = Job.from_dict(BASE)
    k = j.with_overrides({"training.epochs": 5, "model.patch_size": [32, 32, 32],
                          "training.mode": "heuristic", "seed": 3})
    assert (k.training.epochs, k.model.patch_size, k.training.mode, k.seed) == (
        5, [32, 32, 32], "heuristic", 3)
    assert j.training.epochs == 100  # the original is unchanged
    with pytest.raises(JobError) as e:
        j.with_overrides({"training.epoch": 5})
    assert e.value.field == "training.epoch" and "did you mean 'training.epochs'" in str(e.value)
    with pytest.raises(JobError, match="did you mean 'training'"):
        j.with_overrides({"trainig.epochs": 5})
    with pytest.raises(JobError, match="is not a section"):
        j.with_overrides({"training.epochs.x": 5})
    with pytest.raises(JobError, match="training.lr"):
        j.with_overrides({"training.lr": -1})


def test_job_missing_files(tmp_path):
    (tmp_path / "a_t1.nrrd").write_bytes(b"x")
    j = Job.from_dict(_job(data={"cases": CASES[:2], "splits": {"train": ["a"],
                                                                "validation": ["b"]}}))
    missing = dict(j.missing_files(str(tmp_path)))
    assert "data.cases[0].images[0]" not in missing
    assert missing["data.cases[0].images[1]"] == str(tmp_path / "a_t2.nrrd")
    assert "data.cases[1].label" in missing


def test_job_modes_match_the_trainer():
    modes = pytest.importorskip("JCSAugmentLib.train.modes")
    assert tuple(modes.MODES) == jobmod.MODES


# ============================================================================= events.jsonl

def test_event_writer_writes_numbered_flushed_lines(tmp_path):
    run = str(tmp_path)
    w = EventWriter(run)
    j = Job.from_dict(BASE)
    w.started(j, {"device": "cpu"})
    w.progress(0, 1, 10, {"train": 0.5, "nan": float("nan"), "np": np.float32(0.25)}, 2.0)
    w.validation(0, {"dice": [0.5, 0.7]})
    w.policy(1, {"fg": [[0.5, 0.5]], "bg": [[1.0]]}, np.array([0.25, 0.75]))
    w.preview(1, [os.path.join(run, "previews", "p1.png")])
    w.checkpoint(1, os.path.join(run, "checkpoints", "last.pt"))
    w.warning("careful")
    try:
        raise ValueError("boom")
    except ValueError:
        w.error("it broke", events.traceback_tail())
    w.finished("completed", {"policy": os.path.join(run, "policy.json")}, {"dice": 0.8})
    # written before close: each line is flushed (another reader sees it at once)
    evs = read_events(run)
    w.close()
    assert [e["kind"] for e in evs] == list(events.KINDS)
    assert [e["seq"] for e in evs] == list(range(1, 10))
    assert all(isinstance(e["t"], float) and abs(e["t"] - time.time()) < 60 for e in evs)
    assert evs[0]["job"]["training"]["mode"] == "joint" and evs[0]["pid"] == os.getpid()
    assert evs[1]["losses"] == {"train": 0.5, "nan": None, "np": 0.25}
    assert evs[3]["tea"] == [0.25, 0.75]
    assert evs[4]["files"] == ["previews/p1.png"]
    assert evs[5]["path"] == "checkpoints/last.pt"
    assert evs[7]["message"] == "it broke" and "ValueError: boom" in evs[7]["traceback"]
    assert evs[8]["reason"] == "completed" and evs[8]["outputs"] == {"policy": "policy.json"}
    text = (tmp_path / "events.jsonl").read_text()
    assert text.endswith("\n") and "NaN" not in text and len(text.splitlines()) == 9


def test_event_writer_refuses_bad_events(tmp_path):
    with EventWriter(str(tmp_path), fsync=False) as w:
        with pytest.raises(ValueError, match="finish reason"):
            w.finished("done", {}, {})
        with pytest.raises(ValueError, match="unknown event kind"):
            w.emit("chatter")
        with pytest.raises(ValueError, match="reserved"):
            w.emit("warning", message="x", seq=5)
        w.finished("budget", {}, {})
    assert [e["seq"] for e in read_events(str(tmp_path))] == [1]


def test_reader_returns_only_complete_lines(tmp_path):
    run = str(tmp_path)
    r = EventReader(run)
    assert r.poll() == []  # no file yet
    w = EventWriter(run, fsync=False)
    w.warning("one")
    w.warning("two")
    assert [e["message"] for e in r.poll()] == ["one", "two"]
    assert r.poll() == []
    # a half-written line, by hand
    path = tmp_path / "events.jsonl"
    line = json.dumps({"t": 1.0, "kind": "warning", "seq": 3, "message": "three"}) + "\n"
    with open(path, "ab") as f:
        f.write(line[:17].encode())
    assert r.poll() == []
    assert r.poll() == []
    with open(path, "ab") as f:
        f.write(line[17:-1].encode())
    assert r.poll() == []  # complete JSON, but no newline yet
    with open(path, "ab") as f:
        f.write(b"\n")
        f.write(b"this is not json\n[1, 2]\n\n")
        f.write(json.dumps({"t": 1.0, "kind": "warning", "seq": 4, "message": "four"}).encode()
                + b"\n")
    assert [e["message"] for e in r.poll()] == ["three", "four"]
    assert r.invalid_lines == 2 and r.restarts == 0


def test_reader_restarts_on_a_truncated_or_replaced_file(tmp_path):
    run = str(tmp_path)
    path = tmp_path / "events.jsonl"
    with EventWriter(run, fsync=False) as w:
        for i in range(5):
            w.warning(f"old {i}")
    r = EventReader(run)
    assert len(r.poll()) == 5
    path.write_text("")  # truncated
    assert r.poll() == [] and r.restarts == 1
    with EventWriter(run, fsync=False) as w:
        w.warning("new 0")
    assert [e["message"] for e in r.poll()] == ["new 0"]
    # replaced by a longer file (a new run in the same folder): different inode
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"t": 2.0, "kind": "warning", "seq": i + 1,
                                         "message": f"rot {i}"}) + "\n" for i in range(9)))
    os.replace(other, path)
    assert [e["message"] for e in r.poll()] == [f"rot {i}" for i in range(9)]
    assert r.restarts == 2
    # rewritten in place (same inode), longer than before, different first line
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(b"".join(json.dumps({"t": 3.0, "kind": "warning", "seq": i + 1,
                                     "message": f"again {i}"}).encode() + b"\n"
                         for i in range(20)))
    assert [e["message"] for e in r.poll()] == [f"again {i}" for i in range(20)]
    assert r.restarts == 3
    path.unlink()
    assert r.poll() == []


def test_writer_killed_mid_line_is_repaired_on_reopen(tmp_path):
    run = str(tmp_path)
    path = tmp_path / "events.jsonl"
    w = EventWriter(run)
    w.started({"job": 1}, {})
    w.progress(0, 1, 4, {"train": 1.0}, 1.0)
    w.close()
    reader = EventReader(run)
    assert len(reader.poll()) == 2
    # the worker dies in the middle of a line
    with open(path, "ab") as f:
        f.write(b'{"t":1.0,"kind":"progress","seq":3,"epoch":0,"itera')
    assert reader.poll() == []
    # resume: the writer cuts the half line, says so, and continues the numbering
    w = EventWriter(run)
    w.progress(0, 2, 4, {"train": 0.9}, 1.0)
    w.close()
    evs = read_events(run)
    assert [e["seq"] for e in evs] == [1, 2, 3, 4]
    assert evs[2]["kind"] == "warning" and "half-written last line" in evs[2]["message"]
    assert evs[3]["iteration"] == 2
    new = reader.poll()
    assert [e["seq"] for e in new] == [3, 4] and reader.invalid_lines == 0
    # a whole event whose newline was lost is kept, not cut
    with open(path, "ab") as f:
        f.write(json.dumps({"t": 1.0, "kind": "warning", "seq": 5, "message": "kept"}).encode())
    with EventWriter(run) as w:
        w.warning("after")
    evs = read_events(run)
    assert [e["seq"] for e in evs] == [1, 2, 3, 4, 5, 6] and evs[4]["message"] == "kept"
    # a damaged last complete line does not break the numbering either
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with EventWriter(run) as w:
        assert w.warning("x")["seq"] == 7


class _CountingOpen:
    """Wraps ``open`` for the events module: counts opens and bytes read."""

    def __init__(self):
        self.opens = 0
        self.bytes = 0

    def __call__(self, *args, **kwargs):
        self.opens += 1
        f = open(*args, **kwargs)
        counter = self
        real_read = f.read

        class Wrapped:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def read(self, *a):
                data = real_read(*a)
                counter.bytes += len(data)
                return data

            def __getattr__(self, name):
                return getattr(f, name)

        return Wrapped()


def test_polling_a_long_log_with_nothing_new_reads_nothing(tmp_path, monkeypatch):
    run = str(tmp_path)
    n = 200_000
    with EventWriter(run, fsync=False) as w:  # the writer's own lines, then the bulk by hand
        first = w.progress(0, 0, n, {"train": 0.5, "val": 0.25}, 12.5)
    line = json.dumps(dict(first, seq="SEQ", iteration="IT"), separators=(",", ":"))
    head, rest = line.split('"SEQ"')
    mid, tail = rest.split('"IT"')
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write("".join(f"{head}{i + 1}{mid}{i}{tail}\n" for i in range(1, n)))
    size = os.path.getsize(tmp_path / "events.jsonl")
    r = EventReader(run)
    assert len(r.poll()) == n
    counting = _CountingOpen()
    monkeypatch.setattr(events, "_open", counting)
    before = r.bytes_read
    t0 = time.perf_counter()
    for _ in range(1000):
        assert r.poll() == []
    per_poll = (time.perf_counter() - t0) / 1000
    assert counting.opens == 0 and counting.bytes == 0 and r.bytes_read == before
    # one new event: only that line is read (plus the first line's head, to notice rewrites)
    with EventWriter(run, fsync=False) as w:
        w.warning("new")
    added = os.path.getsize(tmp_path / "events.jsonl") - size
    got = r.poll()
    assert [e["message"] for e in got] == ["new"]
    assert counting.opens == 1 and counting.bytes <= added + EventReader._HEAD
    print(f"\nempty poll on a {size / 2 ** 20:.1f} MB log ({n} events): "
          f"{per_poll * 1e6:.1f} us on average over 1000 polls")


def test_reader_max_bytes_and_concurrent_writer(tmp_path):
    run = str(tmp_path)
    n = 3000
    with EventWriter(run, fsync=False) as w:
        done = threading.Event()
        got = []
        r = EventReader(run)

        def poll_loop():
            while not done.is_set():
                got.extend(r.poll(max_bytes=4096))
            got.extend(r.poll())

        t = threading.Thread(target=poll_loop)
        t.start()
        for i in range(n):
            w.progress(0, i, n, {"train": float(i)}, None, note="x" * (i % 50))
        done.set()
        t.join()
    while True:  # max_bytes leaves the rest for later polls
        more = r.poll(max_bytes=4096)
        if not more:
            break
        got.extend(more)
    assert [e["seq"] for e in got] == list(range(1, n + 1))
    assert r.invalid_lines == 0
    # a single line longer than max_bytes still comes whole
    with EventWriter(run, fsync=False) as w:
        w.warning("y" * 10_000)
    assert r.poll(max_bytes=100)[0]["message"] == "y" * 10_000


# ============================================================================= status.json

def test_status_round_trip_and_robust_reading(tmp_path):
    run = str(tmp_path)
    assert read_status(run) is None
    out = write_status(run, {"state": "running", "iteration": 5, "of": 100, "epoch": 0,
                             "started_at": 1.0, "note": "extra"})
    s = read_status(run)
    assert s == out
    assert set(statusmod.STATUS_FIELDS) <= set(s)
    assert s["pid"] == os.getpid() and s["eta_seconds"] is None and s["note"] == "extra"
    assert abs(s["updated_at"] - time.time()) < 60
    s2 = update_status(run, state="stopping", iteration=6)
    assert (s2["state"], s2["iteration"], s2["of"], s2["note"]) == ("stopping", 6, 100, "extra")
    with pytest.raises(ValueError, match="not one of"):
        write_status(run, {"state": "sleeping"})
    assert _leftovers(run) == []
    path = tmp_path / "status.json"
    for garbage in (b'{"state": "runn', b"\xff\xfe", b"[1, 2]", b""):
        path.write_bytes(garbage)
        g = read_status(run)
        assert g["state"] == "unknown" and g["error"], garbage
    path.write_text('{"state": "hibernating"}')
    assert read_status(run)["state"] == "unknown"
    path.unlink()
    path.mkdir()
    assert read_status(run)["state"] == "unknown"


def test_status_reader_never_sees_a_partial_file(tmp_path):
    run = str(tmp_path)
    write_status(run, {"state": "starting"})
    stop = threading.Event()
    bad = []
    reads = [0]

    def reader():
        while not stop.is_set():
            s = read_status(run)
            reads[0] += 1
            if s is None or s["state"] == "unknown":
                bad.append(s)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(400):
            write_status(run, {"state": "running", "iteration": i, "of": 400,
                               "last_error": "x" * (i % 3000)})
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == [] and reads[0] > 0
    assert read_status(run)["iteration"] == 399
    assert _leftovers(run) == []


# ============================================================================= checkpoints

def _draws(np_gens, torch_gen):
    return (torch.rand(5).tolist(), torch.randint(0, 1000, (3,), generator=torch_gen).tolist(),
            random.random(), np.random.rand(3).tolist(),
            {k: g.random(4).tolist() for k, g in np_gens.items()})


def test_checkpoint_round_trip_resumes_rng_bit_for_bit(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4),
                                torch.nn.Conv3d(4, 2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    model(torch.randn(1, 1, 6, 6, 6)).sum().backward()
    opt.step()
    np_gens = {"pcg": np.random.default_rng(1), "mt": np.random.Generator(np.random.MT19937(2)),
               "philox": np.random.Generator(np.random.Philox(3)),
               "sfc": np.random.Generator(np.random.SFC64(4))}
    for g in np_gens.values():
        g.random(7)  # move away from the seeded state (and fill Philox's buffer)
    tg = torch.Generator().manual_seed(5)
    torch.manual_seed(6)
    random.seed(7)
    np.random.seed(8)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 12,
             "policy": {"tra_logits": torch.zeros(2, 15, 6), "tea_logits": torch.randn(84)},
             "rng": pack_rng_states(np_gens, {"patches": tg}), "history": [(1, 0.5), (2, 0.4)]}
    path = str(tmp_path / "checkpoints" / "last.pt")
    save_checkpoint(path, state)
    expected = _draws(np_gens, tg)
    # the raw file loads with weights_only (no custom classes inside, RNG states included)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "jcsaugment-checkpoint" and raw["version"] == 1
    # scramble everything, then resume
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    fresh = {k: np.random.default_rng(99) if k == "pcg" else type(g)(type(g.bit_generator)(99))
             for k, g in np_gens.items()}
    tg2 = torch.Generator().manual_seed(99)
    loaded = load_checkpoint(path, map_location="cpu")
    assert loaded["iteration"] == 12 and loaded["history"] == [(1, 0.5), (2, 0.4)]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v)
    opt2 = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    opt2.load_state_dict(loaded["optimizer"])
    warnings = unpack_rng_states(loaded["rng"], fresh, {"patches": tg2})
    assert warnings == []
    assert _draws(fresh, tg2) == expected
    # a numpy generator can also be rebuilt from the saved state alone
    g = ckpt.numpy_generator_from_plain(loaded["rng"]["numpy"]["philox"])
    assert isinstance(g.bit_generator, np.random.Philox)
    info = ckpt.checkpoint_info(path)
    assert info["version"] == 1 and "state" not in info
    assert _leftovers(os.path.dirname(path)) == []


def test_rng_unpack_reports_what_it_could_not_restore():
    packed = pack_rng_states()
    packed["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    w = unpack_rng_states(packed, {"missing": np.random.default_rng(0)})
    assert any("numpy generator 'missing'" in x for x in w)
    if not torch.cuda.is_available():
        assert any("CUDA" in x for x in w)


def test_run_checkpoints_last_and_best(tmp_path):
    run = str(tmp_path)
    last = ckpt.save_run_checkpoint(run, {"iteration": 1}, best=True)
    assert last == ckpt.last_checkpoint_path(run)
    ckpt.save_run_checkpoint(run, {"iteration": 2})
    assert load_checkpoint(ckpt.last_checkpoint_path(run))["iteration"] == 2
    assert load_checkpoint(ckpt.best_checkpoint_path(run))["iteration"] == 1


class _Custom:
    pass


def test_checkpoint_errors(tmp_path):
    p = str(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(p)
    (tmp_path / "x.pt").write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)
    good = str(tmp_path / "good.pt")
    save_checkpoint(good, {"w": torch.randn(1000)})
    data = open(good, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(str(tmp_path / "cut.pt"))
    torch.save({"a": 1}, str(tmp_path / "foreign.pt"))
    with pytest.raises(CheckpointError, match="not a JCSAugment checkpoint"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
    torch.save({"format": "jcsaugment-checkpoint", "version": 2, "jcsaugment": "9.0",
                "state": {}}, str(tmp_path / "newer.pt"))
    with pytest.raises(CheckpointError, match="version 2, newer than this JCSAugment"):
        load_checkpoint(str(tmp_path / "newer.pt"))
    torch.save({"format": "jcsaugment-checkpoint", "version": 1, "state": {"x": _Custom()}},
               str(tmp_path / "code.pt"))
    with pytest.raises(CheckpointError, match="not plain data"):
        load_checkpoint(str(tmp_path / "code.pt"))
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(str(tmp_path))
    # saving refuses what weights_only could not read back, naming where it is
    with pytest.raises(CheckpointError, match=r"state\['rng'\]\['key'\] is a numpy.ndarray"):
        save_checkpoint(str(tmp_path / "np.pt"), {"rng": {"key": np.zeros(3)}})
    with pytest.raises(CheckpointError, match="must be a dict"):
        save_checkpoint(str(tmp_path / "l.pt"), [1, 2])
    assert not (tmp_path / "np.pt").exists()


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"iteration": 1})

    def full_disk(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="(?i)no space left on device"):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert _leftovers(str(tmp_path)) == []


# ============================================================================= stop, lock, folder

def test_stop_request(tmp_path):
    run = str(tmp_path)
    assert not stop_requested(run) and control.read_stop(run) is None
    request_stop(run, reason="user")
    assert stop_requested(run)
    stop = control.read_stop(run)
    assert stop["reason"] == "user" and stop["by_pid"] == os.getpid()
    assert _leftovers(run) == []
    assert clear_stop(run) is True and not stop_requested(run)
    assert clear_stop(run) is False
    (tmp_path / "stop").write_text("")  # a hand-made empty stop file still stops
    assert stop_requested(run) and control.read_stop(run) == {"reason": "unknown"}


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_pid_alive():
    assert control.pid_alive(os.getpid())
    assert not control.pid_alive(_dead_pid())
    assert not control.pid_alive(None) and not control.pid_alive(0) and not control.pid_alive(-3)


def test_run_lock_live_and_dead_pids(tmp_path):
    run = str(tmp_path)
    lockfile = tmp_path / "run.lock"
    with RunLock(run) as lock:
        assert lock.held and control.read_lock(run)["pid"] == os.getpid()
        with pytest.raises(RunLockError, match=f"in use by worker pid {os.getpid()}"):
            RunLock(run).acquire()  # a second worker (here: the same process) is refused
    assert not lockfile.exists()
    # a lock left by a live process that is not ours
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lockfile.write_text(json.dumps({"pid": sleeper.pid, "started_at": time.time()}))
        with pytest.raises(RunLockError, match=f"in use by worker pid {sleeper.pid}"):
            RunLock(run).acquire()
        assert json.loads(lockfile.read_text())["pid"] == sleeper.pid  # left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    # ... and one left by a process that has died: taken over, with a warning
    dead = _dead_pid()
    lockfile.write_text(json.dumps({"pid": dead, "started_at": 1.0}))
    said = []
    lock = RunLock(run, on_warning=said.append).acquire()
    assert len(said) == 1 and f"stale lock from pid {dead}" in said[0]
    assert lock.warnings == said and control.read_lock(run)["pid"] == os.getpid()
    lock.release()
    # garbage in the lock file: taken over with a warning (default: warnings.warn)
    lockfile.write_text("not json")
    with pytest.warns(RuntimeWarning, match="unreadable lock"):
        RunLock(run).acquire().release()
    # a lock from another machine is not second-guessed
    lockfile.write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid"}))
    with pytest.raises(RunLockError, match="another machine"):
        RunLock(run).acquire()


def test_run_lock_held_by_another_process(tmp_path):
    run = str(tmp_path)
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from JCSAugmentLib.run import RunLock; l = RunLock(sys.argv[2]).acquire();"
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, ROOT, run], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=f"pid {p.pid}"):
            RunLock(run).acquire()
    finally:
        p.kill()
        p.wait()
    # killed without releasing: the next worker takes over with a warning
    said = []
    with RunLock(run, on_warning=said.append):
        pass
    assert said and f"pid {p.pid}" in said[0]


def test_a_worker_ending_its_run_keeps_the_lock_until_its_process_exits(tmp_path):
    """release(until_exit=True), what `python -m JCSAugmentLib train` does: while the old
    process still tears down (torch, CUDA) no second worker may start on the folder; once it
    has exited the next one takes over without a stale-lock warning."""
    run = str(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from JCSAugmentLib.run import RunLock; l = RunLock(sys.argv[2]).acquire();"
            "l.release(until_exit=True); print('released', flush=True); sys.stdin.readline()")
    p = subprocess.Popen([sys.executable, "-c", code, ROOT, run], stdout=subprocess.PIPE,
                         stdin=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "released"
        with pytest.raises(RunLockError, match=f"pid {p.pid} has ended its run and is still "
                                               f"exiting"):
            RunLock(run).acquire()
    finally:
        p.communicate("\n", timeout=60)  # lets the process end normally
    said = []
    with RunLock(run, on_warning=said.append):
        pass
    assert said == []


def test_worker_process_holds_its_lock_until_exit_and_in_process_calls_do_not(tmp_path):
    from JCSAugmentLib import cli
    from JCSAugmentLib.train import worker
    seen = {}

    def fake_run_worker(folder, **kw):
        seen.update(kw)
        return 0
    original = worker.run_worker
    worker.run_worker = fake_run_worker
    try:
        job = tmp_path / "run"
        job.mkdir()
        (job / "job.json").write_text("{}")
        cli.main(["train", str(job)])
        assert seen["hold_lock_until_exit"] is False  # in-process (tests, the demo)
        cli.main(["train", str(job)], own_process=True)
        assert seen["hold_lock_until_exit"] is True  # the jcsaugment script, python -m
    finally:
        worker.run_worker = original


def test_check_writable(tmp_path, monkeypatch):
    run = tmp_path / "new" / "run"
    check_writable(str(run))
    assert run.is_dir() and os.listdir(run) == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        check_writable(str(tmp_path / "afile"))
    with pytest.raises(RunFolderError, match="nearly full"):
        check_writable(str(run), min_free_bytes=2 ** 62)

    def fail(code):
        def probe(folder):
            raise OSError(code, os.strerror(code))
        return probe

    monkeypatch.setattr(control, "_probe", fail(errno.ENOSPC))
    with pytest.raises(RunFolderError, match="the disk is full") as e:
        check_writable(str(run))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(control, "_probe", fail(errno.EACCES))
    with pytest.raises(RunFolderError, match="permission denied"):
        check_writable(str(run))
    monkeypatch.setattr(control, "_probe", fail(errno.EROFS))
    with pytest.raises(RunFolderError, match="read-only"):
        check_writable(str(run))


@pytest.mark.skipif(os.name == "nt" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="permissions do not bind root (or work differently on Windows)")
def test_check_writable_on_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match="permission denied"):
            check_writable(str(ro))
    finally:
        ro.chmod(0o700)


def test_importing_the_protocol_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import JCSAugmentLib.run as r;"
            "r.read_status('.'); r.EventReader('.').poll();"
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
