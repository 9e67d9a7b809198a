"""The module's logic (JCSAugmentLogic in JCSAugment/JCSAugment.py) on a real MRML scene from the
``slicer-core`` wheel: exporting the case table into a run folder and refusing bad input, pairing
scene volumes, and end to end a two-iteration CPU training in the real worker process, curves,
policy pictures (drawn in a subprocess), preview nodes and a prediction with learned TEA loaded
back onto the input's grid with metrics.

Only Qt, CTK, ScriptedLoadableModule and parameterNodeWrapper are stand-ins (they need the Slicer
application); MRML, vtk and the engine are real. Skipped without slicer-core.
"""

import json
import os
import types

import numpy as np
import pytest

from test_module_static import _stub_modules, loaded_module

STUBBED = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")

#: the smallest job that exercises every part of the worker (two iterations)
TINY = {"model.base_features": 2, "training.val_batch_size": 2, "training.tea_copies": 2,
        "training.validate_every": 1, "training.preview_every": 1,
        "training.checkpoint_every": 1}


@pytest.fixture(scope="module")
def module():
    pytest.importorskip("slicer_core", reason="slicer-core (PyPI wheel with the MRML scene) is "
                                              "not installed: pip install -e '.[test]'")
    import slicer
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("'import slicer' is not slicer-core's (the unrelated PyPI 'slicer' shadows "
                    "it)")
    stubs = _stub_modules()
    with loaded_module({name: stubs[name] for name in STUBBED},
                       "JCSAugment_logic_under_test") as mod:
        yield mod


@pytest.fixture
def scene(module):
    from JCSAugmentLib.slicer_scene import headless_scene
    s = headless_scene()
    yield s
    s.Clear(True)


def _matrix(spacing=(1.2, 0.9, 1.5), angle=0.3, origin=(10.0, -20.0, 5.0)):
    import vtk
    m = vtk.vtkMatrix4x4()
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, rot[r, c] * spacing[c])
        m.SetElement(r, 3, origin[r])
    return m


def _volume(scene, name, arr, cls="vtkMRMLScalarVolumeNode", matrix=None):
    import slicer.util
    node = scene.AddNewNodeByClass(cls, name)
    slicer.util.updateVolumeFromArray(node, arr)
    node.SetIJKToRASMatrix(matrix if matrix is not None else _matrix())
    node.CreateDefaultDisplayNodes()
    return node


def _case(scene, name, seed, shape=(32, 32, 32), segmentation=False):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
    blob = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < (6 + rng.uniform(0, 2)) ** 2
    image = _volume(scene, name, (100.0 * blob + rng.normal(0, 10, shape)).astype(np.float32))
    label = _volume(scene, f"{name} label", blob.astype(np.uint8), "vtkMRMLLabelMapVolumeNode")
    if segmentation:
        from JCSAugmentLib.slicer_scene import label_map_to_segmentation
        seg = label_map_to_segmentation(label, scene=scene, name=f"{name} segmentation")
        seg.RemoveAttribute("JCSAugment.role")  # as if the user had drawn it
        scene.RemoveNode(label)
        return image, seg
    return image, label


def _settings(out, **kw):
    from JCSAugmentLib.panel.settings import PanelSettings
    values = dict(backbone="unet3d", mode="joint", epochs=1, device="cpu", output_folder=str(out),
                  seed=0, patch_size=[16, 16, 16], batch_size=2, iterations_per_epoch=2)
    values.update(kw)
    return PanelSettings(**values)


class _Params(types.SimpleNamespace):
    """A stand-in parameter node (plain attributes, and what slicer.util.NodeModify calls)."""

    def StartModify(self):
        return 0

    def EndModify(self, was):
        return 0


def _params(**kw):
    values = dict(caseIds=[], caseImages=[], caseLabels=[], caseSplits=[], mode="joint",
                  trainFraction=0.6, validationFraction=0.2, testFraction=0.2, splitSeed=0)
    values.update(kw)
    return _Params(**values)


def _elements(node):
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


# ----------------------------------------------------------------------------- cases

def test_prepare_run_exports_the_case_table(module, scene, tmp_path):
    from JCSAugmentLib.run.job import load_job
    logic = module.JCSAugmentLogic()
    cases = [_case(scene, f"c{i}", i, shape=(12, 12, 12), segmentation=(i == 1))
             for i in range(4)]
    rows = [{"case_id": f"c{i}", "image_nodes": [v], "label_node": lab, "split": split}
            for i, ((v, lab), split) in enumerate(zip(cases, ("train", "validation", "test",
                                                               "unused")))]
    run = logic.prepareRun(_settings(tmp_path / "out"), rows=rows)
    job = load_job(run)
    assert job.data.splits == {"train": ["c0"], "validation": ["c1"], "test": ["c2"]}
    assert [c.id for c in job.data.cases] == ["c0", "c1", "c2"]
    for c in job.data.cases:
        assert all(os.path.isfile(os.path.join(run, p)) for p in c.images + [c.label])
    assert logic.isRunFolder(run)
    logic.checkRunFolder(run)


def test_bad_case_tables_are_refused_and_leave_nothing_behind(module, scene, tmp_path):
    from JCSAugmentLib.slicer_scene import SceneError
    logic = module.JCSAugmentLogic()
    out = tmp_path / "out"
    out.mkdir()
    (v0, l0), (v1, l1) = _case(scene, "a", 0, (12, 12, 12)), _case(scene, "b", 1, (12, 12, 12))
    rows = [{"case_id": "a", "image_nodes": [v0], "label_node": l0, "split": "train"},
            {"case_id": "b", "image_nodes": [v1], "label_node": l1, "split": "test"}]
    with pytest.raises(ValueError, match="validation"):
        logic.prepareRun(_settings(out), rows=rows)
    rows[0]["split"] = "unused"
    with pytest.raises(ValueError, match="training"):
        logic.prepareRun(_settings(out), rows=rows)
    rows[0]["split"], rows[1]["split"] = "train", "validation"
    other_grid = _volume(scene, "small", np.ones((8, 12, 12), np.uint8),
                         "vtkMRMLLabelMapVolumeNode")
    rows[0]["label_node"] = other_grid
    with pytest.raises(SceneError, match="grid"):
        logic.prepareRun(_settings(out), rows=rows)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.GetSegmentation().AddEmptySegment("nothing")
    rows[0]["label_node"] = empty
    with pytest.raises(SceneError, match="empty"):
        logic.prepareRun(_settings(out), rows=rows)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    import slicer.util
    slicer.util.updateVolumeFromArray(vector, np.zeros((12, 12, 12, 3), np.uint8))
    rows[0]["label_node"], rows[0]["image_nodes"] = l0, [vector]
    with pytest.raises(SceneError):
        logic.prepareRun(_settings(out), rows=rows)
    assert os.listdir(out) == [], "a refused run leaves no folder behind"
    rows[0]["image_nodes"] = [v0]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="Cannot create a run folder"):
        logic.prepareRun(_settings(blocker), rows=rows)
    assert scene.GetNodeByID(v0.GetID()) is not None


def test_add_all_pairs_pairs_scene_volumes_by_name(module, scene):
    logic = module.JCSAugmentLogic()
    for i in range(3):
        _case(scene, f"patient{i}", i, (8, 8, 8), segmentation=(i == 2))
    _volume(scene, "lonely", np.zeros((8, 8, 8), np.float32))
    ours = _volume(scene, "JCSAugment preview foreground patches",
                   np.zeros((8, 8, 8), np.float32))
    ours.SetAttribute("JCSAugment.role", "preview:x")
    p = _params()
    added, note = logic.addAllPairs(p, scene=scene)
    assert added == 3 and "lonely" in note, note
    assert p.caseIds == ["patient0", "patient1", "patient2"]
    assert p.caseLabels[2].IsA("vtkMRMLSegmentationNode")
    assert logic.addAllPairs(p, scene=scene)[0] == 0, "pairs already in the table are skipped"
    logic.autoSplitCases(p)
    assert sorted(p.caseSplits) == ["test", "train", "validation"]
    assert logic.caseProblems(p) == []


def test_dataset_folder_run(module, tmp_path):
    logic = module.JCSAugmentLogic()
    data = tmp_path / "Dataset001"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    run = logic.prepareRun(_settings(tmp_path / "out"), datasetFolder=str(data),
                           splitFractions={"train": 2, "validation": 1, "test": 1}, splitSeed=3)
    with open(os.path.join(run, "job.json"), encoding="utf-8") as f:
        job = json.load(f)
    assert job["data"]["dataset"] == str(data) and job["data"]["split_seed"] == 3
    assert job["data"]["split_fractions"] == {"train": 0.5, "validation": 0.25, "test": 0.25}


# ----------------------------------------------------------------------------- end to end

def test_train_curves_pictures_preview_and_predict(module, scene, tmp_path):
    logic = module.JCSAugmentLogic()
    cases = [_case(scene, "case0", 0), _case(scene, "case1", 1, segmentation=True),
             _case(scene, "case2", 2)]
    rows = [{"case_id": f"case{i}", "image_nodes": [v], "label_node": lab, "split": split}
            for i, ((v, lab), split) in enumerate(zip(cases, ("train", "validation", "test")))]
    run, worker = logic.train(_settings(tmp_path / "out"), rows=rows, overrides=TINY, wait=True,
                              timeout=900)
    view = logic.viewState(run, worker)
    assert view.state == "done", f"{view.message}\n{view.error}\n{view.log_tail}"
    assert view.loss_curves and view.checkpoint and view.policy is not None

    nodes = logic.curveNodes(scene)
    logic.updateCurves(nodes, view.loss_curves, view.dice_curve)
    assert nodes["loss"][0].GetNumberOfRows() > 0
    assert nodes["view"][0].GetPlotChartNodeID() == nodes["loss"][1].GetID()
    assert logic.curveNodes(scene)["view"][0].GetID() == nodes["view"][0].GetID()

    pngs = logic.drawPolicyPictures(run, outDir=str(tmp_path / "pictures"))
    assert set(pngs) == {"tra_foreground", "tra_background", "tea"}
    for path in pngs.values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    preview = logic.showPreview(run, scene=scene)
    assert {"foreground patches", "foreground labels", "background patches",
            "background labels"} <= set(preview)
    assert preview["foreground labels"].IsA("vtkMRMLLabelMapVolumeNode")
    again = logic.showPreview(run, scene=scene)
    assert again["foreground patches"].GetID() == preview["foreground patches"].GetID()

    volume, reference = cases[2]
    with pytest.raises(ValueError, match="no test case"):
        logic.predictionInputs(_params(predictTarget="test"), run)
    results = logic.predict(run, [{"name": "case2", "image_node": volume,
                                   "reference_node": reference}], tea="learned",
                            uncertainty=True, device="cpu", asSegmentation=True, timeout=600)
    (result,) = results
    label = result["label"]
    assert label.IsA("vtkMRMLLabelMapVolumeNode") and label.GetName() == "case2 segmentation"
    assert label.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(_elements(label), _elements(volume), atol=1e-9)
    assert result["uncertainty"] is not None and result["uncertainty"].GetName() == \
        "case2 TEA disagreement"
    assert result["segmentation"] is not None or "no segmentation" in (result["note"] or "")
    assert result["metrics"] and {"dsc", "hd95", "case", "label"} <= set(result["metrics"][0])
    table = scene.GetFirstNodeByName("JCSAugment metrics")
    assert table is not None and table.GetNumberOfRows() == len(result["metrics"])

    with pytest.raises(ValueError, match="did not learn"):
        heuristic_run = tmp_path / "h"
        heuristic_run.mkdir()
        with open(os.path.join(run, "job.json"), encoding="utf-8") as f:
            job = json.load(f)
        job["training"]["mode"] = "heuristic"
        job["inference"]["tea"] = "auto"
        (heuristic_run / "job.json").write_text(json.dumps(job))
        logic.startPrediction(str(heuristic_run), [], tea="learned")

    # Start (not Resume) on the finished run: it trains again from iteration 0 and the worker
    # keeps the first run's checkpoints (the logic passes --restart, which it would refuse
    # without)
    from JCSAugmentLib.run.folder import RunFolder
    folder = RunFolder(run)
    worker = logic.startTraining(run, "cpu", wait=True, timeout=900)
    again = logic.viewState(run, worker)
    assert again.state == "done", f"{again.message}\n{again.error}\n{again.log_tail}"
    assert "--restart" in worker.command and again.iteration == 2
    (kept,) = [n for n in os.listdir(folder.checkpoints_dir) if n.startswith("before-restart-")]
    assert sorted(os.listdir(os.path.join(folder.checkpoints_dir, kept))) == ["best.pt",
                                                                               "last.pt"]
    assert any("previous checkpoints were kept" in w for w in again.warnings)
    assert folder.pick_checkpoint("best").iteration == 2
