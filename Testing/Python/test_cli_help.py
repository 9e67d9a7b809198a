"""The command line reads for a newcomer: every option of every subcommand says what it is and
its default; train's options that set job fields name the job's default (read from the job
schema) and the optimiser / learning-rate fields are options that land in job.json."""

import argparse

import pytest

from JCSAugmentLib import cli
from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentLib.run.job import Job
from JCSAugmentLib.run.job_builder import TrainSettings


def _subcommands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_of_every_subcommand_has_help_and_its_default():
    commands = _subcommands()
    assert {"train", "predict", "bench", "evaluate", "synth", "preview"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help text"
            default = action.default
            if action.option_strings and default is not None and not isinstance(default, bool):
                shown = (" ".join(map(str, default)) if isinstance(default, (list, tuple))
                         else str(default))
                assert f"default: {shown})" in " ".join(text.split()), where


def test_train_help_names_the_job_defaults_from_the_schema():
    text = " ".join(_subcommands()["train"].format_help().split())
    job = Job()
    assert f"--epochs N epochs to train; the learning rates decay over them (job default: " \
           f"{job.training.epochs})" in text
    assert f"(job default: {job.training.lr:g})" in text
    assert "--time-budget MINUTES" in text and "(job default: no limit)" in text
    assert "unet3d 64 64 64, deepmedic 21 21 21" in text  # patch size: null = per backbone
    # every setting the command line offers is a TrainSettings field and says its job default
    parser = _subcommands()["train"]
    settings = {a.dest for a in parser._actions} & set(TrainSettings.names())
    assert {"optimizer", "lr", "momentum", "nesterov", "weight_decay", "poly_power",
            "policy_lr", "tea_lr", "epochs"} <= settings
    for a in parser._actions:
        if a.dest in settings:
            assert "(job default: " in a.help, a.dest
            assert a.default is None, a.dest  # None keeps the job's value


def test_job_default_follows_the_schema(monkeypatch):
    """Not a second copy: the help reads the job's own default."""
    from JCSAugmentLib.run import job_builder
    changed = Job()
    changed.training.epochs, changed.training.lr = 7, 0.25
    monkeypatch.setattr(job_builder, "Job", lambda: changed)
    assert (TrainSettings.job_default("epochs"), TrainSettings.job_default("lr")) == ("7", "0.25")
    assert "(job default: 7)" in " ".join(_subcommands()["train"].format_help().split())


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "Dataset001_Blobs"
    d.mkdir()
    (d / "dataset.json").write_text("{}")
    return str(d)


def test_optimiser_and_learning_rate_options_land_in_job_json(tmp_path, dataset, monkeypatch,
                                                              capsys):
    from JCSAugmentLib.train import worker
    monkeypatch.setattr(worker, "_run_main", lambda *a, **k: 0)  # the job only, no training
    out = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", dataset, "--out", out, "--quiet",
                     "--optimizer", "adam", "--lr", "0.003", "--momentum", "0.9",
                     "--no-nesterov", "--weight-decay", "0", "--poly-power", "1.5",
                     "--policy-lr", "0.002", "--tea-lr", "0.0007"]) == 0
    t = RunFolder(out).job().training
    assert (t.optimizer, t.lr, t.momentum, t.nesterov, t.weight_decay, t.poly_power,
            t.policy_lr, t.tea_lr) == ("adam", 0.003, 0.9, False, 0.0, 1.5, 0.002, 0.0007)
    # a value the job refuses is one line naming the field, and no job is written
    bad = str(tmp_path / "bad")
    assert cli.main(["train", "--dataset", dataset, "--out", bad, "--lr", "-1"]) == 2
    assert "training.lr" in capsys.readouterr().err
    assert not RunFolder(bad).has_job()
