"""The trainer and its worker, end to end on a small synthetic dataset (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk
import torch

from JCSAugmentLib.demo_augment import synthetic_case
from JCSAugmentLib.run.checkpoint import load_checkpoint, save_checkpoint
from JCSAugmentLib.run.control import request_stop
from JCSAugmentLib.run.events import read_events
from JCSAugmentLib.run.job import Job, save_job
from JCSAugmentLib.run.status import read_status
from JCSAugmentLib.train.modes import MODES
from JCSAugmentLib.train.trainer import Trainer
from JCSAugmentLib.train.worker import run_worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    out = []
    for i in range(4):
        img, lab, _roi = synthetic_case(size=(28, 32, 32), seed=i)
        p = str(d / f"c{i}")
        sitk.WriteImage(img, p + "_img.nii.gz")
        sitk.WriteImage(lab, p + "_lab.nii.gz")
        out.append({"id": f"c{i}", "images": [p + "_img.nii.gz"], "label": p + "_lab.nii.gz"})
    return out


def job_dict(cases, mode="joint", backbone="unet3d", its=2, epochs=1, **training):
    # batch 4: two patches per class, so the class-wise normalised gradient (Eq. 10) is non-zero
    t = {"mode": mode, "epochs": epochs, "iterations_per_epoch": its, "batch_size": 4,
         "val_batch_size": 2, "tea_copies": 2, "preview_every": 1, "checkpoint_every": 1,
         "validate_every": 1}
    t.update(training)
    return {"schema": 1,
            "data": {"cases": cases, "splits": {"train": ["c0", "c1"], "validation": ["c2"],
                                                "test": ["c3"]}},
            "model": {"backbone": backbone,
                      "patch_size": [16, 16, 16] if backbone == "unet3d" else [5, 5, 5],
                      "base_features": 2},
            "training": t, "device": "cpu", "seed": 3}


@pytest.fixture(scope="module")
def pretrained(cases, tmp_path_factory):
    """Checkpoints of a briefly trained model per backbone, for tea-only mode."""
    out = {}
    for bb in ("unet3d", "deepmedic"):
        d = tmp_path_factory.mktemp(f"pre_{bb}")
        tr = Trainer(Job.from_dict(job_dict(cases, "heuristic", bb, its=1)), str(d))
        tr.step()
        path = str(d / "model.pt")
        save_checkpoint(path, tr.state_dict())
        out[bb] = path
    return out


@pytest.mark.parametrize("backbone", ["unet3d", "deepmedic"])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_runs_two_iterations(cases, pretrained, tmp_path, mode, backbone):
    extra = {"pretrained": pretrained[backbone]} if mode == "tea-only" else {}
    tr = Trainer(Job.from_dict(job_dict(cases, mode, backbone, **extra)), str(tmp_path))
    before_model = [p.detach().clone() for p in tr.model.parameters()]
    before_tra = [p.detach().clone() for p in tr.tra.parameters()]
    before_tea = tr.tea.logits.detach().clone()
    for _ in range(2):
        res = tr.step()
        assert all(torch.isfinite(torch.tensor(v)) for v in res.losses.values())
    spec = MODES[mode]
    model_moved = any(not torch.equal(a, b) for a, b in zip(before_model, tr.model.parameters()))
    tra_moved = any(not torch.equal(a, b) for a, b in zip(before_tra, tr.tra.parameters()))
    assert model_moved == spec.train_model
    assert tra_moved == spec.learn_tra
    assert (not torch.equal(before_tea, tr.tea.logits)) == spec.learn_tea
    assert tr.tra.num_classes == spec.tra_classes
    assert set(tr.validate()) >= {"dice_foreground"}


def test_pretrained_weights_start_a_trainable_mode(cases, pretrained, tmp_path):
    """training.pretrained in a mode that trains the model: the network starts from the
    checkpoint's weights (fine-tuning) and then trains; the policies start afresh."""
    saved = load_checkpoint(pretrained["unet3d"])["model"]
    fresh = Trainer(Job.from_dict(job_dict(cases, "joint")), str(tmp_path / "fresh"))
    tuned = Trainer(Job.from_dict(job_dict(cases, "joint", pretrained=pretrained["unet3d"])),
                    str(tmp_path / "tuned"))
    assert all(torch.equal(v, tuned.model.state_dict()[k]) for k, v in saved.items())
    assert not all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in saved.items())
    for a, b in zip(fresh.tra.parameters(), tuned.tra.parameters()):
        assert torch.equal(a, b)  # the policies are not the checkpoint's
    tuned.step()
    assert not all(torch.equal(v, tuned.model.state_dict()[k]) for k, v in saved.items())


def test_a_pretrained_checkpoint_of_another_network_is_refused_with_the_reason(
        cases, pretrained, tmp_path):
    job = job_dict(cases, "heuristic", pretrained=pretrained["unet3d"])
    job["model"]["base_features"] = 3  # not the pretrained run's network
    with pytest.raises(ValueError, match="training.pretrained.*does not fit this job's model"):
        Trainer(Job.from_dict(job), str(tmp_path))


def test_resume_from_a_checkpoint_continues_bit_for_bit(cases, tmp_path):
    job = Job.from_dict(job_dict(cases, "joint", its=4))
    straight = Trainer(job, str(tmp_path / "a"))
    for _ in range(4):
        straight.step()
    first = Trainer(job, str(tmp_path / "b"))
    for _ in range(2):
        first.step()
    path = str(tmp_path / "b" / "ck.pt")
    save_checkpoint(path, first.state_dict())
    resumed = Trainer(job, str(tmp_path / "b"))
    assert resumed.load_state_dict(load_checkpoint(path)) == []
    for _ in range(2):
        resumed.step()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.tra.parameters(), resumed.tra.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.tea.logits, resumed.tea.logits)


def test_worker_writes_the_run_folder(cases, tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    save_job(run, job_dict(cases, "joint", its=2))
    assert run_worker(run, quiet=True) == 0
    kinds = [e["kind"] for e in read_events(run)]
    for k in ("started", "progress", "policy", "preview", "checkpoint", "validation",
              "finished"):
        assert k in kinds, k
    assert kinds[-1] == "finished" and read_events(run)[-1]["reason"] == "completed"
    assert read_status(run)["state"] == "finished"
    from JCSAugmentLib.policy import load_policy
    tra, tea, meta = load_policy(os.path.join(run, "policy.json"))
    assert tra.num_classes == 2 and meta["iteration"] == 2
    assert os.path.exists(os.path.join(run, "previews", "preview_latest.png"))
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))
    assert state["iteration"] == 2


def test_stop_then_resume_equals_an_uninterrupted_run(cases, tmp_path):
    import threading
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    for run in (straight, stopped):
        os.makedirs(run)
        save_job(run, job_dict(cases, "class-specific", its=6, preview_every=0))
    assert run_worker(straight, quiet=True) == 0
    result = {}
    worker = threading.Thread(target=lambda: result.update(rc=run_worker(stopped, quiet=True)))
    worker.start()
    while worker.is_alive() and not any(e["kind"] == "progress" for e in read_events(stopped)):
        time.sleep(0.05)
    request_stop(stopped)  # honoured between iterations, after a checkpoint
    worker.join()
    assert result["rc"] == 0
    last = read_events(stopped)[-1]
    assert last["kind"] == "finished" and last["reason"] == "stopped"
    assert last["summary"]["iterations"] < 6
    assert read_status(stopped)["state"] == "stopped"
    assert run_worker(stopped, resume=True, quiet=True) == 0
    a = load_checkpoint(os.path.join(straight, "checkpoints", "last.pt"))
    b = load_checkpoint(os.path.join(stopped, "checkpoints", "last.pt"))
    assert a["iteration"] == b["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["tra"]:
        assert torch.equal(a["tra"][k], b["tra"][k]), k


def test_a_killed_worker_leaves_a_loadable_checkpoint(cases, tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    save_job(run, job_dict(cases, "joint", its=200, preview_every=0))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "JCSAugmentLib", "train", run, "--quiet"],
                            env=env, cwd=ROOT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if any(e["kind"] == "checkpoint" and e["iteration"] >= 2 for e in read_events(run)):
                break
            assert proc.poll() is None, "the worker ended early"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within the deadline")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))
    assert state["iteration"] >= 2
    events = read_events(run)
    assert events[0]["kind"] == "started" and events[-1]["kind"] != "finished"
    # the next worker repairs whatever the kill left and resumes
    save_job(run, job_dict(cases, "joint", its=state["iteration"] + 1, preview_every=0))
    assert run_worker(run, resume=True, quiet=True) == 0
    assert read_events(run)[-1]["kind"] == "finished"


def test_worker_refuses_a_bad_job_with_a_clear_error(tmp_path, capsys):
    run = str(tmp_path / "run")
    os.makedirs(run)
    with open(os.path.join(run, "job.json"), "w") as f:
        json.dump({"schema": 1, "training": {"mode": "jointt"}}, f)
    assert run_worker(run) == 2
    err = capsys.readouterr().err
    assert "training.mode" in err and "joint" in err
    assert read_events(run)[-1]["kind"] == "error"
    assert read_status(run)["state"] == "failed"


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_keeps_the_policies_identical(cases, tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    save_job(run, job_dict(cases, "joint", its=2, preview_every=0))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "JCSAugmentLib", "train", run, "--quiet"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from JCSAugmentLib.policy import load_policy, make_tea_policy, make_tra_policy
    tra0, tea0, _ = load_policy(os.path.join(run, "ranks", "policy_rank0.json"))
    tra1, tea1, _ = load_policy(os.path.join(run, "ranks", "policy_rank1.json"))
    for a, b in zip(tra0.parameters(), tra1.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(tea0.logits, tea1.logits)
    start = make_tra_policy("nnunet")
    assert any(not torch.allclose(a, b) for a, b in zip(tra0.parameters(), start.parameters()))
    assert not torch.allclose(tea0.logits, make_tea_policy("nnunet").logits)
    assert read_events(run)[-1]["reason"] == "completed"


def test_a_case_without_foreground_fails_before_training_with_its_name(cases, tmp_path):
    empty = dict(cases[1])
    img = sitk.ReadImage(empty["label"])
    blank = sitk.Image(img.GetSize(), img.GetPixelID())
    blank.CopyInformation(img)
    empty["label"] = str(tmp_path / "blank.nii.gz")
    sitk.WriteImage(blank, empty["label"])
    run = str(tmp_path / "run")
    os.makedirs(run)
    save_job(run, job_dict([cases[0], empty, cases[2], cases[3]], "joint"))
    assert run_worker(run, quiet=True) == 2  # the input's fault: refused, in one line
    err = read_events(run)[-1]
    assert err["kind"] == "error" and "c1" in err["message"] and "foreground" in err["message"]
    assert read_status(run)["state"] == "failed"
    assert not os.path.exists(os.path.join(run, "checkpoints", "last.pt"))


def test_a_time_budget_ends_the_run_with_reason_budget_and_caps_the_eta(cases, tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    d = job_dict(cases, "heuristic", its=100000, preview_every=0, checkpoint_every=1000,
                 validate_every=0)
    d["time_budget_minutes"] = 0.15  # 9 s, setup included
    save_job(run, d)
    t0 = time.time()
    assert run_worker(run, quiet=True) == 0
    assert time.time() - t0 < 60
    events = read_events(run)
    assert events[-1]["kind"] == "finished" and events[-1]["reason"] == "budget"
    etas = [e["eta"] for e in events if e["kind"] == "progress" and e.get("eta") is not None]
    assert etas and max(etas) <= 9.0  # the budget, not 100000 iterations, bounds the ETA
    assert os.path.exists(os.path.join(run, "checkpoints", "last.pt"))
    assert read_status(run)["state"] == "finished"
