"""The JCSAugment module's logic: the panel's actions on the scene and the run folder, without
widget references (usable from Slicer's Python console and by the tests).

It orchestrates the Qt-free engine: ``JCSAugmentLib.panel`` (cases, settings, worker process,
monitor, pictures) and ``JCSAugmentLib.slicer_scene`` (scene <-> files, previews, curves,
tables). Neither torch nor matplotlib is imported here: training, prediction and the policy
pictures run in their own processes.
"""

import contextlib
import os
import re
import shutil
import tempfile
import time

import slicer

from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentLib.run.job import TEA_CHOICES, TEA_MODES

#: what the split column offers ("unused" leaves a case out of the run)
SPLIT_CHOICES = ("train", "validation", "test", "unused")


@contextlib.contextmanager
def removedOnFailure(folder, what=None):
    """Remove ``folder`` when the block fails, so a failed action leaves no half-written folder;
    an OSError becomes one sentence that names the folder and the likely cause."""
    try:
        yield
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise OSError(e.errno, f"Cannot write {what or folder} ({e.strerror or e}); is the disk "
                               f"full or read-only?") from None
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def pathOrNone(value):
    """A parameter path as a string, or None when it is unset (pathlib turns "" into ".")."""
    text = "" if value is None else str(value).strip()
    return None if text in ("", ".") else os.path.expanduser(text)


class PredictionJob:
    """A prediction and what its results belong to (see RunLogic.startPrediction).

    Its phases, each in its own process so the GUI never computes: ``"segmenting"`` (the
    predict worker), ``"measuring"`` (an evaluate worker, when some input has a reference:
    RunLogic.startMetrics), then the panel imports the results into the scene a piece per
    timer tick (PredictionImport). ``worker`` is the process of the current phase."""

    def __init__(self, worker, inputs, outDir, runDir):
        self.worker = worker
        # [{"name", "image_node", "reference_node", "file", "output", "reference_file"}]
        self.inputs = inputs
        self.outDir = outDir
        self.runDir = runDir
        self.phase = "segmenting"
        self.uncertainty = False
        self.metricsPath = os.path.join(outDir, "metrics.json")
        self.metricsError = None  # why the metrics could not be computed (the import says so)

    @property
    def count(self):
        """Cases to segment (None: a dataset-folder run's whole test split)."""
        return None if self.inputs is None else len(self.inputs)


class RunLogic:
    """All the panel's actions without widget references (the module's JCSAugmentLogic is this
    plus the parameter node). Training and prediction return their WorkerProcess at once;
    ``wait=True`` blocks until it ends (scripts, tests). ``p`` is the module's parameter node
    (JCSAugmentParameterNode) or anything with the same attributes."""

    @staticmethod
    def libraryFolder():
        """Folder of the JCSAugmentLib package that this module ships with."""
        import importlib.util
        spec = importlib.util.find_spec("JCSAugmentLib")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("JCSAugmentLib is not installed beside the JCSAugment module")
        return list(spec.submodule_search_locations)[0]

    # ------------------------------------------------------------------ cases
    @staticmethod
    def caseRows(p):
        """The case table as rows for JCSAugmentLib (slicer_scene.export_cases and
        panel.cases.check_cases): {case_id, image_nodes, label_node, split}."""
        ids, images = list(p.caseIds), list(p.caseImages)
        labels, splits = list(p.caseLabels), list(p.caseSplits)
        n = min(len(ids), len(images), len(labels), len(splits))
        return [{"case_id": ids[i], "image_nodes": [images[i]] if images[i] is not None else [],
                 "label_node": labels[i], "split": splits[i]} for i in range(n)]

    @staticmethod
    def _setCases(p, rows):
        with slicer.util.NodeModify(p):
            p.caseIds = [r["case_id"] for r in rows]
            p.caseImages = [r["image_nodes"][0] if r["image_nodes"] else None for r in rows]
            p.caseLabels = [r["label_node"] for r in rows]
            p.caseSplits = [r["split"] for r in rows]

    def caseProblems(self, p):
        """Sentences on what stops training with the case table (empty: ready)."""
        from JCSAugmentLib.panel.cases import check_cases
        return check_cases(self.caseRows(p), mode=p.mode)

    def addCase(self, p, imageNode, labelNode, caseId=None, split="train"):
        if imageNode is None:
            raise ValueError("Choose an image volume.")
        if labelNode is None and split in ("train", "validation"):
            raise ValueError("Choose its label map or segmentation (training and validation "
                             "cases need one).")
        rows = self.caseRows(p)
        if any(n.GetID() == imageNode.GetID() for r in rows for n in r["image_nodes"]):
            raise ValueError(f"{imageNode.GetName()!r} is already in the table.")
        names = {r["case_id"] for r in rows}
        caseId = caseId or imageNode.GetName()
        base, k = caseId, 2
        while caseId in names:
            caseId, k = f"{base} ({k})", k + 1
        rows.append({"case_id": caseId, "image_nodes": [imageNode], "label_node": labelNode,
                     "split": split})
        self._setCases(p, rows)
        return caseId

    def addAllPairs(self, p, scene=None):
        """Pair the scene's volumes with label maps / segmentations by name (panel.cases) and
        add the new pairs; returns (number added, a sentence on what stayed unpaired). Nodes
        this module made (previews, results: the "JCSAugment.role" attribute) are left out."""
        from JCSAugmentLib.panel.cases import pair_report
        scene = scene or slicer.mrmlScene
        volumes = [n for n in nodesOfClass(scene, "vtkMRMLScalarVolumeNode")
                   if not n.IsA("vtkMRMLLabelMapVolumeNode") and n.GetAttribute(
                       "JCSAugment.role") is None and not n.GetHideFromEditors()]
        labels = [n for n in nodesOfClass(scene, "vtkMRMLLabelMapVolumeNode")
                  + nodesOfClass(scene, "vtkMRMLSegmentationNode")
                  if n.GetAttribute("JCSAugment.role") is None and not n.GetHideFromEditors()]
        byName = {}
        for n in volumes + labels:
            byName.setdefault((n.IsA("vtkMRMLLabelMapVolumeNode") or n.IsA(
                "vtkMRMLSegmentationNode"), n.GetName()), n)
        report = pair_report([n.GetName() for n in volumes], [n.GetName() for n in labels])
        rows = self.caseRows(p)
        used = {r["image_nodes"][0].GetID() for r in rows if r["image_nodes"]}
        added = 0
        for volumeName, labelName in report.pairs:
            volume, label = byName[(False, volumeName)], byName[(True, labelName)]
            if volume.GetID() in used:
                continue
            self.addCase(p, volume, label)
            added += 1
        note = f"Added {added} case(s)."
        if report.unpaired_volumes:
            note += " No label found for: " + ", ".join(report.unpaired_volumes[:10]) + "."
        if not report.pairs:
            note = ("No volume / label pair found by name: name each label map or segmentation "
                    "after its volume (e.g. 'case1' and 'case1 label'), or add cases one by one.")
        return added, note

    def removeCases(self, p, rowIndices):
        rows = self.caseRows(p)
        if rowIndices is None:
            rows = []
        else:
            drop = set(rowIndices)
            rows = [r for i, r in enumerate(rows) if i not in drop]
        self._setCases(p, rows)

    def setCaseSplit(self, p, row, split):
        if split not in SPLIT_CHOICES:
            raise ValueError(f"unknown split {split!r}")
        splits = list(p.caseSplits)
        splits[row] = split
        p.caseSplits = splits

    def renameCase(self, p, row, name):
        name = str(name).strip()
        ids = list(p.caseIds)
        if not name:
            raise ValueError("A case needs a name.")
        if name in ids[:row] + ids[row + 1:]:
            raise ValueError(f"The name {name!r} is already used by another case.")
        ids[row] = name
        p.caseIds = ids

    @staticmethod
    def fractions(p):
        return {"train": float(p.trainFraction), "validation": float(p.validationFraction),
                "test": float(p.testFraction)}

    def autoSplitCases(self, p):
        """Splits drawn by the fractions and the seed (panel.cases.auto_split); cases marked
        unused stay unused."""
        from JCSAugmentLib.panel.cases import auto_split
        rows = self.caseRows(p)
        ids = [r["case_id"] for r in rows if r["split"] != "unused"]
        drawn = auto_split(ids, self.fractions(p), int(p.splitSeed))
        p.caseSplits = [drawn.get(r["case_id"], r["split"]) for r in rows]

    # ------------------------------------------------------------------ settings and runs
    @staticmethod
    def settingsFromParameterNode(p):
        from JCSAugmentLib.panel.settings import PanelSettings
        n = int(p.patchSize)
        return PanelSettings(
            backbone=p.backbone, mode=p.mode,
            init=None if p.initPolicy == "auto" else p.initPolicy,
            epochs=int(p.epochs), minutes=float(p.minutes) if p.minutes > 0 else None,
            device=p.device or "auto", output_folder=pathOrNone(p.outputFolder) or "",
            seed=int(p.seed), patch_size=[n, n, n] if n > 0 else None,
            batch_size=int(p.batchSize) or None,
            iterations_per_epoch=int(p.iterationsPerEpoch) or None,
            pretrained=pathOrNone(p.pretrained),
            split_fractions=RunLogic.fractions(p))

    def prepareRun(self, settings, rows=None, datasetFolder=None, overrides=None,
                   splitFractions=None, splitSeed=0, name="run"):
        """A new run folder under settings.output_folder with job.json and the exported cases
        (rows from :meth:`caseRows`; or a dataset folder). Checks everything first and removes
        the new folder again if anything fails, so the scene and other runs stay as they were.
        The job is the panel's (panel.settings: the same settings -> job fields mapping as the
        command line's). ``overrides``: dotted job fields (``{"model.base_features": 4}``) for
        scripts and tests."""
        from JCSAugmentLib.panel.cases import check_cases, normalise_split
        from JCSAugmentLib.panel.settings import build_dataset_job, build_job, new_run_dir
        from JCSAugmentLib.run.job import Job
        from JCSAugmentLib.slicer_scene import export_cases
        problems = settings.problems()
        if problems:
            raise ValueError("\n".join(problems))
        if datasetFolder is None:
            problems = check_cases(rows or [], mode=settings.mode)
            if problems:
                raise ValueError("\n".join(problems))
        else:
            job = build_dataset_job(datasetFolder, settings, splitFractions, splitSeed)
        try:
            runDir = new_run_dir(settings.output_folder, name)
        except OSError as e:
            raise OSError(e.errno, f"Cannot create a run folder in {settings.output_folder!r}: "
                                   f"{e.strerror or e}") from None
        with removedOnFailure(runDir, f"the run folder {runDir}"):
            if datasetFolder is None:
                used = [r for r in rows if normalise_split(r.get("split")) is not None]
                cases = export_cases(used, RunFolder(runDir).inputs_dir, relative_to=runDir)
                job = build_job(cases, settings)
            if overrides:
                job = Job.from_dict(job).with_overrides(dict(overrides)).to_dict()
            RunFolder(runDir).save_job(job)
        return runDir

    @staticmethod
    def isRunFolder(runDir):
        return bool(runDir) and RunFolder(runDir).has_job()

    def checkRunFolder(self, runDir):
        """Raise a clear error unless ``runDir`` is a run folder this version can read."""
        from JCSAugmentLib.run.job import JobError
        if not runDir or not os.path.isdir(runDir):
            raise ValueError(f"Choose a run folder ({runDir!r} is not a folder).")
        if not self.isRunFolder(runDir):
            raise ValueError(f"{runDir} is not a JCSAugment run folder (it has no job file).")
        try:
            RunFolder(runDir).job()
        except JobError as e:
            raise ValueError(f"This run folder cannot be used by this version of JCSAugment: "
                             f"{e}") from None

    def startTraining(self, runDir, device="auto", resume=False, python=None, wait=False,
                      timeout=None, restart=True, compareSeeds=None):
        """Start ``PythonSlicer -m JCSAugmentLib train RUN`` (returns its WorkerProcess at once;
        ``wait=True`` blocks until it ends).

        ``resume``: continue from the last checkpoint (``--resume``). Otherwise a folder that
        already holds a checkpoint (its run was started before) starts again from iteration 0
        with ``--restart``: the user asked to start, not to resume, and the worker keeps the
        old checkpoints in ``checkpoints/before-restart-TIME/``, so nothing is lost.
        ``restart=False`` refuses such a folder instead (ValueError).

        ``compareSeeds``: train a comparison in the folder instead (``--compare heuristic
        --seeds N``, JCSAugmentLib.run.compare): heuristic TRA and the job's learned mode, one
        pair per seed; ``resume`` continues a comparison that was stopped."""
        from JCSAugmentLib.panel.worker_process import WorkerProcess, run_folder_busy
        from JCSAugmentLib.run.compare import LEARNED_MODES, compare_arguments, is_comparison
        self.checkRunFolder(runDir)
        folder = RunFolder(runDir)
        busy = run_folder_busy(folder)
        if busy:
            raise RuntimeError(busy)
        comparison = is_comparison(runDir)
        extra = []
        if compareSeeds is not None:
            mode = folder.job().training.mode
            if mode not in LEARNED_MODES:
                raise ValueError(f"Compare with the heuristic needs a mode that learns its "
                                 f"training-time augmentation ({', '.join(LEARNED_MODES)}), "
                                 f"not {mode!r}.")
            extra = compare_arguments(int(compareSeeds))
        if resume and not comparison and not os.path.isfile(folder.checkpoint_path("last")):
            raise ValueError(f"{runDir} has no checkpoint to resume from.")
        again = not resume and not comparison and folder.has_checkpoint()
        if again and not restart:
            raise ValueError(f"{runDir} already holds a trained checkpoint: Resume continues "
                             f"that run, or start it again (its checkpoints are kept aside).")
        worker = WorkerProcess(folder.path, python=python, resume=resume, restart=again,
                               device=device, extra_args=extra)
        worker.start()
        if wait:
            self.waitFor(worker, timeout)
        return worker

    @staticmethod
    def waitFor(worker, timeout=None):
        """Block until ``worker`` ends; on timeout stop it (cooperatively, then kill) and raise."""
        if worker.wait(timeout) is None and worker.running:
            worker.stop(timeout=30.0, term_grace=5.0)
            raise TimeoutError(f"the worker did not end within {timeout} s and was stopped")
        return worker.returncode

    def train(self, settings, rows=None, datasetFolder=None, overrides=None, wait=True,
              timeout=None, python=None):
        """prepareRun + startTraining; returns (run folder, WorkerProcess)."""
        runDir = self.prepareRun(settings, rows=rows, datasetFolder=datasetFolder,
                                 overrides=overrides)
        worker = self.startTraining(runDir, settings.device, python=python, wait=wait,
                                    timeout=timeout)
        return runDir, worker

    @staticmethod
    def monitor(runDir, worker=None):
        from JCSAugmentLib.panel.monitor import RunMonitor
        monitor = RunMonitor(RunFolder(runDir))
        if worker is not None:
            monitor.set_worker(worker)
        return monitor

    def viewState(self, runDir, worker=None):
        """The run's ViewState, read to the end of its events (scripts, tests)."""
        return self.monitor(runDir, worker).poll_until_current()

    @staticmethod
    def requestStop(runDir):
        """Ask the worker of ``runDir`` to stop after its iteration (checkpoint kept)."""
        RunFolder(runDir).request_stop(reason="Slicer panel")

    # ------------------------------------------------------------------ curves, pictures, preview
    @staticmethod
    def curveNodes(scene=None):
        """{"loss": (table, chart), "dice": (table, chart), "view": (plot view node, owner)}:
        the nodes behind the panel's plot (found again and reused)."""
        from JCSAugmentLib.slicer_scene import curve_plot_nodes
        scene = scene or slicer.mrmlScene
        nodes = {"loss": curve_plot_nodes("JCSAugment losses", scene=scene),
                 "dice": curve_plot_nodes("JCSAugment validation Dice", scene=scene)}
        if hasattr(nodes["dice"][1], "SetXAxisTitle"):
            nodes["dice"][1].SetXAxisTitle("epoch")
        view = owner = None
        for node in nodesOfClass(scene, "vtkMRMLPlotViewNode"):
            if node.GetAttribute("JCSAugment.role") == "curves view":
                view = node
        for node in nodesOfClass(scene, "vtkMRMLScriptedModuleNode"):
            if node.GetAttribute("JCSAugment.role") == "curves view owner":
                owner = node
        if owner is None:
            owner = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "JCSAugment curves owner")
            owner.SetAttribute("JCSAugment.role", "curves view owner")
            owner.SetHideFromEditors(True)
        if view is None:
            # set up before it enters the scene: the layout manager looks at a new view node
            # once, when it is added (a parent layout node keeps it out of the view layout)
            view = scene.CreateNodeByClass("vtkMRMLPlotViewNode")
            view.UnRegister(None)  # owned by the Python variable until the scene holds it
            view.SetName("JCSAugment curves view")
            view.SetAttribute("JCSAugment.role", "curves view")
            view.SetDoPropagatePlotChartSelection(False)
            if hasattr(view, "SetAndObserveParentLayoutNodeID"):
                view.SetAndObserveParentLayoutNodeID(owner.GetID())
            scene.AddNode(view)
        # "show chart in layout" (Plots module, plot chart selection) must not take it over
        view.SetDoPropagatePlotChartSelection(False)
        view.SetPlotChartNodeID(nodes["loss"][1].GetID())
        nodes["view"] = (view, owner)
        return nodes

    @staticmethod
    def updateCurves(nodes, lossCurves, diceCurve):
        from JCSAugmentLib.slicer_scene import update_curve_table
        update_curve_table(nodes["loss"][0], {f"{k} loss": v for k, v in lossCurves.items()
                                              if v}, chart_node=nodes["loss"][1])
        if diceCurve:
            update_curve_table(nodes["dice"][0], {"validation Dice": diceCurve},
                               chart_node=nodes["dice"][1])

    @staticmethod
    def startPolicyPictures(runDir, outDir=None, python=None):
        """Draw the run's policy pictures (its policy file) in a subprocess (torch and
        matplotlib stay out of Slicer's GUI process). Returns a job for
        :meth:`finishPolicyPictures`."""
        from JCSAugmentLib.panel.pictures import policy_pngs_command
        from JCSAugmentLib.panel.worker_process import WorkerProcess
        folder = RunFolder(runDir)
        source = folder.policy_path
        if not folder.has_policy():
            raise FileNotFoundError(f"{source} does not exist yet")
        if outDir is None:
            key = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.abspath(runDir))[-80:]
            outDir = os.path.join(tempfile.gettempdir(), "JCSAugment", "policy-pictures", key)
        os.makedirs(outDir, exist_ok=True)
        command = policy_pngs_command(source, outDir, python=python)
        worker = WorkerProcess.for_command(command, log_path=os.path.join(outDir, "draw.log"),
                                           what="policy drawing")
        worker.start()
        return {"worker": worker, "outDir": outDir, "started": time.time()}

    @staticmethod
    def finishPolicyPictures(job):
        """{"tra_foreground": png path, "tra_background": ..., "tea": ...} drawn by the job
        (those written after it started), {} on failure."""
        from JCSAugmentLib.panel.pictures import PICTURE_NAMES
        if job["worker"].returncode != 0:
            return {}
        out = {}
        for key in PICTURE_NAMES:
            path = os.path.join(job["outDir"], f"{key}.png")
            if os.path.exists(path) and os.path.getmtime(path) >= job["started"] - 2:
                out[key] = path
        return out

    def drawPolicyPictures(self, runDir, outDir=None, python=None, timeout=300):
        """Blocking :meth:`startPolicyPictures` (scripts, tests)."""
        job = self.startPolicyPictures(runDir, outDir, python)
        self.waitFor(job["worker"], timeout)
        pngs = self.finishPolicyPictures(job)
        if not pngs:
            raise RuntimeError(f"drawing the policies failed: {job['worker'].exit_reason()}\n"
                               f"{job['worker'].log_tail(10)}")
        return pngs

    @staticmethod
    def previewArrays(preview, gap=2):
        """{"foreground patches": (zyx float32, None), "foreground labels": (zyx int16, None),
        "background ...": ...} from the worker's latest preview (``RunFolder.read_preview()``,
        a ``PreviewArrays``): the original patch and its augmented samples side by side along
        x (channel 0)."""
        import numpy as np
        out = {}
        for row, images in preview.images.items():  # (samples, C, D, H, W)
            labels = preview.labels[row]  # (samples, D, H, W)
            fill = float(images.min()) if images.size else 0.0
            tiles, labelTiles = [], []
            for k in range(images.shape[0]):
                if k:
                    shape = images.shape[2:4] + (gap,)
                    tiles.append(np.full(shape, fill, np.float32))
                    labelTiles.append(np.zeros(shape, np.int16))
                tiles.append(images[k, 0].astype(np.float32))
                labelTiles.append(labels[k].astype(np.int16))
            out[f"{row} patches"] = (np.concatenate(tiles, axis=2), None)
            out[f"{row} labels"] = (np.concatenate(labelTiles, axis=2), None)
        return out

    def showPreview(self, runDir, scene=None):
        """Put the latest preview patches into reused nodes (slicer_scene.update_preview_nodes);
        returns {name: node}."""
        from JCSAugmentLib.slicer_scene import update_preview_nodes
        preview = RunFolder(runDir).read_preview()
        if preview is None:
            raise FileNotFoundError(f"No preview yet in {runDir} (the worker writes one every "
                                    f"few policy updates).")
        return update_preview_nodes(self.previewArrays(preview), scene=scene)

    @staticmethod
    def showGalleryArrays(npzPath, scene=None):
        """A gallery's volumes (``jcsaugment policy --gallery ... --arrays NPZ``) in reused
        nodes named "JCSAugment gallery <patch>" (slicer_scene.update_preview_nodes). Returns
        ({name: node}, {patch: [caption along x]}), the patches first."""
        import numpy as np
        from JCSAugmentLib.slicer_scene import update_preview_nodes
        if not npzPath or not os.path.exists(npzPath):
            raise FileNotFoundError("Draw a gallery row first ('Show on case').")
        with np.load(npzPath, allow_pickle=False) as f:  # data, never code
            arrays = {k: f[k] for k in f.files}
        captions = {k[:-len(" captions")]: [str(c) for c in v]
                    for k, v in arrays.items() if k.endswith(" captions")}
        volumes = {k: (v, None) for k, v in arrays.items() if not k.endswith(" captions")}
        order = sorted(volumes, key=lambda k: k.endswith(" labels"))
        nodes = update_preview_nodes({k: volumes[k] for k in order}, scene=scene,
                                     prefix="JCSAugment gallery")
        return nodes, captions

    # ------------------------------------------------------------------ prediction
    def predictionInputs(self, p, runDir):
        """What "Segment" works on: the test cases of the case table, the selected volume, or
        (a dataset-folder run) None = the run's own test split."""
        if p.predictTarget == "volume":
            if p.predictVolume is None:
                raise ValueError("Choose the volume to segment.")
            return [{"name": p.predictVolume.GetName(), "image_node": p.predictVolume,
                     "reference_node": p.referenceLabel}]
        if RunFolder(runDir).job().data.dataset is not None:
            return None
        rows = [r for r in self.caseRows(p) if r["split"] == "test" and r["image_nodes"]]
        if not rows:
            raise ValueError("The case table has no test case: mark cases as 'test', or choose "
                             "'The selected volume'.")
        return [{"name": r["case_id"], "image_node": r["image_nodes"][0],
                 "reference_node": r["label_node"]} for r in rows]

    def startPrediction(self, runDir, inputs, tea="learned", uncertainty=False, device="auto",
                        python=None, wait=False, timeout=None):
        """Export the inputs and start ``PythonSlicer -m JCSAugmentLib predict`` in a worker
        process (``inputs=None``: the run's test split, for a dataset-folder run). Returns a
        PredictionJob; then :meth:`importPredictions`."""
        from JCSAugmentLib.panel.worker_process import WorkerProcess, predict_command
        from JCSAugmentLib.slicer_scene import SceneError, export_label_node, export_volume_node
        folder = RunFolder(runDir)
        job = folder.job()
        if tea not in TEA_CHOICES:
            raise ValueError(f"TEA must be one of {', '.join(TEA_CHOICES)}")
        if tea == "learned" and job.training.mode not in TEA_MODES:
            raise ValueError(f"This run (mode {job.training.mode!r}) did not learn a test-time "
                             f"augmentation policy: choose 'heuristic' or 'none'.")
        if not folder.has_checkpoint():
            raise ValueError(f"{runDir} has no trained checkpoint yet.")
        outDir = folder.new_predictions_folder("slicer")
        inDir = os.path.join(outDir, "inputs")
        labelDir = os.path.join(outDir, "labels")
        refDir = os.path.join(outDir, "references")
        with removedOnFailure(outDir):
            os.makedirs(inDir)
            for i, item in enumerate(inputs or ()):
                stem = f"{i:03d}_" + (re.sub(r"[^A-Za-z0-9_-]+", "_", item["name"])
                                      .strip("_") or "case")
                item["file"] = export_volume_node(item["image_node"],
                                                  os.path.join(inDir, f"{stem}.nrrd"))
                item["output"] = os.path.join(labelDir, f"{stem}.nrrd")
                item["uncertainty_output"] = os.path.join(labelDir,
                                                          f"{stem}_tea_disagreement.nrrd")
                item["reference_file"] = None
                if item.get("reference_node") is not None:
                    # on the image's grid, named as the prediction: the evaluate worker pairs
                    # them by name (startMetrics)
                    os.makedirs(refDir, exist_ok=True)
                    try:
                        item["reference_file"] = export_label_node(
                            item["reference_node"], item["image_node"],
                            os.path.join(refDir, f"{stem}.nrrd"))
                    except SceneError as e:
                        item["reference_note"] = f"{item['name']}: no metrics ({e})"
            # inputs None: the run's own test split (a dataset-folder run)
            cmd = predict_command(folder.path, None if inputs is None else
                                  [item["file"] for item in inputs], labelDir, tea, uncertainty,
                                  python=python, device=device,
                                  split="test" if inputs is None else None)
        worker = WorkerProcess.for_command(cmd, log_path=os.path.join(outDir, "predict.log"),
                                           device=device, what="prediction")
        worker.start()
        predictionJob = PredictionJob(worker, inputs, outDir, runDir)
        predictionJob.uncertainty = uncertainty
        predictionJob.python = python
        if wait:
            self.waitFor(worker, timeout)
        return predictionJob

    @staticmethod
    def startMetrics(job, python=None, wait=False, timeout=None):
        """After a successful predict worker: start the evaluate worker on the inputs that have
        a reference (their metrics: DSC, sensitivity, precision, HD95 per label). Returns False,
        starting nothing, when no input has one."""
        from JCSAugmentLib.panel.worker_process import WorkerProcess, evaluate_command
        if job.worker.running or job.worker.returncode != 0:
            raise RuntimeError("the prediction has not succeeded")
        if not any(item.get("reference_file") for item in job.inputs or ()):
            return False
        cmd = evaluate_command(os.path.join(job.outDir, "labels"),
                               os.path.join(job.outDir, "references"), job.metricsPath,
                               python=python or getattr(job, "python", None))
        job.worker = WorkerProcess.for_command(cmd, os.path.join(job.outDir, "metrics.log"),
                                               what="metrics")
        job.worker.start()
        job.phase = "measuring"
        if wait:
            RunLogic.waitFor(job.worker, timeout)
        return True

    def importPredictions(self, job, asSegmentation=False, scene=None):
        """Load a finished prediction job's results into the scene at once (scripts, tests; the
        panel spreads the same work over timer ticks with :class:`PredictionImport`). Returns
        one dict per case: {"image", "label", "segmentation", "uncertainty", "metrics",
        "note"}."""
        importer = PredictionImport(job, asSegmentation=asSegmentation, scene=scene)
        while not importer.step():
            pass
        return importer.results

    def predict(self, runDir, inputs, tea="learned", uncertainty=False, device="auto",
                asSegmentation=False, python=None, timeout=None, scene=None):
        """Blocking prediction + import (scripts, tests)."""
        job = self.startPrediction(runDir, inputs, tea, uncertainty, device, python=python,
                                   wait=True, timeout=timeout)
        if job.worker.returncode == 0:
            self.startMetrics(job, python=python, wait=True, timeout=timeout)
        return self.importPredictions(job, asSegmentation=asSegmentation, scene=scene)


def nodesOfClass(scene, className):
    """Every node of ``className`` in ``scene`` (the collection released afterwards)."""
    collection = scene.GetNodesByClass(className)
    try:
        return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    finally:
        collection.UnRegister(None)


class PredictionImport:
    """A finished prediction's results brought into the scene one piece per :meth:`step`: a
    label map, a segmentation, an uncertainty volume, and last the metrics table (the metrics
    themselves were computed by the evaluate worker). The panel calls one step per timer tick,
    so a batch of large volumes never holds the GUI for the whole import.

    ``results``: one dict per case, {"image", "label", "segmentation", "uncertainty",
    "metrics", "note"}, complete once :meth:`step` has returned True."""

    def __init__(self, job, asSegmentation=False, scene=None):
        worker = job.worker
        if worker.running:
            raise RuntimeError(f"the {job.phase} process is still running")
        if worker.returncode != 0:
            if job.phase != "measuring":
                raise RuntimeError(f"the prediction failed: {worker.exit_reason()}\n"
                                   f"{worker.log_tail(10)}")
            # the segmentations exist: import them and say why there are no metrics
            job.metricsError = (f"the metrics could not be computed: {worker.exit_reason()}"
                                f" ({worker.last_line()})")
        if scene is None and job.inputs:
            scene = job.inputs[0]["image_node"].GetScene()
        self.job, self.asSegmentation, self.scene = job, asSegmentation, scene
        self.results = []
        self._pieces = self._steps()

    def step(self):
        """Do the next piece of the import; True when everything is in the scene."""
        try:
            next(self._pieces)
            return False
        except StopIteration:
            return True

    def _steps(self):
        from JCSAugmentLib.panel.worker_process import parse_predict_log
        from JCSAugmentLib.slicer_scene import (SceneError, label_map_to_segmentation,
                                                load_label_map, load_scalar_volume,
                                                metrics_table_node)
        job, scene = self.job, self.scene
        if job.inputs is None:  # a dataset-folder run: the files name the cases
            with open(job.worker.log_path, encoding="utf-8", errors="replace") as f:
                records = parse_predict_log(f.read())
            for record in records:
                result = {"image": None, "label": slicer.util.loadLabelVolume(
                    record["prediction"]), "segmentation": None, "metrics": [],
                    "uncertainty": None, "note": None}
                self.results.append(result)
                yield
                if record.get("uncertainty"):
                    result["uncertainty"] = slicer.util.loadVolume(record["uncertainty"])
                    yield
            return
        metrics = self._metricsByOutput()
        allRows = []
        for item in job.inputs:
            image = item["image_node"]
            if not os.path.exists(item["output"]):
                raise RuntimeError(f"the prediction did not write {item['output']}")
            label = load_label_map(item["output"], image, name=f"{image.GetName()} segmentation",
                                   scene=scene)
            result = {"image": image, "label": label, "segmentation": None, "uncertainty": None,
                      "metrics": [], "note": item.get("reference_note")}
            self.results.append(result)
            yield
            if self.asSegmentation:
                try:
                    result["segmentation"] = label_map_to_segmentation(label, scene=scene)
                except SceneError as e:
                    result["note"] = f"{item['name']}: no segmentation made ({e})"
                yield
            if job.uncertainty and os.path.exists(item["uncertainty_output"]):
                result["uncertainty"] = load_scalar_volume(
                    item["uncertainty_output"], f"{image.GetName()} TEA disagreement",
                    scene=scene, reference_volume_node=image)
                yield
            if item.get("reference_file"):
                if job.metricsError:
                    result["note"] = f"{item['name']}: no metrics ({job.metricsError})"
                else:
                    result["metrics"] = metricsRows(item["name"], metrics.get(item["output"]))
            allRows += result["metrics"]
        if allRows:
            metrics_table_node(allRows, "JCSAugment metrics", scene=scene)

    def _metricsByOutput(self):
        """{prediction file: {label: metrics}} from the evaluate worker's JSON ({} if none)."""
        import json
        job = self.job
        if job.phase != "measuring" or job.metricsError:
            return {}
        try:
            with open(job.metricsPath, encoding="utf-8") as f:
                cases = json.load(f)["cases"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            job.metricsError = f"the metrics file {job.metricsPath} is unreadable ({e})"
            return {}
        labelDir = os.path.join(job.outDir, "labels")
        return {os.path.join(labelDir, f"{case}.nrrd"): value for case, value in cases.items()}


#: the metrics the panel's table shows, in its column order, and the volumes beside them
METRIC_KEYS = ("dsc", "sensitivity", "precision", "hd95", "volume_pred_ml", "volume_ref_ml")


def metricsRows(caseName, labels):
    """Rows {"case", "label", dsc, ...} of one case from the evaluate worker's {label: metrics}
    (None: no rows)."""
    return [{"case": caseName, "label": name, **{k: (m or {}).get(k) for k in METRIC_KEYS}}
            for name, m in (labels or {}).items()]
