"""progress.png: the curves come from the run's typed events, the worker redraws the picture
at each validation, atomically, into the path the RunFolder names."""

import glob
import math
import os

import pytest

from JCSAugmentLib.charts.progress_chart import (draw_progress_chart, progress_series,
                                                 write_progress_png)
from JCSAugmentLib.run.events import PolicyUpdate, Progress, Started, Validation
from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentLib.run.job import Job, save_job
from JCSAugmentLib.train.worker import run_worker

from test_train import cases, job_dict  # noqa: F401 - the fast fixture and job of test_train

PNG = b"\x89PNG\r\n\x1a\n"


def _job(mode="joint", epochs=2, ipe=3):
    job = Job.from_dict({"schema": 1, "data": {"dataset": "/d"},
                         "training": {"mode": mode, "epochs": epochs,
                                      "iterations_per_epoch": ipe, "lr": 0.01,
                                      "poly_power": 1.0}}).resolved()
    return job.to_dict()


def _events(mode="joint"):
    half = [[0.5, 0.5]]
    return [Started(job=_job(mode)),
            *[Progress(epoch=(i - 1) // 3, iteration=i, of=6,
                       losses={"train": 1.0 / i, "val": 2.0 / i}) for i in range(1, 7)],
            Validation(epoch=0, metrics={"dice_foreground": 0.25, "dice_1": 0.2,
                                         "loss": 3.0}),
            Validation(epoch=1, metrics={"dice_foreground": 0.5, "dice_1": 0.4}),
            PolicyUpdate(iteration=1, tra={"foreground": half * 2, "background": [[1.0, 0.0]]},
                         tea=[0.25] * 4),
            PolicyUpdate(iteration=2, tra={"foreground": [[1.0, 0.0]] * 2,
                                           "background": [[1.0, 0.0]]}, tea=[1.0, 0, 0, 0])]


def test_the_series_of_a_synthetic_event_list():
    s = progress_series(_events())
    assert s.losses["train"][0] == (1, 1.0) and s.losses["val"][-1] == (6, pytest.approx(1 / 3))
    assert s.dice == {"foreground": [(3, 0.25), (6, 0.5)], "1": [(3, 0.2), (6, 0.4)]}
    # entropy in nats: two fair coins = 2 ln 2; sure choices = 0; TEA uniform over 4 = ln 4
    assert s.entropy["TRA foreground"] == [(1, pytest.approx(2 * math.log(2))), (2, 0.0)]
    assert s.entropy["TRA background"] == [(1, 0.0), (2, 0.0)]
    assert s.entropy["TEA"] == [(1, pytest.approx(math.log(4))), (2, 0.0)]
    # the trainer's poly decay (power 1 here): epoch 0 at full rate, epoch 1 at half
    net = dict(s.learning_rates["network"])
    assert net[1] == pytest.approx(0.01) and net[3] == pytest.approx(0.01)
    assert net[4] == pytest.approx(0.005)
    assert set(s.learning_rates) == {"network", "TRA policy", "TEA policy"}
    assert s.total_iterations == 6
    # a mode that learns no policy has no policy learning rates
    assert set(progress_series(_events("heuristic")).learning_rates) == {"network"}


def test_drawing_writes_a_png_atomically(tmp_path):
    out = tmp_path / "progress.png"
    png = draw_progress_chart(progress_series(_events()), title="run", out_path=str(out))
    assert png.startswith(PNG) and out.read_bytes() == png
    # no events yet still draws (panels say "no data yet")
    assert draw_progress_chart(progress_series([])).startswith(PNG)
    assert not glob.glob(str(tmp_path / "*.tmp"))


def test_the_worker_writes_progress_png_at_each_validation(cases, tmp_path, monkeypatch):
    from JCSAugmentLib.charts import progress_chart
    drawn = []
    real = progress_chart.write_progress_png

    def spy(folder):
        path = real(folder)
        drawn.append(os.path.getsize(path))
        return path

    monkeypatch.setattr(progress_chart, "write_progress_png", spy)
    run = str(tmp_path / "run")
    os.makedirs(run)
    # heuristic: the cheapest mode that validates (validate_every 1: two validations)
    save_job(run, job_dict(cases, "heuristic", its=1, epochs=2, preview_every=0,
                           checkpoint_every=100))
    assert run_worker(run, quiet=True) == 0
    folder = RunFolder(run)
    validations = [e for e in folder.read_events() if isinstance(e, Validation)]
    assert len(drawn) == len(validations) == 2
    with open(folder.progress_png_path, "rb") as f:
        assert f.read(8) == PNG
    assert folder.progress_png_path == os.path.join(run, "progress.png")
    assert not glob.glob(os.path.join(run, ".*.tmp"))
    s = progress_series(folder.read_events())
    assert s.losses["train"] and len(s.dice["foreground"]) == 2
    assert set(s.entropy) >= {"TRA foreground", "TRA background"}


def test_write_progress_png_reads_the_folders_events(tmp_path):
    folder = RunFolder(str(tmp_path))
    with folder.event_writer(fsync=False) as w:
        for ev in _events():
            w.write(ev)
    path = write_progress_png(folder)
    assert path == folder.progress_png_path and open(path, "rb").read(8) == PNG
