"""The widget tier: JCSAugment/JCSAugment.py, unmodified, set up and driven in a real Qt event
loop (PySide6, offscreen) with Slicer 5.12.3's own ScriptedLoadableModule / parameterNodeWrapper
/ util sources and the slicer-core MRML scene (Testing/Python/widget_tier, Testing/README.md).

User flows are clicks on the panel's buttons and edits of its widgets; time passes as event-loop
steps (the panel's QTimer fires). Training and prediction are real worker subprocesses on tiny
synthetic cases. The module-scope fixture measures the line coverage of the module file the
tier reaches and the longest event-loop step, and prints both (no timing is asserted).
"""

import functools
import os
import signal
import stat
import sys
import time

import numpy as np
import pytest

from widget_tier import MODULE_FILE, PANEL_FILE, LineTrace, SlicerTier, missing_prerequisite

#: torch in this pytest process before the tier ran (other test files import it); the tier
#: checks that the panel itself does not
_torch_was_imported_before = "torch" in sys.modules

#: the smallest network and the most frequent events (so a run of a few iterations shows
#: every kind); the panel has no widget for these, the tier passes them to the logic
TINY = {"model.base_features": 2, "training.val_batch_size": 2, "training.tea_copies": 2,
        "training.validate_every": 2, "training.preview_every": 2,
        "training.checkpoint_every": 1, "training.policy_every": 1}


@pytest.fixture(scope="module")
def tier(tmp_path_factory):
    why = missing_prerequisite()
    if why:
        pytest.skip(why)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = tmp_path_factory.mktemp("widget-tier")
    trace = LineTrace(MODULE_FILE, PANEL_FILE)
    with trace, SlicerTier(str(tmp)) as t:
        t.tmp = tmp
        yield t
    report = trace.report()
    print()
    for filename, (hit, executable, missed) in report.items():
        print(f"[widget tier] line coverage of {os.path.relpath(filename, os.path.dirname(MODULE_FILE))}: "
              f"{len(hit)}/{len(executable)} = {100.0 * len(hit) / max(1, len(executable)):.1f} % "
              f"(sys.settrace); not reached: {missed}")
    hit = sum(len(h) for h, _e, _m in report.values())
    total = sum(len(e) for _h, e, _m in report.values())
    print(f"[widget tier] line coverage of the module file and its panel together: {hit}/{total} "
          f"= {100.0 * hit / max(1, total):.1f} %")
    loop = sorted(t.steps.durations.get("event loop", []))
    if loop:
        print(f"[widget tier] event-loop steps (timer ticks and queued calls): {len(loop)}, "
              f"median {1000 * loop[len(loop) // 2]:.2f} ms, 99th percentile "
              f"{1000 * loop[int(0.99 * (len(loop) - 1))]:.1f} ms, longest {1000 * loop[-1]:.1f} "
              f"ms (while waiting for {t.steps.longest['event loop'][1]}), over 50 ms: "
              f"{sum(1 for d in loop if d > 0.05)}")
    for label, values in sorted(t.steps.durations.items()):
        if label != "event loop":
            print(f"[widget tier] {label}: longest {1000 * max(values):.0f} ms "
                  f"({len(values)} clicks)")


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


def _elements(node):
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _add_case(tier, name, seed, shape=(24, 24, 24)):
    """A blob volume and its label map in the tier's scene, on an oblique anisotropic grid."""
    import slicer
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    blob = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < (5 + rng.uniform(0, 2)) ** 2
    nodes = []
    for cls, suffix, arr in (("vtkMRMLScalarVolumeNode", "",
                              (100.0 * blob + rng.normal(0, 10, shape)).astype(np.float32)),
                             ("vtkMRMLLabelMapVolumeNode", " label", blob.astype(np.uint8))):
        node = slicer.mrmlScene.AddNewNodeByClass(cls, name + suffix)
        slicer.util.updateVolumeFromArray(node, arr)
        node.SetIJKToRASMatrix(_matrix())
        node.CreateDefaultDisplayNodes()
        nodes.append(node)
    return nodes


def _wait(tier, widget, until, timeout, what):
    """Event-loop steps until ``until()`` holds; fails with the panel's texts if it does not."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        tier.process(0.05, context=what)
        if until():
            return
    pytest.fail(f"timed out after {timeout} s waiting for {what}; panel: "
                f"{widget.ui.statusLabel.text()!r} / {widget.ui.progressBar.format()!r} / "
                f"error {widget.ui.errorLabel.text()!r}\nlog:\n"
                f"{widget.ui.logTextEdit.toPlainText()[-2000:]}")


def _state(widget):
    return widget.panel._view.state if widget.panel._view is not None else None


def _tiny_runs(widget, python=None):
    """The logic of ``widget`` with the TINY job overrides (and optionally another launcher)."""
    logic = widget.logic
    logic.prepareRun = functools.partial(type(logic).prepareRun, logic, overrides=TINY)
    if python is not None:
        logic.startTraining = functools.partial(type(logic).startTraining, logic, python=python)


def _settings(tier, widget, out, iterations):
    ui = widget.ui
    ui.backboneComboBox.setCurrentIndex(0)  # unet3d
    ui.epochsSpinBox.setValue(1)
    ui.iterationsSpinBox.setValue(iterations)
    ui.patchSizeSpinBox.setValue(16)
    ui.batchSizeSpinBox.setValue(2)
    ui.outputPathLineEdit.setCurrentPath(str(out))
    cpu = ui.deviceComboBox.findData("cpu")
    assert cpu >= 0, [ui.deviceComboBox.itemData(i) for i in range(ui.deviceComboBox.count())]
    ui.deviceComboBox.setCurrentIndex(cpu)
    tier.process()
    # a new panel re-attaches to the last run first: let it read that run's events
    _wait(tier, widget, lambda: widget.panel._view is None or not widget.panel._view.catching_up, 30,
          "the panel to read the run it re-attached to")


# ----------------------------------------------------------------------------- flows
def test_panel_train_stop_resume_segment_reattach(tier):
    """Data, settings, Start -> real worker -> progress, curves, preview -> Stop -> Resume ->
    done -> pies -> Segment (label map on the input's exact grid, metrics) -> panel destroyed
    and made again re-attaches to the run."""
    import slicer
    w = tier.make_widget()
    ui = w.ui
    p = w.panel._parameterNode
    # the .ui is loaded and bound: a combo box edit reaches the parameter node
    assert ui.modeComboBox.count() > 3
    ui.backboneComboBox.setCurrentIndex(1)
    assert p.backbone == "deepmedic"
    assert ui.backboneComboBox.currentText() == "DeepMedic", "readable combo labels"

    cases = [_add_case(tier, f"case{i}", i) for i in range(3)]
    tier.process()
    # Add selected: the chosen pair
    ui.imageSelector.setCurrentNode(cases[0][0])
    ui.labelSelector.setCurrentNode(cases[0][1])
    assert p.inputVolume is cases[0][0]
    tier.click(ui.addSelectedButton)
    assert list(p.caseIds) == ["case0"]
    assert ui.caseTable.rowCount() == 1
    # no validation case yet: said in the panel
    assert "validation" in ui.casesStatusLabel.text()
    # Add all pairs pairs the others by name (case0 is there already)
    tier.click(ui.addAllPairsButton)
    assert sorted(p.caseIds) == ["case0", "case1", "case2"], ui.casesStatusLabel.text()
    assert ui.caseTable.rowCount() == 3
    ui.trainFractionSpinBox.setValue(0.34)
    ui.validationFractionSpinBox.setValue(0.33)
    ui.testFractionSpinBox.setValue(0.33)
    tier.click(ui.autoSplitButton)
    assert sorted(p.caseSplits) == ["test", "train", "validation"], list(p.caseSplits)
    assert "1 train, 1 validation, 1 test" in ui.casesStatusLabel.text()
    # a split edited in the table's combo box
    row = list(p.caseSplits).index("test")
    combo = ui.caseTable.cellWidget(row, 3)
    combo.setCurrentIndex(combo.findText("unused"))
    tier.process(0.05)
    assert p.caseSplits[row] == "unused"
    combo = ui.caseTable.cellWidget(row, 3)
    combo.setCurrentIndex(combo.findText("test"))
    tier.process(0.05)
    assert p.caseSplits[row] == "test"
    testCase = p.caseIds[row]

    _settings(tier, w, tier.tmp / "runs", iterations=14)
    ui.backboneComboBox.setCurrentIndex(0)
    assert p.backbone == "unet3d" and p.device == "cpu" and p.iterationsPerEpoch == 14
    _tiny_runs(w)

    tier.click(ui.startButton)
    assert w.panel._monitor is not None and w.panel._monitor.worker is not None, ui.statusLabel.text()
    runDir = w.panel._monitor.run_dir
    assert str(p.runFolder) == runDir
    worker = w.panel._monitor.worker
    # Freeze the worker (SIGSTOP) as soon as it reports its first iteration: on a quiet
    # machine its 14 iterations take about 4 s, and the run must still be live when the
    # reloaded panel re-attaches and when the hung-worker stop below is tried (a stopped
    # process stays alive and holds run.lock). The worker writes status.json at iteration 1,
    # then every 2 s, so the test watches the run folder itself, faster than the panel's
    # timer, and waits for the first checkpoint's event (TINY: one per iteration), which
    # Resume needs after the frozen worker is killed.
    from JCSAugmentLib.run.folder import RunFolder
    folder = RunFolder(runDir)
    from JCSAugmentLib.run.events import CheckpointWritten

    def first_checkpoint_said():  # the event comes after the file: the panel reads the event
        return any(isinstance(e, CheckpointWritten) for e in folder.read_events())
    _wait(tier, w, first_checkpoint_said, 120, "the first iteration's checkpoint event")
    os.killpg(os.getpgid(worker.pid), signal.SIGSTOP)
    _wait(tier, w, lambda: w.panel._view is not None and w.panel._view.iteration >= 1, 60,
          "the first iteration in the panel")
    assert ui.startButton.text() == "Stop"
    assert "iterations" in ui.progressBar.format()
    for section, name in ((ui.dataCollapsibleButton, "panel_widget_data"),
                          (ui.trainingCollapsibleButton, "panel_widget_training"),
                          (ui.runCollapsibleButton, "panel_widget_run_live")):
        shot = tier.screenshot(section, name)
        assert not shot.isNull() and shot.width() > 300 and shot.height() > 60, name
    # Reload (Slicer calls cleanup): the run goes on and the new panel re-attaches to it
    old = w
    w = tier.reload()
    assert w is not old and old.panel._timer is not None and not old.panel._timer.isActive()
    ui, p = w.ui, w.panel._parameterNode
    assert worker.running, "Reload stopped the run"
    assert w.panel._monitor is not None and w.panel._monitor.run_dir == runDir
    _wait(tier, w, lambda: w.panel._view is not None and w.panel._view.can_stop, 30,
          "the re-attached running state (caught up)")
    assert ui.startButton.text() == "Stop"
    # Stop a re-attached run whose worker hangs (SIGSTOP): this panel has no process handle,
    # so after the stop timeout it signals the worker's group (SIGTERM, then SIGKILL)
    w.panel.STOP_TIMEOUT_S = 2.0
    w.panel.TERM_GRACE_S = 1.0
    tier.click(ui.startButton)
    _wait(tier, w, lambda: not worker.running and not w.panel._view.busy, 60,
          "the hung re-attached worker to be killed")
    assert "killed (SIGKILL)" in ui.statusLabel.text(), ui.statusLabel.text()
    assert w.panel._view.checkpoint is not None
    assert ui.resumeButton.isEnabled(), (w.panel._view.state, ui.statusLabel.text())
    stoppedAt = w.panel._view.iteration
    assert stoppedAt < 14
    # Resume runs to the end
    _tiny_runs(w)
    tier.click(ui.resumeButton)
    _wait(tier, w, lambda: _state(w) == "done", 150, "the finished state")
    v = w.panel._view
    assert v.iteration == 14
    # curves in the plot's table nodes, the preview picture, the policy pies
    nodes = w.panel._curveNodes
    assert nodes is not None and nodes["loss"][0].GetNumberOfRows() > 0
    _wait(tier, w, lambda: not w.panel._policyDirty, 30, "the policy pies")
    assert not ui.traForegroundLabel.pixmap().isNull(), ui.policyStatusLabel.text()
    assert not ui.teaLabel.pixmap().isNull()
    assert set(w.panel._policyPngs) == {"tra_foreground", "tra_background", "tea"}
    # drawn in this process: no subprocess, no torch (the GUI process never imports it)
    assert "torch" not in sys.modules or _torch_was_imported_before
    tier.screenshot(ui.runCollapsibleButton, "panel_widget_run_done")
    # the policy gallery: one group's row on a case of the run, drawn in a worker process
    assert ui.galleryCaseComboBox.count() == 3, "the run's three labelled cases"
    assert ui.showGalleryButton.isEnabled()
    ui.galleryGroupComboBox.setCurrentIndex(ui.galleryGroupComboBox.findData("gamma"))
    tier.click(ui.showGalleryButton)
    assert not ui.showGalleryButton.isEnabled(), "one gallery at a time"
    _wait(tier, w, lambda: w.panel._gallery is None, 120, "the policy gallery")
    assert not ui.galleryLabel.pixmap().isNull(), ui.galleryStatusLabel.text()
    assert "gamma on case" in ui.galleryStatusLabel.text(), ui.galleryStatusLabel.text()
    assert ui.showGalleryButton.isEnabled()
    # the same row as volumes in the slice views: the original, then each gamma option
    assert ui.showGalleryInSlicesButton.isEnabled()
    tier.click(ui.showGalleryInSlicesButton)
    strip = slicer.mrmlScene.GetFirstNodeByName("JCSAugment gallery foreground patch")
    assert strip is not None, ui.galleryStatusLabel.text()
    along = ui.galleryStatusLabel.text()
    assert along.startswith("In the slice views") and "original" in along, along
    tiles = along.count(",") + 1
    assert tiles >= 3, along  # original, identity and the gamma values
    nx = strip.GetImageData().GetDimensions()[0]
    patch = (nx - 2 * (tiles - 1)) // tiles
    assert nx == tiles * patch + 2 * (tiles - 1), (nx, tiles)
    assert slicer.mrmlScene.GetFirstNodeByName("JCSAugment gallery foreground patch labels")
    # every row: the picture only (its volumes would be large), and the panel says why
    ui.galleryGroupComboBox.setCurrentIndex(0)
    tier.click(ui.showGalleryButton)
    _wait(tier, w, lambda: w.panel._gallery is None, 120, "the whole policy gallery")
    assert not ui.galleryLabel.pixmap().isNull(), ui.galleryStatusLabel.text()
    assert not ui.showGalleryInSlicesButton.isEnabled()
    assert "Choose one group" in ui.galleryStatusLabel.text(), ui.galleryStatusLabel.text()
    ui.galleryGroupComboBox.setCurrentIndex(ui.galleryGroupComboBox.findData("gamma"))
    tier.click(ui.showGalleryButton)  # back to the gamma row for the picture below
    _wait(tier, w, lambda: w.panel._gallery is None, 120, "the gamma row again")
    tier.screenshot(ui.policiesCollapsibleButton, "panel_widget_policies")
    draws, unchanged = [], []
    for _ in range(5):
        w.panel._paintedPictures.clear()  # all three painted again, as after a policy update
        started = time.perf_counter()
        w.panel._startPictures(runDir)
        draws.append(time.perf_counter() - started)
        before = dict(w.panel._policyPngs)
        started = time.perf_counter()
        w.panel._startPictures(runDir)  # the same policy: nothing is painted again
        unchanged.append(time.perf_counter() - started)
        assert all(w.panel._policyPngs[k] is before[k] for k in before)
    print(f"[widget tier] policy pictures (3 pixmaps, QPainter): median "
          f"{1000 * sorted(draws)[2]:.1f} ms, longest {1000 * max(draws):.1f} ms of 5 redraws; "
          f"an unchanged policy: longest {1000 * max(unchanged):.1f} ms (nothing painted)")
    export = tier.tmp / "exported"
    export.mkdir()
    import qt
    monkeypatched = qt.QFileDialog.getExistingDirectory
    qt.QFileDialog.getExistingDirectory = staticmethod(lambda *a: str(export))
    try:
        tier.click(ui.exportPolicyPngButton)
    finally:
        qt.QFileDialog.getExistingDirectory = monkeypatched
    assert sorted(os.listdir(export)) == ["policy_tea.png", "policy_tra_background.png",
                                          "policy_tra_foreground.png"]
    assert not ui.previewLabel.pixmap().isNull(), ui.previewStatusLabel.text()
    assert ui.showPreviewButton.isEnabled()
    tier.click(ui.showPreviewButton)
    names = [n.GetName() for n in _nodes("vtkMRMLScalarVolumeNode")]
    assert any("foreground" in name.lower() for name in names), names
    assert ui.exportPolicyJsonButton.isEnabled()

    # Segment the test case: a label map with the input's exact IJK-to-RAS, and metrics
    assert ui.segmentButton.isEnabled()
    ui.asSegmentationCheckBox.setChecked(True)
    seen, poll = [], w.panel._pollPredictProgress

    def recordingPoll():  # what the panel read from the predict worker's progress file
        poll()
        if w.panel._predictProgress is not None and (
                not seen or seen[-1] != w.panel._predictProgress):
            seen.append(w.panel._predictProgress)
    w.panel._pollPredictProgress = recordingPoll
    tier.click(ui.segmentButton)
    _wait(tier, w, lambda: w.panel._prediction is None and not w.panel._view.busy, 150, "the segmentation")
    del w.panel._pollPredictProgress
    # the panel followed the prediction: its last reading is the worker's final one
    assert seen and seen[-1].state == "done", seen
    assert seen[-1].progress.windows_done == seen[-1].progress.windows_total > 0
    label = slicer.mrmlScene.GetFirstNodeByName(f"{testCase} segmentation")
    assert label is not None, ui.resultsStatusLabel.text()
    image = next(c[0] for c in cases if c[0].GetName() == testCase)
    assert label.IsA("vtkMRMLLabelMapVolumeNode")
    assert np.array_equal(_elements(label), _elements(image))
    assert label.GetImageData().GetDimensions() == image.GetImageData().GetDimensions()
    assert ui.metricsTable.rowCount() >= 1
    assert "Segmented 1 case(s)" in ui.resultsStatusLabel.text()
    # the metrics came from the evaluate worker (not the GUI): its Dice is the label map's
    import vtk.util.numpy_support as nps
    reference = next(c[1] for c in cases if c[0].GetName() == testCase)

    def voxels(node):
        return nps.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()) > 0

    pred, ref = voxels(label), voxels(reference)
    dice = 2.0 * (pred & ref).sum() / max(1, pred.sum() + ref.sum())
    rows = {ui.metricsTable.item(r, 1).text(): ui.metricsTable.item(r, 2).text()
            for r in range(ui.metricsTable.rowCount())}
    assert float(rows["foreground"]) == pytest.approx(dice, abs=1e-3), (rows, dice)
    outDirs = sorted((tier.tmp / "runs").rglob("predictions/*/metrics.json"))
    assert outDirs, "the evaluate worker wrote no metrics.json"
    tier.screenshot(ui.previewCollapsibleButton, "panel_widget_preview")
    tier.screenshot(ui.resultsCollapsibleButton, "panel_widget_results")
    tier.screenshot(tier.panel, "panel_widget_full")

    # the panel destroyed and made again re-attaches to the run from the parameter node
    tier.destroy_widget(w)
    w2 = tier.make_widget()
    assert w2.panel._monitor is not None and w2.panel._monitor.run_dir == runDir
    _wait(tier, w2, lambda: w2.panel._view is not None and not w2.panel._view.catching_up, 30,
          "the re-attached panel to read the run")
    assert _state(w2) == "done", w2.ui.statusLabel.text()
    assert w2.ui.segmentButton.isEnabled()
    tier.destroy_widget(w2)


def _nodes(cls):
    import slicer
    collection = slicer.mrmlScene.GetNodesByClass(cls)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def _launcher_that_hangs(tmp):
    """A launcher like PythonSlicer that runs the real worker, then hangs (stops itself) instead
    of exiting: its process tree stays alive after the run has reported its end."""
    path = os.path.join(tmp, "hanging-launcher.sh")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n\"{sys.executable}\" \"$@\"\nkill -STOP $$\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def test_hung_launcher_is_killed_and_said(tier):
    """A run that reported its end but whose process tree stays alive (a stopped launcher): the
    panel keeps polling, kills the tree within its stop timeout, says so, and offers no second
    start while the old process lives."""
    w = tier.make_widget()
    w.panel.STOP_TIMEOUT_S = 2.0
    w.panel.TERM_GRACE_S = 1.0
    w.panel.EXIT_GRACE_S = 2.0
    ui = w.ui
    tier.click(ui.clearCasesButton)
    p = w.panel._parameterNode
    cases = [_add_case(tier, f"hang{i}", 10 + i) for i in range(2)]
    for (image, label), split in zip(cases, ("train", "validation")):
        w.logic.addCase(p, image, label, split=split)
    tier.process()
    _settings(tier, w, tier.tmp / "hang-runs", iterations=2)
    _tiny_runs(w, python=_launcher_that_hangs(str(tier.tmp)))
    tier.click(ui.startButton)
    worker = w.panel._monitor.worker
    _wait(tier, w, lambda: _state(w) in ("done", "failed"), 120, "the run's end")
    # the run says it has ended, but its launcher is alive: nothing may start on top of it
    if worker.running:
        assert not ui.startButton.isEnabled() or not ui.resumeButton.isEnabled()
    _wait(tier, w, lambda: not worker.running and ui.startButton.isEnabled(), 30,
          "the hung launcher to be killed and Start offered again")
    assert worker.forced in ("terminate", "kill"), worker.forced
    assert "killed" in ui.statusLabel.text().lower() or "killed" in ui.errorLabel.text().lower() \
        or "killed" in ui.warningLabel.text().lower(), (ui.statusLabel.text(),
                                                        ui.warningLabel.text())
    assert ui.startButton.isEnabled()
    tier.destroy_widget(w)


def test_enter_keeps_one_parameter_wrapper(tier):
    """Entering the module again and again binds the same parameter node wrapper (no new
    wrapper and observers per entry)."""
    import gc
    w = tier.make_widget()
    cls = type(w.panel._parameterNode)
    gc.collect()
    before = {id(o) for o in gc.get_objects() if type(o) is cls}
    wrappers = []
    for _ in range(5):
        w.exit()
        w.enter()
        wrappers.append(w.panel._parameterNode)
    assert all(x is wrappers[0] for x in wrappers), "a new parameter-node wrapper per enter()"
    gc.collect()
    new = [o for o in gc.get_objects() if type(o) is cls and id(o) not in before]
    assert len(new) == 0, f"{len(new)} new parameter-node wrappers alive after 5 entries"
    tier.destroy_widget(w)


def test_bad_inputs_are_said(tier, caplog):
    """Refused inputs show their reason (Slicer's error display: a popup in Slicer, here its
    log record) and leave no run folder."""
    import logging
    w = tier.make_widget()
    tier.click(w.ui.clearCasesButton)
    out = tier.tmp / "bad-runs"
    out.mkdir()
    _settings(tier, w, out, iterations=2)
    image, label = _add_case(tier, "lonely", 40)
    w.logic.addCase(w.panel._parameterNode, image, label, split="train")
    tier.process()
    assert "validation" in w.ui.casesStatusLabel.text()
    with caplog.at_level(logging.ERROR):
        w.ui.startButton.click()  # the slot re-raises after the display, as in Slicer
        tier.process()
    said = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "Could not start training." in said and "validation" in said, said
    assert list(out.iterdir()) == []
    # a folder that is not a run of this version
    other = tier.tmp / "not-a-run"
    other.mkdir()
    (other / "job.json").write_text('{"schema": 99, "data": {}}')
    caplog.clear()
    w.ui.runPathLineEdit.setCurrentPath(str(other))
    tier.process()
    with caplog.at_level(logging.ERROR):
        w.ui.openRunButton.click()
        tier.process()
    said = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "Could not open the run folder." in said, said
    tier.destroy_widget(w)


def test_unset_paths_show_empty_fields(tier):
    """A path parameter never set (Path()) shows an empty field, not "."."""
    w = tier.make_widget()
    p = w.panel._parameterNode
    assert str(p.pretrained) == "."
    for name in ("datasetPathLineEdit", "pretrainedPathLineEdit"):
        assert getattr(w.ui, name).currentPath == "", name
    p.splitSeed = 3  # any parameter change re-writes the fields
    tier.process()
    assert w.ui.pretrainedPathLineEdit.currentPath == ""
    assert str(p.pretrained) == ".", "blanking the field must not change the parameter"
    tier.destroy_widget(w)


def test_plot_view_keeps_its_chart(tier):
    """The panel's plot view node does not follow 'show chart in layout' elsewhere."""
    w = tier.make_widget()
    nodes = w.panel._ensureCurveNodes()
    viewNode = nodes["view"][0]
    assert not viewNode.GetDoPropagatePlotChartSelection()
    import slicer
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "someone else's chart")
    # what the Plots module's "show in layout" does to every propagating view
    for node in _nodes("vtkMRMLPlotViewNode"):
        if node.GetDoPropagatePlotChartSelection():
            node.SetPlotChartNodeID(other.GetID())
    assert viewNode.GetPlotChartNodeID() != other.GetID()
    tier.destroy_widget(w)


def test_scene_close_and_exit_while_running(tier, monkeypatch):
    """Closing the scene while a run is live asks first (No: the run goes on, the panel keeps
    it); the panel's cleanup at exit returns at once and the run still stops (a stop request,
    and a detached watchdog for the process tree)."""
    import slicer
    w = tier.make_widget()
    w.panel.STOP_TIMEOUT_S = 20.0
    w.panel.TERM_GRACE_S = 2.0
    p = w.panel._parameterNode
    cases = [_add_case(tier, f"close{i}", 20 + i) for i in range(2)]
    for (image, label), split in zip(cases, ("train", "validation")):
        w.logic.addCase(p, image, label, split=split)
    tier.process()
    _settings(tier, w, tier.tmp / "close-runs", iterations=400)
    _tiny_runs(w)
    tier.click(w.ui.startButton)
    worker = w.panel._monitor.worker
    runDir = w.panel._monitor.run_dir
    _wait(tier, w, lambda: w.panel._view is not None and w.panel._view.iteration >= 1, 120, "an iteration")
    asked = []
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay",
                        lambda text, **kw: asked.append(text) or False)
    slicer.mrmlScene.Clear(0)
    tier.process(0.2)
    assert asked and "still running" in asked[0]
    assert worker.running, "answering No must leave the run running"
    assert w.panel._monitor is not None and w.panel._monitor.run_dir == runDir
    # Slicer exits: cleanup must not wait for the worker
    started = time.monotonic()
    tier.destroy_widget(w)
    print(f"[widget tier] cleanup with a live run returned in "
          f"{1000 * (time.monotonic() - started):.0f} ms")
    assert worker.running or worker.returncode is not None
    end = time.monotonic() + 60
    while worker.running and time.monotonic() < end:
        time.sleep(0.2)
    assert not worker.running, "the run did not stop after the panel closed"


def test_self_test_skips_what_needs_torch(tier, monkeypatch):
    """Reload and Test (runTest) in a Slicer whose Python has no torch yet: the training test
    is reported skipped, the others run and pass. (Last: the self-test clears the scene.)"""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "matplotlib")
                        else real(name, *a))
    tester = tier.module.JCSAugmentTest()
    tester.messageDelay = 0
    tester.runTest()
    assert [s.split(":")[0] for s in tester.skipped] == ["test_train_predict_pictures_preview"]
    assert "torch" in tester.skipped[0]


def _compare_panel(tier, prefix, seed, out, iterations):
    """A new panel with three cases of its own (train, validation, test) and tiny settings:
    (widget, [(image, label)])."""
    w = tier.make_widget()
    tier.click(w.ui.clearCasesButton)
    p = w.panel._parameterNode
    cases = [_add_case(tier, f"{prefix}{i}", seed + i) for i in range(3)]
    for (image, label), split in zip(cases, ("train", "validation", "test")):
        w.logic.addCase(p, image, label, split=split)
    tier.process()
    _settings(tier, w, tier.tmp / out, iterations=iterations)
    _tiny_runs(w)
    return w, cases


def test_compare_with_the_heuristic(tier):
    """Compare with the heuristic: one Start trains both halves in one worker (the panel
    follows each half), both segment the test case, and the Results section shows the
    comparison's table, its verdict, and the label maps named by method."""
    w, cases = _compare_panel(tier, "cmp", 20, "compare-runs", iterations=4)
    ui, p = w.ui, w.panel._parameterNode
    ui.modeComboBox.setCurrentIndex(ui.modeComboBox.findData("heuristic", qt_tooltip_role()))
    ui.compareCheckBox.setChecked(True)
    assert p.compareHeuristic and p.mode == "heuristic"
    tier.click(ui.startButton)  # a heuristic run cannot be compared with the heuristic
    assert w.panel._monitor is None or w.panel._compareRun is None
    ui.modeComboBox.setCurrentIndex(ui.modeComboBox.findData("joint", qt_tooltip_role()))
    assert p.mode == "joint"
    followed = []
    tier.click(ui.startButton)
    runDir = w.panel._compareRun
    assert runDir is not None and w.panel._monitor.worker is not None
    worker = w.panel._monitor.worker

    def shown():
        folder = w.panel._monitor.run_dir
        if not followed or followed[-1] != folder:
            followed.append(folder)
        return (not worker.running and w.panel._comparisonShown is not None
                and not w.panel._comparisonMaps)
    _wait(tier, w, shown, 300, "the comparison's table")
    halves = [os.path.relpath(f, runDir) for f in followed if f != runDir]
    assert [h.split(os.sep)[-1] for h in halves] == ["heuristic", "joint"], followed
    text = ui.resultsStatusLabel.text()
    assert text.startswith("Comparison (complete)") and "seed" in text, text
    whats = [ui.metricsTable.item(r, 0).text() for r in range(ui.metricsTable.rowCount())]
    testCase = cases[2][0].GetName()
    # per test case and method/TEA, the means, the paired differences
    for title in ("heuristic TRA + heuristic TEA", "heuristic TRA, no TEA",
                  "joint learned TRA + learned TEA", "joint learned TRA, no TEA"):
        assert f"{testCase}: {title}" in whats and f"mean: {title}" in whats, (title, whats)
    assert any(t.startswith("joint - heuristic, TEA") for t in whats), whats
    assert any(t.startswith("joint - heuristic, no TEA") for t in whats), whats
    names = [n.GetName() for n in _nodes("vtkMRMLLabelMapVolumeNode")]
    from JCSAugmentLib.run.compare import read_comparison
    expected = [r.name for r in read_comparison(runDir).cases if r.prediction]
    assert len(expected) == 4 and set(expected) <= set(names), (expected, names)
    assert ui.startButton.text() == "Start training" and ui.startButton.isEnabled()
    tier.screenshot(ui.resultsCollapsibleButton, "panel_widget_compare")
    tier.destroy_widget(w)
    # a new panel re-attaches to the comparison folder and shows its table again; the label
    # maps already in the scene are not loaded twice
    w = tier.make_widget()
    ui = w.ui
    assert w.panel._compareRun == runDir
    _wait(tier, w, lambda: w.panel._comparisonShown is not None and not w.panel._comparisonMaps,
          30, "the re-attached comparison's table")
    assert ui.resultsStatusLabel.text().startswith("Comparison (complete)")
    assert ui.metricsTable.rowCount() == len(whats)
    again = [n.GetName() for n in _nodes("vtkMRMLLabelMapVolumeNode")]
    assert sorted(again) == sorted(names), "label maps loaded twice"
    tier.destroy_widget(w)


def test_compare_stopped_resumes_to_the_table(tier):
    """Stop during a comparison: the worker stops with a half left to train, Resume is
    offered and continues the comparison to its table."""
    w, _cases = _compare_panel(tier, "cmq", 30, "compare-stop-runs", iterations=40)
    ui = w.ui
    ui.modeComboBox.setCurrentIndex(ui.modeComboBox.findData("joint", qt_tooltip_role()))
    ui.compareCheckBox.setChecked(True)
    tier.click(ui.startButton)
    runDir = w.panel._compareRun
    _wait(tier, w, lambda: w.panel._view is not None and w.panel._view.iteration >= 2, 120,
          "the first half's second iteration")
    assert w.panel._monitor.run_dir.endswith(os.path.join("seed0", "heuristic"))
    assert ui.startButton.text() == "Stop"
    tier.click(ui.startButton)
    worker = w.panel._monitor.worker
    _wait(tier, w, lambda: not worker.running and not w.panel._view.busy, 60,
          "the comparison to stop")
    from JCSAugmentLib.run.compare import compare_status
    status = compare_status(runDir)
    # the stop lands in the first half, or -- the tiny half takes seconds -- at the second's
    # start; either way a half is left to train
    assert status.state == "stopped" and any(h.state != "done" for h in status.halves), \
        status.describe()
    # the next tick sees the comparison's end (its lock released) and offers Resume
    _wait(tier, w, lambda: ui.resumeButton.isEnabled(), 5, "Resume to be offered")
    assert ui.resumeButton.isEnabled(), (w.panel._view.state, ui.statusLabel.text())
    tier.click(ui.resumeButton)
    worker = w.panel._monitor.worker
    _wait(tier, w, lambda: not worker.running and w.panel._comparisonShown is not None
          and not w.panel._comparisonMaps, 300, "the resumed comparison's table")
    assert ui.resultsStatusLabel.text().startswith("Comparison (complete)"), \
        ui.resultsStatusLabel.text()
    tier.destroy_widget(w)


def qt_tooltip_role():
    """The role the panel stores a combo box's engine name under (JCSAugmentPanel
    _relabelCombos: readable text, the value as its tooltip)."""
    import qt
    return qt.Qt.ToolTipRole
