"""Prediction from a run folder: the job's inference settings, the checkpoint it names, outputs
it refuses to overwrite; and ``jcsaugment stop`` on a folder that is not there."""

import os
import shutil

import pytest

from JCSAugmentLib.cli import main
from JCSAugmentLib.infer import predict
from JCSAugmentLib.infer.predict import PredictionError, PredictOptions, predict_cases
from JCSAugmentLib.run.folder import RunFolder

from test_predict import tiny_trainer


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """A run folder with job.json, best.pt from iteration 1 and last.pt from iteration 2 (so
    the two are told apart by their iteration); its test case's image."""
    data = tmp_path_factory.mktemp("data")
    folder = RunFolder(tmp_path_factory.mktemp("run"))
    tr = tiny_trainer(data, folder.path)
    folder.save_checkpoint(tr.state_dict(), best=True)
    tr.step()
    folder.save_checkpoint(tr.state_dict())
    folder.save_job(tr.job)
    return folder, os.path.join(str(data), "c2_img.nii.gz")


@pytest.fixture()
def run(trained_folder, tmp_path):
    """A private copy of the trained folder (tests change its job.json and checkpoints)."""
    folder, image = trained_folder
    copy = RunFolder(shutil.copytree(folder.path, tmp_path / "run"))
    return copy, image


def _set_inference(folder, **inference):
    folder.save_job(folder.job().with_overrides(
        {f"inference.{k}": v for k, v in inference.items()}))


@pytest.fixture()
def window_calls(monkeypatch):
    """The keyword arguments of every sliding-window call predict makes."""
    calls = []
    real = predict.sliding_window_predict

    def spy(*args, **kwargs):
        calls.append({"tea_ops": list(args[5]), **kwargs})
        return real(*args, **kwargs)
    monkeypatch.setattr(predict, "sliding_window_predict", spy)
    return calls


def test_predict_cases_takes_the_jobs_inference_settings(run, tmp_path, window_calls):
    folder, image = run
    _set_inference(folder, tea="learned", tea_top_z=2, step=0.25)
    rec = predict_cases(folder, [[image]], str(tmp_path / "a"))[0]
    assert rec["tea"] == "learned" and len(rec["tea_ops"]) == 2 and rec["step"] == 0.25
    assert len(window_calls[-1]["tea_ops"]) == 2 and window_calls[-1]["step"] == 0.25
    _set_inference(folder, tea="none")
    rec = predict_cases(folder.path, [[image]], str(tmp_path / "b"))[0]
    assert rec["tea_ops"] == [0] and window_calls[-1]["tea_ops"] == [0]
    # what the caller gives wins over the job
    rec = predict_cases(folder, [[image]], str(tmp_path / "c"),
                        PredictOptions(tea="learned", z=3, step=0.5))[0]
    assert len(rec["tea_ops"]) == 3 and window_calls[-1]["step"] == 0.5


def test_the_cli_takes_the_jobs_inference_settings(run, tmp_path, window_calls, capsys):
    folder, image = run
    _set_inference(folder, tea="none", tea_top_z=2, step=0.25)
    assert main(["predict", "--run", folder.path, "--image", image,
                 "--out", str(tmp_path / "out")]) == 0
    assert window_calls[-1]["tea_ops"] == [0] and window_calls[-1]["step"] == 0.25
    assert "TEA none: ops [0]; sliding-window step 0.25" in capsys.readouterr().out
    assert main(["predict", "--run", folder.path, "--image", image, "--out",
                 str(tmp_path / "out2"), "--tea", "learned", "--step", "0.5"]) == 0
    assert len(window_calls[-1]["tea_ops"]) == 2 and window_calls[-1]["step"] == 0.5


def test_without_a_readable_job_the_checkpoints_backbone_defaults_are_used(run, tmp_path):
    folder, image = run
    os.remove(folder.job_path)
    said = []
    rec = predict_cases(folder, [[image]], str(tmp_path / "out"), progress=said.append)[0]
    assert len(rec["tea_ops"]) == 8 and rec["step"] == 0.5  # joint U-Net: learned, top 8
    assert any("default inference settings for unet3d" in s for s in said), said


def test_predict_names_the_checkpoint_and_its_iteration(run, tmp_path, capsys):
    folder, image = run
    said = []
    rec = predict_cases(folder, [[image]], str(tmp_path / "best"), progress=said.append)[0]
    assert "using best.pt (best, iteration 1)" in said
    assert rec["checkpoint"] == {"path": folder.checkpoint_path("best"), "which": "best",
                                 "iteration": 1, "note": None}
    rec = predict_cases(folder, [[image]], str(tmp_path / "last"), checkpoint="last")[0]
    assert rec["checkpoint"]["which"] == "last" and rec["checkpoint"]["iteration"] == 2
    os.remove(folder.checkpoint_path("best"))
    assert main(["predict", "--run", folder.path, "--image", image,
                 "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "using last.pt (last, iteration 2); the run has no best.pt yet" in out


def test_a_damaged_best_checkpoint_is_an_error_not_a_silent_fallback(run, tmp_path, capsys):
    folder, image = run
    with open(folder.checkpoint_path("best"), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(PredictionError, match="best.pt.*--checkpoint last"):
        predict_cases(folder, [[image]], str(tmp_path / "out"))
    assert main(["predict", "--run", folder.path, "--image", image,
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.pt" in err
    assert not (tmp_path / "out").exists()


def test_predict_refuses_to_overwrite_unless_told(run, tmp_path, capsys):
    folder, image = run
    second = str(tmp_path / "second.nii.gz")
    shutil.copy(image, second)
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "second.nii.gz"
    existing.write_bytes(b"a label map the user keeps")
    argv = ["predict", "--run", folder.path, "--image", image, "--image", second,
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(existing) in err and "--overwrite" in err
    assert existing.read_bytes() == b"a label map the user keeps"
    assert sorted(os.listdir(out)) == ["second.nii.gz"]  # nothing predicted before refusing
    with pytest.raises(PredictionError, match="already exists"):
        predict_cases(folder, [[second]], str(out))
    assert main(argv + ["--overwrite"]) == 0
    import SimpleITK as sitk
    assert sitk.ReadImage(str(existing)).GetSize() == sitk.ReadImage(second).GetSize()
    assert sorted(os.listdir(out)) == ["c2_img.nii.gz", "predict_progress.json", "second.nii.gz"]


def test_the_uncertainty_map_counts_as_an_output(run, tmp_path):
    folder, image = run
    out = tmp_path / "out"
    out.mkdir()
    (out / "c2_img_tea_disagreement.nii.gz").write_bytes(b"keep")
    with pytest.raises(PredictionError, match="c2_img_tea_disagreement.nii.gz already exists"):
        predict_cases(folder, [[image]], str(out), uncertainty=True)
    assert sorted(os.listdir(out)) == ["c2_img_tea_disagreement.nii.gz"]


@pytest.mark.parametrize("what", ["missing", "file"])
def test_stop_without_a_run_folder_is_one_line(tmp_path, capsys, what):
    target = tmp_path / "runs" / "nope"
    if what == "file":
        target = tmp_path / "a_file"
        target.write_text("x")
    assert main(["stop", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jcsaugment stop: error: ")
    assert str(target) in err
    assert not (tmp_path / "runs").exists()


def test_stop_asks_the_folders_worker(tmp_path, capsys):
    from JCSAugmentLib.run.control import RunLock
    with RunLock(str(tmp_path)):  # a live worker holds the folder
        assert main(["stop", str(tmp_path)]) == 0
    assert RunFolder(tmp_path).stop_requested()
    assert "stop after its current iteration" in capsys.readouterr().out


def test_learned_tea_at_inference_takes_only_ops_the_network_can_evaluate():
    """A quarter turn of a non-cubic window changes its shape: DeepMedic's fixed output cannot
    be turned back, so such ops are left out of the top z even when p_V ranks them first."""
    import types

    import torch
    from JCSAugmentLib.meta.tea_step import evaluable_tea_ops
    from JCSAugmentLib.nets.factory import build_network
    from JCSAugmentLib.policy.policies import TEAPolicy
    from JCSAugmentLib.run.job import Job
    model, info = build_network("deepmedic", 1, 2, (9, 9, 5))
    evaluable = evaluable_tea_ops(model, info.input_size, info.output_size)
    refused = [i for i, ok in enumerate(evaluable.tolist()) if not ok]
    assert refused  # the turns that swap the 5 with a 9
    tea = TEAPolicy()
    with torch.no_grad():
        tea.logits[refused] = 10.0  # the most probable ops are the refused ones
    run = types.SimpleNamespace(model=model, info=info, tea=tea, state={},
                                inference=Job().resolved().inference)
    ops, weights = predict.tea_plan(run, "learned", z=len(refused) + 2)
    assert not set(ops) & set(refused) and len(ops) == len(refused) + 2
    assert abs(sum(weights) - 1.0) < 1e-9
    assert tea.top(3)[0][0] in refused  # without the mask they would have been chosen
