"""The run folder as one object (run/folder.py) and the worker's safety rules: nothing a refused
start or a kill can do loses a run or writes outside the folder."""

import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

from JCSAugmentLib.cli import main as cli_main
from JCSAugmentLib.run import checkpoint as checkpoint_module
from JCSAugmentLib.run.events import (CheckpointWritten, Finished, Progress, Started,
                                      WarningEvent, parse_event)
from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentLib.run.job import save_job
from JCSAugmentLib.train.worker import EXIT_OK, EXIT_REFUSED, run_worker

from test_train import cases  # noqa: F401  (the synthetic cases fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def job_dict(cases, its=2, **training):
    t = {"mode": "heuristic", "epochs": 1, "iterations_per_epoch": its, "batch_size": 2,
         "val_batch_size": 2, "preview_every": 0, "checkpoint_every": 1, "validate_every": 1}
    t.update(training)
    return {"schema": 1,
            "data": {"cases": cases, "splits": {"train": ["c0", "c1"], "validation": ["c2"],
                                                "test": []}},
            "model": {"backbone": "unet3d", "patch_size": [16, 16, 16], "base_features": 2},
            "training": t, "device": "cpu", "seed": 1}


@pytest.fixture(scope="module")
def finished_run(cases, tmp_path_factory):
    """A run folder trained to the end (2 iterations), copied by each test that changes it."""
    run = str(tmp_path_factory.mktemp("finished") / "run")
    os.makedirs(run)
    save_job(run, job_dict(cases))
    assert run_worker(run, quiet=True) == EXIT_OK
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(finished_run, copy)
    return RunFolder(copy)


def snapshot(folder: RunFolder):
    """Bytes of every file in the folder (to prove a refused start changed nothing)."""
    out = {}
    for p in glob.glob(os.path.join(folder.path, "**"), recursive=True):
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder.path)] = f.read()
    return out


# ----------------------------------------------------------------------------- refused starts

def test_train_on_a_finished_run_without_resume_is_refused_and_changes_nothing(run, capsys):
    before = snapshot(run)
    assert cli_main(["train", run.path, "--quiet"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "--resume" in err and "--restart" in err and "iteration 2" in err
    assert snapshot(run) == before  # last.pt, best.pt, events, status: all as they were


def test_restart_keeps_the_old_checkpoints_aside(run):
    with open(run.checkpoint_path("last"), "rb") as f:
        old_last = f.read()
    assert cli_main(["train", run.path, "--quiet", "--restart"]) == EXIT_OK
    kept = glob.glob(os.path.join(run.checkpoints_dir, "before-restart-*", "last.pt"))
    assert len(kept) == 1
    with open(kept[0], "rb") as f:
        assert f.read() == old_last
    assert os.path.exists(os.path.join(os.path.dirname(kept[0]), "best.pt"))
    events = run.read_events()
    assert any(isinstance(e, WarningEvent) and "before-restart-" in e.message for e in events)
    assert isinstance(events[-1], Finished) and events[-1].reason == "completed"


def test_an_override_refused_while_another_worker_holds_the_folder_leaves_job_json(run, capsys):
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from JCSAugmentLib.run import RunLock; l = RunLock(sys.argv[2]).acquire();"
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, ROOT, run.path],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        rc = cli_main(["train", run.path, "--resume", "--epochs", "7", "--seed", "9",
                       "--quiet"])
        assert rc == EXIT_REFUSED
        assert f"pid {holder.pid}" in capsys.readouterr().err
        after = snapshot(run)
        assert after["job.json"] == before["job.json"]  # epochs and seed untouched
        assert after == before
    finally:
        holder.kill()
        holder.wait()


def test_resume_refuses_an_architecture_change_in_one_line(run, capsys):
    before = snapshot(run)
    assert cli_main(["train", run.path, "--resume", "--base-features", "8",
                     "--quiet"]) == EXIT_REFUSED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # not torch's size-mismatch dump
    assert "model.base_features" in err[0] and "--restart" in err[0]
    assert snapshot(run) == before


def test_an_invalid_override_leaves_job_json_byte_identical(run, capsys):
    before = run.job_bytes()
    assert cli_main(["train", run.path, "--resume", "--epochs", "0", "--quiet"]) == EXIT_REFUSED
    assert "training.epochs" in capsys.readouterr().err
    assert run.job_bytes() == before


def test_resume_may_extend_the_run(run):
    assert cli_main(["train", run.path, "--resume", "--epochs", "2", "--quiet"]) == EXIT_OK
    assert run.job().training.epochs == 2
    assert run.checkpoint_iteration("last") == 4


def test_resume_without_a_checkpoint_is_refused_before_training(cases, tmp_path, capsys):
    folder = RunFolder(str(tmp_path / "new"))
    folder.save_job(job_dict(cases))
    assert run_worker(folder, resume=True) == EXIT_REFUSED
    assert "no checkpoint" in capsys.readouterr().err
    assert not os.path.exists(folder.events_path)


# ----------------------------------------------------------------------------- symbolic links

@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX symlinks")
@pytest.mark.parametrize("entry", ["events.jsonl", "run.lock", "checkpoints", "previews"])
def test_a_symlink_in_the_run_folder_is_refused_and_its_target_unchanged(cases, tmp_path,
                                                                          entry, capsys):
    folder = RunFolder(str(tmp_path / "run"))
    folder.save_job(job_dict(cases))
    outside = tmp_path / "outside"
    if entry in ("checkpoints", "previews"):
        outside.mkdir()
    else:
        outside.write_bytes(b"precious\n")
    os.symlink(str(outside), folder.file(entry))
    assert run_worker(folder, quiet=False) == EXIT_REFUSED
    assert "symbolic link" in capsys.readouterr().err
    if outside.is_dir():
        assert os.listdir(str(outside)) == []
    else:
        assert outside.read_bytes() == b"precious\n"


@pytest.mark.skipif(os.name == "nt", reason="O_NOFOLLOW")
def test_the_event_writer_never_appends_through_a_link(tmp_path):
    folder = RunFolder(str(tmp_path / "run"))
    os.makedirs(folder.path)
    target = tmp_path / "target"
    target.write_bytes(b"")
    os.symlink(str(target), folder.events_path)
    with pytest.raises(OSError, match="symbolic link"):
        folder.event_writer()
    assert target.read_bytes() == b""


# ----------------------------------------------------------------------------- kills

class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even except Exception handlers)."""


@pytest.mark.parametrize("kill_at_write", [1, 2])
def test_a_kill_at_any_point_of_a_checkpoint_pair_leaves_a_consistent_pair(run, monkeypatch,
                                                                           kill_at_write):
    """A validation that found a new best writes best.pt and last.pt; a kill before either
    write finishes must leave last.pt whose recorded best metric is held by best.pt (else the
    best model is lost for good: the resumed run believes it already has it)."""
    state = run.load_checkpoint("last")
    new_state = dict(state, iteration=state["iteration"] + 1,
                     best_metric=state["best_metric"] + 0.5)
    real = checkpoint_module.save_checkpoint
    writes = []

    def dying_save(path, st):
        writes.append(os.path.basename(path))
        if len(writes) == kill_at_write:
            raise Killed()
        return real(path, st)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", dying_save)
    with pytest.raises(Killed):
        run.save_checkpoint(new_state, best=True)
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real)
    last, best = run.load_checkpoint("last"), run.load_checkpoint("best")
    assert best["best_metric"] >= last["best_metric"]
    choice = run.pick_checkpoint("best")
    assert choice.which == "best" and choice.iteration == best["iteration"]


def test_temp_files_of_killed_writes_are_swept_when_a_worker_starts(run):
    leftovers = [os.path.join(run.checkpoints_dir, ".last.pt.k3j2x9.tmp"),
                 os.path.join(run.path, ".status.json.a8b7c6.tmp"),
                 run.preview_path("npz") + ".tmp"]
    os.makedirs(run.previews_dir, exist_ok=True)
    for p in leftovers:
        with open(p, "wb") as f:
            f.write(b"half a file")
    assert run_worker(run, resume=True, quiet=True) == EXIT_OK
    assert not any(os.path.exists(p) for p in leftovers)
    assert any(isinstance(e, WarningEvent) and "temporary file" in e.message
               for e in run.read_events())


def test_pick_checkpoint_says_when_there_is_no_best_yet(run):
    os.remove(run.checkpoint_path("best"))
    choice = run.pick_checkpoint("best")
    assert choice.which == "last" and "no best.pt" in choice.note
    assert "iteration 2" in choice.describe()
    os.remove(run.checkpoint_path("last"))
    with pytest.raises(OSError, match="no trained checkpoint"):
        run.pick_checkpoint("best")


# ----------------------------------------------------------------------------- typed events

def test_the_worker_writes_typed_events_every_reader_parses(finished_run):
    events = RunFolder(finished_run).read_events()
    assert isinstance(events[0], Started) and events[0].resumed_from is None
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and progress[-1].iteration == 2 and "train" in progress[-1].losses
    ckpt = [e for e in events if isinstance(e, CheckpointWritten)]
    assert ckpt and ckpt[-1].path == "checkpoints/last.pt"
    assert any(e.best for e in ckpt)
    assert isinstance(events[-1], Finished) and events[-1].reason == "completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_typed_events_tolerate_wrong_types_and_keep_unknown_fields():
    ev = parse_event({"kind": "progress", "t": 5, "seq": "x", "iteration": "three",
                      "losses": {"train": "nan", "val": 0.5}, "speed": True, "new_field": 1})
    assert isinstance(ev, Progress)
    assert ev.seq is None and ev.iteration is None and ev.speed is None
    assert ev.losses == {"train": None, "val": 0.5}
    assert ev.extra == {"new_field": 1}
    assert parse_event({"kind": "from-the-future"}) is None
    assert parse_event(["not", "an", "object"]) is None
    fin = parse_event({"kind": "finished", "reason": 3, "outputs": "x"})
    assert fin.reason == "" and fin.outputs == {}


def test_a_typed_event_written_reads_back_equal(tmp_path):
    folder = RunFolder(str(tmp_path))
    with folder.event_writer(fsync=False) as w:
        w.write(CheckpointWritten(iteration=4, path=folder.checkpoint_path("last"), best=True))
        w.write(WarningEvent(message="careful"))
    a, b = folder.read_events()
    assert (a.iteration, a.path, a.best, a.seq) == (4, "checkpoints/last.pt", True, 1)
    assert b == WarningEvent(t=b.t, seq=2, message="careful")


# ----------------------------------------------------------------------------- the preview

def test_the_preview_format_round_trips(tmp_path):
    import numpy as np
    from JCSAugmentLib.augment.preview import PreviewRow
    rng = np.random.default_rng(0)
    rows = [PreviewRow(name, (1, 2, 3), [rng.random((1, 4, 5, 6), dtype=np.float32)
                                          for _ in range(3)],
                       [rng.integers(0, 2, (4, 5, 6)) for _ in range(3)], ["a", "b", "c"])
            for name in ("foreground patch", "background patch")]
    folder = RunFolder(str(tmp_path))
    assert folder.read_preview() is None
    files = folder.write_preview(rows, iteration=7, case_id="c0")
    assert set(files) == {"arrays"}
    back = folder.read_preview()
    assert back.meta["iteration"] == 7 and back.meta["case"] == "c0"
    np.testing.assert_array_equal(back.images["foreground"], np.stack(rows[0].images))
    np.testing.assert_array_equal(back.labels["background"], np.stack(rows[1].labels))
    assert not glob.glob(os.path.join(folder.previews_dir, "*.tmp"))


# ----------------------------------------------------------------------------- ownership

def test_the_run_package_imports_neither_torch_nor_numpy():
    code = ("import sys; import JCSAugmentLib.run as r; r.RunFolder('x').checkpoint_path(); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out == ["False", "False"]


RUN_FOLDER_NAMES = {"job.json", "events.jsonl", "status.json", "run.lock", "policy.json",
                    "previews", "predictions", "checkpoints", "worker.log", "last.pt",
                    "best.pt", "preview_latest.npz", "preview_latest.png",
                    "preview_latest.json", "progress.png"}


def test_no_module_outside_the_run_package_spells_a_run_folder_file_name():
    offenders = []
    for folder in ("JCSAugmentLib", "JCSAugment", "benchmarks"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, ROOT)
            if rel.startswith(os.path.join("JCSAugmentLib", "run") + os.sep):
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                          if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                            ast.AsyncFunctionDef))
                          and n.body and isinstance(n.body[0], ast.Expr)
                          and isinstance(n.body[0].value, ast.Constant)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        id(node) not in docstrings and node.value in RUN_FOLDER_NAMES:
                    offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert offenders == []
