"""The widget tier's environment: JCSAugment/JCSAugment.py, unmodified, in a real Qt event
loop outside Slicer.

- Qt: PySide6, offscreen, as PythonQt's ``qt`` (:mod:`.standins`), its idioms translated by
  :mod:`.pythonqt` (an in-memory rewrite of the module's and Slicer's sources at import);
- CTK / qMRML widgets and ``slicer.app``: small stand-ins (:mod:`.standins`);
- ``slicer``: the slicer-core wheel (real MRML, vtk, segmentation logic) with Slicer 5.12.3's own
  ``ScriptedLoadableModule``, ``parameterNodeWrapper``, ``i18n`` and ``util`` sources, used from
  ``../shared/slicer-python-5.12.3`` next to the repository (never copied in).

:class:`SlicerTier` installs all that into ``sys.modules`` and restores it on exit, so the rest
of a pytest session is unaffected. What this cannot see is listed in Testing/README.md.
"""

import os
import sys
import time
import types

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODULE_DIR = os.path.join(REPO, "JCSAugment")
MODULE_FILE = os.path.join(MODULE_DIR, "JCSAugment.py")
#: the panel the module file's widget makes (the widget code the tier's coverage is about)
PANEL_FILE = os.path.join(MODULE_DIR, "JCSAugmentSlicer", "widget.py")
#: where Slicer 5.12.3's Python sources may lie (never copied into the repository): the folder
#: named by JCSAUGMENT_SLICER_PYTHON, ../shared beside the repository (a working checkout), or
#: the project's shared folder on this machine (a clone elsewhere, as CI makes one)
SLICER_SOURCE_CANDIDATES = [p for p in (
    os.environ.get("JCSAUGMENT_SLICER_PYTHON"),
    os.path.join(REPO, "..", "shared", "slicer-python-5.12.3"),
    "/work/shared/slicer-python-5.12.3") if p]
SLICER_SOURCES = next((os.path.abspath(os.path.join(p, "slicer"))
                       for p in SLICER_SOURCE_CANDIDATES
                       if os.path.isdir(os.path.join(p, "slicer"))),
                      os.path.abspath(os.path.join(SLICER_SOURCE_CANDIDATES[0], "slicer")))
#: Slicer's own modules that the tier takes from SLICER_SOURCES (the wheel's are set aside)
SLICER_PARTS = ("slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule",
                "slicer.parameterNodeWrapper")


def missing_prerequisite():
    """Why the tier cannot run here (a sentence for pytest.skip), or None."""
    import importlib.util
    if importlib.util.find_spec("PySide6") is None:
        return "PySide6 is not installed: pip install -e '.[test]' (PySide6-Essentials)"
    if importlib.util.find_spec("slicer_core") is None:
        return "slicer-core (the MRML wheel) is not installed: pip install -e '.[test]'"
    if not os.path.isdir(SLICER_SOURCES):
        return (f"Slicer's Python sources are not in any of {SLICER_SOURCE_CANDIDATES} (the "
                f"tier uses Slicer 5.12.3's ScriptedLoadableModule and parameterNodeWrapper; "
                f"set JCSAUGMENT_SLICER_PYTHON to the slicer-python-5.12.3 folder)")
    return None


class LineTrace:
    """Lines of some files executed while active (sys.settrace, also in threads started later):
    the tier's coverage measure when coverage.py is not installed."""

    def __init__(self, *filenames):
        self.lines = {os.path.realpath(f): set() for f in filenames}

    def _trace(self, frame, event, arg):
        lines = self.lines.get(frame.f_code.co_filename)
        if lines is None:
            return None
        if event == "line":
            lines.add(frame.f_lineno)
        return self._trace

    def _global(self, frame, event, arg):
        lines = self.lines.get(frame.f_code.co_filename) if event == "call" else None
        if lines is not None:
            lines.add(frame.f_lineno)
            return self._trace
        return None

    def __enter__(self):
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self._previous)
        return False

    def report(self):
        """{file: (lines hit, statement lines, statement lines missed)}."""
        out = {}
        for filename, lines in self.lines.items():
            executable = self.executable_lines(filename)
            out[filename] = (lines & executable, executable, sorted(executable - lines))
        return out

    @staticmethod
    def executable_lines(filename):
        """Statement lines of the file (what coverage.py counts, near enough: the lines that
        carry bytecode, docstring-only lines excluded)."""
        import ast
        with open(filename, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        lines = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt) and not (
                    isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                lines.add(node.lineno)
        return lines


class StepTimer:
    """Wall time of each GUI call the tier makes (a click, a timer tick): the longest one is the
    longest the event loop was held."""

    def __init__(self):
        self.durations = {}
        self.longest = {}  # label -> (seconds, context of the longest one)

    def timed(self, label, fn, *args, context=None):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - start
            self.durations.setdefault(label, []).append(elapsed)
            if elapsed > self.longest.get(label, (0.0, None))[0]:
                self.longest[label] = (elapsed, context)

    def worst(self, labels=None):
        items = [(max(v), k) for k, v in self.durations.items() if labels is None or k in labels]
        return max(items) if items else (0.0, None)


def immortalise_singletons():
    """PySide6 6.12's wheels take Python 3.12's immortal None / True / False for granted: on
    Python 3.11 every call of a void method (``combo.clear()``, ``addItem``...) and every
    Python-side ``Signal.emit`` drops one reference to None or True (measured: -100 after 100
    calls), and a long event loop ends in "Fatal Python error: none_dealloc". Before 3.12, give
    them a reference count no test run can use up (what 3.12 does by design). Test-only: the
    module in Slicer runs on PythonQt, not PySide6."""
    if sys.version_info >= (3, 12):
        return
    import ctypes
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += 1 << 40


class SlicerTier:
    """Context manager: the Slicer-like environment, the module imported, and helpers to make,
    destroy and reload its panel."""

    def __init__(self, tempdir):
        self.tempdir = tempdir
        self._saved = {}
        self.steps = StepTimer()

    # -------------------------------------------------------------- environment
    def __enter__(self):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        immortalise_singletons()
        from PySide6 import QtWidgets
        self.app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["widget-tier"])
        from . import pythonqt, standins

        import slicer  # the slicer-core wheel
        names = ["qt", "ctk", "JCSAugment"] + [
            n for n in sys.modules if n.split(".")[0] == "JCSAugmentSlicer"] + [
            f"JCSAugmentSlicer.{n}" for n in ("logic", "dependencies", "parameters", "widget",
                                              "selftest")] + list(SLICER_PARTS)
        names += [n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper.")]
        for name in names:
            self._saved[name] = sys.modules.pop(name, None)
        self._savedAttrs = {k: getattr(slicer, k) for k in ("util",) if hasattr(slicer, k)}
        self._savedPath = list(slicer.__path__)
        # the module's Reload reloads JCSAugmentLib modules in place (new class objects): keep
        # their namespaces to put back, so later tests still match the classes they imported
        self._savedLib = {name: dict(vars(module)) for name, module in list(sys.modules.items())
                          if module is not None and name.split(".")[0] == "JCSAugmentLib"}
        self._savedSysPath = list(sys.path)

        self.qt = sys.modules["qt"] = standins.qt_module()
        self.ctk = sys.modules["ctk"] = standins.ctk_module()
        self.imports = pythonqt.RewritingImports([SLICER_SOURCES, MODULE_DIR]).__enter__()
        slicer.__path__.insert(0, SLICER_SOURCES)

        self.slicer = slicer
        from JCSAugmentLib.slicer_scene import headless_scene
        slicer.mrmlScene = headless_scene()
        slicer.app = standins.SlicerApp(self.tempdir)
        for cls in (standins.qMRMLWidget, standins.qMRMLNodeComboBox, standins.qMRMLPlotView):
            setattr(slicer, cls.__name__, cls)
        for name in ("qMRMLSliderWidget", "qMRMLRangeWidget", "qMRMLSpinBox"):
            setattr(slicer, name, type(name, (QtWidgets.QWidget,), {}))
        slicer.modules = types.SimpleNamespace()
        import importlib
        for name in SLICER_PARTS:
            setattr(slicer, name.split(".")[1], importlib.import_module(name))
        sys.path.insert(0, MODULE_DIR)
        self.module = importlib.import_module("JCSAugment")
        self._moduleInfo()
        return self

    def _moduleInfo(self):
        """slicer.modules.jcsaugment as the module manager would make it."""
        from . import standins
        info = types.SimpleNamespace(path=MODULE_FILE, title="", categories=[])
        self.module.JCSAugment(info)
        self.panel = standins.qSlicerScriptedLoadableModuleWidget("JCSAugment",
                                                                  self.slicer.modules)
        info.widgetRepresentation = lambda: self.panel
        self.slicer.modules.jcsaugment = info
        self.info = info

    def __exit__(self, *exc):
        import slicer
        widget = getattr(slicer.modules, "JCSAugmentWidget", None)
        if widget is not None:
            try:
                widget.cleanup()
            except Exception:  # teardown must restore the environment whatever happened
                pass
        self.imports.__exit__(*exc)
        slicer.__path__[:] = self._savedPath
        sys.path[:] = self._savedSysPath
        for name in [n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper")]:
            sys.modules.pop(name, None)
        for name, module in self._saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, namespace in self._savedLib.items():
            module = sys.modules.get(name)
            if module is not None:
                vars(module).clear()
                vars(module).update(namespace)
        for key, value in self._savedAttrs.items():
            setattr(slicer, key, value)
        for name in ("app", "mrmlScene", "modules"):
            if hasattr(slicer, name):
                delattr(slicer, name)
        return False

    # -------------------------------------------------------------- the panel
    def make_widget(self, enter=True):
        """A new panel as Slicer makes it: the module file's widget class on the module's panel,
        setup(), enter(). The panel it made is its ``panel`` (JCSAugmentSlicer/widget.py)."""
        widget = self.module.JCSAugmentWidget(self.panel)
        widget.setup()
        self.slicer.modules.JCSAugmentWidget = widget
        if enter:
            self.panel.isEntered = True
            widget.enter()
        return widget

    def destroy_widget(self, widget):
        """Slicer closing the module panel for good (application exit / module unload):
        moduleAboutToBeUnloaded -> cleanup(), then the Qt widgets are deleted."""
        from .standins import emit
        emit(self.slicer.app.moduleManager().moduleAboutToBeUnloaded, "JCSAugment")
        layout = self.panel.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget() is not None:
                item.widget().setParent(None)
                item.widget().deleteLater()
        from PySide6 import QtCore
        QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.DeferredDelete)
        self.app.processEvents()
        if getattr(self.slicer.modules, "JCSAugmentWidget", None) is widget:
            del self.slicer.modules.JCSAugmentWidget
        # a new panel for the next make_widget (the module manager would make one)
        from . import standins
        self.panel = standins.qSlicerScriptedLoadableModuleWidget("JCSAugment",
                                                                  self.slicer.modules)
        self.info.widgetRepresentation = lambda: self.panel

    def reload(self):
        """The panel's Reload button: Slicer's reloadScriptedModule (real source)."""
        widget = self.slicer.modules.JCSAugmentWidget
        widget.onReload()
        self.module = sys.modules["JCSAugment"]
        return self.slicer.modules.JCSAugmentWidget

    def screenshot(self, widget, name, width=460):
        """``widget`` (the panel or one of its sections) as Qt draws it, offscreen: a QPixmap,
        also saved as ``name``.png in the folder JCSAUGMENT_PANEL_SCREENSHOTS names, if any
        (the README's pictures of the panel are made this way)."""
        if not self.panel.isVisible():
            self.panel.show()
        for _ in range(2):  # a changed pixmap changes the size hints after a layout pass
            self.app.processEvents()
            self.panel.layout().activate()
            self.panel.resize(width, max(200, self.panel.sizeHint().height()))
        self.app.processEvents()
        pixmap = widget.grab()
        folder = os.environ.get("JCSAUGMENT_PANEL_SCREENSHOTS")
        if folder:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{name}.png")
            if not pixmap.save(path, "PNG"):
                raise OSError(f"cannot write {path}")
        return pixmap

    def click(self, button):
        """A user's click (timed like an event-loop step)."""
        if not button.isEnabled():
            raise AssertionError(f"{button.objectName()} is disabled")
        self.steps.timed(f"click {button.objectName()}", button.click)
        self.process()

    def process(self, seconds=0.0, context=None):
        """Run the event loop for ``seconds`` (timers fire, queued calls run); ``context``
        names what the test waits for (reported with the longest step)."""
        end = time.monotonic() + seconds
        while True:
            self.steps.timed("event loop", self.app.processEvents, context=context)
            if time.monotonic() >= end:
                break
            time.sleep(0.01)
