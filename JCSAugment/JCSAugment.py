"""JCSAugment: the 3D Slicer module over the JCSAugmentLib engine.

This file holds the module, its parameter node, the widget (which only binds state to Qt
widgets) and the self-test. The logic (no widget references) is in ``JCSAugmentSlicer/logic.py``
and the dependency checks in ``JCSAugmentSlicer/dependencies.py``, beside this file; everything
the panel shows is computed by Qt-free code in JCSAugmentLib:

- ``JCSAugmentLib.panel``: cases and splits, the training settings and the job they make, the
  background worker process, the run monitor (events -> :class:`ViewState`), the GPU list and
  the policy pictures;
- ``JCSAugmentLib.slicer_scene``: moving volumes, label maps, segmentations, previews, curves and
  tables between the scene and the run folder (geometry handled in one place).

Training and prediction run in their own process (``PythonSlicer -m JCSAugmentLib ...``), never in
Slicer's GUI process; the widget polls the run folder with a ``qt.QTimer`` and binds the view
state to its widgets (no threads touch Qt or MRML, no ``processEvents`` loops). Neither torch nor
matplotlib is imported here: dependencies are checked and installed only when the user starts
something (:func:`ensureDependencies`).
"""

import logging
import os
import pathlib
import shutil
import tempfile
import time
from typing import Annotated, Optional, Union

import ctk
import qt
import slicer
import vtk
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode)
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentLib.run.job import BACKBONES, INITS, MODES
from JCSAugmentSlicer.dependencies import (DependencyError, ensureDependencies,  # noqa: F401
                                           ensureTorch)
from JCSAugmentSlicer.logic import SPLIT_CHOICES, TEA_CHOICES, RunLogic, nodesOfClass, pathOrNone

PAPER = ("Z. Li, K. Kamnitsas, Q. Dou, C. Qin, B. Glocker, \"Joint Optimization of Class-Specific "
         "Training- and Test-Time Data Augmentation in Segmentation\", IEEE Transactions on "
         "Medical Imaging, 2023.")

#: labels the combo boxes show for the parameter values (the values stay the engine's names)
COMBO_LABELS = {
    "dataSource": {"scene": "Volumes of the scene (table below)",
                   "folder": "A dataset folder on disk"},
    "backbone": {"unet3d": "3D U-Net", "deepmedic": "DeepMedic"},
    "initPolicy": {"auto": "Automatic (the backbone's heuristic)", "nnunet": "nnU-Net",
                   "deepmedic": "DeepMedic"},
    "predictTarget": {"test": "The run's test cases", "volume": "The selected volume"},
    "teaMode": {"learned": "Learned (the run's TEA policy)", "heuristic": "Heuristic (mirroring)",
                "none": "None"},
}

#: parameters with no SlicerParameterName widget, and why (checked by test_module_static.py)
UNBOUND_PARAMETERS = {
    "device": "the device combo box is filled at run time from the GPU probe; the widget "
              "stores the chosen id here",
    "caseIds": "the case table (a QTableWidget) is rebuilt from these four lists",
    "caseImages": "the case table",
    "caseLabels": "the case table",
    "caseSplits": "the case table (a split combo box per row)",
}


#
# JCSAugment
#

class JCSAugment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "JCSAugment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["The JCSAugment developers"]
        self.parent.helpText = (
            "Train a 3D segmentation network (3D U-Net or DeepMedic) on labelled volumes while "
            "it learns which data augmentation to use: separate training-time policies for "
            "foreground and background patches and a test-time augmentation policy, learned "
            "jointly by meta-gradients on a validation split. Training runs in a background "
            "process; the panel shows progress, curves, the learned policies as pie charts and a "
            "live preview of augmented patches, and segments new volumes with test-time "
            "augmentation. The same engine runs from a terminal: "
            "<code>PythonSlicer -m JCSAugmentLib --help</code>.")
        self.parent.acknowledgementText = (
            "The method is described in: " + PAPER + " Torch comes from the PyTorch extension "
            "(PyTorch Utils).")


#
# Parameter node
#

@parameterNodeWrapper
class JCSAugmentParameterNode:
    """What the panel edits, saved with the scene (see UNBOUND_PARAMETERS for the fields that
    have no widget of their own)."""

    # Data
    dataSource: Annotated[str, Choice(["scene", "folder"])] = "scene"
    inputVolume: vtkMRMLScalarVolumeNode
    inputLabel: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    trainFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    validationFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    testFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    splitSeed: Annotated[int, WithinRange(0, 999999)] = 0
    datasetFolder: pathlib.Path
    caseIds: list[str]
    caseImages: list[vtkMRMLScalarVolumeNode]
    caseLabels: list[vtkMRMLNode]
    caseSplits: list[str]
    # Training
    backbone: Annotated[str, Choice(list(BACKBONES))] = "unet3d"
    mode: Annotated[str, Choice(list(MODES))] = "joint"
    initPolicy: Annotated[str, Choice(["auto"] + list(INITS))] = "auto"
    epochs: Annotated[int, WithinRange(1, 100000)] = 100
    minutes: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    device: str = "auto"
    outputFolder: pathlib.Path = pathlib.Path.home() / "JCSAugment"
    seed: Annotated[int, WithinRange(0, 999999)] = 0
    patchSize: Annotated[int, WithinRange(0, 512)] = 0
    batchSize: Annotated[int, WithinRange(0, 512)] = 0
    iterationsPerEpoch: Annotated[int, WithinRange(0, 100000)] = 0
    pretrained: pathlib.Path
    # Run
    runFolder: pathlib.Path
    # Results
    predictTarget: Annotated[str, Choice(["test", "volume"])] = "test"
    predictVolume: vtkMRMLScalarVolumeNode
    referenceLabel: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    teaMode: Annotated[str, Choice(list(TEA_CHOICES))] = "learned"
    uncertainty: bool = False
    asSegmentation: bool = False


#
# JCSAugmentWidget
#

class JCSAugmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the panel's ViewState (JCSAugmentLib.panel.monitor) to Qt widgets on a timer."""

    POLL_MS = 500
    POLICY_REDRAW_S = 15.0  # each redraw is a short PythonSlicer process (torch + matplotlib)

    def __init__(self, parent=None):
        # state first: without a parent the base class calls setup() from its __init__
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._monitor = None
        self._view = None
        self._prediction = None
        self._pictureJob = None
        self._policyDirty = False
        self._lastPolicyDraw = 0.0
        self._policyPngs = {}
        self._devicesProbe = None
        self._devices = []
        self._casesKey = None
        self._tableEditing = False
        self._plotView = None
        self._curveNodes = None
        self._shownLog = None
        self._updatingDeviceCombo = False
        self._timer = None
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    # ------------------------------------------------------------------ setup
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/JCSAugment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = JCSAugmentLogic()

        for lineEdit in (self.ui.datasetPathLineEdit, self.ui.outputPathLineEdit,
                         self.ui.runPathLineEdit):
            lineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.pretrainedPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.pretrainedPathLineEdit.nameFilters = ["PyTorch checkpoint (*.pt)"]
        table = self.ui.caseTable
        table.setColumnCount(4)
        table.setHorizontalHeaderLabels(["Case", "Image volume", "Labels", "Split"])
        table.horizontalHeader().setStretchLastSection(True)
        self.ui.curvesComboBox.addItems(["Training losses", "Validation Dice"])
        self.ui.errorLabel.hide()
        self.ui.warningLabel.hide()
        self._plotView = slicer.qMRMLPlotView()
        self._plotView.setMRMLScene(slicer.mrmlScene)
        self._plotView.setMinimumHeight(200)
        self.ui.curvesFrame.layout().addWidget(self._plotView)

        self.ui.addSelectedButton.connect("clicked(bool)", self.onAddSelected)
        self.ui.addAllPairsButton.connect("clicked(bool)", self.onAddAllPairs)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCases)
        self.ui.clearCasesButton.connect("clicked(bool)", self.onClearCases)
        self.ui.autoSplitButton.connect("clicked(bool)", self.onAutoSplit)
        self.ui.caseTable.connect("itemChanged(QTableWidgetItem*)", self.onCaseItemChanged)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onRefreshDevices)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.startButton.connect("clicked(bool)", self.onStartStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.openRunButton.connect("clicked(bool)", self.onOpenRun)
        self.ui.curvesComboBox.connect("currentIndexChanged(int)", self.onCurvesChoice)
        self.ui.exportPolicyPngButton.connect("clicked(bool)", self.onExportPolicyPng)
        self.ui.exportPolicyJsonButton.connect("clicked(bool)", self.onExportPolicyJson)
        self.ui.showPreviewButton.connect("clicked(bool)", self.onShowPreview)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._showView(None)
        self._fillDeviceCombo()
        self.initializeParameterNode()

    def cleanup(self):
        """Stop the timer and the worker processes this panel started (the worker saves a
        checkpoint first when it can)."""
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()
        if self._prediction is not None and self._prediction.worker.running:
            self._prediction.worker.kill()
        for job in (self._pictureJob,):
            if job is not None and job["worker"].running:
                job["worker"].kill()
        worker = self._monitor.worker if self._monitor is not None else None
        if worker is not None and worker.running:
            logging.info("JCSAugment: stopping the training worker (its checkpoint is kept)")
            worker.stop(timeout=15.0, term_grace=5.0)

    def enter(self):
        self.initializeParameterNode()
        if not self._devices and self._devicesProbe is None:
            self._startDeviceProbe()

    def exit(self):
        # the timer keeps running: a run goes on while another module is shown
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                    self._onParameterNodeModified)

    def onReload(self):
        """Reload the Qt-free panel modules too (they hold the logic), then the module."""
        import importlib
        import sys
        for name in ("JCSAugmentLib.panel.cases", "JCSAugmentLib.panel.worker_process",
                     "JCSAugmentLib.panel.devices", "JCSAugmentLib.panel.settings",
                     "JCSAugmentLib.panel.monitor", "JCSAugmentLib.panel.pictures",
                     "JCSAugmentLib.slicer_scene", "JCSAugmentSlicer.dependencies",
                     "JCSAugmentSlicer.logic"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    # ------------------------------------------------------------------ scene and parameters
    def onSceneStartClose(self, caller, event):
        if self._isTrainingLive():
            stop = slicer.util.confirmYesNoDisplay(
                "A JCSAugment training run is still running. Stop it now? (Its checkpoint and "
                "policies are kept; choose No to let it run on and re-attach later with 'Open "
                "run folder'.)", windowTitle="JCSAugment")
            if stop:
                self._beginStop()
        self.setParameterNode(None)
        self._curveNodes = None
        if self._plotView is not None:
            self._plotView.setMRMLPlotViewNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if p.predictVolume is None:
            volumes = [n for n in nodesOfClass(slicer.mrmlScene, "vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")
                       and n.GetAttribute("JCSAugment.role") is None]
            if volumes:
                p.predictVolume = volumes[0]
        if self._monitor is None and self.logic.isRunFolder(pathOrNone(p.runFolder)):
            self._attach(pathOrNone(p.runFolder), worker=None)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                    self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._parameterNodeGuiTag = None
        if self._parameterNode:
            # widgets are bound through their "SlicerParameterName" property in the .ui file
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._relabelCombos()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self._onParameterNodeModified)
        self._casesKey = None
        self._onParameterNodeModified()

    def _relabelCombos(self):
        """connectGui fills bound combo boxes with the raw choices; show readable labels (the
        connector reads the choice by index, so the labels are free)."""
        from JCSAugmentLib.panel.settings import MODE_LABELS
        labels = dict(COMBO_LABELS)
        labels["mode"] = MODE_LABELS
        for widget in (self.ui.dataSourceComboBox, self.ui.backboneComboBox, self.ui.modeComboBox,
                       self.ui.initComboBox, self.ui.predictTargetComboBox, self.ui.teaComboBox):
            names = labels.get(widget.property("SlicerParameterName"), {})
            for i in range(widget.count):
                value = widget.itemText(i)
                if value in names:
                    widget.setItemText(i, names[value])
                    widget.setItemData(i, value, qt.Qt.ToolTipRole)

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        folder = p.dataSource == "folder"
        self.ui.sceneCasesWidget.setVisible(not folder)
        self.ui.datasetFolderWidget.setVisible(folder)
        self.ui.predictVolumeSelector.enabled = p.predictTarget == "volume"
        self.ui.referenceSelector.enabled = p.predictTarget == "volume"
        self.ui.pretrainedPathLineEdit.enabled = p.mode == "tea-only"
        self._updateCaseTable()
        self._selectDevice(p.device)
        self._updateButtons()

    # ------------------------------------------------------------------ data section
    def _updateCaseTable(self):
        p = self._parameterNode
        if p is None:
            return
        rows = self.logic.caseRows(p)
        key = tuple((r["case_id"], tuple(n.GetID() if n else None for n in r["image_nodes"]),
                     r["label_node"].GetID() if r["label_node"] else None, r["split"])
                    for r in rows)
        # a cell's own signal must not rebuild the table under it: edits refresh it afterwards
        if key != self._casesKey and not self._tableEditing:
            self._casesKey = key
            table = self.ui.caseTable
            wasBlocked = table.blockSignals(True)
            try:
                table.setRowCount(len(rows))
                for i, row in enumerate(rows):
                    item = qt.QTableWidgetItem(row["case_id"])
                    table.setItem(i, 0, item)
                    for column, node in ((1, row["image_nodes"][0] if row["image_nodes"] else None),
                                         (2, row["label_node"])):
                        cell = qt.QTableWidgetItem(node.GetName() if node else "(missing)")
                        cell.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                        table.setItem(i, column, cell)
                    combo = qt.QComboBox()
                    combo.addItems(list(SPLIT_CHOICES))
                    combo.setCurrentIndex(SPLIT_CHOICES.index(row["split"])
                                          if row["split"] in SPLIT_CHOICES else 0)
                    combo.connect("currentIndexChanged(int)",
                                  lambda index, r=i: self.onSplitChanged(r, index))
                    table.setCellWidget(i, 3, combo)
            finally:
                table.blockSignals(wasBlocked)
        problems = self.logic.caseProblems(p) if p.dataSource == "scene" else []
        counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLIT_CHOICES}
        summary = (f"{len(rows)} case(s): {counts['train']} train, {counts['validation']} "
                   f"validation, {counts['test']} test" if rows else "")
        self.ui.casesStatusLabel.text = "\n".join(([summary] if summary else []) + problems)

    def _editCases(self, action, message):
        self._tableEditing = True
        try:
            with slicer.util.tryWithErrorDisplay(message):
                action()
        finally:
            self._tableEditing = False
            self._casesKey = None
            qt.QTimer.singleShot(0, self._updateCaseTable)

    def onSplitChanged(self, row, index):
        self._editCases(lambda: self.logic.setCaseSplit(self._parameterNode, row,
                                                        SPLIT_CHOICES[index]),
                        "Could not change the split.")

    def onCaseItemChanged(self, item):
        if item.column() != 0:
            return
        row, text = item.row(), item.text()
        self._editCases(lambda: self.logic.renameCase(self._parameterNode, row, text),
                        "Could not rename the case.")

    def onAddSelected(self):
        with slicer.util.tryWithErrorDisplay("Could not add the case."):
            p = self._parameterNode
            self.logic.addCase(p, p.inputVolume, p.inputLabel)

    def onAddAllPairs(self):
        with slicer.util.tryWithErrorDisplay("Could not pair the volumes of the scene."):
            added, note = self.logic.addAllPairs(self._parameterNode)
            if note:
                self.ui.casesStatusLabel.text = note

    def onRemoveCases(self):
        rows = sorted({index.row() for index in self.ui.caseTable.selectedIndexes()})
        with slicer.util.tryWithErrorDisplay("Could not remove the cases."):
            self.logic.removeCases(self._parameterNode, rows)

    def onClearCases(self):
        with slicer.util.tryWithErrorDisplay("Could not clear the cases."):
            self.logic.removeCases(self._parameterNode, None)

    def onAutoSplit(self):
        with slicer.util.tryWithErrorDisplay("Could not split the cases."):
            self.logic.autoSplitCases(self._parameterNode)

    # ------------------------------------------------------------------ devices
    def _startDeviceProbe(self, refresh=False):
        from JCSAugmentLib.panel import devices
        if refresh:
            devices.clear_cache()
        self._devicesProbe = devices.DeviceProbe().start()
        self.ui.deviceNoteLabel.text = "Asking PyTorch which GPUs it sees\u2026"
        self._timer.start()

    def onRefreshDevices(self):
        with slicer.util.tryWithErrorDisplay("Could not list the devices."):
            self._startDeviceProbe(refresh=True)

    def _pollDeviceProbe(self):
        if self._devicesProbe is None:
            return
        result = self._devicesProbe.poll()
        if result is None:
            return
        self._devicesProbe = None
        self._devices = result
        notes = [d.get("note") for d in result if d.get("note")]
        self.ui.deviceNoteLabel.text = "\n".join(notes)
        self._fillDeviceCombo()

    def _fillDeviceCombo(self):
        combo = self.ui.deviceComboBox
        self._updatingDeviceCombo = True
        try:
            combo.clear()
            combo.addItem("Automatic (first GPU, else the CPU)", "auto")
            for d in self._devices or [{"id": "cpu", "label": "CPU"}]:
                combo.addItem(d.get("label") or d["id"], d["id"])
        finally:
            self._updatingDeviceCombo = False
        if self._parameterNode is not None:
            self._selectDevice(self._parameterNode.device)

    def _selectDevice(self, deviceId):
        combo = self.ui.deviceComboBox
        index = combo.findData(deviceId or "auto")
        if index < 0:  # a GPU the last probe did not list: keep it selectable
            combo.addItem(deviceId, deviceId)
            index = combo.count - 1
        if combo.currentIndex != index:
            self._updatingDeviceCombo = True
            combo.setCurrentIndex(index)
            self._updatingDeviceCombo = False

    def onDeviceChanged(self, index):
        if self._updatingDeviceCombo or self._parameterNode is None or index < 0:
            return
        deviceId = self.ui.deviceComboBox.itemData(index) or "auto"
        self._parameterNode.device = deviceId
        from JCSAugmentLib.panel.devices import low_memory_warning
        device = next((d for d in self._devices if d.get("id") == deviceId), None)
        note = low_memory_warning(device, backbone=self._parameterNode.backbone) if device else None
        self.ui.deviceNoteLabel.text = note or ""

    # ------------------------------------------------------------------ run section
    def _isTrainingLive(self):
        return self._view is not None and self._view.state in ("starting", "running", "stopping")

    def _attach(self, runDir, worker):
        """Watch ``runDir`` (``worker``: the process this panel started, else None)."""
        self._monitor = self.logic.monitor(runDir, worker)
        self._view = None
        self._policyDirty = True
        self._lastPolicyDraw = 0.0
        self._policyPngs = {}
        self._shownLog = None
        for label in (self.ui.traForegroundLabel, self.ui.traBackgroundLabel, self.ui.teaLabel,
                      self.ui.previewLabel):
            label.clear()
        self._timer.start()
        self.onTimer()

    def onStartStop(self):
        if self._view is not None and self._view.can_stop:
            with slicer.util.tryWithErrorDisplay("Could not stop the run."):
                self._beginStop()
            return
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            ensureDependencies()
            p = self._parameterNode
            settings = self.logic.settingsFromParameterNode(p)
            # Start always trains in a new run folder: a finished or stopped run stays as it is
            # (Resume continues it), so there is nothing to confirm here
            if p.dataSource == "folder":
                runDir = self.logic.prepareRun(settings, datasetFolder=pathOrNone(p.datasetFolder),
                                               splitFractions=self.logic.fractions(p),
                                               splitSeed=p.splitSeed)
            else:
                runDir = self.logic.prepareRun(settings, rows=self.logic.caseRows(p))
            worker = self.logic.startTraining(runDir, settings.device)
            p.runFolder = pathlib.Path(runDir)
            self._attach(runDir, worker)

    def _beginStop(self):
        worker = self._monitor.worker if self._monitor is not None else None
        if worker is not None and worker.running:
            worker.begin_stop(timeout=30.0)  # then poll_stop() on each tick
        elif self._monitor is not None:  # a run re-attached from its folder
            self.logic.requestStop(self._monitor.run_dir)
        self.onTimer()

    def onResume(self):
        with slicer.util.tryWithErrorDisplay("Could not resume the run.", waitCursor=True):
            ensureDependencies()
            runDir = pathOrNone(self._parameterNode.runFolder)
            worker = self.logic.startTraining(runDir, self._parameterNode.device, resume=True)
            self._attach(runDir, worker)

    def onOpenRun(self):
        with slicer.util.tryWithErrorDisplay("Could not open the run folder."):
            runDir = pathOrNone(self._parameterNode.runFolder)
            self.logic.checkRunFolder(runDir)
            if self._isTrainingLive() and os.path.abspath(runDir) != self._monitor.run_dir:
                raise ValueError("A run is still live in this panel: stop it first, or wait for "
                                 "it to end (it can be re-attached later).")
            worker = self._monitor.worker if (
                self._monitor is not None and self._monitor.run_dir == os.path.abspath(runDir)) \
                else None
            self._attach(runDir, worker)

    def onTimer(self):
        self._pollDeviceProbe()
        self._pollPictures()
        view = None
        if self._monitor is not None:
            worker = self._monitor.worker
            if worker is not None and worker.stop_phase not in (None, "done"):
                worker.poll_stop()
            if self._prediction is not None and not self._prediction.worker.running:
                self._finishPrediction()
            try:
                view = self._monitor.poll()
            except Exception as e:  # never let the timer die silently
                logging.exception("JCSAugment: polling the run failed")
                self.ui.errorLabel.text = f"Cannot read the run folder: {e}"
                self.ui.errorLabel.show()
                view = None
            if view is not None:
                self._showView(view)
        busy = (view is not None and (view.busy or view.catching_up)) \
            or self._devicesProbe is not None or self._pictureJob is not None \
            or self._prediction is not None or self._policyDirty and view is not None \
            and view.policy is not None
        if not busy:
            self._timer.stop()

    def _showView(self, v):
        """Bind a ViewState to the widgets (None: nothing attached)."""
        self._view = v
        self._updateButtons()
        bar = self.ui.progressBar
        if v is None:
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setFormat("no run")
            self.ui.statusLabel.text = "Add cases, choose the settings, then Start training."
            return
        from JCSAugmentLib.panel.monitor import format_duration
        if v.total:
            bar.setRange(0, int(v.total))
            bar.setValue(min(int(v.iteration), int(v.total)))
            text = f"{v.progress_text} iterations"
            if v.epoch and v.epochs:
                text += f", epoch {v.epoch}/{v.epochs}"
            if v.eta_seconds is not None:
                text += f", ETA {format_duration(v.eta_seconds)}"
            bar.setFormat(text)
        else:
            bar.setRange(0, 0 if v.state == "starting" else 1)
            bar.setValue(0)
            bar.setFormat(v.state)
        self.ui.statusLabel.text = v.message
        if v.warnings:
            self.ui.warningLabel.text = f"Warning: {v.warnings[-1]}"
            self.ui.warningLabel.toolTip = "\n".join(v.warnings[-20:])
            self.ui.warningLabel.show()
        else:
            self.ui.warningLabel.hide()
        if v.state == "failed":
            lines = [v.error or "The run failed."]
            if v.exit_reason:
                lines.append(f"Exit: {v.exit_reason}")
            self.ui.errorLabel.text = "\n".join(lines)
            self.ui.errorLabel.toolTip = v.traceback or ""
            self.ui.errorLabel.show()
        else:
            self.ui.errorLabel.hide()
        if v.log_tail != self._shownLog:
            self._shownLog = v.log_tail
            self.ui.logTextEdit.setPlainText(v.log_tail or "")
            scroll = self.ui.logTextEdit.verticalScrollBar()
            scroll.setValue(scroll.maximum)
        if v.curves_changed:
            self._updateCurves(v)
        if v.policy_changed:
            self._policyDirty = True
        if self._policyDirty and v.policy is not None and self._pictureJob is None \
                and time.monotonic() - self._lastPolicyDraw >= self.POLICY_REDRAW_S:
            self._startPictures(v.run_dir)
        if v.preview_changed and v.preview_files:
            self._showPreviewPng(v)

    def _updateButtons(self):
        v = self._view
        start = self.ui.startButton
        if v is not None and v.state == "stopping":
            start.text, start.enabled = "Stopping\u2026", False
        elif v is not None and v.can_stop:
            start.text, start.enabled = "Stop", True
        else:
            start.text = "Start training"
            start.enabled = v is None or v.can_start
        self.ui.resumeButton.enabled = v is not None and v.can_resume
        idle = v is None or not v.busy
        self.ui.segmentButton.enabled = idle and v is not None and v.checkpoint is not None
        self.ui.openRunButton.enabled = v is None or not v.busy
        self.ui.showPreviewButton.enabled = v is not None and bool(v.preview_files)
        hasPolicy = bool(self._policyPngs)
        self.ui.exportPolicyPngButton.enabled = hasPolicy
        self.ui.exportPolicyJsonButton.enabled = v is not None and v.run_dir is not None and \
            RunFolder(v.run_dir).has_policy()

    def _ensureCurveNodes(self):
        if self._curveNodes is None or any(
                n.GetScene() is None for pair in self._curveNodes.values() for n in pair):
            self._curveNodes = self.logic.curveNodes()
            self._plotView.setMRMLPlotViewNode(self._curveNodes["view"][0])
            self.onCurvesChoice(self.ui.curvesComboBox.currentIndex)
        return self._curveNodes

    def _updateCurves(self, v):
        nodes = self._ensureCurveNodes()
        self.logic.updateCurves(nodes, v.loss_curves, v.dice_curve)

    def onCurvesChoice(self, index):
        if self._curveNodes is None:
            return
        key = "dice" if index == 1 else "loss"
        viewNode = self._curveNodes["view"][0]
        viewNode.SetPlotChartNodeID(self._curveNodes[key][1].GetID())

    # ------------------------------------------------------------------ policies
    def _startPictures(self, runDir):
        try:
            self._pictureJob = self.logic.startPolicyPictures(runDir)
        except Exception as e:  # the pictures are a view: say why, keep training
            self.ui.policyStatusLabel.text = f"Cannot draw the policies: {e}"
            self._pictureJob = None
        self._policyDirty = False
        self._lastPolicyDraw = time.monotonic()

    def _pollPictures(self):
        job = self._pictureJob
        if job is None or job["worker"].running:
            return
        self._pictureJob = None
        pngs = self.logic.finishPolicyPictures(job)
        if not pngs:
            self.ui.policyStatusLabel.text = ("Cannot draw the policies: "
                                              + (job["worker"].exit_reason() or "unknown error")
                                              + "\n" + job["worker"].log_tail(3))
            return
        self._policyPngs = pngs
        width = max(200, self.ui.policiesCollapsibleButton.width - 30)
        for key, label in (("tra_foreground", self.ui.traForegroundLabel),
                           ("tra_background", self.ui.traBackgroundLabel),
                           ("tea", self.ui.teaLabel)):
            pixmap = qt.QPixmap(pngs[key]) if key in pngs else qt.QPixmap()
            if pixmap.isNull():
                label.clear()
            else:
                label.setPixmap(pixmap.scaledToWidth(min(width, pixmap.width()),
                                                     qt.Qt.SmoothTransformation))
        self.ui.policyStatusLabel.text = "Learned policies (updated while the run learns)."
        self._updateButtons()

    def onExportPolicyPng(self):
        with slicer.util.tryWithErrorDisplay("Could not export the policy pictures."):
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                         "Folder for the policy pictures")
            if folder:
                for key, path in self._policyPngs.items():
                    shutil.copyfile(path, os.path.join(folder, f"policy_{key}.png"))

    def onExportPolicyJson(self):
        with slicer.util.tryWithErrorDisplay("Could not export the policy file."):
            source = RunFolder(self._view.run_dir).policy_path
            name = os.path.basename(source)
            path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), f"Save {name}",
                                                  name, "JSON (*.json)")
            if path:
                shutil.copyfile(source, path)

    # ------------------------------------------------------------------ preview
    def _showPreviewPng(self, v):
        png = v.preview_files.get("png")
        pixmap = qt.QPixmap(png) if png and os.path.exists(png) else qt.QPixmap()
        if pixmap.isNull():
            return
        width = max(200, self.ui.previewCollapsibleButton.width - 30)
        self.ui.previewLabel.setPixmap(pixmap.scaledToWidth(min(width, pixmap.width()),
                                                            qt.Qt.SmoothTransformation))
        if v.preview_iteration is not None:
            self.ui.previewStatusLabel.text = (f"Foreground (top) and background patches under "
                                               f"the policies of iteration {v.preview_iteration}.")

    def onShowPreview(self):
        with slicer.util.tryWithErrorDisplay("Could not show the preview.", waitCursor=True):
            nodes = self.logic.showPreview(self._view.run_dir)
            slicer.util.setSliceViewerLayers(background=nodes["foreground patches"],
                                             label=nodes["foreground labels"], fit=True)

    # ------------------------------------------------------------------ results
    def onSegment(self):
        with slicer.util.tryWithErrorDisplay("Could not segment.", waitCursor=True):
            if self._view is None or self._monitor is None:
                raise ValueError("Open a trained run first (Run section).")
            if self._view.busy:
                raise ValueError("Wait until the run has ended (or stop it) before segmenting.")
            ensureDependencies()
            p = self._parameterNode
            runDir = self._monitor.run_dir
            inputs = self.logic.predictionInputs(p, runDir)
            job = self.logic.startPrediction(runDir, inputs, p.teaMode, p.uncertainty, p.device)
            self._prediction = job
            what = "the test cases" if job.count is None else f"{job.count} case(s)"
            self._monitor.begin_import(job.worker, f"Segmenting {what}\u2026", total=job.count)
            self.ui.resultsStatusLabel.text = "Segmenting in a background process\u2026"
            self._timer.start()

    def _finishPrediction(self):
        job, self._prediction = self._prediction, None
        worker = job.worker
        if worker.returncode != 0:
            reason = worker.exit_reason() or "the prediction failed"
            last = worker.last_line()
            self._monitor.end_import(error=f"Segmentation failed: {reason}"
                                     + (f" ({last})" if last and last not in reason else ""))
            self.ui.resultsStatusLabel.text = f"Segmentation failed: {reason}"
            return
        try:
            p = self._parameterNode
            results = self.logic.importPredictions(job, asSegmentation=p.asSegmentation)
        except Exception as e:
            logging.exception("JCSAugment: importing the predictions failed")
            self._monitor.end_import(error=f"Could not load the results: {e}")
            self.ui.resultsStatusLabel.text = f"Could not load the results: {e}"
            return
        first = results[0] if results else None
        if first is not None and first.get("label") is not None:
            background = first.get("image") or "keep-current"
            slicer.util.setSliceViewerLayers(background=background, label=first["label"],
                                             fit=True)
        notes = [r["note"] for r in results if r.get("note")]
        rows = [row for r in results for row in r.get("metrics", [])]
        self._showMetrics(rows)
        text = f"Segmented {len(results)} case(s)."
        self._monitor.end_import(note=text)
        self.ui.resultsStatusLabel.text = "\n".join([text] + notes)

    def _showMetrics(self, rows):
        table = self.ui.metricsTable
        table.clear()
        columns = ["case", "label", "dsc", "sensitivity", "precision", "hd95"]
        table.setColumnCount(len(columns) if rows else 0)
        table.setRowCount(len(rows))
        if not rows:
            return
        table.setHorizontalHeaderLabels(["Case", "Label", "Dice", "Sensitivity", "Precision",
                                         "HD95 (mm)"])
        for i, row in enumerate(rows):
            for j, key in enumerate(columns):
                value = row.get(key)
                text = "" if value is None else (f"{value:.3f}" if isinstance(value, float)
                                                 else str(value))
                table.setItem(i, j, qt.QTableWidgetItem(text))


#
# JCSAugmentLogic
#

class JCSAugmentLogic(RunLogic, ScriptedLoadableModuleLogic):
    """The module's logic: RunLogic (JCSAugmentSlicer/logic.py, no widget references) with the
    module's typed parameter node."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)

    def getParameterNode(self):
        return JCSAugmentParameterNode(super().getParameterNode())



class JCSAugmentTest(ScriptedLoadableModuleTest):
    """Self-tests: a tiny CPU training through the logic (blocking), prediction, policy
    pictures, preview nodes; and the bad inputs the panel must refuse with a clear message."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)
        self.tmp = tempfile.mkdtemp(prefix="JCSAugmentTest-", dir=slicer.app.temporaryPath)

    def runTest(self, **kwargs):
        """Every test_* method, each after setUp (ctest runs them one by one)."""
        for name in sorted(n for n in dir(self) if n.startswith("test_")):
            self.setUp()
            getattr(self, name)()

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
