"""The JCSAugment panel: binds the parameter node and the run's state to the .ui's widgets.

The module file (JCSAugment.py) stays thin: its widget makes a :class:`JCSAugmentPanel`, shows
its ``widget`` and forwards Slicer's calls. Everything the panel shows is computed by Qt-free
code in JCSAugmentLib (unit-tested without Qt):

- ``JCSAugmentLib.panel``: cases and splits, the training settings and the job they make, the
  background worker process, the run monitor (events -> ViewState), the GPU list, the policy
  pies' display lists (policy_paint) and the timer's decisions (controller: what to poll, when
  to redraw, when a job ended, when the panel is busy);
- ``JCSAugmentLib.slicer_scene``: moving volumes, label maps, segmentations, previews, curves and
  tables between the scene and the run folder (geometry handled in one place).

Training and prediction run in their own process (``PythonSlicer -m JCSAugmentLib ...``), never in
Slicer's GUI process; the panel polls the run folder with a ``qt.QTimer`` and binds the view
state to its widgets (no threads touch Qt or MRML, no ``processEvents`` loops). Neither torch nor
matplotlib is imported here: dependencies are checked and installed only when the user starts
something (``ensureDependencies``).
"""

import logging
import os
import pathlib
import shutil
import time

import ctk
import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from JCSAugmentLib.run.folder import RunFolder
from JCSAugmentSlicer.dependencies import ensureDependencies
from JCSAugmentSlicer.logic import SPLIT_CHOICES, nodesOfClass, pathOrNone
from JCSAugmentSlicer.parameters import COMBO_LABELS


class JCSAugmentPanel(VTKObservationMixin):
    """The panel: the .ui's widgets bound to the parameter node and, on a timer, to the run's
    ViewState (JCSAugmentLib.panel.monitor). ``widget`` is the Qt widget to show; the module's
    widget (JCSAugment.py) forwards Slicer's setup / enter / exit / cleanup / Reload calls here.

    ``logic`` is injected (the module's JCSAugmentLogic), ``isEntered`` answers whether the
    module is shown now (the module panel's ``isEntered``)."""

    POLL_MS = 500
    POLICY_REDRAW_S = 2.0  # a redraw is a few ms of QPainter in this process (policy_paint)
    STOP_TIMEOUT_S = 30.0  # a stop request, then SIGTERM after this, ...
    TERM_GRACE_S = 10.0  # ... then SIGKILL after this
    EXIT_GRACE_S = 10.0  # an ended run's process may take this long to exit by itself

    def __init__(self, uiPath, logic, isEntered=lambda: True):
        self.logic = logic
        self._isEntered = isEntered
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._monitor = None
        self._view = None
        self._prediction = None
        self._importing = None  # a PredictionImport in progress (one piece per tick)
        self._predictProgress = None  # the predict worker's latest PredictProgressStatus
        self._gallery = None  # (worker, png path, what it shows) of the gallery being drawn
        self._galleryArrays = None  # the shown gallery's volumes (npz), for the slice views
        self._compareRun = None  # the comparison folder when the run is one (run.compare)
        self._compareStatus = None  # its CompareStatus at the last tick
        self._comparisonShown = None  # updated_at of the comparison in the Results section
        self._comparisonMaps = []  # its label maps still to load, one per tick
        self._galleryCases = []
        self._policyDirty = False
        self._lastPolicyDraw = 0.0
        self._policyPngs = {}
        self._paintedPictures = {}
        self._devicesProbe = None
        self._devices = []
        self._casesKey = None
        self._tableEditing = False
        self._plotView = None
        self._curveNodes = None
        self._shownLog = None
        self._updatingDeviceCombo = False
        self._timer = None
        self._stopNote = None
        self._finalSince = None
        self._foreignStop = None  # {"since": t, "signalled": None/"term"/"kill"}
        self._reloading = False
        VTKObservationMixin.__init__(self)
        self._setup(uiPath)

    # ------------------------------------------------------------------ setup
    def _setup(self, uiPath):
        self.widget = uiWidget = slicer.util.loadUI(uiPath)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

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
        self.ui.showGalleryButton.connect("clicked(bool)", self.onShowGallery)
        self.ui.showGalleryInSlicesButton.connect("clicked(bool)", self.onShowGalleryInSlices)
        from JCSAugmentLib.panel.gallery import gallery_rows
        for row in gallery_rows():
            self.ui.galleryGroupComboBox.addItem(row.text, row.group or "")
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
        """Stop the timer and let go of what this panel started, never blocking the GUI
        (Slicer calls this on every Reload and at exit).

        On Reload the training run goes on: the new panel re-attaches to it from the parameter
        node's run folder. Otherwise (Slicer exits, the module is unloaded) the worker is asked
        to stop (its checkpoint is kept) and a detached watchdog process ends its process tree
        if it has not exited within the stop timeout (WorkerProcess.stop_detached)."""
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()
        self.setParameterNode(None)
        for job in (self._prediction, self._gallery):
            if job is not None and job.worker.running:
                job.worker.kill()
        worker = self._monitor.worker if self._monitor is not None else None
        if worker is not None and worker.running and not self._reloading:
            logging.info("JCSAugment: stopping the training worker (its checkpoint is kept)")
            worker.stop_detached(timeout=self.STOP_TIMEOUT_S, term_grace=self.TERM_GRACE_S)

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

    def prepareReload(self):
        """Before Slicer reloads the module file (the module widget's onReload): reload the
        modules the panel is made of, so the reloaded module file imports the new code. A
        training run goes on and the new panel re-attaches to it (see cleanup)."""
        import importlib
        import sys
        for name in ("JCSAugmentLib.panel.cases", "JCSAugmentLib.panel.worker_process",
                     "JCSAugmentLib.panel.devices", "JCSAugmentLib.panel.settings",
                     "JCSAugmentLib.panel.monitor", "JCSAugmentLib.panel.pictures",
                     "JCSAugmentLib.panel.controller", "JCSAugmentLib.slicer_scene",
                     "JCSAugmentLib.panel.policy_paint", "JCSAugmentLib.panel.predict_progress",
                     "JCSAugmentSlicer.dependencies", "JCSAugmentSlicer.logic",
                     "JCSAugmentSlicer.parameters", "JCSAugmentSlicer.widget",
                     # last: it imports from the others (a stale one would test old classes)
                     "JCSAugmentSlicer.selftest"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        self._reloading = True

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
        if self._isEntered():
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
        if inputParameterNode is not None and inputParameterNode is self._parameterNode \
                and self._parameterNodeGuiTag is not None:
            return  # already bound (enter() after enter())
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
        self._blankUnsetPaths()
        self._updateCaseTable()
        self._selectDevice(p.device)
        self._updateButtons()

    def _blankUnsetPaths(self):
        """An unset path parameter is ``Path()``, which the path field would show as ".": show
        an empty field instead (signals blocked: the parameter stays unset)."""
        for lineEdit in (self.ui.datasetPathLineEdit, self.ui.outputPathLineEdit,
                         self.ui.runPathLineEdit, self.ui.pretrainedPathLineEdit):
            if lineEdit.currentPath == ".":
                wasBlocked = lineEdit.blockSignals(True)
                lineEdit.currentPath = ""
                lineEdit.blockSignals(wasBlocked)

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

    def _attach(self, runDir, worker, comparison=False):
        """Watch ``runDir`` (``worker``: the process this panel started, else None). A
        comparison folder (``comparison``: one is being started there) is watched through its
        current half, an ordinary run folder (_followComparison)."""
        from JCSAugmentLib.run.compare import compare_status, is_comparison
        self._compareRun = os.path.abspath(runDir) if comparison or is_comparison(runDir) \
            else None
        self._compareStatus = compare_status(runDir) if self._compareRun else None
        self._comparisonShown = None
        self._comparisonMaps = []
        half = self._compareStatus.current_folder if self._compareStatus else None
        self._monitor = self.logic.monitor(half if half and os.path.isdir(half) else runDir,
                                           worker)
        self._view = None
        self._policyDirty = True
        self._lastPolicyDraw = 0.0
        self._policyPngs = {}
        self._paintedPictures = {}  # key -> the policy_paint.Picture its pixmap shows
        self._shownLog = None
        self._stopNote = None
        self._finalSince = None
        self._foreignStop = None
        for label in (self.ui.traForegroundLabel, self.ui.traBackgroundLabel, self.ui.teaLabel,
                      self.ui.previewLabel, self.ui.galleryLabel):
            label.clear()
        self._fillGalleryCases(runDir)
        self._timer.start()
        self.onTimer()

    def _comparisonLive(self):
        """A comparison with halves left is being trained (its worker holds the lock)."""
        c = self._compareStatus
        return c is not None and c.live and c.state in ("training", "predicting")

    def _comparisonPending(self):
        """A comparison still live, or ended with a table or label maps not shown yet."""
        if self._compareRun is None or self._compareStatus is None:
            return False
        if self._comparisonMaps or self._compareStatus.live:
            return True  # (live: poll until its end is seen, whatever the half's view says)
        from JCSAugmentLib.run.compare import comparison_path
        return (not self._comparisonLive() and self._comparisonShown is None
                and os.path.exists(comparison_path(self._compareRun)))

    def _controlFolder(self):
        """The folder whose stop file and run.lock belong to the worker: the comparison's when
        the run is one, else the monitored run's."""
        return self._compareRun or self._monitor.run_dir

    def onStartStop(self):
        if (self._view is not None and self._view.can_stop) or self._comparisonLive():
            with slicer.util.tryWithErrorDisplay("Could not stop the run."):
                self._beginStop()
            return
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            ensureDependencies()
            p = self._parameterNode
            settings = self.logic.settingsFromParameterNode(p)
            compareSeeds = int(p.compareSeeds) if p.compareHeuristic else None
            if compareSeeds is not None:
                from JCSAugmentLib.run.compare import LEARNED_MODES
                if settings.mode not in LEARNED_MODES:  # said before any case is exported
                    raise ValueError(
                        f"Compare with the heuristic needs a mode that learns its training-"
                        f"time augmentation ({', '.join(LEARNED_MODES)}), not {settings.mode!r}.")
            # Start always trains in a new run folder: a finished or stopped run stays as it is
            # (Resume continues it), so there is nothing to confirm here
            if p.dataSource == "folder":
                runDir = self.logic.prepareRun(settings, datasetFolder=pathOrNone(p.datasetFolder),
                                               splitFractions=self.logic.fractions(p),
                                               splitSeed=p.splitSeed)
            else:
                runDir = self.logic.prepareRun(settings, rows=self.logic.caseRows(p))
            worker = self.logic.startTraining(runDir, settings.device, compareSeeds=compareSeeds)
            p.runFolder = pathlib.Path(runDir)
            self._attach(runDir, worker, comparison=compareSeeds is not None)

    def _beginStop(self):
        worker = self._monitor.worker if self._monitor is not None else None
        if worker is not None and worker.running:
            # then poll_stop() on each tick (JCSAugmentLib.panel.controller)
            worker.begin_stop(timeout=self.STOP_TIMEOUT_S, term_grace=self.TERM_GRACE_S)
        elif self._monitor is not None:  # a run re-attached from its folder
            self.logic.requestStop(self._controlFolder())
            # no process handle here: SIGTERM / SIGKILL its group later if it does not stop
            self._foreignStop = {"since": time.monotonic(), "signalled": None}
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
        """One tick: poll what is pending, then do what JCSAugmentLib.panel.controller decides
        (it keeps the timer running while any process this panel started is alive)."""
        from JCSAugmentLib.panel.controller import decide, lingering_message, stop_outcome_message
        self._pollDeviceProbe()
        self._followComparison()
        view = self._pollRun()
        actions = decide(self._tickFacts(view))
        worker = self._monitor.worker if self._monitor is not None else None
        if actions.drive_stop and worker.poll_stop():
            self._stopNote = stop_outcome_message(worker.forced, self.STOP_TIMEOUT_S)
            view = self._pollRun()
        self._finalSince = (self._finalSince or time.monotonic()) if actions.ended_alive \
            else None
        if actions.stop_lingering:
            logging.warning("JCSAugment: the run has ended but its worker process lives on; "
                            "terminating it")
            self._stopNote = lingering_message(self.EXIT_GRACE_S, self.TERM_GRACE_S)
            # no stop request: the run has ended, only its process is left
            worker.begin_stop(timeout=0.0, term_grace=self.TERM_GRACE_S, request=False)
        if actions.finish_gallery:
            self._finishGallery()
        self._pollPredictProgress()
        if actions.finish_prediction:
            self._finishPrediction()
            view = self._pollRun()
        if actions.signal_foreign:
            from JCSAugmentLib.panel.worker_process import signal_run_worker
            kill = actions.signal_foreign == "kill"
            pid = signal_run_worker(self._controlFolder(), kill=kill)
            self._foreignStop["signalled"] = actions.signal_foreign
            if pid is not None:
                self._stopNote = (
                    f"The worker (pid {pid}) did not stop within {self.STOP_TIMEOUT_S:.0f} s "
                    f"and was {'killed (SIGKILL)' if kill else 'terminated (SIGTERM)'}; its "
                    f"last checkpoint is kept.")
        if actions.redraw_policies and view is not None:
            self._startPictures(view.run_dir)
        if view is not None or actions.stop_lingering or actions.drive_stop:
            self._showView(view if view is not None else self._view)
        if not decide(self._tickFacts(self._view)).keep_timer:
            self._timer.stop()

    def _pollPredictProgress(self):
        """While the predict worker runs: its progress file (windows, ETA per case and overall;
        JCSAugmentLib.panel.predict_progress), shown in the Results section and the bar."""
        job = self._prediction
        if job is None or job.phase != "segmenting":
            self._predictProgress = None
            return
        from JCSAugmentLib.panel.predict_progress import read_predict_progress
        status = read_predict_progress(os.path.join(job.outDir, "labels"))
        if status is not None and status != self._predictProgress:
            self._predictProgress = status
            self.ui.resultsStatusLabel.text = f"Segmenting: {status.describe()}"

    def _pollRun(self):
        if self._monitor is None:
            return None
        try:
            return self._monitor.poll()
        except Exception as e:  # never let the timer die silently
            logging.exception("JCSAugment: polling the run failed")
            self.ui.errorLabel.text = f"Cannot read the run folder: {e}"
            self.ui.errorLabel.show()
            return None

    def _trainingAlive(self):
        worker = self._monitor.worker if self._monitor is not None else None
        return worker is not None and worker.running

    def _tickFacts(self, view):
        from JCSAugmentLib.panel.controller import TickFacts
        worker = self._monitor.worker if self._monitor is not None else None
        return TickFacts(
            now=time.monotonic(), view_state=view.state if view is not None else None,
            view_busy=view is not None and view.busy,
            catching_up=view is not None and view.catching_up,
            training_alive=self._trainingAlive(),
            comparison_live=self._comparisonLive(),
            scene_work_pending=self._comparisonPending(),
            stop_phase=worker.stop_phase if worker is not None else None,
            final_since=self._finalSince, exit_grace_s=self.EXIT_GRACE_S,
            foreign_stop_since=self._foreignStop["since"] if self._foreignStop else None,
            foreign_signalled=self._foreignStop["signalled"] if self._foreignStop else None,
            stop_timeout_s=self.STOP_TIMEOUT_S, term_grace_s=self.TERM_GRACE_S,
            prediction_pending=self._prediction is not None,
            prediction_alive=self._prediction is not None and self._prediction.worker.running,
            gallery_pending=self._gallery is not None,
            gallery_alive=self._gallery is not None and self._gallery.worker.running,
            probe_pending=self._devicesProbe is not None,
            policy_dirty=self._policyDirty,
            policy_available=view is not None and view.policy is not None,
            last_policy_draw=self._lastPolicyDraw, policy_interval_s=self.POLICY_REDRAW_S)

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
        progress = self._predictProgress
        if progress is not None and v.state == "importing":  # the bar follows the prediction
            from JCSAugmentLib.infer.progress import format_seconds
            bar.setRange(0, 1000)
            bar.setValue(int(round(1000 * progress.fraction)))
            p = progress.progress
            bar.setFormat(f"Segmenting: {100 * progress.fraction:.0f} % of {p.windows_total} "
                          f"windows, ETA {format_seconds(p.eta_s)}")
        self.ui.statusLabel.text = v.message + (f"\n{self._stopNote}" if self._stopNote else "") \
            + (f"\nComparison: {self._compareStatus.describe()}" if self._compareStatus else "")
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
        if v.preview_changed and v.preview_files:
            self._showPreviewPng(v)

    def _updateButtons(self):
        v = self._view
        start = self.ui.startButton
        # the run's events may say it ended while its process still lives: no start on top
        lingering = self._trainingAlive() and not (v is not None and v.can_stop) \
            and not self._comparisonLive()
        if self._comparisonLive() and not (v is not None and v.state == "stopping"):
            start.text, start.enabled = "Stop", True  # between halves too
        elif v is not None and v.state == "stopping" or lingering:
            start.text, start.enabled = "Stopping\u2026", False
        elif v is not None and v.can_stop:
            start.text, start.enabled = "Stop", True
        else:
            start.text = "Start training"
            start.enabled = v is None or v.can_start
        c = self._compareStatus
        # a stopped comparison resumes as a whole, whichever half its view shows (the half it
        # stopped in may not have started: the view then shows the finished one before it)
        comparisonStopped = c is not None and not c.live and c.state in ("stopped", "failed")
        self.ui.resumeButton.enabled = (v is not None and v.can_resume and not lingering) or (
            comparisonStopped and not self._trainingAlive())
        idle = v is None or not v.busy
        self.ui.segmentButton.enabled = idle and v is not None and v.checkpoint is not None
        self.ui.openRunButton.enabled = v is None or not v.busy
        self.ui.showPreviewButton.enabled = v is not None and bool(v.preview_files)
        self.ui.showGalleryButton.enabled = bool(self._galleryCases) and self._gallery is None
        self.ui.showGalleryInSlicesButton.enabled = self._galleryArrays is not None
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
        """Redraw the policy pictures from the run's policy.json, here in the GUI process: a
        display list (JCSAugmentLib.panel.policy_paint, no torch) painted with QPainter."""
        from JCSAugmentLib.panel.policy_paint import policy_pictures
        self._policyDirty = False
        self._lastPolicyDraw = time.monotonic()
        try:
            width = max(240, min(520, self.ui.policiesCollapsibleButton.width - 30))
            pictures = policy_pictures(RunFolder(runDir).policy_path, width=width)
        except (OSError, ValueError) as e:  # a view: say why, keep training
            self.ui.policyStatusLabel.text = f"Cannot draw the policies: {e}"
            return
        for key, label in (("tra_foreground", self.ui.traForegroundLabel),
                           ("tra_background", self.ui.traBackgroundLabel),
                           ("tea", self.ui.teaLabel)):
            if key not in pictures:
                label.clear()
                self._policyPngs.pop(key, None)
                self._paintedPictures.pop(key, None)
            elif self._paintedPictures.get(key) != pictures[key]:
                # only what changed is painted again (a policy that is not learned, or an
                # update that moved nothing this picture shows, keeps its pixmap)
                pixmap = self._paint(pictures[key])
                self._policyPngs[key] = pixmap
                self._paintedPictures[key] = pictures[key]
                label.setPixmap(pixmap)
        self.ui.policyStatusLabel.text = "Learned policies (updated while the run learns)."
        self._updateButtons()

    @staticmethod
    def _paint(picture):
        """A QPixmap of a policy_paint.Picture."""
        pixmap = qt.QPixmap(picture.width, picture.height)
        pixmap.fill(qt.QColor(255, 255, 255))
        painter = qt.QPainter(pixmap)
        try:
            painter.setRenderHint(qt.QPainter.Antialiasing)
            painter.setPen(qt.QColor(80, 80, 80))
            for pie in picture.pies:
                painter.setBrush(qt.QColor(*pie.rgb))
                painter.drawPie(qt.QRectF(pie.x, pie.y, pie.size, pie.size), pie.start16,
                                pie.span16)
            for box in picture.boxes:
                painter.fillRect(qt.QRectF(box.x, box.y, box.width, box.height),
                                 qt.QColor(*box.rgb))
            painter.setPen(qt.QColor(20, 20, 20))
            font = painter.font()
            align = {"left": qt.Qt.AlignLeft, "right": qt.Qt.AlignRight,
                     "center": qt.Qt.AlignHCenter}
            for text in picture.texts:
                font.setBold(text.bold)
                painter.setFont(font)
                painter.drawText(qt.QRectF(text.x, text.y, text.width, text.height),
                                 align[text.align] | qt.Qt.AlignVCenter, text.text)
        finally:
            painter.end()
        return pixmap

    def onExportPolicyPng(self):
        with slicer.util.tryWithErrorDisplay("Could not export the policy pictures."):
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                         "Folder for the policy pictures")
            if folder:
                for key, pixmap in self._policyPngs.items():
                    path = os.path.join(folder, f"policy_{key}.png")
                    if not pixmap.save(path, "PNG"):
                        raise OSError(f"Cannot write {path}")

    def onExportPolicyJson(self):
        with slicer.util.tryWithErrorDisplay("Could not export the policy file."):
            source = RunFolder(self._view.run_dir).policy_path
            name = os.path.basename(source)
            path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), f"Save {name}",
                                                  name, "JSON (*.json)")
            if path:
                shutil.copyfile(source, path)

    # ------------------------------------------------------------------ compare
    def _followComparison(self):
        """A comparison: watch the half it trains now (a new RunMonitor on that folder, the
        same worker), and once it has ended show its table and load its label maps (one per
        tick)."""
        if self._compareRun is None or self._monitor is None:
            return
        from JCSAugmentLib.run.compare import compare_status, read_comparison
        status = compare_status(self._compareRun)
        self._compareStatus = status
        if status is None:
            return
        half = status.current_folder
        if half and half != self._monitor.run_dir and os.path.isdir(half):
            self._monitor = self.logic.monitor(half, self._monitor.worker)
            self._view, self._policyDirty, self._shownLog = None, True, None
            self._fillGalleryCases(half)
        if self._comparisonMaps:
            self._loadComparisonMap(self._comparisonMaps.pop(0))
            return
        if status.live and status.state in ("training", "predicting"):
            return
        comparison = read_comparison(self._compareRun)
        if comparison is None or comparison.updated_at == self._comparisonShown:
            return
        self._comparisonShown = comparison.updated_at
        self._showComparison(comparison)
        sceneCases = {r["case_id"]: r["image_nodes"][0]
                      for r in self.logic.caseRows(self._parameterNode) if r["image_nodes"]} \
            if self._parameterNode is not None else {}
        self._comparisonMaps = [(sceneCases.get(r.case), r.name,
                                 os.path.join(self._compareRun, r.prediction))
                                for r in comparison.cases if r.prediction]

    def _loadComparisonMap(self, item):
        """One of the comparison's label maps into the scene, on its case's volume's grid and
        named by method (kept when a node of that name exists: re-attaching loads nothing
        twice)."""
        image, name, path = item
        if image is None or slicer.mrmlScene.GetFirstNodeByName(name) is not None:
            return
        from JCSAugmentLib.slicer_scene import load_label_map
        try:
            load_label_map(path, image, name=name, scene=slicer.mrmlScene)
        except Exception as e:  # a view: say why, keep the rest
            logging.exception("JCSAugment: loading a comparison label map failed")
            self.ui.resultsStatusLabel.text += f"\nCould not load {name}: {e}"

    def _showComparison(self, c):
        """The comparison in the metrics table -- per test case, method and TEA, the means, and
        the paired differences learned minus heuristic with their interval -- and its verdict in
        the Results status."""
        from JCSAugmentLib.run.compare import METRICS, METRIC_TITLES, variant_title
        table = self.ui.metricsTable
        table.clear()
        columns = ["What", "Label"] + [METRIC_TITLES[m] for m in METRICS]
        seeds = len(c.seeds) > 1
        rows = []
        for r in c.cases:  # per test case (and seed), per method and TEA
            who = f"{r.case}" + (f" (seed {r.seed})" if seeds else "")
            for label, values in (r.metrics or {}).items():
                rows.append([f"{who}: {variant_title(r.method, r.variant, r.tea)}", label]
                            + [(values or {}).get(m) for m in METRICS])
        means = {}
        for r in c.means:
            means.setdefault((r.method, r.variant, r.tea, r.label), {})[r.metric] = r.mean
        rows += [[f"mean: {variant_title(method, variant, tea)}", label]
                 + [values.get(m) for m in METRICS]
                 for (method, variant, tea, label), values in means.items()]
        differences = {}
        for d in c.differences:  # learned minus baseline over the test cases, every metric
            if d.over == "cases":
                differences.setdefault((d.variant, d.label), {})[d.metric] = d
        for (variant, label), byMetric in differences.items():
            n = max(d.n for d in byMetric.values())
            cells = []
            for m in METRICS:
                d = byMetric.get(m)
                if d is None or d.mean is None:
                    cells.append(None)
                else:
                    interval = "" if d.low is None else f" [{d.low:+.3f}, {d.high:+.3f}]"
                    cells.append(f"{d.mean:+.3f}{interval}")
            rows.append([f"{c.learned} - {c.baseline}, {'TEA' if variant == 'tea' else 'no TEA'}"
                         f" (n={n}, 95 % interval)", label] + cells)
        table.setColumnCount(len(columns))
        table.setRowCount(len(rows))
        table.setHorizontalHeaderLabels(columns)
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                text = "" if value is None else (f"{value:.3f}" if isinstance(value, float)
                                                 else str(value))
                table.setItem(i, j, qt.QTableWidgetItem(text))
        notes = [f"{h.method} (seed {h.seed}): {h.note}" for h in c.halves if not h.results]
        self.ui.resultsStatusLabel.text = "\n".join(
            [f"Comparison ({'complete' if c.complete else 'incomplete'}): {c.verdict}"] + notes
            + [f"Tables: {os.path.join(self._compareRun, 'comparison.md')}"])

    # ------------------------------------------------------------------ policy gallery
    def _fillGalleryCases(self, runDir):
        """The run's labelled cases in the gallery's case combo box (training cases first)."""
        from JCSAugmentLib.panel.gallery import gallery_cases
        combo = self.ui.galleryCaseComboBox
        combo.clear()
        try:
            self._galleryCases = gallery_cases(runDir)
        except (OSError, ValueError) as e:  # a view: say why, keep the rest of the panel
            self._galleryCases = []
            self.ui.galleryStatusLabel.text = f"No case to show the policies on: {e}"
            return
        for case in self._galleryCases:
            combo.addItem(f"{case.id} ({case.split})", case.id)
        self.ui.galleryStatusLabel.text = (
            "Choose a case and a group, then 'Show on case' to see what each option does to "
            "it." if self._galleryCases else "The run has no labelled case to show.")

    def onShowGallery(self):
        with slicer.util.tryWithErrorDisplay("Could not draw the policy gallery."):
            from JCSAugmentLib.panel.gallery import (GalleryJob, gallery_command,
                                                     gallery_npz_path, gallery_png_path)
            from JCSAugmentLib.panel.worker_process import WorkerProcess
            ensureDependencies()
            index = self.ui.galleryCaseComboBox.currentIndex
            if not 0 <= index < len(self._galleryCases):
                raise ValueError("Choose a case of the run.")
            case = self._galleryCases[index]
            group = self.ui.galleryGroupComboBox.itemData(
                self.ui.galleryGroupComboBox.currentIndex) or None
            runDir = self._monitor.run_dir
            png = gallery_png_path(runDir, case.id, group)
            os.makedirs(os.path.dirname(png), exist_ok=True)
            # the volumes for the slice views of one row (every row of a BraTS case: ~60 MB)
            npz = gallery_npz_path(png) if group is not None else None
            cmd = gallery_command(runDir, case, png, group=group, arrays=npz)
            worker = WorkerProcess.for_command(cmd, os.path.join(os.path.dirname(png),
                                                                 "gallery.log"),
                                               what="policy gallery")
            worker.start()
            what = self.ui.galleryGroupComboBox.currentText
            self._gallery = GalleryJob(worker, png, f"{what} on {case.id}", npz)
            self._galleryArrays = None
            self.ui.galleryStatusLabel.text = (f"Drawing {what} on {case.id} in a background "
                                               f"process\u2026")
            self._updateButtons()
            self._timer.start()

    def _finishGallery(self):
        job, self._gallery = self._gallery, None
        worker = job.worker
        pixmap = qt.QPixmap(job.png) if worker.returncode == 0 and os.path.exists(job.png) \
            else qt.QPixmap()
        if pixmap.isNull():
            reason = worker.exit_reason() or "it wrote no picture"
            last = worker.last_line()
            self.ui.galleryStatusLabel.text = (f"The gallery failed: {reason}"
                                               + (f" ({last})" if last and last not in reason
                                                  else ""))
            self.ui.galleryLabel.clear()
        else:
            # full size, in its scroll area: scaled to the panel's width a row's captions
            # would be unreadable (a row of both patches is ~2000 px wide)
            self.ui.galleryLabel.setPixmap(pixmap)
            self._galleryArrays = job.npz if job.npz and os.path.exists(job.npz) else None
            from JCSAugmentLib.panel.gallery import gallery_notes
            notes = gallery_notes(worker.log_tail(50))
            if job.npz is None:
                notes.append("Choose one group to show it in the slice views.")
            self.ui.galleryStatusLabel.text = "\n".join(
                [f"{job.what} (full size: {job.png})."] + notes)
        self._updateButtons()

    def onShowGalleryInSlices(self):
        with slicer.util.tryWithErrorDisplay("Could not show the gallery.", waitCursor=True):
            nodes, captions = self.logic.showGalleryArrays(self._galleryArrays)
            first = next(iter(nodes))
            slicer.util.setSliceViewerLayers(background=nodes[first],
                                             label=nodes.get(f"{first} labels"), fit=True)
            self.ui.galleryStatusLabel.text = (
                f"In the slice views, left to right along x: {', '.join(captions[first])}.")

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
        """The current phase's process has exited (the controller's finish_prediction): start
        the metrics worker after a segmentation, or import the next piece of the results (one
        per tick, PredictionImport), and when all is in, show them."""
        job = self._prediction
        worker = job.worker
        if self._importing is None:
            if job.phase == "segmenting" and worker.returncode == 0:
                try:
                    if self.logic.startMetrics(job):
                        # no worker for the monitor: an evaluate that fails is no failed
                        # segmentation (PredictionImport imports it and says why)
                        self._monitor.begin_import(None, "Computing the metrics in a "
                                                   "background process\u2026")
                        self.ui.resultsStatusLabel.text = ("Computing the metrics in a "
                                                           "background process\u2026")
                        return
                except OSError as e:  # no interpreter: import without metrics, say why
                    job.metricsError = f"the metrics could not be started: {e}"
            if job.phase == "segmenting" and worker.returncode != 0:
                self._prediction = None
                reason = worker.exit_reason() or "the prediction failed"
                last = worker.last_line()
                self._monitor.end_import(error=f"Segmentation failed: {reason}"
                                         + (f" ({last})" if last and last not in reason else ""))
                self.ui.resultsStatusLabel.text = f"Segmentation failed: {reason}"
                return
        try:
            if self._importing is None:
                from JCSAugmentSlicer.logic import PredictionImport
                self._importing = PredictionImport(
                    job, asSegmentation=self._parameterNode.asSegmentation)
                self._monitor.begin_import(None, "Loading the results into the scene\u2026")
                self.ui.resultsStatusLabel.text = "Loading the results into the scene\u2026"
                return  # the first piece on the next tick
            importer = self._importing
            if not importer.step():
                return  # the next piece on the next tick
        except Exception as e:
            logging.exception("JCSAugment: importing the predictions failed")
            self._prediction = self._importing = None
            self._monitor.end_import(error=f"Could not load the results: {e}")
            self.ui.resultsStatusLabel.text = f"Could not load the results: {e}"
            return
        self._prediction = self._importing = None
        results = importer.results
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
