"""The panel's settings -> job.json (validated by the engine's Job)."""

import os

import pytest

from JCSAugmentLib.panel.settings import (MODE_LABELS, PanelSettings, build_job, job_device,
                                          new_run_dir, settings_from_job)
from JCSAugmentLib.run.job import MODES, Job, JobError, save_job


def cases(n=5, split=True):
    out = []
    splits = ["train", "train", "validation", "test", "unused"]
    for i in range(n):
        c = {"id": f"c{i}", "images": [f"/data/c{i}.nrrd"], "label": f"/data/c{i}_seg.nrrd"}
        if split:
            c["split"] = splits[i % len(splits)]
        out.append(c)
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("backbone", ["unet3d", "deepmedic"])
def test_every_mode_and_backbone_builds_a_valid_job(mode, backbone):
    s = PanelSettings(backbone=backbone, mode=mode, output_folder="/tmp/x",
                      pretrained="/m/model.pt" if mode == "tea-only" else None)
    d = build_job(cases(), s)
    job = Job.from_dict(d).validate()
    assert job.training.mode == mode and job.model.backbone == backbone
    assert d["data"]["splits"] == {"train": ["c0", "c1"], "validation": ["c2"], "test": ["c3"]}
    assert [c["id"] for c in d["data"]["cases"]] == ["c0", "c1", "c2", "c3"]  # c4 unused
    assert "split" not in d["data"]["cases"][0]
    assert mode in MODE_LABELS


def test_budget_device_and_sizes():
    s = PanelSettings(epochs=7, minutes=30, device="cuda:1", patch_size=(32, 48, 48),
                      batch_size=4, iterations_per_epoch=50, seed=5, init="deepmedic",
                      output_folder="o")
    d = build_job(cases(), s)
    assert d["time_budget_minutes"] == 30.0 and d["training"]["epochs"] == 7
    assert d["device"] == "cuda"  # the GPU is chosen through CUDA_VISIBLE_DEVICES
    assert d["model"]["patch_size"] == [32, 48, 48]
    assert (d["training"]["batch_size"], d["training"]["iterations_per_epoch"]) == (4, 50)
    assert d["seed"] == 5 and d["training"]["init"] == "deepmedic"
    assert build_job(cases(), PanelSettings(output_folder="o"))["time_budget_minutes"] is None
    assert [job_device(x) for x in ("auto", "cpu", "cuda:0", "CUDA:3")] == [
        "auto", "cpu", "cuda", "cuda"]


def test_splits_drawn_when_no_case_has_one():
    s = PanelSettings(seed=2, output_folder="o")
    d = build_job(cases(6, split=False), s)
    sp = d["data"]["splits"]
    assert sp == build_job(cases(6, split=False), s)["data"]["splits"]
    assert len(sp["train"]) >= 1 and len(sp["validation"]) >= 1
    assert sorted(sp["train"] + sp["validation"] + sp["test"]) == [f"c{i}" for i in range(6)]


def test_problems_are_sentences():
    with pytest.raises(ValueError, match="cases \\['c1'\\] have no split"):
        c = cases(2)
        del c[1]["split"]
        build_job(c, PanelSettings(output_folder="o"))
    with pytest.raises(ValueError, match="Epochs must be"):
        build_job(cases(), PanelSettings(epochs=0))
    with pytest.raises(ValueError, match="TEA only"):
        build_job(cases(), PanelSettings(mode="tea-only"))
    with pytest.raises(ValueError, match="time budget"):
        build_job(cases(), PanelSettings(minutes=0))
    with pytest.raises(JobError, match="validation"):  # the engine's own check
        build_job([dict(c, split="train") for c in cases(3)], PanelSettings(mode="joint"))
    bad = PanelSettings(backbone="vnet", mode="jointt", device="gpu", seed=-1,
                        patch_size=(32, 32), batch_size=0)
    probs = bad.problems()
    assert len(probs) == 7 and all(p.endswith(".") for p in probs)


def test_round_trips(tmp_path):
    s = PanelSettings(backbone="deepmedic", mode="class-specific", epochs=3, minutes=12.5,
                      device="cpu", output_folder=str(tmp_path), seed=4,
                      patch_size=[21, 21, 21])
    assert PanelSettings.from_dict(dict(s.to_dict(), unknown_key=1)) == s
    d = build_job(cases(), s)
    save_job(str(tmp_path / "run"), d)  # what the panel writes
    back = settings_from_job(d, output_folder=str(tmp_path))
    assert (back.backbone, back.mode, back.epochs, back.minutes, back.device, back.seed,
            back.patch_size) == ("deepmedic", "class-specific", 3, 12.5, "cpu", 4, [21, 21, 21])


def test_new_run_dir(tmp_path):
    a = new_run_dir(str(tmp_path), "my run!", now=0)
    b = new_run_dir(str(tmp_path), "my run!", now=0)
    assert os.path.isdir(a) and os.path.isdir(b) and a != b
    assert os.path.basename(a).startswith("my_run-") and b.endswith("-2")
