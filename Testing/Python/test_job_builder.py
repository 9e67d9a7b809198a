"""One settings -> job mapping (run/job_builder.TrainSettings) behind the command line's train
options, the panel's settings and the Slicer module's logic: the same settings give the same
Job whichever way they come in."""

import os

import pytest

from test_module_static import _stub_modules, loaded_module

from JCSAugmentLib import cli
from JCSAugmentLib.panel.settings import (PanelSettings, build_dataset_job, build_job,
                                          settings_from_job)
from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentLib.run.job import Job, JobError
from JCSAugmentLib.run.job_builder import TrainSettings, new_job

#: one choice of every setting the three share, and how the command line spells it
PANEL = dict(backbone="deepmedic", mode="class-specific", init="nnunet", epochs=3,
             minutes=12.5, device="cpu", seed=5, patch_size=[21, 21, 21], batch_size=4,
             iterations_per_epoch=7)
CLI_ARGS = ["--backbone", "deepmedic", "--mode", "class-specific", "--init", "nnunet",
            "--epochs", "3", "--time-budget", "12.5", "--device", "cpu", "--seed", "5",
            "--patch-size", "21", "21", "21", "--batch-size", "4",
            "--iterations-per-epoch", "7"]
#: the split the command line's dataset job gets (it has no option for them)
FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "Dataset001_Blobs"
    d.mkdir()
    (d / "dataset.json").write_text("{}")
    return str(d)


@pytest.fixture
def module():
    with loaded_module(_stub_modules(), "JCSAugment_job_builder_under_test") as mod:
        yield mod


def _cli_job(tmp_path, dataset, monkeypatch):
    """The job the train command writes (the worker checks it and writes job.json holding
    the folder's lock; training itself is left out)."""
    from JCSAugmentLib.train import worker
    monkeypatch.setattr(worker, "_run_main", lambda *a, **k: 0)
    out = str(tmp_path / "cli-run")
    assert cli.main(["train", "--dataset", dataset, "--out", out, "--quiet"] + CLI_ARGS) == 0
    return RunFolder(out).job()


def test_the_command_line_the_panel_and_the_slicer_logic_make_the_same_job(
        tmp_path, dataset, monkeypatch, module):
    from_cli = _cli_job(tmp_path, dataset, monkeypatch)
    settings = PanelSettings(output_folder=str(tmp_path / "runs"), **PANEL)
    from_panel = Job.from_dict(build_dataset_job(dataset, settings, FRACTIONS, 0))
    run = module.JCSAugmentLogic().prepareRun(settings, datasetFolder=dataset,
                                              splitFractions=FRACTIONS, splitSeed=0)
    from_logic = RunFolder(run).job()
    assert from_cli == from_panel == from_logic
    assert (from_cli.model.backbone, from_cli.training.epochs, from_cli.time_budget_minutes,
            from_cli.model.patch_size) == ("deepmedic", 3, 12.5, [21, 21, 21])
    # the case-table job sets the same fields (only its data section differs)
    cases = [{"id": f"c{i}", "images": [f"/d/c{i}.nrrd"], "label": f"/d/c{i}_seg.nrrd",
              "split": s} for i, s in enumerate(("train", "validation", "test"))]
    from_cases = Job.from_dict(build_job(cases, settings)).to_dict()
    assert {k: v for k, v in from_cases.items() if k != "data"} == \
        {k: v for k, v in from_cli.to_dict().items() if k != "data"}
    # and the panel reads its settings back from any of them
    back = settings_from_job(from_cli, output_folder=settings.output_folder)
    assert back.train_settings() == settings.train_settings()


def test_each_setting_names_a_field_of_the_job():
    defaults = Job().to_dict()
    for name in TrainSettings.names():
        node = defaults
        field = TrainSettings.__dataclass_fields__[name].metadata["job_field"]
        for part in field.split("."):
            assert isinstance(node, dict) and part in node, (name, field)
            node = node[part]
    s = TrainSettings(backbone="deepmedic", patch_size=(21, 21, 21), time_budget_minutes=30,
                      device="cuda:1")
    assert s.to_overrides() == {"model.backbone": "deepmedic", "model.patch_size": [21, 21, 21],
                                "device": "cuda:1", "time_budget_minutes": 30}
    job = new_job({"dataset": "/data/x"}, s)
    assert TrainSettings.from_job(job).to_overrides() == {
        **TrainSettings.from_job(Job.from_dict({"schema": 1, "data": {"dataset": "/d"}}))
        .to_overrides(), **s.to_overrides()}
    assert s.apply(job) == job  # applying again changes nothing
    assert TrainSettings.from_mapping({"epochs": 4, "out": "x", "resume": True}) == \
        TrainSettings(epochs=4)  # what is not a setting is left out
    with pytest.raises(JobError, match="training.mode"):
        TrainSettings(mode="jointt").apply(job)


def test_a_new_job_is_validated_once_as_a_whole():
    """A mode that needs no validation split is given with the cases that have none: the
    check runs on the finished job, not on the engine's default mode first."""
    data = {"cases": [{"id": "a", "images": ["a.nrrd"], "label": "a_seg.nrrd"}],
            "splits": {"train": ["a"], "validation": [], "test": []}}
    assert new_job(data, TrainSettings(mode="heuristic")).training.mode == "heuristic"
    with pytest.raises(JobError, match="validation"):
        new_job(data, TrainSettings(mode="joint"))


def test_the_panel_device_is_the_one_the_worker_sees():
    """The panel starts the worker with CUDA_VISIBLE_DEVICES naming its GPU: the job says
    "cuda"; the command line's --device is written as given."""
    assert PanelSettings(device="cuda:1").train_settings().device == "cuda"
    args = cli.build_parser().parse_args(["train", "run", "--device", "cuda:1",
                                          "--time-budget", "3"])
    assert TrainSettings.from_mapping(vars(args)).to_overrides() == {
        "device": "cuda:1", "time_budget_minutes": 3.0}


def test_no_other_module_keeps_its_own_copy_of_the_mapping():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for rel in ("JCSAugmentLib/cli.py", "JCSAugmentLib/panel/settings.py",
                "JCSAugment/JCSAugmentSlicer/logic.py"):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        for dotted in ("model.backbone", "training.epochs", "time_budget_minutes\":",
                       '"training":', '"model":'):
            assert dotted not in text, (rel, dotted)
