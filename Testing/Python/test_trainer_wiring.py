"""How the trainer wires the method together (method.md sections 3-5, 9): which TEA ops get
credit, which classes Eq. 10 normalises by, at which theta the TEA step runs, where randomness
comes from, which voxels the joint validation loss counts, where the TEA patch is centred, and
that CT datasets train and predict."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

import JCSAugmentLib.train.trainer as trainer_module
from JCSAugmentLib.augment import TEA_INDEX
from JCSAugmentLib.augment.tea import tea_invert, tea_transform
from JCSAugmentLib.infer.predict import predict_cases
from JCSAugmentLib.infer.sliding_window import sliding_window_predict
from JCSAugmentLib.nets.losses import per_sample_soft_dice
from JCSAugmentLib.run.checkpoint import load_checkpoint, save_run_checkpoint
from JCSAugmentLib.run.job import Job
from JCSAugmentLib.train.trainer import Trainer
from test_train import cases  # noqa: F401  (a fixture: the same four small synthetic cases)

TURN_AXIS0 = TEA_INDEX["rot90_axis0_+90"]
FLIP_AXIS0, FLIP_AXIS1 = TEA_INDEX["flip_axis0"], TEA_INDEX["flip_axis1"]
STRONGEST_NOISE = TEA_INDEX["noise_0.125"]
SHRINK = TEA_INDEX["scale_1.45"]  # its inverse leaves a wide border without prediction


def make_trainer(cases, folder, mode="joint", patch=(16, 16, 16), **training):
    settings = {"mode": mode, "epochs": 1, "iterations_per_epoch": 4, "batch_size": 4,
                "val_batch_size": 2, "tea_copies": 4}
    settings.update(training)
    job = {"schema": 1,
           "data": {"cases": cases, "splits": {"train": ["c0", "c1"], "validation": ["c2"],
                                               "test": []}},
           "model": {"backbone": "unet3d", "patch_size": list(patch), "base_features": 2},
           "training": settings, "device": "cpu", "seed": 5}
    return Trainer(Job.from_dict(job), str(folder))


def put_tea_mass_on(trainer, ops):
    """p_V uniform over ``ops``, zero elsewhere (identity included)."""
    with torch.no_grad():
        trainer.tea.logits.fill_(-1e4)
        trainer.tea.logits[list(ops)] = 0.0


def record_calls(monkeypatch, owner, name):
    """Wrap ``owner.name`` so that every call's arguments and result are kept."""
    original = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def logits_of(prediction):
    return getattr(prediction, "logits", prediction)


# -- 1. TEA credit goes only to ops that were evaluated ------------------------------------------
def test_tea_step_evaluates_quarter_turns_of_a_non_cubic_patch(cases, tmp_path, monkeypatch):
    tr = make_trainer(cases, tmp_path, patch=(16, 16, 8))  # the paper's 64x64x32, scaled down
    put_tea_mass_on(tr, [TURN_AXIS0])
    calls = record_calls(monkeypatch, trainer_module, "tea_meta_gradient")
    tr._tea_step()
    (_predict, x, y, ops, *_), _kwargs, result = calls[0]
    assert list(ops) == [TURN_AXIS0] * tr.job.training.tea_copies
    tr.model.eval()
    with torch.no_grad():
        turned = tr.model(tea_transform(x, TURN_AXIS0))
        back = torch.softmax(tea_invert(turned, TURN_AXIS0), 1)
    assert tuple(turned.shape[2:]) == (16, 8, 16)
    expected = 1 - per_sample_soft_dice(back, y)
    assert result.losses[1:].tolist() == pytest.approx(expected.double().tolist() * len(ops),
                                                       abs=1e-6)
    assert result.losses[1] != pytest.approx(float(result.losses[0]), abs=1e-6)


def test_tea_step_drops_copies_the_network_cannot_take(cases, tmp_path, monkeypatch):
    # 16 x 16 x 10: the U-Net's total stride (4, 4, 2) rejects 10 along axes 0 and 1, so a
    # quarter turn about axis 0 cannot be predicted; both flips can.
    tr = make_trainer(cases, tmp_path, patch=(16, 16, 10), tea_copies=6)
    put_tea_mass_on(tr, [TURN_AXIS0, FLIP_AXIS0, FLIP_AXIS1])
    draws = record_calls(monkeypatch, tr.tea, "sample")
    calls = record_calls(monkeypatch, trainer_module, "tea_meta_gradient")
    turns_drawn = 0
    for _ in range(3):
        tr._tea_step()
        drawn = draws[-1][2]
        (_predict, _x, _y, ops, *_), _kwargs, result = calls[-1]
        kept = [k for k, op in enumerate(drawn.index.tolist()) if op != TURN_AXIS0]
        turns_drawn += len(drawn.index) - len(kept)
        assert list(ops) == drawn.index[kept].tolist()  # no identity stands in for a turn
        # Eq. 15 counted over the evaluated copies only, mean-subtracted over them
        g = result.g
        h = g - g.mean()
        expected = torch.zeros(tr.tea.logits.shape, dtype=torch.float64)
        for j, k in enumerate(kept):
            op = int(drawn.index[k])
            same = sum(int(drawn.index[i]) == op for i in kept)
            soft = float(drawn.soft[k])
            expected[op] += h[j] / same * soft * (1 - soft)
        assert tr.tea.logits.grad[TURN_AXIS0] == 0
        assert torch.allclose(tr.tea.logits.grad.double(), expected, atol=1e-12)
    assert turns_drawn > 0


@pytest.mark.parametrize("patch,ops,evaluated", [
    ((16, 16, 8), [TURN_AXIS0], TURN_AXIS0),  # the turned patch (16, 8, 16) fits the U-Net
    ((16, 16, 10), [TURN_AXIS0, FLIP_AXIS0], FLIP_AXIS0),  # (16, 10, 16) does not
])
def test_joint_validation_forward_turns_only_what_the_network_takes(cases, tmp_path, patch, ops,
                                                                    evaluated):
    tr = make_trainer(cases, tmp_path, patch=patch)
    put_tea_mass_on(tr, ops)
    xv, _yv, stats = tr.validation_batch(4)
    tr.model.eval()
    shapes = []

    def predict(batch):
        shapes.append(tuple(batch.shape[2:]))
        return tr.model(batch)

    with torch.no_grad():
        got = logits_of(tr._tea_val_forward(stats)(predict, xv))
        expected = tea_invert(tr.model(tea_transform(xv, evaluated)), evaluated)
    turned_shape = (patch[0], patch[2], patch[1])
    assert (turned_shape in shapes) == (evaluated == TURN_AXIS0)
    # every patch predicted under an op the network can take, none under a stand-in identity
    assert torch.allclose(got, expected, atol=1e-5)


# -- 2. Eq. 10 normalises by the centre class, also with one shared policy ----------------------
def test_learned_mode_normalises_by_the_centre_class(cases, tmp_path, monkeypatch):
    tr = make_trainer(cases, tmp_path, mode="learned", batch_size=6)
    centres = record_calls(monkeypatch, tr.train_sampler, "sample")
    draws = record_calls(monkeypatch, tr.tra, "sample")
    steps = record_calls(monkeypatch, trainer_module, "meta_gradient")
    tr.step()
    centre_class = centres[-1][2].patch_class
    draw, g = draws[-1][2], steps[-1][2].g
    assert set(centre_class.tolist()) == {0, 1}
    h = g.clone()
    for c in (0, 1):
        h[centre_class == c] -= g[centre_class == c].mean()
    policy = tr.tra.policies[0]
    for gi, logits in enumerate(policy.logits):
        expected = torch.zeros(logits.shape, dtype=torch.float64)
        choices = draw.choices[:, gi]
        for i in range(len(g)):
            same_op = int((choices == choices[i]).sum())  # Eq. 11: one policy, all samples
            soft = float(draw.soft[i, gi])
            expected[choices[i]] += h[i] / same_op * soft * (1 - soft)
        assert torch.allclose(logits.grad.double(), expected, rtol=1e-5, atol=1e-12), gi


# -- 3. The TEA step runs at the current theta ---------------------------------------------------
def test_tea_step_runs_before_the_model_step(cases, tmp_path, monkeypatch):
    tr = make_trainer(cases, tmp_path)
    seen = []
    original = trainer_module.tea_meta_gradient

    def snapshot_then_run(*args, **kwargs):
        seen.append([p.detach().clone() for p in tr.model.parameters()])
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "tea_meta_gradient", snapshot_then_run)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.step()
    assert len(seen) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, seen[0]))
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


# -- 4. All randomness from the run's seed -------------------------------------------------------
def test_tea_noise_in_training_comes_from_the_run_seed(cases, tmp_path):
    first = make_trainer(cases, tmp_path / "a")
    second = make_trainer(cases, tmp_path / "b")
    for tr in (first, second):
        put_tea_mass_on(tr, [STRONGEST_NOISE])
    torch.manual_seed(100)
    a = first.step()
    torch.manual_seed(200)  # the global stream must not matter
    b = second.step()
    assert a.losses == b.losses
    assert torch.equal(first.tea.logits, second.tea.logits)
    for pa, pb in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(pa, pb)


def test_a_prediction_with_noise_tea_is_reproducible():
    image = torch.linspace(-1, 1, 20 * 20 * 20).reshape(1, 20, 20, 20)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def predict(batch):
        with torch.no_grad():
            return conv(batch)

    ops = [0, STRONGEST_NOISE]
    torch.manual_seed(1)
    first, _ = sliding_window_predict(predict, image, (12, 12, 12), (12, 12, 12), 2, ops)
    torch.manual_seed(2)
    again, _ = sliding_window_predict(predict, image, (12, 12, 12), (12, 12, 12), 2, ops)
    assert torch.equal(first, again)
    other, _ = sliding_window_predict(predict, image, (12, 12, 12), (12, 12, 12), 2, ops,
                                      seed=7)
    assert not torch.equal(first, other)
    gen = torch.Generator().manual_seed(7)
    from_gen, _ = sliding_window_predict(predict, image, (12, 12, 12), (12, 12, 12), 2, ops,
                                         generator=gen)
    assert from_gen.shape == first.shape and torch.isfinite(from_gen).all()


# -- 5. The joint validation loss leaves out voxels the inverse affine padded --------------------
def test_joint_validation_loss_skips_padded_voxels(cases, tmp_path):
    tr = make_trainer(cases, tmp_path)
    put_tea_mass_on(tr, [SHRINK])
    xv, yv, stats = tr.validation_batch(2)
    with torch.no_grad():
        loss = float(tr._val_loss(tr._tea_val_forward(stats)(tr.model, xv), yv))
        logits, padded = tea_invert(tr.model(tea_transform(xv, SHRINK))[0], SHRINK,
                                    return_mask=True)
    valid = ~padded[:, 0]
    assert 0 < int(padded.sum()) < padded.numel()
    target = yv[:, 0]
    ce_all = F.cross_entropy(logits, target, reduction="none")
    probs = torch.softmax(logits, 1)

    def dice_loss(mask):
        scores = []
        for c in range(1, probs.shape[1]):
            p, r = probs[:, c][mask], (target == c)[mask].to(probs.dtype)
            scores.append((2 * (p * r).sum() + 1e-5) / (p.sum() + r.sum() + 1e-5))
        return 1 - torch.stack(scores).mean()

    expected = float(ce_all[valid].mean() + dice_loss(valid))
    unmasked = float(ce_all.mean() + dice_loss(torch.ones_like(valid)))
    assert abs(expected - unmasked) > 1e-3  # the padded voxels do matter here
    assert loss == pytest.approx(expected, rel=1e-5)


# -- 6. The TEA step's patch is centred on foreground --------------------------------------------
def test_tea_step_patch_is_foreground_centred_whatever_the_sampler_mix(cases, tmp_path,
                                                                       monkeypatch):
    tr = make_trainer(cases, tmp_path, tea_copies=1)
    # a validation sampler that would draw background first must still give the TEA step a
    # foreground patch (it has foreground voxels to offer)
    monkeypatch.setattr(tr.val_sampler, "fg_fraction", 0.25)
    batches = record_calls(monkeypatch, tr, "validation_batch")
    for _ in range(4):
        tr._tea_step()
    classes = [int(args[1].patch_class[0]) for args, _kwargs, _result in batches]
    assert classes == [1] * 4


# -- 7. CT datasets train and predict ------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory):
    """Two CT cases in nnU-Net raw layout: air, a soft-tissue body, a brighter lesion (HU)."""
    root = tmp_path_factory.mktemp("Dataset001_TinyCT")
    os.makedirs(root / "imagesTr")
    os.makedirs(root / "labelsTr")
    size = (20, 24, 24)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in size], indexing="ij")
    for i, case in enumerate(("ct_a", "ct_b")):
        rng = np.random.default_rng(i)
        body = zz ** 2 / 0.8 + yy ** 2 / 0.7 + xx ** 2 / 0.7 < 1
        centre = rng.uniform(-0.25, 0.25, 3)
        lesion = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) < 0.12
        hu = np.where(body, 40.0, -1000.0) + np.where(lesion & body, 90.0, 0.0)
        hu += rng.normal(0, 15, size)
        image = sitk.GetImageFromArray(hu.astype(np.int16))
        label = sitk.GetImageFromArray((lesion & body).astype(np.uint8))
        for im in (image, label):
            im.SetSpacing((0.8, 0.8, 1.2))
        sitk.WriteImage(image, str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(label, str(root / "labelsTr" / f"{case}.nii.gz"))
    with open(root / "dataset.json", "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
                   "numTraining": 2, "file_ending": ".nii.gz"}, f)
    return str(root)


@pytest.fixture(scope="module")
def ct_run(ct_dataset, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("ct_run"))
    job = Job.from_dict({
        "schema": 1,
        "data": {"dataset": ct_dataset, "splits": {"train": ["ct_a"], "validation": ["ct_b"],
                                                   "test": []}},
        "model": {"backbone": "unet3d", "patch_size": [16, 16, 16], "base_features": 2},
        "training": {"mode": "joint", "epochs": 1, "iterations_per_epoch": 3, "batch_size": 2,
                     "val_batch_size": 2, "tea_copies": 2},
        "device": "cpu", "seed": 0})
    tr = Trainer(job, run)
    results = [tr.step() for _ in range(3)]
    save_run_checkpoint(run, tr.state_dict())
    return run, tr, results


def test_a_ct_dataset_trains(ct_run):
    _run, tr, results = ct_run
    assert [r.iteration for r in results] == [1, 2, 3]
    assert all(np.isfinite(v) for r in results for v in r.losses.values())
    stats = tr.ct_stats
    assert set(stats) >= {"lo", "hi", "mean", "std"} and len(stats["lo"]) == 1
    assert -1000 <= stats["lo"][0] < stats["hi"][0] <= 400  # foreground (lesion) HU range
    # both splits were normalised with the training cases' numbers
    for case in tr.train_cases + tr.val_cases:
        lesion = case.image[0][case.label > 0]
        assert abs(float(np.median(lesion))) < 3


def test_a_ct_run_predicts(ct_run, ct_dataset, tmp_path):
    run, _tr, _results = ct_run
    saved = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))
    assert "lo" in saved["preprocess"]["ct_statistics"]
    source = os.path.join(ct_dataset, "imagesTr", "ct_b_0000.nii.gz")
    outputs = []
    for name in ("first", "second"):
        record = predict_cases(run, [[source]], str(tmp_path / name), tea="heuristic",
                               checkpoint="last")[0]
        outputs.append(sitk.ReadImage(record["prediction"]))
    reference = sitk.ReadImage(source)
    assert outputs[0].GetSize() == reference.GetSize()
    assert np.allclose(outputs[0].GetSpacing(), reference.GetSpacing())
    arrays = [sitk.GetArrayFromImage(o) for o in outputs]
    assert set(np.unique(arrays[0])) <= {0, 1}
    assert np.array_equal(arrays[0], arrays[1])
