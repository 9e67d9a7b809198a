"""Inference with TEA: geometry, the TEA op sets, identity models, bad input."""

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from JCSAugmentLib.augment import TEA_OPS
from JCSAugmentLib.augment.tables import TEA_MIRROR_OPS_DEEPMEDIC, TEA_MIRROR_OPS_NNUNET
from JCSAugmentLib.demo_augment import synthetic_case
from JCSAugmentLib.infer.predict import PredictionError, load_run, predict_cases, tea_plan
from JCSAugmentLib.infer.sliding_window import sliding_window_predict
from JCSAugmentLib.run.checkpoint import save_run_checkpoint
from JCSAugmentLib.run.job import Job
from JCSAugmentLib.train.trainer import Trainer


def tiny_trainer(data_dir, run_dir) -> Trainer:
    """A tiny joint-mode U-Net (base 2, 16^3 patches) on three synthetic cases written to
    ``data_dir`` (c0 train, c1 validation, c2 test), trained for one iteration; nothing is
    saved into ``run_dir`` yet."""
    cases = []
    for i in range(3):
        img, lab, _ = synthetic_case(size=(20, 24, 24), seed=i)
        p = os.path.join(str(data_dir), f"c{i}")
        sitk.WriteImage(img, p + "_img.nii.gz")
        sitk.WriteImage(lab, p + "_lab.nii.gz")
        cases.append({"id": f"c{i}", "images": [p + "_img.nii.gz"], "label": p + "_lab.nii.gz"})
    job = Job.from_dict({"schema": 1, "data": {"cases": cases, "splits": {
        "train": ["c0"], "validation": ["c1"], "test": ["c2"]}},
        "model": {"backbone": "unet3d", "patch_size": [16, 16, 16], "base_features": 2},
        "training": {"mode": "joint", "epochs": 1, "iterations_per_epoch": 1, "batch_size": 2,
                     "val_batch_size": 2, "tea_copies": 2},
        "device": "cpu", "seed": 0})
    tr = Trainer(job, str(run_dir))
    tr.step()
    return tr


def saved_tiny_run(tmp_path_factory):
    """A :func:`tiny_trainer` saved as the worker saves it: (its RunFolder, the test image
    c2)."""
    from JCSAugmentLib.run.folder import RunFolder
    data = tmp_path_factory.mktemp("data")
    folder = RunFolder(tmp_path_factory.mktemp("run"))
    tr = tiny_trainer(data, folder.path)
    folder.save_checkpoint(tr.state_dict(), best=True)
    folder.save_job(tr.job)
    return folder, os.path.join(str(data), "c2_img.nii.gz")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    run = str(tmp_path_factory.mktemp("run"))
    save_run_checkpoint(run, tiny_trainer(d, run).state_dict())  # last.pt only, no job.json
    return run, str(d)


def _image(path, size=(22, 26, 30), spacing=(0.8, 1.3, 2.5), direction=None, origin=None,
           channels=1):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=size[::-1]).astype(np.float32)
    img = sitk.GetImageFromArray(np.stack([arr] * channels, -1) if channels > 1 else arr,
                                 isVector=channels > 1)
    img.SetSpacing(spacing)
    img.SetOrigin(origin or (12.5, -40.0, 7.25))
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, path)
    return img


def _oblique():
    a = np.deg2rad(20)
    r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return tuple(r.flatten())


@pytest.mark.parametrize("name,direction", [
    ("lps.nii.gz", None),
    ("ras.nrrd", (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)),
    ("oblique.nii.gz", _oblique()),
    ("permuted.mha", (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
])
def test_prediction_keeps_the_input_geometry(trained_run, tmp_path, name, direction):
    run, _ = trained_run
    src = str(tmp_path / name)
    ref = _image(src, direction=direction)
    out = tmp_path / "out"
    rec = predict_cases(run, [[src]], str(out), tea="heuristic", uncertainty=True)[0]
    for path in (rec["prediction"], rec["uncertainty"]):
        got = sitk.ReadImage(path)
        assert got.GetSize() == ref.GetSize()
        assert np.allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-6)
        assert np.allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-5)
        assert np.allclose(got.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert rec["prediction"].endswith(name[name.index("."):])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(rec["prediction"]))
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_heuristic_tea_uses_exactly_the_mirror_ops_with_equal_weights(trained_run):
    run, _ = trained_run
    loaded = load_run(run)
    ops, weights = tea_plan(loaded, "heuristic")
    assert ops == list(TEA_MIRROR_OPS_NNUNET) and len(ops) == 8
    assert np.allclose(weights, 1 / 8)
    loaded.state["network"]["backbone"] = "deepmedic"
    ops, weights = tea_plan(loaded, "heuristic")
    assert ops == list(TEA_MIRROR_OPS_DEEPMEDIC) and np.allclose(weights, 1 / 4)
    loaded.state["network"]["backbone"] = "unet3d"
    ops, weights = tea_plan(loaded, "learned", z=5)
    assert len(ops) == 5 and np.isclose(sum(weights), 1)
    assert tea_plan(loaded, "none") == ([0], [1.0])


@pytest.mark.parametrize("op_set", ["none", "nnunet", "deepmedic", "exact", "all_spatial"])
def test_an_identity_model_gives_back_the_label_map(op_set):
    # The image encodes the labels (value = label); the "model" reads them back exactly, so
    # every TEA op set must return the label map (interpolated ops up to their boundaries).
    rng = np.random.default_rng(1)
    labels = torch.from_numpy(rng.integers(0, 3, size=(5, 6, 7))).repeat_interleave(4, 0) \
        .repeat_interleave(4, 1).repeat_interleave(4, 2)  # (20, 24, 28) blocks
    image = labels[None].float()

    def model(b):
        return torch.stack([-10 * (b[:, 0] - k) ** 2 for k in range(3)], 1)

    sets = {"none": [0], "nnunet": list(TEA_MIRROR_OPS_NNUNET),
            "deepmedic": list(TEA_MIRROR_OPS_DEEPMEDIC),
            "exact": [op.index for op in TEA_OPS if op.kind == "spatial" and op.invertible_exactly],
            "all_spatial": [op.index for op in TEA_OPS if op.kind == "spatial"]}
    logits, _ = sliding_window_predict(model, image, (12, 12, 12), (12, 12, 12), 3,
                                       sets[op_set])
    agree = (logits.argmax(0) == labels).double().mean()
    if op_set == "all_spatial":
        assert agree > 0.97
    else:
        assert agree == 1.0


def test_bad_inputs_fail_before_anything_is_written(trained_run, tmp_path):
    run, data = trained_run
    out = tmp_path / "out"
    good = os.path.join(data, "c2_img.nii.gz")
    two = str(tmp_path / "two_channels.nii.gz")
    _image(two, channels=2)
    with pytest.raises(PredictionError, match="2 channel"):
        predict_cases(run, [[good], [two]], str(out))
    tiny = str(tmp_path / "tiny.nii.gz")
    _image(tiny, size=(8, 8, 8))
    with pytest.raises(PredictionError, match="smaller than one patch"):
        predict_cases(run, [[good], [tiny]], str(out))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(PredictionError, match="broken"):
        predict_cases(run, [[good], [str(broken)]], str(out))
    with pytest.raises(PredictionError, match="no trained checkpoint"):
        predict_cases(str(tmp_path), [[good]], str(out))
    assert not out.exists() or not any(f.name.endswith(".nii.gz") for f in out.iterdir())
    with pytest.raises(PredictionError, match="overwrite its input"):
        predict_cases(run, [[good]], data)
