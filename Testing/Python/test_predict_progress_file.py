"""predict's progress file for the Slicer panel: a real run leaves a final ``done`` record,
the writer is throttled and atomic, and the reader returns None (never raises) on anything
that is not a progress file."""

import json
import os

import pytest

from JCSAugmentLib.cli import main
from JCSAugmentLib.infer import predict
from JCSAugmentLib.infer.predict import predict_cases
from JCSAugmentLib.infer.progress import (PROGRESS_FILE_NAME, PredictProgress, ProgressFile,
                                          describe)
from JCSAugmentLib.panel.predict_progress import (PredictProgressStatus, predict_progress_path,
                                                  read_predict_progress)

from test_predict import saved_tiny_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return saved_tiny_run(tmp_path_factory)


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp") or n.startswith(".predict")]


def test_a_quiet_predict_run_leaves_a_final_done_file(trained, tmp_path, capsys):
    folder, image = trained
    out = tmp_path / "good"
    assert main(["predict", "--run", folder.path, "--image", image, "--out", str(out),
                 "--tea", "heuristic", "--batch-windows", "1", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    status = read_predict_progress(out)
    assert isinstance(status, PredictProgressStatus)
    assert status.state == "done" and status.finished and status.error is None
    p = status.progress
    assert p.windows_total > 1 and p.windows_done == p.windows_total
    assert p.case_windows_done == p.case_windows_total and p.cases_total == 1
    assert p.case_name == "c2_img.nii.gz" and status.fraction == 1.0
    assert status.describe().startswith("done: 1 case, ")
    assert status.pid == os.getpid()
    assert _leftovers(out) == []  # no temporary file left behind
    assert predict_progress_path(out) == os.path.join(str(out), "predict_progress.json")


def test_every_batch_is_seen_and_a_failure_is_written(trained, tmp_path, monkeypatch):
    folder, image = trained
    seen = []
    real_write = ProgressFile._write

    def spy(self, state, error=None):
        real_write(self, state, error)
        seen.append(read_predict_progress(os.path.dirname(self.path)))
    monkeypatch.setattr(ProgressFile, "_write", spy)
    events = []
    predict_cases(folder, [[image]], str(tmp_path / "a"), tea="heuristic", batch_windows=1,
                  progress_file=True, window_progress=events.append)
    # the first record before any window, the case's end, and the final "done"
    assert seen[0].state == "running" and seen[0].progress.windows_done == 0
    assert seen[0].describe().startswith("starting: 1 case, ")
    assert seen[0].progress.eta_s is None and seen[0].fraction == 0.0
    assert seen[-1].state == "done" and seen[-2].progress.case_windows_done == \
        seen[-2].progress.case_windows_total
    assert len(events) == events[-1].windows_total > 1  # the panel's callback saw them all
    # throttled: fewer writes than window batches (the tiny windows take milliseconds)
    assert len(seen) < len(events) + 2

    def broken(*args, **kwargs):
        kwargs["progress"](PredictProgress(0, 1, "c2_img.nii.gz", 1, 4, 0.1, 0.3, 1, 4, 0.1,
                                           0.3))
        raise RuntimeError("out of memory\nin the middle")
    monkeypatch.setattr(predict, "sliding_window_predict", broken)
    with pytest.raises(RuntimeError):
        predict_cases(folder, [[image]], str(tmp_path / "b"), tea="none", progress_file=True)
    status = read_predict_progress(tmp_path / "b")
    assert status.state == "failed" and status.finished
    assert status.error == "RuntimeError: out of memory in the middle"
    assert status.describe() == ("failed in case 1/1 c2_img.nii.gz: RuntimeError: out of "
                                 "memory in the middle")
    assert status.fraction == 0.25


def test_without_the_option_no_file_is_written(trained, tmp_path):
    folder, image = trained
    predict_cases(folder, [[image]], str(tmp_path / "c"), tea="none")
    assert not (tmp_path / "c" / PROGRESS_FILE_NAME).exists()


def test_the_writer_is_throttled_but_keeps_case_ends(tmp_path):
    clock = [0.0]
    f = ProgressFile(str(tmp_path), min_interval_s=0.5, clock=lambda: clock[0])
    f.start(2, 8, "a.nii.gz")

    def rec(case, done, total, all_done):
        return PredictProgress(case, 2, "a.nii.gz", done, total, 1.0, 1.0, all_done, 8, 1.0,
                               1.0)
    for i in range(1, 4):  # three batches within 0.3 s: not written
        clock[0] += 0.1
        f(rec(0, i, 4, i))
    assert f.writes == 1
    clock[0] += 0.5  # half a second since the last write: written
    f(rec(0, 3, 4, 3))
    assert f.writes == 2
    clock[0] += 0.01  # the case's last window: always written
    f(rec(0, 4, 4, 4))
    assert f.writes == 3
    status = read_predict_progress(tmp_path)
    assert status.state == "running" and status.progress.windows_done == 4
    assert status.fraction == 0.5 and status.describe() == describe(status.progress)
    f.finish("done")
    assert read_predict_progress(tmp_path).progress.windows_done == 8
    with pytest.raises(ValueError):
        f.finish("running")
    assert _leftovers(tmp_path) == []


def test_the_write_is_atomic(tmp_path, monkeypatch):
    f = ProgressFile(str(tmp_path))
    f.start(1, 4, "a.nii.gz")
    before = (tmp_path / PROGRESS_FILE_NAME).read_text()
    # the new content goes to a temporary file that is moved over the old one: while it is
    # written, the progress file still holds the whole previous record
    seen = {}
    real = os.replace

    def replace(src, dst):
        seen["src"], seen["during"] = src, (tmp_path / PROGRESS_FILE_NAME).read_text()
        assert json.loads(open(src).read())["state"] == "done"  # written in full already
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    f.finish("done")
    assert seen["during"] == before
    assert os.path.dirname(seen["src"]) == str(tmp_path) and not os.path.exists(seen["src"])
    # a failing replace leaves the old file and no temporary one, and does not raise
    notes = []
    g = ProgressFile(str(tmp_path), on_error=notes.append)

    def fail(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail)
    g.start(1, 4, "b.nii.gz")
    g.finish("done")
    assert len(notes) == 1 and "progress not written" in notes[0]
    assert read_predict_progress(tmp_path).progress.case_name == "a.nii.gz"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("content", [
    b"", b"{", b'{"format": "jcsaugment-predict-progress", "schema": 1, "sta',
    b"\xff\xfe\x00", b"[1, 2]", b"null", b'{"state": "done"}',
    b'{"format": "something-else", "schema": 1, "state": "done"}'])
def test_garbage_and_foreign_files_read_as_none(tmp_path, content):
    (tmp_path / PROGRESS_FILE_NAME).write_bytes(content)
    assert read_predict_progress(tmp_path) is None


def test_a_valid_record_with_a_bad_field_or_another_schema_reads_as_none(tmp_path):
    f = ProgressFile(str(tmp_path))
    f.start(1, 4, "a.nii.gz")
    good = json.loads((tmp_path / PROGRESS_FILE_NAME).read_text())
    assert read_predict_progress(tmp_path) is not None
    for change in ({"schema": 2}, {"state": "paused"}, {"windows_done": 5},
                   {"windows_total": "4"}, {"eta_s": -1}, {"case_name": None},
                   {"elapsed_s": True}, {"cases_total": 1.5}):
        (tmp_path / PROGRESS_FILE_NAME).write_text(json.dumps({**good, **change}))
        assert read_predict_progress(tmp_path) is None, change
    assert read_predict_progress(tmp_path / "missing") is None
    os.remove(tmp_path / PROGRESS_FILE_NAME)
    os.mkdir(tmp_path / PROGRESS_FILE_NAME)  # a folder in its place
    assert read_predict_progress(tmp_path) is None


def test_the_reader_imports_neither_torch_nor_numpy():
    # it runs in Slicer's GUI process, on a 500 ms timer
    import subprocess
    import sys
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    code = ("import sys; import JCSAugmentLib.panel.predict_progress; "
            "bad = [m for m in ('torch', 'numpy', 'SimpleITK', 'slicer', 'qt', 'vtk') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.path.abspath(root)), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_replace_blocked_for_a_moment_is_retried(tmp_path, monkeypatch):
    # Windows: a reader holding the file open blocks os.replace for a moment
    f = ProgressFile(str(tmp_path))
    real = os.replace
    blocked = [2]

    def replace(src, dst):
        if blocked[0]:
            blocked[0] -= 1
            raise PermissionError(13, "in use")
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    f.start(1, 4, "a.nii.gz")
    assert blocked[0] == 0 and f.writes == 1
    assert read_predict_progress(tmp_path).state == "running"


def test_a_refused_predict_writes_no_progress_file(trained, tmp_path, capsys):
    folder, image = trained
    out = tmp_path / "refused"
    assert main(["predict", "--run", folder.path, "--image", image, "--out", str(out),
                 "--step", "1.5"]) == 2
    assert "--step" in capsys.readouterr().err
    assert not out.exists()
