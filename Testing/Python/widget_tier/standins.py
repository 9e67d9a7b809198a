"""Small PySide6 stand-ins for the CTK and qMRML widgets JCSAugment.ui uses, the ``qt`` module
as PythonQt presents it, and the bits of ``slicer.app`` the module and Slicer's own Python call.

They model the documented behaviour the panel relies on (a collapsible section, a path line
edit with ``currentPath`` / ``currentPathChanged``, a node combo box listing the scene's nodes of
``nodeTypes``, a qMRMLWidget passing its scene on, a plot view holding its view node), nothing
more: what the real widgets do beyond that is not seen by the tier (Testing/README.md).
"""

import types
import xml.etree.ElementTree as ElementTree

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal
from PySide6.QtUiTools import QUiLoader


def emit(signal, *args):
    """``signal.emit(*args)`` (one place to change should PySide6's emit need care again)."""
    return signal.emit(*args)


# ----------------------------------------------------------------------------- CTK
class ctkCollapsibleButton(QtWidgets.QWidget):
    """A section: a title button and a body that hides when collapsed."""
    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False
        self._text = ""

    def getText(self):
        return self._text

    def setText(self, text):
        self._text = text
        self.setContentsMargins(0, 24, 0, 0)  # room for the title bar paintEvent draws
        self.update()

    text = Property(str, getText, setText)

    def paintEvent(self, event):
        """A title bar with the section's name (for the tier's screenshots)."""
        painter = QtGui.QPainter(self)
        try:
            bar = QtCore.QRect(0, 0, self.width(), 20)
            painter.fillRect(bar, QtGui.QColor(225, 228, 232))
            painter.setPen(QtGui.QColor(30, 30, 30))
            font = painter.font()
            font.setBold(True)
            painter.setFont(font)
            painter.drawText(bar.adjusted(8, 0, 0, 0), QtCore.Qt.AlignVCenter | QtCore.Qt.AlignLeft,
                             ("\u25b8 " if self._collapsed else "\u25be ") + self._text)
        finally:
            painter.end()

    def getCollapsed(self):
        return self._collapsed

    def setCollapsed(self, collapsed):
        self._collapsed = bool(collapsed)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        emit(self.contentsCollapsed, self._collapsed)

    collapsed = Property(bool, getCollapsed, setCollapsed)


class ctkPathLineEdit(QtWidgets.QWidget):
    """A line edit for a file or folder path (the browse button is not modelled)."""
    Dirs, Files, Drives, NoDot, NoDotDot, Readable, Writable, Executable = 1, 2, 4, 8, 16, 32, \
        64, 128
    currentPathChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._edit = QtWidgets.QLineEdit(self)
        layout.addWidget(self._edit)
        self._filters = self.Files
        self._nameFilters = []
        self._edit.editingFinished.connect(lambda: emit(self.currentPathChanged, self._edit.text()))

    def getCurrentPath(self):
        return self._edit.text()

    def setCurrentPath(self, path):
        if path != self._edit.text():
            self._edit.setText(path)
            emit(self.currentPathChanged, path)

    currentPath = Property(str, getCurrentPath, setCurrentPath)

    def getFilters(self):
        return self._filters

    def setFilters(self, filters):
        self._filters = int(filters)

    filters = Property(int, getFilters, setFilters)

    def getNameFilters(self):
        return list(self._nameFilters)

    def setNameFilters(self, names):
        self._nameFilters = list(names)

    nameFilters = Property("QStringList", getNameFilters, setNameFilters)

    def lineEdit(self):
        return self._edit


def _unused_ctk_class(name):
    """A class that only has to exist: Slicer's GUI connectors compare widget types with it."""
    return type(name, (QtWidgets.QWidget,), {})


def ctk_module():
    module = types.ModuleType("ctk", "stand-in CTK widgets (Testing/Python/widget_tier)")
    module.ctkCollapsibleButton = ctkCollapsibleButton
    module.ctkPathLineEdit = ctkPathLineEdit
    for name in ("ctkCheckBox", "ctkCheckablePushButton", "ctkSliderWidget", "ctkDoubleSlider",
                 "ctkDoubleSpinBox", "ctkComboBox", "ctkRangeWidget", "ctkDoubleRangeSlider",
                 "ctkDirectoryButton", "ctkColorPickerButton"):
        setattr(module, name, _unused_ctk_class(name))
    return module


# ----------------------------------------------------------------------------- qMRML
class qMRMLWidget(QtWidgets.QWidget):
    """Holds the scene and passes it on through ``mrmlSceneChanged`` (the .ui file connects
    this signal to its node selectors)."""
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self.isEntered = False

    def setMRMLScene(self, scene):
        self._scene = scene
        emit(self.mrmlSceneChanged, scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QtWidgets.QWidget):
    """Lists the scene's nodes of ``nodeTypes`` (kept current by scene observers); the first
    entry is "None" when ``noneEnabled``."""
    currentNodeChanged = Signal(object)
    currentNodeIDChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox(self)
        layout.addWidget(self._combo)
        self._scene = None
        self._observers = []
        self._nodeTypes = []
        self._noneEnabled = False
        self._ids = []
        self._current = None
        self._combo.currentIndexChanged.connect(self._onIndex)
        # the scene outlives the widget: drop the observers when the C++ widget goes
        observers = self._observers
        self.destroyed.connect(lambda *_: [obj.RemoveObserver(tag) for obj, tag in observers])

    # properties the .ui sets
    def getNodeTypes(self):
        return list(self._nodeTypes)

    def setNodeTypes(self, types_):
        self._nodeTypes = list(types_)
        self._refill()

    nodeTypes = Property("QStringList", getNodeTypes, setNodeTypes)

    def getNoneEnabled(self):
        return self._noneEnabled

    def setNoneEnabled(self, value):
        self._noneEnabled = bool(value)
        self._refill()

    noneEnabled = Property(bool, getNoneEnabled, setNoneEnabled)

    def _flag(name):  # noqa: N805 - a property factory in the class body
        attr = "_" + name

        def get(self):
            return getattr(self, attr, name == "showChildNodeTypes")  # Qt's defaults

        def set_(self, value):
            setattr(self, attr, bool(value))
        return Property(bool, get, set_)

    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    showChildNodeTypes = _flag("showChildNodeTypes")
    selectNodeUponCreation = _flag("selectNodeUponCreation")
    del _flag

    def setMRMLScene(self, scene):
        for obj, tag in self._observers:
            obj.RemoveObserver(tag)
        del self._observers[:]
        self._scene = scene
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent):
                self._observers.append((scene, scene.AddObserver(event, self._onScene)))
        self._refill()

    def mrmlScene(self):
        return self._scene

    def _onScene(self, caller, event):
        import shiboken6
        if shiboken6.isValid(self):
            self._refill()

    def _matching(self):
        if self._scene is None:
            return []
        nodes = []
        for cls in self._nodeTypes:
            collection = self._scene.GetNodesByClass(cls)
            for i in range(collection.GetNumberOfItems()):
                node = collection.GetItemAsObject(i)
                if node.GetHideFromEditors() or node in nodes:
                    continue
                if not self.property("showChildNodeTypes") and node.GetClassName() != cls:
                    continue
                nodes.append(node)
        return nodes

    def _refill(self):
        nodes = self._matching()
        ids = ([None] if self._noneEnabled else []) + [n.GetID() for n in nodes]
        current = self._current if self._current in ids else None
        if current is None and not self._noneEnabled and len(ids) > 0:
            current = ids[0]
        blocked = self._combo.blockSignals(True)
        self._combo.clear()
        self._ids = ids
        for nodeID in ids:
            node = self._scene.GetNodeByID(nodeID) if nodeID else None
            self._combo.addItem(node.GetName() if node else "None")
        self._combo.setCurrentIndex(ids.index(current) if current in ids else -1)
        self._combo.blockSignals(blocked)
        if current != self._current:
            self._current = current
            self._emit()

    def _emit(self):
        emit(self.currentNodeChanged, self.currentNode())
        emit(self.currentNodeIDChanged, self._current or "")

    def _onIndex(self, index):
        nodeID = self._ids[index] if 0 <= index < len(self._ids) else None
        if nodeID != self._current:
            self._current = nodeID
            self._emit()

    def currentNode(self):
        if self._current is None or self._scene is None:
            return None
        return self._scene.GetNodeByID(self._current)

    def currentNodeID(self):
        return self._current or ""

    def setCurrentNode(self, node):
        nodeID = node.GetID() if node is not None else None
        if nodeID is not None and nodeID not in self._ids:
            self._refill()
        if nodeID != self._current and (nodeID in self._ids):
            self._current = nodeID
            blocked = self._combo.blockSignals(True)
            self._combo.setCurrentIndex(self._ids.index(nodeID))
            self._combo.blockSignals(blocked)
            self._emit()

    def setCurrentNodeID(self, nodeID):
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if nodeID else None)

    def comboBox(self):
        return self._combo


class qMRMLPlotView(QtWidgets.QWidget):
    """Holds its plot view node. For the tier's screenshots it draws the chart's series as plain
    lines from their table nodes (Slicer's plot view draws them its own way; the chart content
    is checked on the nodes)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._viewNode = None

    def setMRMLScene(self, scene):
        self._scene = scene

    def setMRMLPlotViewNode(self, node):
        self._viewNode = node

    def mrmlPlotViewNode(self):
        return self._viewNode

    def _series(self):
        """[(name, rgb, [(x, y)])] of the view's chart (the MRML nodes, read as they are)."""
        view = self._viewNode
        chart = None
        if view is not None and self._scene is not None and view.GetPlotChartNodeID():
            chart = self._scene.GetNodeByID(view.GetPlotChartNodeID())
        out = []
        for i in range(chart.GetNumberOfPlotSeriesNodes() if chart is not None else 0):
            series = chart.GetNthPlotSeriesNode(i)
            table = series.GetTableNode() if series is not None else None
            if table is None:
                continue
            xs = table.GetTable().GetColumnByName(series.GetXColumnName())
            ys = table.GetTable().GetColumnByName(series.GetYColumnName())
            if xs is None or ys is None:
                continue
            points = [(float(xs.GetValue(k)), float(ys.GetValue(k)))
                      for k in range(min(xs.GetNumberOfTuples(), ys.GetNumberOfTuples()))]
            points = [(x, y) for x, y in points if x == x and y == y]
            if points:
                out.append((series.GetName(), series.GetColor(), points))
        return out, chart

    def paintEvent(self, event):
        painter = QtGui.QPainter(self)
        try:
            painter.fillRect(self.rect(), QtGui.QColor(255, 255, 255))
            series, chart = self._series()
            frame = QtCore.QRectF(40, 10, max(10, self.width() - 50), max(10, self.height() - 50))
            painter.setPen(QtGui.QColor(150, 150, 150))
            painter.drawRect(frame)
            if not series:
                return
            xs = [x for _n, _c, pts in series for x, _y in pts]
            ys = [y for _n, _c, pts in series for _x, y in pts]
            x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
            y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else 1.0
            painter.setRenderHint(QtGui.QPainter.Antialiasing)

            def at(x, y):
                return QtCore.QPointF(frame.left() + (x - x0) / (x1 - x0) * frame.width(),
                                      frame.bottom() - (y - y0) / (y1 - y0) * frame.height())
            for k, (name, rgb, pts) in enumerate(series):
                pen = QtGui.QPen(QtGui.QColor.fromRgbF(*rgb))
                pen.setWidthF(1.5)
                painter.setPen(pen)
                painter.drawPolyline(QtGui.QPolygonF([at(x, y) for x, y in pts]))
                if len(pts) == 1:
                    painter.drawEllipse(at(*pts[0]), 2.5, 2.5)
                painter.drawText(QtCore.QPointF(frame.left() + 8 + 120 * k,
                                                frame.bottom() + 32), name)
            painter.setPen(QtGui.QColor(60, 60, 60))
            painter.drawText(QtCore.QPointF(2, frame.top() + 10), f"{y1:.2g}")
            painter.drawText(QtCore.QPointF(2, frame.bottom()), f"{y0:.2g}")
            painter.drawText(QtCore.QPointF(frame.left(), frame.bottom() + 14), f"{x0:g}")
            painter.drawText(QtCore.QPointF(frame.right() - 30, frame.bottom() + 14), f"{x1:g}")
        finally:
            painter.end()


class qSlicerScriptedLoadableModuleWidget(qMRMLWidget):
    """The C++ side of a scripted module's panel: a widget with a layout that re-creates the
    Python widget on ``reload()`` (as qSlicerScriptedLoadableModuleWidget does after
    ``slicer.util.reloadScriptedModule``)."""

    def __init__(self, moduleName, modules):
        super().__init__()
        self.setLayout(QtWidgets.QVBoxLayout())
        self.moduleName = moduleName
        self._modules = modules

    def reload(self):
        import sys
        module = sys.modules[self.moduleName]
        widget = getattr(module, self.moduleName + "Widget")(self)
        widget.setup()
        setattr(self._modules, self.moduleName + "Widget", widget)
        if self.isEntered:
            widget.enter()
        return widget


class _ModuleManager(QtCore.QObject):
    moduleAboutToBeUnloaded = Signal(str)


class SlicerApp(QtCore.QObject):
    """The parts of ``slicer.app`` (qSlicerApplication) used by the module and by Slicer's
    ScriptedLoadableModule / util sources. Not in testing mode: popups are replaced by log
    records because there is no main window (Slicer's own ``_messageDisplay`` rule)."""

    applicationName = "Slicer"

    def __init__(self, temporaryPath):
        super().__init__()
        self.temporaryPath = temporaryPath
        self._moduleManager = _ModuleManager()
        self.overrideCursorDepth = 0
        self.maxOverrideCursorDepth = 0

    def testingEnabled(self):
        return False

    def moduleManager(self):
        return self._moduleManager

    def layoutManager(self):
        return None

    def setOverrideCursor(self, cursor):
        self.overrideCursorDepth += 1
        self.maxOverrideCursorDepth = max(self.maxOverrideCursorDepth, self.overrideCursorDepth)
        QtWidgets.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        self.overrideCursorDepth -= 1
        QtWidgets.QApplication.restoreOverrideCursor()

    def topLevelWidgets(self):
        return QtWidgets.QApplication.topLevelWidgets()

    def processEvents(self, *args):
        QtWidgets.QApplication.processEvents(*args)

    def translate(self, context, text):
        return text

    def userSettings(self):
        return QtCore.QSettings()

    def settings(self):
        return QtCore.QSettings()

    def restart(self):
        raise RuntimeError("restart is not available in the widget tier")


# ----------------------------------------------------------------------------- the .ui
CUSTOM_WIDGETS = {cls.__name__: cls for cls in (ctkCollapsibleButton, ctkPathLineEdit,
                                                qMRMLWidget, qMRMLNodeComboBox, qMRMLPlotView)}


class UiLoader(QUiLoader):
    """QUiLoader that knows the stand-ins (as Slicer's designer plugins make PythonQt's loader
    know the real ones) and makes the .ui file's signal/slot connections by name (QUiLoader
    cannot parse ``vtkMRMLScene*`` in a signature of Python-defined signals)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        for cls in CUSTOM_WIDGETS.values():
            self.registerCustomWidget(cls)

    def load(self, device, parent=None):
        data = bytes(device.readAll())
        buffer = QtCore.QBuffer()
        buffer.setData(_without_connections(data))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parent) if parent is not None else super().load(buffer)
        if widget is not None:
            _connect_ui(widget, data)
        return widget


def _without_connections(data):
    root = ElementTree.fromstring(data)
    for connections in root.findall("connections"):
        root.remove(connections)
    return ElementTree.tostring(root)


def _connect_ui(widget, data):
    """Make each <connection> of the .ui: sender.signal -> receiver.slot, by name; a missing
    widget, signal or slot is an error (the real loader would warn)."""
    root = ElementTree.fromstring(data)

    def find(name):
        if widget.objectName() == name:
            return widget
        found = widget.findChild(QtCore.QObject, name)
        if found is None:
            raise RuntimeError(f".ui connection names a missing widget {name!r}")
        return found

    for connection in root.iter("connection"):
        sender = find(connection.findtext("sender"))
        receiver = find(connection.findtext("receiver"))
        signal = getattr(sender, connection.findtext("signal").split("(")[0])
        slot = getattr(receiver, connection.findtext("slot").split("(")[0])
        signal.connect(slot)


def qt_module():
    """``qt`` as PythonQt presents it: QtCore, QtGui, QtWidgets and QUiLoader in one module."""
    module = types.ModuleType("qt", "PySide6 as PythonQt's qt (Testing/Python/widget_tier)")
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if not name.startswith("_"):
                setattr(module, name, getattr(source, name))
    module.QUiLoader = UiLoader
    return module
