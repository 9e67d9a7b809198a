"""predict's window batches and progress: the records, the terminal line, --quiet and
--batch-windows on the command line."""

import io
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from JCSAugmentLib.cli import main
from JCSAugmentLib.infer import predict
from JCSAugmentLib.infer.predict import PredictionError, predict_cases
from JCSAugmentLib.infer.progress import PredictProgress, ProgressLine, describe, format_seconds

from test_predict import saved_tiny_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder, image = saved_tiny_run(tmp_path_factory)
    images = [image]
    # a second case: the first one's image under another name
    second = os.path.join(str(tmp_path_factory.mktemp("more")), "other_img.nii.gz")
    shutil.copy(images[0], second)
    return folder, images + [second]


def test_records_cover_every_case_and_the_result_matches_one_window(trained, tmp_path):
    folder, images = trained
    events = []
    recs = predict_cases(folder, [[f] for f in images], str(tmp_path / "a"), tea="heuristic",
                         batch_windows=3, window_progress=events.append)
    assert all(isinstance(e, PredictProgress) for e in events)
    per_case = [[e for e in events if e.case_index == c] for c in (0, 1)]
    assert all(per_case) and {e.cases_total for e in events} == {2}
    totals = [p[-1].case_windows_total for p in per_case]
    assert [p[-1].case_windows_done for p in per_case] == totals
    assert events[-1].windows_done == events[-1].windows_total == sum(totals)
    assert [e.windows_done for e in events] == sorted(e.windows_done for e in events)
    assert events[-1].eta_s == 0 and per_case[0][-1].case_eta_s == 0
    assert per_case[1][0].case_name == "other_img.nii.gz"
    # the one-window path writes the same label map
    one = predict_cases(folder, [[images[0]]], str(tmp_path / "b"), tea="heuristic",
                        batch_windows=1)
    a = sitk.GetArrayFromImage(sitk.ReadImage(recs[0]["prediction"]))
    b = sitk.GetArrayFromImage(sitk.ReadImage(one[0]["prediction"]))
    assert np.array_equal(a, b)


def test_a_bad_batch_size_fails_before_anything_is_written(trained, tmp_path):
    folder, images = trained
    with pytest.raises(PredictionError, match="batch-windows"):
        predict_cases(folder, [[images[0]]], str(tmp_path / "out"), batch_windows=0)
    assert not (tmp_path / "out").exists()


def test_the_progress_line_rewrites_itself_on_a_terminal_only():
    p = PredictProgress(1, 3, "c.nii.gz", 12, 32, 5.0, 14.2, 44, 96, 30.0, 62.0)
    assert describe(p) == ("case 2/3 c.nii.gz: windows 12/32, ETA 0:14 | all: 44/96 windows, "
                           "ETA 1:02")
    assert format_seconds(3725) == "1:02:05" and format_seconds(None) == "?"
    term = io.StringIO()
    line = ProgressLine(term, enabled=True)
    line(p)
    line(p)
    line.clear()
    text = term.getvalue()
    assert text.count(describe(p)) == 2 and "\n" not in text  # one line, rewritten
    assert text.endswith(" " * len(describe(p)) + "\r")  # cleared for the next output
    pipe = io.StringIO()  # not a terminal: nothing
    quiet = ProgressLine(pipe)
    quiet(p)
    quiet.clear()
    assert pipe.getvalue() == ""


def test_the_command_passes_batch_windows_and_quiet(trained, tmp_path, monkeypatch, capsys):
    folder, images = trained
    seen = {}
    real = predict.sliding_window_predict

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(predict, "sliding_window_predict", spy)
    monkeypatch.setattr(ProgressLine, "__init__", _recording_init(seen))
    assert main(["predict", "--run", folder.path, "--image", images[0], "--out",
                 str(tmp_path / "q"), "--batch-windows", "2", "--quiet"]) == 0
    assert seen["batch_windows"] == 2 and seen["line_enabled"] is False
    assert callable(seen["progress"])
    assert "wrote" in capsys.readouterr().out


def _recording_init(seen):
    real = ProgressLine.__init__

    def init(self, stream=None, enabled=None):
        real(self, stream, enabled)
        seen["line_enabled"] = self.enabled
    return init
