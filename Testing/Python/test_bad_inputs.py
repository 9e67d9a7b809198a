"""Bad inputs to every command end in one clear line and exit 2, and change nothing.

Each case builds its bad input here (tiny synthetic volumes, a tiny trained run), runs
``jcsaugment`` in-process and checks: exit status 2, exactly one line on stderr that starts
``jcsaugment CMD: error:`` and names the file / field / case, no traceback, and the run folder
and output folder byte-for-byte as they were (``train`` may only record the failure in
status.json and events.jsonl, as the run-folder protocol asks).
"""

import errno
import gzip
import json
import os
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from JCSAugmentLib.cli import main
from JCSAugmentLib.run.folder import RunFolder

from test_predict import tiny_trainer

#: a file only root could write, and not even root here: where a read-only target is needed
READ_ONLY_DIR = "/sys"


def _read_only_available() -> bool:
    probe = os.path.join(READ_ONLY_DIR, "jcsaugment-write-probe")
    try:
        with open(probe, "w"):
            pass
    except OSError:
        return True
    os.remove(probe)
    return False


needs_read_only = pytest.mark.skipif(not (os.name == "posix" and os.path.isdir(READ_ONLY_DIR)
                                          and _read_only_available()),
                                     reason="needs a folder this user cannot write to")


# ----------------------------------------------------------------------------- the files

def _write(arr, path, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), True)
    return str(path)


def _truncate(src, dst, fraction=0.6):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[:int(len(data) * fraction)])
    return str(dst)


def _huge_nrrd(path, pixel="float"):
    """A 4 KB NRRD whose header claims 1400^3 voxels (11 GB of float32)."""
    with open(path, "wb") as f:
        f.write(b"NRRD0004\ntype: " + pixel.encode() + b"\ndimension: 3\n"
                b"sizes: 1400 1400 1400\nencoding: raw\nendian: little\n\n" + b"\0" * 4000)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad volumes on one 20 x 24 x 24 grid."""
    d = tmp_path_factory.mktemp("volumes")
    rng = np.random.default_rng(0)
    img = rng.normal(size=(20, 24, 24)).astype(np.float32)
    lab = np.zeros((20, 24, 24), np.uint8)
    lab[6:14, 8:16, 8:16] = 1
    f = {"image": _write(img, d / "image.nii.gz"), "label": _write(lab, d / "label.nii.gz")}
    f["image_nrrd"] = _write(img, d / "image.nrrd")
    f["label_nrrd"] = _write(lab, d / "label.nrrd")
    f["truncated_image"] = _truncate(f["image"], d / "cut_image.nii.gz")
    f["truncated_label"] = _truncate(f["label"], d / "cut_label.nii.gz", 0.9)
    f["truncated_nrrd"] = _truncate(f["image_nrrd"], d / "cut_image.nrrd", 0.8)
    f["truncated_mha"] = _truncate(_write(img, d / "image.mha"), d / "cut_image.mha", 0.95)
    raw = gzip.compress(img.astype("<f4").tobytes())  # a detached NRRD, its data file cut short
    (d / "cut_data.raw.gz").write_bytes(raw[:len(raw) // 2])
    (d / "cut_detached.nhdr").write_text(
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 24 24 20\nendian: little\n"
        "encoding: gzip\ndata file: cut_data.raw.gz\n")
    f["truncated_nhdr"] = str(d / "cut_detached.nhdr")
    nan_lab = lab.astype(np.float32)
    nan_lab[0, 0, 0] = np.nan
    f["nan_label"] = _write(nan_lab, d / "nan_label.nii.gz")
    neg = lab.astype(np.int16)
    neg[0, 0, :3] = -1
    f["negative_label"] = _write(neg, d / "negative_label.nii.gz")
    frac = lab.astype(np.float32)
    frac[1, 1, 1] = 0.5
    f["fractional_label"] = _write(frac, d / "fractional_label.nii.gz")
    nan_img = img.copy()
    nan_img[3, 3, 3] = np.nan
    f["nan_image"] = _write(nan_img, d / "nan_image.nii.gz")
    f["huge"] = _huge_nrrd(d / "huge.nrrd")
    f["huge_label"] = _huge_nrrd(d / "huge_label.nrrd", "unsigned char")
    corrupt = bytearray(open(f["image"], "rb").read())
    corrupt[-6] ^= 0xFF  # the gzip length trailer no longer matches
    (d / "corrupt_image.nii.gz").write_bytes(bytes(corrupt))
    f["corrupt_image"] = str(d / "corrupt_image.nii.gz")
    (d / "not_an_image.nii.gz").write_bytes(b"hello")
    f["garbage"] = str(d / "not_an_image.nii.gz")
    f["dir"] = str(d)
    return f


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder (job.json, best.pt, last.pt) and its test case's image."""
    data = tmp_path_factory.mktemp("data")
    folder = RunFolder(tmp_path_factory.mktemp("trained"))
    tr = tiny_trainer(data, folder.path)
    folder.save_checkpoint(tr.state_dict(), best=True)
    folder.save_job(tr.job)
    from JCSAugmentLib.policy.policy_json import save_policy
    save_policy(folder.policy_path, tr.tra, tr.tea, meta={"iteration": 1})
    return folder, os.path.join(str(data), "c2_img.nii.gz"), str(data)


@pytest.fixture()
def run(trained, tmp_path):
    """A private copy of the trained run folder."""
    folder, image, _data = trained
    return RunFolder(shutil.copytree(folder.path, tmp_path / "run")), image


# ----------------------------------------------------------------------------- the check

def _snapshot(path):
    """Every file under ``path`` (or the file itself) with its bytes; None if absent."""
    path = str(path)
    if not os.path.lexists(path):
        return None
    if os.path.isfile(path):
        return open(path, "rb").read()
    out = {}
    for root, dirs, names in os.walk(path):
        for n in dirs + names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, path)] = open(p, "rb").read() if os.path.isfile(p) else "dir"
    return out


def refused(capsys, argv, names, watch=(), may_record=False, may_cache=False):
    """Run ``jcsaugment ARGV``; assert exit 2, one stderr line naming each of ``names``, no
    traceback, and every path in ``watch`` unchanged.  ``may_record``: a train run folder may
    gain the failure in status.json / events.jsonl (and nothing else); ``may_cache``: and
    preprocessed cases in its cache/ (derived data, made before the failure).  Returns the
    line."""
    before = [_snapshot(p) for p in watch]
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    line = lines[0]
    assert line.startswith(f"jcsaugment {argv[0]}: error: "), line
    for name in names:
        assert str(name) in line, (name, line)
    assert "weights_only" not in line
    for p, snap in zip(watch, before):
        now = _snapshot(p)
        if may_record and isinstance(now, dict):
            recorded = {"status.json", "events.jsonl"}
            if now.get("cache") == "dir" and not any(k.startswith("cache" + os.sep) for k in now):
                recorded.add("cache")  # an empty cache folder: nothing was cached
            if may_cache:
                recorded |= {k for k in now if k == "cache" or k.startswith("cache" + os.sep)}
            now = {k: v for k, v in now.items() if k not in recorded}
            snap = {k: v for k, v in (snap or {}).items() if k not in recorded}
        assert now == snap, f"{p} changed"
    return line


# ----------------------------------------------------------------------------- train

def _case_job(folder, image, label, data_dir, **training):
    """job.json of a tiny run on cases c0 (train: ``image``/``label``), c1 (validation) and
    c2 (test) of the trained fixture's data folder."""
    cases = [{"id": "c0", "images": [image], "label": label}]
    for i in (1, 2):
        cases.append({"id": f"c{i}", "images": [os.path.join(data_dir, f"c{i}_img.nii.gz")],
                      "label": os.path.join(data_dir, f"c{i}_lab.nii.gz")})
    job = {"schema": 1, "data": {"cases": cases, "splits": {
        "train": ["c0"], "validation": ["c1"], "test": ["c2"]}},
        "model": {"backbone": "unet3d", "patch_size": [16, 16, 16], "base_features": 2},
        "training": {"mode": "heuristic", "epochs": 1, "iterations_per_epoch": 1,
                     "batch_size": 2, "val_batch_size": 2, "tea_copies": 2, **training},
        "device": "cpu", "seed": 0}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "job.json"), "w") as f:
        json.dump(job, f)
    return str(folder)


@pytest.mark.parametrize("bad,quiet", [("truncated_image", False), ("huge", True),
                                       ("nan_image", False)])
def test_train_on_a_bad_image(files, trained, tmp_path, capsys, bad, quiet):
    folder = _case_job(tmp_path / "r", files[bad], files["label"], trained[2])
    line = refused(capsys, ["train", folder] + (["--quiet"] if quiet else []),
                   [files[bad], "case 'c0'"], watch=[folder], may_record=True)
    status = json.load(open(os.path.join(folder, "status.json")))
    assert status["state"] == "failed" and files[bad] in status["last_error"]
    events = [json.loads(x) for x in open(os.path.join(folder, "events.jsonl"))]
    assert events[-1]["kind"] == "error" and files[bad] in events[-1]["message"]
    assert line.endswith(status["last_error"])


@pytest.mark.parametrize("bad", ["truncated_label", "nan_label", "negative_label",
                                 "huge_label"])
def test_train_on_a_bad_label(files, trained, tmp_path, capsys, bad):
    folder = _case_job(tmp_path / "r", files["image"], files[bad], trained[2])
    refused(capsys, ["train", folder, "--quiet"], [files[bad]], watch=[folder],
            may_record=True)


@pytest.mark.parametrize("field,value,bound", [("batch_size", 200000, "[1, 1024]"),
                                               ("tea_copies", 10 ** 6, "[1, 256]"),
                                               ("epochs", 10 ** 9, "100000")])
def test_train_sizes_have_upper_bounds(files, trained, tmp_path, capsys, field, value, bound):
    folder = _case_job(tmp_path / "r", files["image"], files["label"], trained[2],
                       **{field: value})
    refused(capsys, ["train", folder], [f"training.{field}", bound], watch=[folder],
            may_record=True)


def test_train_refuses_an_unlabelled_training_case_in_the_schema(files, trained, tmp_path,
                                                                 capsys):
    folder = _case_job(tmp_path / "r", files["image"], None, trained[2])
    refused(capsys, ["train", folder], ["data.cases[0].label", "train split"], watch=[folder],
            may_record=True)


def test_an_unlabelled_test_case_is_accepted_where_training_accepts_it(trained):
    """The schema takes ``"label": null`` for a test case; so does the dataset training
    reads (only the case's images are ever read for it)."""
    from JCSAugmentLib.run.job import Job
    from JCSAugmentLib.train.trainer import dataset_and_splits
    folder, _image, data = trained
    job = folder.job().to_dict()
    job["data"]["cases"][2]["label"] = None
    dataset, splits = dataset_and_splits(Job.from_dict(job), folder.path)
    assert splits["test"] == ["c2"] and dataset.case("c2").label is None
    assert dataset.case("c2").files() == dataset.case("c2").images


def test_train_on_a_missing_run_folder_quietly(tmp_path, capsys):
    refused(capsys, ["train", tmp_path / "nope", "--quiet"], [tmp_path / "nope"],
            watch=[tmp_path])


def test_train_job_json_not_json(tmp_path, capsys):
    (tmp_path / "job.json").write_text("{not json")
    refused(capsys, ["train", tmp_path], ["job.json", "not valid JSON"], watch=[tmp_path],
            may_record=True)


def test_train_device_cuda_without_cuda(files, trained, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder = _case_job(tmp_path / "r", files["image"], files["label"], trained[2])
    refused(capsys, ["train", folder, "--device", "cuda"], ["cuda"], watch=[folder],
            may_record=True)


def test_train_out_is_a_file(tmp_path, capsys):
    ds = tmp_path / "Dataset001_X"
    ds.mkdir()
    out = tmp_path / "a_file"
    out.write_text("keep me")
    refused(capsys, ["train", "--dataset", ds, "--out", out], [out], watch=[tmp_path])


@needs_read_only
def test_train_out_is_read_only(tmp_path, capsys):
    out = os.path.join(READ_ONLY_DIR, "jcsaugment-run")
    refused(capsys, ["train", "--dataset", tmp_path, "--out", out], [out], watch=[tmp_path])
    assert not os.path.exists(out)


def test_train_splits_missing_or_not_json(tmp_path, capsys):
    ds = tmp_path / "Dataset001_X"
    ds.mkdir()
    out = tmp_path / "run"
    refused(capsys, ["train", "--dataset", ds, "--out", out, "--splits", tmp_path / "no.json"],
            ["--splits", "no.json"], watch=[tmp_path])
    (tmp_path / "bad.json").write_text("[1, 2")
    refused(capsys, ["train", "--dataset", ds, "--out", out, "--splits", tmp_path / "bad.json"],
            ["--splits", "bad.json", "JSON"], watch=[tmp_path])


def test_train_dataset_options_are_checked_with_the_given_mode(tmp_path, capsys):
    ds = tmp_path / "Dataset001_X"
    ds.mkdir()
    (ds / "dataset.json").write_text("{}")
    line = refused(capsys, ["train", "--dataset", ds, "--out", tmp_path / "run", "--quiet",
                            "--mode", "tea-only"], ["tea-only", "training.pretrained"],
                   watch=[tmp_path])
    assert "joint" not in line


def test_a_failed_dataset_start_is_not_advised_to_resume(tmp_path, capsys):
    ds = tmp_path / "Dataset001_X"
    ds.mkdir()
    (ds / "dataset.json").write_text("{}")
    out = tmp_path / "run"
    RunFolder(out).save_job(__import__("JCSAugmentLib.run.job", fromlist=["Job"]).Job.from_dict(
        {"schema": 1, "data": {"dataset": str(ds)}}))
    line = refused(capsys, ["train", "--dataset", ds, "--out", out], [out, "no checkpoint"],
                   watch=[tmp_path])
    assert "--resume" not in line


def test_train_disk_full_is_no_space_left(files, trained, tmp_path, capsys, monkeypatch):
    """A full disk while checkpointing: one line saying so, status.json failed."""
    from JCSAugmentLib.run import folder as folder_module

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(folder_module.RunFolder, "save_checkpoint", full)
    folder = _case_job(tmp_path / "r", files["image"], files["label"], trained[2])
    assert main(["train", folder, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on device" in err and "Traceback" not in err
    status = json.load(open(os.path.join(folder, "status.json")))
    assert status["state"] == "failed" and "no space left on device" in status["last_error"]
    last = [json.loads(x) for x in open(os.path.join(folder, "events.jsonl"))][-1]
    assert last["kind"] == "error" and "no space left on device" in last["message"]


def test_train_out_of_memory_is_recorded(files, trained, tmp_path, capsys, monkeypatch):
    from JCSAugmentLib.train import trainer as trainer_module

    def no_memory(self):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 99999999999 bytes.")
    monkeypatch.setattr(trainer_module.Trainer, "step", no_memory)
    folder = _case_job(tmp_path / "r", files["image"], files["label"], trained[2])
    assert main(["train", folder, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "batch_size" in err
    status = json.load(open(os.path.join(folder, "status.json")))
    assert status["state"] == "failed" and status["last_error"].startswith("out of memory")


def test_torchs_write_failure_on_a_full_disk_says_no_space(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as "enforce fail at inline_container.cc"."""
    import collections
    from JCSAugmentLib.run import checkpoint as ckpt
    from JCSAugmentLib.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"iteration": 1})

    def failing_save(obj, f):
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _p: usage(10 ** 9, 10 ** 9, 0))
    with pytest.raises(CheckpointError, match="no space left on device"):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


@pytest.mark.parametrize("damage", ["code", "truncated"])
def test_train_resume_from_a_bad_checkpoint(run, capsys, damage):
    folder, _image = run
    last = folder.checkpoint_path("last")
    if damage == "code":
        torch.save({"format": "jcsaugment-checkpoint", "state": _Code()}, last)
    else:
        data = open(last, "rb").read()
        with open(last, "wb") as f:
            f.write(data[:len(data) // 3])
    line = refused(capsys, ["train", folder.path, "--resume", "--quiet"], [last],
                   watch=[folder.path], may_record=True, may_cache=True)
    assert ("holds code" in line) if damage == "code" else ("corrupt" in line)
    assert folder.status()["state"] == "failed"


def test_a_stale_lock_whose_pid_another_process_has_does_not_block(tmp_path):
    """run.lock names a live pid, but that process started after the lock was written: the
    pid was reused, the lock is stale and is taken over with a warning."""
    from JCSAugmentLib.run.control import RunLock, live_worker, process_start_time
    if process_start_time(os.getppid()) is None:
        pytest.skip("process start times are not available here")
    (tmp_path / "run.lock").write_text(json.dumps(
        {"pid": os.getppid(), "host": __import__("socket").gethostname(),
         "started_at": 1000.0}))
    assert live_worker(str(tmp_path)) is None
    warnings = []
    with RunLock(str(tmp_path), on_warning=warnings.append):
        assert live_worker(str(tmp_path))["pid"] == os.getpid()
    assert warnings and "belongs to another process" in warnings[0]


# ----------------------------------------------------------------------------- predict

def _replace_checkpoint(folder, data: bytes):
    for which in ("best", "last"):
        p = folder.checkpoint_path(which)
        if os.path.exists(p):
            with open(p, "wb") as f:
                f.write(data)


class _Code:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


@pytest.mark.parametrize("container", ["torch zip", "bare pickle"])
def test_predict_a_checkpoint_that_holds_code(run, tmp_path, capsys, container):
    import pickle
    folder, image = run
    payload = {"format": "jcsaugment-checkpoint", "state": _Code()}
    if container == "torch zip":
        torch.save(payload, folder.checkpoint_path("best"))
    else:
        with open(folder.checkpoint_path("best"), "wb") as f:
            pickle.dump(payload, f, protocol=4)
    out = tmp_path / "out"
    line = refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out", out],
                   [folder.checkpoint_path("best"), "holds code", "refused", "system"],
                   watch=[folder.path, out])
    assert "corrupt" not in line


@pytest.mark.parametrize("what", ["truncated", "empty", "foreign", "text"])
def test_predict_a_damaged_checkpoint(run, tmp_path, capsys, what):
    folder, image = run
    best = folder.checkpoint_path("best")
    good = open(best, "rb").read()
    buf = {"truncated": good[:len(good) // 2], "empty": b"", "text": b"not a checkpoint"}
    if what == "foreign":
        torch.save({"weights": torch.zeros(2)}, best)
    else:
        _replace_checkpoint(folder, buf[what])
    refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out",
                     tmp_path / "out"], [best], watch=[folder.path, tmp_path / "out"])


@pytest.mark.parametrize("field,value", [("backbone", "nope"), ("in_channels", "two"),
                                         ("num_classes", -3), ("patch_size", None)])
def test_predict_a_checkpoint_with_tampered_fields(run, tmp_path, capsys, field, value):
    from JCSAugmentLib.run.checkpoint import load_checkpoint, save_checkpoint
    folder, image = run
    best = folder.checkpoint_path("best")
    state = load_checkpoint(best)
    state["network"][field] = value
    save_checkpoint(best, state)
    refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out",
                     tmp_path / "out"], [best], watch=[folder.path, tmp_path / "out"])


@pytest.mark.parametrize("z", ["0", "999", "-1"])
def test_predict_z_out_of_range(run, tmp_path, capsys, z):
    folder, image = run
    refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out",
                     tmp_path / "out", "--tea", "learned", "--z", z], ["--z", z],
            watch=[folder.path, tmp_path / "out"])


@pytest.mark.parametrize("step", ["0", "2", "nan"])
def test_predict_step_out_of_range(run, tmp_path, capsys, step):
    folder, image = run
    refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out",
                     tmp_path / "out", "--step", step], ["--step"],
            watch=[folder.path, tmp_path / "out"])


def test_predict_device_cuda_without_cuda(run, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder, image = run
    refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out",
                     tmp_path / "out", "--device", "cuda"], ["--device", "cuda"],
            watch=[folder.path, tmp_path / "out"])


def test_predict_out_is_a_file(run, tmp_path, capsys):
    folder, image = run
    out = tmp_path / "out_file"
    out.write_text("keep")
    refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out", out],
            [out], watch=[folder.path, out])


@needs_read_only
def test_predict_out_is_read_only(run, capsys):
    folder, image = run
    out = os.path.join(READ_ONLY_DIR, "jcsaugment-out")
    refused(capsys, ["predict", "--run", folder.path, "--image", image, "--out", out],
            [out], watch=[folder.path])
    assert not os.path.exists(out)


@pytest.mark.parametrize("bad", ["truncated_image", "truncated_nrrd", "truncated_mha",
                                 "truncated_nhdr", "corrupt_image", "huge", "nan_image",
                                 "garbage"])
def test_predict_a_bad_image(run, files, tmp_path, capsys, bad):
    folder, _image = run
    refused(capsys, ["predict", "--run", folder.path, "--image", files[bad], "--out",
                     tmp_path / "out"], [files[bad]], watch=[folder.path, tmp_path / "out"])


def test_predict_a_missing_image_or_run(run, tmp_path, capsys):
    folder, image = run
    refused(capsys, ["predict", "--run", folder.path, "--image", tmp_path / "no.nii.gz",
                     "--out", tmp_path / "out"], ["no.nii.gz"],
            watch=[folder.path, tmp_path / "out"])
    refused(capsys, ["predict", "--run", tmp_path / "norun", "--image", image, "--out",
                     tmp_path / "out"], ["norun"], watch=[tmp_path])


def test_predict_split_with_a_broken_job(run, tmp_path, capsys):
    folder, _image = run
    with open(folder.job_path, "w") as f:
        f.write('{"schema": 1, "data": {"cases": 3}}')
    refused(capsys, ["predict", "--run", folder.path, "--split", "test", "--out",
                     tmp_path / "out"], ["--split", "data.cases"],
            watch=[folder.path, tmp_path / "out"])


# ----------------------------------------------------------------------------- evaluate

def _eval_folders(tmp_path, files, pred, ref):
    p, r = tmp_path / "pred", tmp_path / "ref"
    p.mkdir()
    r.mkdir()
    shutil.copy(files[pred], p / "case1.nii.gz")
    shutil.copy(files[ref], r / "case1.nii.gz")
    return p, r


@pytest.mark.parametrize("pred,ref,bad", [
    ("label", "nan_label", "ref"), ("nan_label", "label", "pred"),
    ("negative_label", "label", "pred"), ("label", "negative_label", "ref"),
    ("truncated_label", "label", "pred"), ("label", "fractional_label", "ref")])
def test_evaluate_a_bad_label(files, tmp_path, capsys, pred, ref, bad):
    p, r = _eval_folders(tmp_path, files, pred, ref)
    refused(capsys, ["evaluate", "--pred", p, "--ref", r, "--csv", tmp_path / "m.csv"],
            ["case1", os.path.join(str(p if bad == "pred" else r), "case1.nii.gz")],
            watch=[tmp_path])


def test_evaluate_a_huge_header(files, tmp_path, capsys):
    p, r = tmp_path / "pred", tmp_path / "ref"
    p.mkdir()
    r.mkdir()
    shutil.copy(files["huge_label"], p / "case1.nrrd")
    shutil.copy(files["label_nrrd"], r / "case1.nrrd")
    refused(capsys, ["evaluate", "--pred", p, "--ref", r], ["case1.nrrd", "GB"],
            watch=[tmp_path])


@needs_read_only
def test_evaluate_csv_read_only(files, tmp_path, capsys):
    p, r = _eval_folders(tmp_path, files, "label", "label")
    csv = os.path.join(READ_ONLY_DIR, "m.csv")
    refused(capsys, ["evaluate", "--pred", p, "--ref", r, "--csv", csv], [READ_ONLY_DIR],
            watch=[tmp_path])


def test_evaluate_csv_is_a_folder_or_missing_folder(files, tmp_path, capsys):
    p, r = _eval_folders(tmp_path, files, "label", "label")
    refused(capsys, ["evaluate", "--pred", p, "--ref", r, "--csv", p], ["--csv"],
            watch=[tmp_path])
    refused(capsys, ["evaluate", "--pred", tmp_path / "nopred", "--ref", r], ["nopred"],
            watch=[tmp_path])


# ----------------------------------------------------------------------------- policy

def test_policy_without_a_policy(tmp_path, capsys):
    refused(capsys, ["policy", tmp_path, "--out", tmp_path / "p.png"], ["policy.json"],
            watch=[tmp_path])


@pytest.mark.parametrize("damage", ["not json", "logits text", "wrong format", "nan"])
def test_policy_a_malformed_policy_file(run, tmp_path, capsys, damage):
    folder, _image = run
    d = json.load(open(folder.policy_path))
    if damage == "not json":
        text = "{"
    else:
        if damage == "logits text":
            d["tea"]["logits"] = "many"
        elif damage == "wrong format":
            d["format"] = "something-else"
        else:
            d["tea"]["logits"][0] = float("nan")
        text = json.dumps(d)
    with open(folder.policy_path, "w") as f:
        f.write(text)
    refused(capsys, ["policy", folder.path, "--out", tmp_path / "p.png"],
            [folder.policy_path], watch=[folder.path, tmp_path / "p.png"])


def test_policy_out_is_a_folder(run, tmp_path, capsys):
    folder, _image = run
    refused(capsys, ["policy", folder.path, "--out", tmp_path], [tmp_path],
            watch=[folder.path, tmp_path])


@needs_read_only
def test_policy_out_read_only(run, capsys):
    folder, _image = run
    out = os.path.join(READ_ONLY_DIR, "p.png")
    refused(capsys, ["policy", folder.path, "--out", out], [out], watch=[folder.path])


# ----------------------------------------------------------------------------- preview

@pytest.mark.parametrize("image,label,bad", [
    ("truncated_image", "label", "truncated_image"), ("image", "nan_label", "nan_label"),
    ("image", "negative_label", "negative_label"), ("huge", "label", "huge"),
    ("image", "truncated_label", "truncated_label")])
def test_preview_bad_volumes(files, tmp_path, capsys, image, label, bad):
    refused(capsys, ["preview", files[image], files[label], "--out", tmp_path / "p.png"],
            [files[bad]], watch=[tmp_path])


def test_preview_device_cuda_without_cuda(files, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(capsys, ["preview", files["image"], files["label"], "--out", tmp_path / "p.png",
                     "--device", "cuda"], ["--device", "cuda"], watch=[tmp_path])


def test_preview_missing_policy_file(files, tmp_path, capsys):
    refused(capsys, ["preview", files["image"], files["label"], "--out", tmp_path / "p.png",
                     "--policy", tmp_path / "none.json"], ["none.json"], watch=[tmp_path])


# ----------------------------------------------------------------------------- stop

def test_stop_a_missing_folder_or_a_file(tmp_path, capsys):
    refused(capsys, ["stop", tmp_path / "nope"], [tmp_path / "nope"], watch=[tmp_path])
    (tmp_path / "f").write_text("x")
    refused(capsys, ["stop", tmp_path / "f"], [tmp_path / "f"], watch=[tmp_path])


def test_stop_without_a_live_worker_writes_nothing(run, capsys):
    folder, _image = run
    line = refused(capsys, ["stop", folder.path], [folder.path, "no worker is running"],
                   watch=[folder.path])
    assert not folder.stop_requested() and "asked" not in line
    with open(os.path.join(folder.path, "run.lock"), "w") as f:  # a lock left by a dead pid
        json.dump({"pid": 2 ** 22 + 7, "host": __import__("socket").gethostname(),
                   "started_at": 1.0}, f)
    refused(capsys, ["stop", folder.path], ["no worker is running"], watch=[folder.path])


def test_preview_out_is_a_folder(files, tmp_path, capsys):
    (tmp_path / "pics").mkdir()
    refused(capsys, ["preview", files["image"], files["label"], "--out", tmp_path / "pics"],
            ["--out", tmp_path / "pics"], watch=[tmp_path])


def test_slicer_reads_take_the_checked_path(files):
    from JCSAugmentLib.slicer_scene import SceneError, _read
    for bad in ("truncated_image", "huge", "truncated_nrrd"):
        with pytest.raises(SceneError, match=re.escape(files[bad])):
            _read(files[bad])
    with pytest.raises(SceneError, match="GB"):
        _read(files["huge_label"], "label")


# ----------------------------------------------------------------------------- the budget

def test_the_volume_budget_is_configurable(files, monkeypatch, capsys, tmp_path):
    from JCSAugmentLib.io.file_checks import MAX_VOLUME_GB_ENV
    monkeypatch.setenv(MAX_VOLUME_GB_ENV, "0.00001")  # 10 kB: the 46 kB image is refused
    refused(capsys, ["preview", files["image"], files["label"], "--out", tmp_path / "p.png"],
            [files["image"], MAX_VOLUME_GB_ENV, "1e-05 GB"], watch=[tmp_path])
    monkeypatch.setenv(MAX_VOLUME_GB_ENV, "lots")
    refused(capsys, ["preview", files["image"], files["label"], "--out", tmp_path / "p.png"],
            [MAX_VOLUME_GB_ENV, "lots"], watch=[tmp_path])


def test_debug_shows_the_traceback(files, tmp_path):
    from JCSAugmentLib.io.volume import VolumeError
    with pytest.raises(VolumeError, match="truncated"):
        main(["--debug", "preview", files["truncated_image"], files["label"], "--out",
              str(tmp_path / "p.png")])


def test_complete_files_still_read(files):
    """The checks refuse only what is wrong: every good file of every format reads."""
    from JCSAugmentLib.io.volume import read_label, read_volume
    for name in ("image", "image_nrrd"):
        assert read_volume(files[name]).shape_zyx == (20, 24, 24)
    for name in ("label", "label_nrrd"):
        assert int(read_label(files[name]).array.max()) == 1
    with gzip.open(files["image"]) as f:
        assert len(f.read()) > 20 * 24 * 24 * 4
