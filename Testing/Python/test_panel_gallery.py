"""The panel's policy gallery plumbing (JCSAugmentLib/panel/gallery.py): the run's labelled
cases, the rows to choose from, the command the panel starts -- all without torch."""

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from JCSAugmentLib.panel.gallery import (TEA_ROW, TRA_GROUP_NAMES, gallery_cases,
                                         gallery_command, gallery_png_path, gallery_rows)
from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentLib.run.job import Job

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _volume(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return str(path)


def _scene_run(tmp_path):
    """A run folder as the panel writes it: the cases listed in job.json, with splits."""
    run = tmp_path / "run"
    run.mkdir()
    cases = []
    for name, labelled in (("b", True), ("a", True), ("c", True), ("d", False), ("e", True)):
        image = _volume(tmp_path / f"{name}.nrrd", np.zeros((4, 4, 4), np.float32))
        label = _volume(tmp_path / f"{name}_label.nrrd", np.ones((4, 4, 4), np.uint8)) \
            if labelled else None
        cases.append({"id": name, "images": [image], "label": label})
    RunFolder(str(run)).save_job(Job.from_dict({
        "schema": 1, "data": {"cases": cases,
                              "splits": {"train": ["b", "a"], "validation": ["c"],
                                         "test": ["d", "e"]}},
        "training": {"mode": "joint"}}))
    return str(run)


def test_tra_group_names_are_the_tables():
    from JCSAugmentLib.augment.tables import TRA_GROUPS
    assert TRA_GROUP_NAMES == tuple(g.name for g in TRA_GROUPS)
    rows = gallery_rows()
    assert rows[0].group is None and rows[-1].group == TEA_ROW
    assert [r.group for r in rows[1:-1]] == list(TRA_GROUP_NAMES)


def test_labelled_cases_training_first(tmp_path):
    run = _scene_run(tmp_path)
    cases = gallery_cases(run)
    assert [(c.id, c.split) for c in cases] == [("a", "train"), ("b", "train"),
                                                ("c", "validation"), ("e", "test")]
    assert all(os.path.isfile(c.label) and os.path.isfile(c.images[0]) for c in cases)


def test_dataset_folder_run(tmp_path):
    from JCSAugmentLib.cli import main
    data = tmp_path / "Dataset001_Synth"
    assert main(["synth", str(data), "--n-train", "2", "--n-val", "1", "--n-test", "1",
                 "--size", "16", "32", "32"]) == 0
    run = tmp_path / "run"
    run.mkdir()
    RunFolder(str(run)).save_job(Job.from_dict({
        "schema": 1, "data": {"dataset": str(data)}, "training": {"mode": "joint"}}))
    cases = gallery_cases(str(run))
    assert len(cases) == 4 and {c.split for c in cases} <= {"train", "validation", "test",
                                                             "unused"}


def test_command_names_the_case_its_channels_and_the_row(tmp_path):
    from JCSAugmentLib.panel.gallery import GalleryCase
    case = GalleryCase("x", ["/d/t1.nrrd", "/d/flair.nrrd"], "/d/l.nrrd", "train")
    out = gallery_png_path("/runs/r", "x y", "gamma")
    assert out == os.path.join("/runs/r", "gallery", "x_y_gamma.png")
    cmd = gallery_command("/runs/r", case, out, group="gamma", python="py")
    assert cmd[:5] == ["py", "-m", "JCSAugmentLib", "policy", "/runs/r"]
    assert cmd[cmd.index("--gallery") + 1:cmd.index("--gallery") + 3] == ["/d/t1.nrrd",
                                                                          "/d/l.nrrd"]
    assert cmd[cmd.index("--channel") + 1] == "/d/flair.nrrd"
    assert cmd[cmd.index("--group") + 1] == "gamma" and cmd[cmd.index("--out") + 1] == out
    assert "--group" not in gallery_command("/runs/r", case, out, python="py")
    with pytest.raises(ValueError):
        gallery_command("/runs/r", case, out, group="gama", python="py")


def test_the_gui_side_imports_no_torch(tmp_path):
    run = _scene_run(tmp_path)
    code = ("import sys\n"
            "from JCSAugmentLib.panel.gallery import gallery_cases, gallery_rows\n"
            f"assert len(gallery_cases({run!r})) == 4 and gallery_rows()\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_notes_of_the_log():
    from JCSAugmentLib.panel.gallery import gallery_notes
    log = ("===== starting\nnote: the case has no foreground: background row only\n"
           "wrote x.png (62 tiles)\n  note: INITIAL policy\n")
    assert gallery_notes(log) == ["the case has no foreground: background row only",
                                  "INITIAL policy"]
