"""JCSAugment's self-test: what *Reload and Test* (``runTest``) and ``ctest -R JCSAugment`` run
inside Slicer. A tiny CPU training through the logic, prediction, policy pictures and preview
nodes, and the bad inputs the panel must refuse with a clear message. Tests that need torch in
Slicer's Python are skipped (not failed) when it is not installed yet.
"""

import os
import tempfile
import unittest

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentSlicer.dependencies import DependencyError, ensureTorch


def JCSAugmentLogic():
    """The module's logic (imported when called: the module file imports this one)."""
    import JCSAugment
    return JCSAugment.JCSAugmentLogic()


class JCSAugmentTest(ScriptedLoadableModuleTest):
    """Self-tests: a tiny CPU training through the logic (blocking), prediction, policy
    pictures, preview nodes; and the bad inputs the panel must refuse with a clear message."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)
        self.tmp = tempfile.mkdtemp(prefix="JCSAugmentTest-", dir=slicer.app.temporaryPath)

    def runTest(self, **kwargs):
        """Every test_* method, each after setUp (ctest runs them one by one); a test that
        needs what is not installed yet is reported as skipped, not failed."""
        skipped = []
        for name in sorted(n for n in dir(self) if n.startswith("test_")):
            self.setUp()
            try:
                getattr(self, name)()
            except unittest.SkipTest as e:
                skipped.append(f"{name}: {e}")
                self.delayDisplay(f"Skipped {name}: {e}")
        self.skipped = skipped

    # -- helpers
    def _blobCase(self, name, seed, shape=(32, 32, 32), asSegmentation=False):
        """A volume with a bright blob, and its label map (or segmentation), on an oblique,
        anisotropic grid."""
        import numpy as np
        rng = np.random.default_rng(seed)
        z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
        centre = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
        radius = 6 + rng.uniform(0, 2)
        blob = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < radius ** 2
        image = (100.0 * blob + rng.normal(0, 10, shape)).astype(np.float32)
        ijkToRas = vtk.vtkMatrix4x4()
        angle = 0.3
        spacing = (1.2, 0.9, 1.5)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                             [0, 0, 1]])
        for r in range(3):
            for c in range(3):
                ijkToRas.SetElement(r, c, rotation[r, c] * spacing[c])
            ijkToRas.SetElement(r, 3, [10.0, -20.0, 5.0][r])
        volume = slicer.util.addVolumeFromArray(image, ijkToRAS=ijkToRas, name=name)
        label = slicer.util.addVolumeFromArray(blob.astype(np.uint8), ijkToRAS=ijkToRas,
                                               name=f"{name} label",
                                               nodeClassName="vtkMRMLLabelMapVolumeNode")
        if asSegmentation:
            from JCSAugmentLib.slicer_scene import label_map_to_segmentation
            segmentation = label_map_to_segmentation(label, name=f"{name} segmentation")
            slicer.mrmlScene.RemoveNode(label)
            return volume, segmentation
        return volume, label

    def _settings(self, **kw):
        from JCSAugmentLib.panel.settings import PanelSettings
        values = dict(backbone="unet3d", mode="joint", epochs=1, device="cpu",
                      output_folder=self.tmp, seed=0, patch_size=[16, 16, 16], batch_size=2,
                      iterations_per_epoch=2)
        values.update(kw)
        return PanelSettings(**values)

    TINY = {"model.base_features": 2, "training.val_batch_size": 2, "training.tea_copies": 2,
            "training.validate_every": 1, "training.preview_every": 1,
            "training.checkpoint_every": 1}

    def _needWorkerDependencies(self):
        import importlib.util
        missing = [m for m in ("torch", "matplotlib") if importlib.util.find_spec(m) is None]
        if missing:
            self.skipTest(f"the worker needs {', '.join(missing)} in Slicer's Python (run "
                          f"JCSAugment's Start once to install them)")

    @staticmethod
    def _matrix(node):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return [m.GetElement(r, c) for r in range(4) for c in range(4)]

    # -- tests
    def test_train_predict_pictures_preview(self):
        self.delayDisplay("Tiny CPU training through the logic")
        self._needWorkerDependencies()
        logic = JCSAugmentLogic()
        cases = [self._blobCase("case0", 0), self._blobCase("case1", 1, asSegmentation=True),
                 self._blobCase("case2", 2)]
        rows = [{"case_id": f"case{i}", "image_nodes": [v], "label_node": lab, "split": split}
                for i, ((v, lab), split) in enumerate(zip(cases, ("train", "validation", "test")))]
        runDir, worker = logic.train(self._settings(), rows=rows, overrides=self.TINY, wait=True,
                                     timeout=900)
        view = logic.viewState(runDir, worker)
        self.assertEqual(view.state, "done", f"{view.message}\n{view.error}\n{view.log_tail}")
        self.assertEqual(view.iteration, 2)
        self.assertTrue(view.loss_curves)

        self.delayDisplay("Curves into plot nodes")
        nodes = logic.curveNodes()
        logic.updateCurves(nodes, view.loss_curves, view.dice_curve)
        self.assertGreater(nodes["loss"][0].GetNumberOfRows(), 0)

        self.delayDisplay("Policy pie charts")
        pngs = logic.drawPolicyPictures(runDir, outDir=os.path.join(self.tmp, "pictures"))
        for key in ("tra_foreground", "tra_background", "tea"):
            self.assertIn(key, pngs)
            self.assertFalse(qt.QPixmap(pngs[key]).isNull(), key)

        self.delayDisplay("Preview nodes")
        preview = logic.showPreview(runDir)
        for name in ("foreground patches", "foreground labels", "background patches"):
            self.assertIn(name, preview)
            self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(preview[name].GetID()))
        again = logic.showPreview(runDir)
        self.assertEqual(again["foreground patches"].GetID(), preview["foreground patches"].GetID())

        self.delayDisplay("Prediction with learned TEA in a worker process")
        volume, reference = cases[2]
        results = logic.predict(runDir, [{"name": "case2", "image_node": volume,
                                          "reference_node": reference}], tea="learned",
                                uncertainty=True, device="cpu", asSegmentation=True, timeout=600)
        self.assertEqual(len(results), 1)
        label = results[0]["label"]
        self.assertTrue(label.IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertEqual(label.GetName(), "case2 segmentation")
        self.assertEqual(label.GetImageData().GetDimensions(),
                         volume.GetImageData().GetDimensions())
        for a, b in zip(self._matrix(label), self._matrix(volume)):
            self.assertAlmostEqual(a, b, places=6)
        self.assertIsNotNone(results[0]["uncertainty"])
        self.assertTrue(results[0]["metrics"])
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("JCSAugment metrics"))
        slicer.util.setSliceViewerLayers(background=volume, label=label, fit=True)
        self.delayDisplay("Training and prediction passed")

    def test_bad_inputs(self):
        from JCSAugmentLib.slicer_scene import SceneError
        logic = JCSAugmentLogic()
        out = os.path.join(self.tmp, "runs")
        os.makedirs(out)
        (v0, l0), (v1, l1) = self._blobCase("a", 0), self._blobCase("b", 1)

        self.delayDisplay("No validation case")
        rows = [{"case_id": "a", "image_nodes": [v0], "label_node": l0, "split": "train"},
                {"case_id": "b", "image_nodes": [v1], "label_node": l1, "split": "test"}]
        with self.assertRaises(ValueError) as ctx:
            logic.prepareRun(self._settings(output_folder=out), rows=rows)
        self.assertIn("validation", str(ctx.exception))
        rows[0]["split"] = "unused"
        with self.assertRaises(ValueError) as ctx:
            logic.prepareRun(self._settings(output_folder=out), rows=rows)
        self.assertIn("training", str(ctx.exception))
        self.assertEqual(os.listdir(out), [])

        self.delayDisplay("Label grid differs from the image")
        import numpy as np
        small = slicer.util.addVolumeFromArray(np.ones((20, 32, 32), np.uint8), name="small",
                                               nodeClassName="vtkMRMLLabelMapVolumeNode")
        rows = [{"case_id": "a", "image_nodes": [v0], "label_node": small, "split": "train"},
                {"case_id": "b", "image_nodes": [v1], "label_node": l1, "split": "validation"}]
        with self.assertRaises(SceneError):
            logic.prepareRun(self._settings(output_folder=out), rows=rows)
        self.assertEqual(os.listdir(out), [], "a refused run leaves no folder behind")

        self.delayDisplay("Empty segmentation")
        empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
        empty.CreateDefaultDisplayNodes()
        empty.GetSegmentation().AddEmptySegment("nothing")
        rows[0]["label_node"] = empty
        with self.assertRaises(SceneError):
            logic.prepareRun(self._settings(output_folder=out), rows=rows)
        self.assertEqual(os.listdir(out), [])

        self.delayDisplay("Run folder from another version")
        other = os.path.join(self.tmp, "other")
        os.makedirs(other)
        with open(RunFolder(other).job_path, "w", encoding="utf-8") as f:
            f.write('{"schema": 99, "data": {}}')
        with self.assertRaises(ValueError):
            logic.checkRunFolder(other)
        view = logic.viewState(other)
        self.assertEqual(view.state, "failed", view.message)

        self.delayDisplay("Output folder that cannot be made (a file)")
        blocker = os.path.join(self.tmp, "a-file")
        with open(blocker, "w") as f:
            f.write("x")
        rows[0]["label_node"] = l0
        with self.assertRaises(OSError):
            logic.prepareRun(self._settings(output_folder=blocker), rows=rows)

        self.delayDisplay("PyTorch extension missing")
        import sys
        saved = sys.modules.get("PyTorchUtils", "absent")
        sys.modules["PyTorchUtils"] = None  # makes "import PyTorchUtils" raise ImportError
        try:
            with self.assertRaises(DependencyError) as ctx:
                ensureTorch(askConfirmation=False, torchFound=False)
            self.assertIn("PyTorch", str(ctx.exception))
        finally:
            if saved == "absent":
                del sys.modules["PyTorchUtils"]
            else:
                sys.modules["PyTorchUtils"] = saved
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(v0.GetID()), "the scene is intact")

    def test_case_table_logic(self):
        logic = JCSAugmentLogic()
        p = logic.getParameterNode()
        logic.removeCases(p, None)
        for i in range(5):
            self._blobCase(f"pair{i}", i, shape=(12, 12, 12))
        added, note = logic.addAllPairs(p)
        self.assertEqual(added, 5, note)
        logic.autoSplitCases(p)
        splits = list(p.caseSplits)
        self.assertIn("validation", splits)
        self.assertIn("train", splits)
        self.assertEqual(logic.caseProblems(p), [])
        logic.removeCases(p, [0])
        self.assertEqual(len(p.caseIds), 4)
        logic.renameCase(p, 0, "renamed")
        self.assertEqual(p.caseIds[0], "renamed")
        logic.removeCases(p, None)
        self.assertEqual(len(p.caseIds), 0)
