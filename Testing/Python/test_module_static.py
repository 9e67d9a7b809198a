"""The Slicer module checked without Slicer: syntax, the .ui file against the code that uses it
and the parameter node it binds to, packaging (CMakeLists, catalog entry, requirements), and the
module's pure helpers imported with stand-in ``slicer``/``qt``/``ctk``/``vtk`` modules.

The module itself (widget, .ui loading, qMRML widgets) only runs inside Slicer: its self-test
(JCSAugmentTest in JCSAugment/JCSAugment.py) covers that there.
"""

import ast
import contextlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import types
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(ROOT, "JCSAugment")
MODULE = os.path.join(MODULE_DIR, "JCSAugment.py")
HELPERS = os.path.join(MODULE_DIR, "JCSAugmentSlicer")
#: the module's Qt-facing code: the thin module file, the panel it makes and its parameter node
#: (the static checks below read them as one source)
PANEL_SOURCES = (MODULE, os.path.join(HELPERS, "widget.py"), os.path.join(HELPERS, "parameters.py"))
UI = os.path.join(MODULE_DIR, "Resources", "UI", "JCSAugment.ui")
REQUIREMENTS = os.path.join(MODULE_DIR, "Resources", "requirements.txt")

#: catalog entry schema v1.0.1 (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json)
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type",
                      "build_dependencies", "build_subdirectory", "enabled", "tier"}

SECTIONS = ("dataCollapsibleButton", "trainingCollapsibleButton", "runCollapsibleButton",
            "policiesCollapsibleButton", "previewCollapsibleButton", "resultsCollapsibleButton")

#: widgets whose class matters to the code (what it calls on them, or the issue's wording)
KEY_WIDGETS = {
    "caseTable": "QTableWidget", "metricsTable": "QTableWidget",
    "imageSelector": "qMRMLNodeComboBox", "labelSelector": "qMRMLNodeComboBox",
    "predictVolumeSelector": "qMRMLNodeComboBox", "referenceSelector": "qMRMLNodeComboBox",
    "datasetPathLineEdit": "ctkPathLineEdit", "outputPathLineEdit": "ctkPathLineEdit",
    "runPathLineEdit": "ctkPathLineEdit", "pretrainedPathLineEdit": "ctkPathLineEdit",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "startButton": "QPushButton", "resumeButton": "QPushButton", "openRunButton": "QPushButton",
    "refreshDevicesButton": "QPushButton", "segmentButton": "QPushButton",
    "progressBar": "QProgressBar", "logTextEdit": "QPlainTextEdit",
    "traForegroundLabel": "QLabel", "traBackgroundLabel": "QLabel", "teaLabel": "QLabel",
    "previewLabel": "QLabel", "deviceComboBox": "QComboBox", "curvesFrame": "QFrame",
    "uncertaintyCheckBox": "QCheckBox", "asSegmentationCheckBox": "QCheckBox",
}

#: how the code uses a widget -> the classes that support it
USAGE_CLASSES = {
    "setPixmap": {"QLabel"}, "setPlainText": {"QPlainTextEdit"},
    "verticalScrollBar": {"QPlainTextEdit", "QTableWidget"},
    "setFormat": {"QProgressBar"}, "setRange": {"QProgressBar"},
    "setRowCount": {"QTableWidget"}, "setColumnCount": {"QTableWidget"},
    "setCellWidget": {"QTableWidget"}, "setHorizontalHeaderLabels": {"QTableWidget"},
    "horizontalHeader": {"QTableWidget"}, "selectedIndexes": {"QTableWidget"},
    "addItems": {"QComboBox"}, "findData": {"QComboBox"}, "itemData": {"QComboBox"},
    "itemText": {"QComboBox"}, "setItemText": {"QComboBox"}, "currentIndex": {"QComboBox"},
    "filters": {"ctkPathLineEdit"}, "nameFilters": {"ctkPathLineEdit"},
}
SIGNAL_CLASSES = {
    "clicked(bool)": {"QPushButton"},
    "currentIndexChanged(int)": {"QComboBox"},
    "itemChanged(QTableWidgetItem*)": {"QTableWidget"},
}


# ----------------------------------------------------------------------------- helpers

def _tree():
    """The module file, the panel and the parameter node as one ast.Module (their bodies one
    after the other)."""
    body = []
    for path in PANEL_SOURCES:
        with open(path, encoding="utf-8") as f:
            body += ast.parse(f.read(), path).body
    return ast.Module(body=body, type_ignores=[])


def _ui():
    return ET.parse(UI).getroot()


def _ui_widgets():
    """objectName -> class for every widget of the .ui file."""
    out = {}
    for w in _ui().iter("widget"):
        name = w.get("name")
        assert name not in out, f"objectName {name!r} is used twice in the .ui file"
        out[name] = w.get("class")
    return out


def _string_property(widget, name):
    for p in widget.findall("property"):
        if p.get("name") == name:
            s = p.find("string")
            return None if s is None else s.text
    return None


def _bindings():
    """objectName -> (class, SlicerParameterName) for the bound widgets."""
    out = {}
    for w in _ui().iter("widget"):
        param = _string_property(w, "SlicerParameterName")
        if param is not None:
            out[w.get("name")] = (w.get("class"), param)
    return out


def _param_class():
    for node in ast.walk(_tree()):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
                or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "parameterNodeWrapper")
                for d in node.decorator_list):
            return node
    raise AssertionError("no @parameterNodeWrapper class in the module's sources")


def _param_fields():
    """field name -> annotation source of the parameter node class."""
    return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in _param_class().body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


def _ui_usages():
    """[(widget name, attribute used on it or None, signal or None)] for self.ui.<name>."""
    out = []
    tree = _tree()
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            parent = parents.get(node)
            attr = parent.attr if isinstance(parent, ast.Attribute) and parent.value is node \
                else None
            signal = None
            if attr == "connect":
                call = parents.get(parent)
                if isinstance(call, ast.Call) and call.args and isinstance(call.args[0],
                                                                           ast.Constant):
                    signal = call.args[0].value
            out.append((node.attr, attr, signal))
    # local aliases inside a function: ``bar = self.ui.progressBar`` ... ``bar.setFormat(...)``
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef):
            continue
        aliases = {}
        for node in ast.walk(func):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Attribute)
                    and isinstance(node.value.value, ast.Attribute)
                    and node.value.value.attr == "ui"):
                aliases[node.targets[0].id] = node.value.attr
        for node in ast.walk(func):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                out.append((aliases[node.value.id], node.attr, None))
    return out


def _module_constant(name):
    for node in _tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not a module-level constant of {PANEL_SOURCES}")


# ----------------------------------------------------------------------------- syntax

def _module_files():
    return [MODULE] + sorted(os.path.join(HELPERS, f) for f in os.listdir(HELPERS)
                             if f.endswith(".py"))


def test_module_and_library_parse_as_python_3_10():
    for path in _module_files():
        with open(path, encoding="utf-8") as fh:
            ast.parse(fh.read(), path, feature_version=(3, 10))
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "JCSAugmentLib")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path, encoding="utf-8") as fh:
                    ast.parse(fh.read(), path, feature_version=(3, 10))


def test_heavy_packages_are_imported_only_inside_functions():
    heavy = {"torch", "matplotlib", "PyTorchUtils", "numpy", "SimpleITK"}
    for path in _module_files():
        with open(path, encoding="utf-8") as fh:
            src = fh.read()
        for node in ast.parse(src).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not heavy.intersection(names), f"top-level import of {names} in {path}"
        assert "import imp\n" not in src and "from imp " not in src
    with open(os.path.join(HELPERS, "dependencies.py"), encoding="utf-8") as fh:
        src = fh.read()
    assert "import PyTorchUtils" in src
    assert "installTorch(" in src and "torchVersionRequirement" in src


# ----------------------------------------------------------------------------- the .ui file

def test_ui_root_sections_and_key_widgets():
    root = _ui()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    widgets = _ui_widgets()
    for name in SECTIONS:
        assert widgets.get(name) == "ctkCollapsibleButton", name
    for name, cls in KEY_WIDGETS.items():
        assert widgets.get(name) == cls, f"{name}: {widgets.get(name)} in the .ui, expected {cls}"
    for w in root.iter("widget"):
        if w.get("name") == "advancedCollapsibleButton":
            collapsed = [p.find("bool").text for p in w.findall("property")
                         if p.get("name") == "collapsed"]
            assert collapsed == ["true"], "the advanced options start collapsed"
        if w.get("name") == "logTextEdit":
            ro = [p.find("bool").text for p in w.findall("property") if p.get("name") == "readOnly"]
            assert ro == ["true"], "the log is read-only"
    custom = {c.findtext("class"): c.findtext("header") for c in root.iter("customwidget")}
    used = set(widgets.values())
    for cls in ("ctkCollapsibleButton", "ctkPathLineEdit", "qMRMLNodeComboBox", "qMRMLWidget"):
        assert cls in used and custom.get(cls) == f"{cls}.h", cls


def test_every_ui_name_the_code_uses_exists_with_a_fitting_class():
    widgets = _ui_widgets()
    usages = _ui_usages()
    assert len({u[0] for u in usages}) > 40
    for name, attr, signal in usages:
        assert name in widgets, f"self.ui.{name} is used in the panel but not in the .ui"
        cls = widgets[name]
        if attr in USAGE_CLASSES:
            assert cls in USAGE_CLASSES[attr], f"self.ui.{name}.{attr} on a {cls}"
        if signal is not None:
            assert signal in SIGNAL_CLASSES, f"unexpected signal {signal} on self.ui.{name}"
            assert cls in SIGNAL_CLASSES[signal], f"{signal} connected on self.ui.{name} ({cls})"


def test_every_button_does_something():
    widgets = _ui_widgets()
    connected = {name for name, attr, signal in _ui_usages() if signal == "clicked(bool)"}
    buttons = {n for n, c in widgets.items() if c == "QPushButton"}
    assert buttons - connected == set(), "buttons in the .ui that no code connects"


def test_node_combo_boxes_get_the_scene_and_fit_their_parameter():
    root = _ui()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    fields = _param_fields()
    for w in root.iter("widget"):
        if w.get("class") != "qMRMLNodeComboBox":
            continue
        name = w.get("name")
        assert name in receivers, f"{name} is not given the scene"
        types_ = [s.text for p in w.findall("property") if p.get("name") == "nodeTypes"
                  for s in p.iter("string")]
        param = _string_property(w, "SlicerParameterName")
        annotation = fields[param]
        assert sorted(types_) == sorted(re.findall(r"vtkMRML\w+", annotation)), (name, types_)


# ----------------------------------------------------------------------------- parameter node

def test_every_slicer_parameter_name_is_a_parameter_node_field():
    fields = _param_fields()
    seen = {}
    for widget, (_cls, param) in _bindings().items():
        assert param in fields, f"{widget}: SlicerParameterName {param!r} is not a field of " \
                                f"JCSAugmentParameterNode"
        assert param not in seen, f"{param!r} is bound to {seen[param]} and {widget}"
        seen[param] = widget


def test_bound_widgets_have_a_connector_for_their_field_type():
    """The parameterNodeWrapper connectors match widget classes exactly (type(widget) ==):
    QComboBox needs a Choice, QSpinBox an int, QDoubleSpinBox a float, QCheckBox a bool,
    ctkPathLineEdit a pathlib.Path, qMRMLNodeComboBox MRML node types. Spin boxes need a
    WithinRange, or the connector opens them to +-2**31."""
    fields = _param_fields()
    for widget, (cls, param) in _bindings().items():
        a = fields[param]
        if cls == "QComboBox":
            assert "Choice(" in a and a.startswith("Annotated[str"), (widget, a)
        elif cls == "QSpinBox":
            assert a.startswith("Annotated[int") and "WithinRange(" in a, (widget, a)
        elif cls == "QDoubleSpinBox":
            assert a.startswith("Annotated[float") and "WithinRange(" in a, (widget, a)
        elif cls == "QCheckBox":
            assert a == "bool", (widget, a)
        elif cls == "ctkPathLineEdit":
            assert a == "pathlib.Path", (widget, a)
        elif cls == "qMRMLNodeComboBox":
            assert "vtkMRML" in a, (widget, a)
        else:
            raise AssertionError(f"{widget}: no parameterNodeWrapper connector for a {cls}")


def test_every_field_is_bound_or_documented():
    fields = set(_param_fields())
    bound = {param for _cls, param in _bindings().values()}
    documented = _module_constant("UNBOUND_PARAMETERS")
    assert fields - bound == set(documented), (
        "fields without a widget must be explained in UNBOUND_PARAMETERS (and only those)")
    reserved = {"default", "isCached", "dataType", "getValue", "setValue", "connectGui",
                "connectParametersToGui", "disconnectGui", "StartModify", "EndModify",
                "AddObserver", "RemoveObserver", "Modified", "allParameters", "parameterNode"}
    assert fields & reserved == set(), "names the parameterNodeWrapper reserves"


# ----------------------------------------------------------------------------- packaging

def _cmake(path):
    with open(path, encoding="utf-8") as f:
        return re.sub(r"#.*", "", f.read())


def test_module_cmakelists_lists_every_script_and_resource():
    text = _cmake(os.path.join(MODULE_DIR, "CMakeLists.txt")).replace("${MODULE_NAME}",
                                                                      "JCSAugment")
    listed = set(re.findall(r"^\s+([\w./-]+\.\w+)\s*$", text, re.M))
    on_disk = set()
    for folder, _dirs, files in os.walk(MODULE_DIR):
        for f in files:
            rel = os.path.relpath(os.path.join(folder, f), MODULE_DIR).replace(os.sep, "/")
            if rel != "CMakeLists.txt" and "__pycache__" not in rel:
                on_disk.add(rel)
    assert on_disk - listed == set(), "add these to JCSAugment/CMakeLists.txt"
    assert listed - on_disk == set(), "listed in JCSAugment/CMakeLists.txt but missing"
    for resource in ("Resources/UI/JCSAugment.ui", "Resources/Icons/JCSAugment.png",
                     "Resources/requirements.txt"):
        assert resource in listed
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"if\(BUILD_TESTING\)\s*slicer_add_python_unittest\(SCRIPT "
                     r"JCSAugment\.py\)\s*endif\(\)", text)


def test_top_level_cmakelists():
    text = _cmake(os.path.join(ROOT, "CMakeLists.txt"))
    assert re.search(r"^project\(JCSAugment\)", text, re.M)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_CATEGORY"):
        assert re.search(rf"set\({var} \"[^\"]+\"\)", text), var
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    # the screenshot the catalog shows is a picture of the panel, and it is in the repository
    shot = re.search(r'set\(EXTENSION_SCREENSHOTURLS "[^"]*/main/([^"]+)"\)', text).group(1)
    assert os.path.isfile(os.path.join(ROOT, shot)) and "panel_widget" in shot, shot
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
             "add_subdirectory(JCSAugmentLib)", "add_subdirectory(JCSAugment)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions))


def test_catalog_entry():
    project = re.search(r"^project\((\w+)\)", _cmake(os.path.join(ROOT, "CMakeLists.txt")),
                        re.M).group(1)
    path = os.path.join(ROOT, f"{project}.json")
    assert os.path.exists(path), "the catalog entry is named after the extension"
    assert not project.startswith("Slicer")
    with open(path, encoding="utf-8") as f:
        entry = json.load(f)
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_PROPERTIES, set(entry) ^ CATALOG_PROPERTIES
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/"
                                       "Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json")
    assert entry["category"] == "Segmentation"
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["tier"] in (1, 3, 5)
    assert entry.get("scm_type", "git") == "git"
    assert isinstance(entry["scm_revision"], str) and entry["scm_revision"]
    assert re.match(r"https://github\.com/[\w.-]+/SlicerJCSAugment(\.git)?$", entry["scm_url"])


def test_requirements_install_nothing_slicer_ships():
    with open(REQUIREMENTS, encoding="utf-8") as f:
        lines = [ln.split("#")[0].strip() for ln in f]
    names = [re.split(r"[<>=!~;\[ ]", ln, 1)[0].lower() for ln in lines if ln]
    assert names == ["matplotlib"]


# ----------------------------------------------------------------------------- stand-in import

def _stub_modules():
    """Stand-ins for the modules Slicer provides, enough to import JCSAugment.py."""
    classes = {}

    def node_class(name):
        if name not in classes:
            classes[name] = type(name, (), {})
        return classes[name]

    slicer = types.ModuleType("slicer")

    def slicer_getattr(name):
        if name.startswith("vtkMRML") or name.startswith("vtkSlicer"):
            return node_class(name)
        raise AttributeError(name)

    slicer.__getattr__ = slicer_getattr
    slicer.__path__ = []
    util = types.ModuleType("slicer.util")

    class VTKObservationMixin:
        def __init__(self):
            pass

    util.VTKObservationMixin = VTKObservationMixin

    @contextlib.contextmanager
    def NodeModify(node):
        yield

    util.NodeModify = NodeModify
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = choices

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    pnw.Choice, pnw.WithinRange = Choice, WithinRange
    pnw.parameterNodeWrapper = lambda cls: cls
    slicer.util, slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper = util, slm, pnw
    mods = {"slicer": slicer, "slicer.util": util, "slicer.ScriptedLoadableModule": slm,
            "slicer.parameterNodeWrapper": pnw}
    for name in ("qt", "ctk", "vtk"):
        mods[name] = types.ModuleType(name)
    return mods


@contextlib.contextmanager
def loaded_module(stubs, name="JCSAugment_under_test"):
    """JCSAugment.py executed with ``stubs`` in sys.modules and its folder on sys.path; its
    helper package (JCSAugmentSlicer) is imported afresh against them and forgotten after."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules)
             if k.split(".")[0] == "JCSAugmentSlicer"}
    with pytest.MonkeyPatch.context() as mp:
        for key, mod in stubs.items():
            mp.setitem(sys.modules, key, mod)
        mp.syspath_prepend(MODULE_DIR)
        try:
            spec = importlib.util.spec_from_file_location(name, MODULE)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            yield mod
        finally:
            for k in [k for k in sys.modules if k.split(".")[0] == "JCSAugmentSlicer"]:
                del sys.modules[k]
            sys.modules.update(saved)


@pytest.fixture
def module():
    with loaded_module(_stub_modules()) as mod:
        yield mod


@pytest.fixture
def deps():
    sys.path.insert(0, MODULE_DIR)
    try:
        from JCSAugmentSlicer import dependencies
        yield dependencies
    finally:
        sys.path.remove(MODULE_DIR)


def test_importing_the_module_loads_no_torch_matplotlib_or_numpy():
    code = (
        "import sys, importlib.util\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        f"sys.path.insert(0, {MODULE_DIR!r})\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "from test_module_static import _stub_modules, MODULE\n"
        "sys.modules.update(_stub_modules())\n"
        "spec = importlib.util.spec_from_file_location('JCSAugment', MODULE)\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "heavy = [n for n in sys.modules if n.split('.')[0] in "
        "('torch', 'matplotlib', 'numpy', 'SimpleITK', 'PyTorchUtils')]\n"
        "assert not heavy, heavy\n"
        "assert m.JCSAugmentWidget and m.JCSAugmentLogic and m.JCSAugmentTest\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_parameter_choices_are_the_engines_names(module):
    import typing

    from JCSAugmentLib.run.job import BACKBONES, INITS, MODES
    hints = typing.get_type_hints(module.JCSAugmentParameterNode, include_extras=True)

    def choices(name):
        (choice,) = [a for a in hints[name].__metadata__ if hasattr(a, "choices")]
        return list(choice.choices)

    assert choices("mode") == list(MODES)
    assert choices("backbone") == list(BACKBONES)
    assert choices("initPolicy") == ["auto"] + list(INITS)
    assert choices("teaMode") == ["learned", "heuristic", "none"]
    from JCSAugmentLib.panel.settings import MODE_LABELS
    assert set(MODE_LABELS) == set(MODES), "every mode has a label in the combo box"
    for field, labels in sys.modules["JCSAugmentSlicer.parameters"].COMBO_LABELS.items():
        assert set(labels) == set(choices(field)), field
    for name, hint in hints.items():
        for a in getattr(hint, "__metadata__", ()):
            if hasattr(a, "minimum"):
                default = getattr(module.JCSAugmentParameterNode, name)
                assert a.minimum <= default <= a.maximum, name


def test_settings_from_the_parameter_node(module, tmp_path):
    p = types.SimpleNamespace(
        backbone="deepmedic", mode="class-specific", initPolicy="auto", epochs=3, minutes=0.0,
        device="cuda:1", outputFolder=tmp_path, seed=5, patchSize=0, batchSize=4,
        iterationsPerEpoch=0, pretrained=pathlib.Path(""), trainFraction=0.5,
        validationFraction=0.25, testFraction=0.25)
    s = module.JCSAugmentLogic.settingsFromParameterNode(p)
    assert (s.backbone, s.mode, s.init, s.epochs, s.minutes) == ("deepmedic", "class-specific",
                                                                 None, 3, None)
    assert (s.device, s.seed, s.patch_size, s.batch_size, s.iterations_per_epoch) == (
        "cuda:1", 5, None, 4, None)
    assert s.pretrained is None and s.output_folder == str(tmp_path)
    assert s.problems() == []
    p.patchSize, p.minutes, p.initPolicy = 32, 12.5, "nnunet"
    s = module.JCSAugmentLogic.settingsFromParameterNode(p)
    assert (s.patch_size, s.minutes, s.init) == ([32, 32, 32], 12.5, "nnunet")
    pathOrNone = sys.modules["JCSAugmentSlicer.logic"].pathOrNone
    assert pathOrNone(pathlib.Path("")) is None
    assert pathOrNone("~/x") == os.path.expanduser("~/x")


def test_dataset_folder_job(module, tmp_path):
    from JCSAugmentLib.panel.settings import PanelSettings
    from JCSAugmentLib.run.folder import RunFolder
    settings = PanelSettings(mode="joint", epochs=2, device="cuda:0",
                             output_folder=str(tmp_path / "out"), patch_size=[32, 32, 32],
                             minutes=5.0)
    logic = module.JCSAugmentLogic()
    with pytest.raises(ValueError, match="dataset.json"):
        logic.prepareRun(settings, datasetFolder=str(tmp_path), splitFractions={"train": 1.0})
    (tmp_path / "dataset.json").write_text("{}")
    run = logic.prepareRun(settings, datasetFolder=str(tmp_path),
                           splitFractions={"train": 3.0, "validation": 1.0, "test": 1.0},
                           splitSeed=7)
    job = RunFolder(run).job()
    assert job.data.dataset == str(tmp_path) and job.data.split_seed == 7
    assert job.data.split_fractions == {"train": 0.6, "validation": 0.2, "test": 0.2}
    assert (job.device, job.training.epochs, job.model.patch_size) == ("cuda", 2, [32, 32, 32])
    assert job.time_budget_minutes == 5.0


def test_preview_arrays(module, tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    path = tmp_path / "preview_latest.npz"
    np.savez_compressed(path, foreground_images=rng.normal(size=(4, 1, 6, 7, 8)),
                        foreground_labels=rng.integers(0, 2, (4, 6, 7, 8)),
                        background_images=rng.normal(size=(4, 1, 6, 7, 8)),
                        background_labels=np.zeros((4, 6, 7, 8), np.int64))
    from JCSAugmentLib.run.folder import load_preview_arrays
    arrays = module.JCSAugmentLogic.previewArrays(load_preview_arrays(str(path)), gap=2)
    assert set(arrays) == {"foreground patches", "foreground labels", "background patches",
                           "background labels"}
    image, matrix = arrays["foreground patches"]
    labels, _ = arrays["foreground labels"]
    assert matrix is None and image.shape == labels.shape == (6, 7, 4 * 8 + 3 * 2)
    assert image.dtype == np.float32 and np.issubdtype(labels.dtype, np.integer)


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for PythonSlicer")
def test_start_on_a_folder_with_a_checkpoint_starts_it_again_and_keeps_them(module, tmp_path):
    """The user pressed Start, not Resume: the logic passes --restart (the worker then keeps
    the old checkpoints in checkpoints/before-restart-TIME/), never a bare start the worker
    would refuse; --resume when resuming; and it can refuse instead."""
    from JCSAugmentLib.run.folder import RunFolder
    run = RunFolder(tmp_path / "run")
    run.save_job({"schema": 1, "data": {"dataset": str(tmp_path)}})
    python = tmp_path / "PythonSlicer"  # says what it was asked to run, in the worker log
    python.write_text("#!/bin/sh\necho \"ARGS $*\"\n")
    python.chmod(0o755)
    logic = module.JCSAugmentLogic()

    def started(**kw):
        worker = logic.startTraining(run.path, "cpu", python=str(python), wait=True,
                                     timeout=60, **kw)
        return [line for line in worker.log_tail(5).splitlines() if line.startswith("ARGS")][-1]

    assert started() == f"ARGS -m JCSAugmentLib train {run.path}"  # a new folder: plain start
    os.makedirs(run.checkpoints_dir)
    with open(run.checkpoint_path("last"), "wb") as f:
        f.write(b"a checkpoint")
    assert started() == f"ARGS -m JCSAugmentLib train {run.path} --restart"
    assert started(resume=True) == f"ARGS -m JCSAugmentLib train {run.path} --resume"
    with pytest.raises(ValueError, match="Resume continues that run"):
        logic.startTraining(run.path, "cpu", python=str(python), restart=False)
    assert run.has_checkpoint()  # nothing was moved or removed by the logic itself


def test_requirements_helpers(deps, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nmatplotlib>=3.5\nSimpleITK\nnumpy>=1\n-c constraints.txt\n"
                   "torch>=2.1\nsurely-not-installed-pkg-xyz>=1\n")
    lines = deps.readRequirements(str(req))
    assert lines == ["matplotlib>=3.5", "surely-not-installed-pkg-xyz>=1"]
    missing = deps.missingRequirements(lines + ["pytest>=1"])
    assert "surely-not-installed-pkg-xyz>=1" in missing and "pytest>=1" not in missing
    assert deps.readRequirements() == ["matplotlib>=3.5"]
    assert deps._torchVersionOk("2.1.0+cu121") and deps._torchVersionOk("2.10.1")
    assert not deps._torchVersionOk("1.13.1") and not deps._torchVersionOk("2.0.1")


def test_missing_pytorch_extension_gives_a_clear_message(deps, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # "import PyTorchUtils" fails
    with pytest.raises(deps.DependencyError, match="'PyTorch' extension"):
        deps.ensureTorch(askConfirmation=False, torchFound=False)


def test_ensure_dependencies_asks_and_never_installs_what_slicer_ships(deps, monkeypatch):
    """No pip_ensure (Slicer 5.10): confirm, then slicer.util.pip_install of the missing
    requirement lines only; declining raises DependencyError."""
    calls = []
    util = types.SimpleNamespace(confirmOkCancelDisplay=lambda *a, **k: calls.append("ask")
                                 or answer[0], pip_install=lambda r: calls.append(r))
    monkeypatch.setattr(deps, "_slicer", lambda: types.SimpleNamespace(util=util))
    monkeypatch.setattr(deps, "_pipEnsureFunction", lambda: (None, None))
    monkeypatch.setattr(deps, "readRequirements", lambda: ["matplotlib>=3.5", "nothere-xyz"])
    answer = [False]
    with pytest.raises(deps.DependencyError, match="nothere-xyz"):
        deps.ensureDependencies(requireTorch=False)
    assert calls == ["ask"]
    answer[0] = True
    calls.clear()
    with pytest.raises(deps.DependencyError, match="still missing"):
        deps.ensureDependencies(requireTorch=False)
    assert calls == ["ask", "nothere-xyz"]


class _Node:
    def __init__(self, name, node_id):
        self._name, self._id = name, node_id

    def GetName(self):
        return self._name

    def GetID(self):
        return self._id


def _params():
    return types.SimpleNamespace(caseIds=[], caseImages=[], caseLabels=[], caseSplits=[],
                                 mode="joint", trainFraction=0.6, validationFraction=0.2,
                                 testFraction=0.2, splitSeed=0)


def test_case_table_logic(module):
    logic = module.JCSAugmentLogic()
    p = _params()
    for i in range(5):
        logic.addCase(p, _Node(f"case{i}", f"vtkMRMLScalarVolumeNode{i}"),
                      _Node(f"case{i} label", f"vtkMRMLLabelMapVolumeNode{i}"))
    assert p.caseIds == [f"case{i}" for i in range(5)] and p.caseSplits == ["train"] * 5
    assert any("validation" in s for s in logic.caseProblems(p))
    with pytest.raises(ValueError, match="already in the table"):
        logic.addCase(p, _Node("case0", "vtkMRMLScalarVolumeNode0"), _Node("x", "y"))
    with pytest.raises(ValueError, match="label map"):
        logic.addCase(p, _Node("other", "vtkMRMLScalarVolumeNode9"), None)
    assert logic.addCase(p, _Node("case1", "vtkMRMLScalarVolumeNode7"), None,
                         split="test") == "case1 (2)"
    logic.setCaseSplit(p, 5, "unused")
    logic.autoSplitCases(p)
    assert p.caseSplits[5] == "unused"
    assert sorted(p.caseSplits[:5]) == ["test", "train", "train", "train", "validation"]
    assert logic.caseProblems(p) == []
    rows = logic.caseRows(p)
    assert rows[0]["image_nodes"][0].GetName() == "case0" and rows[0]["label_node"] is not None
    logic.renameCase(p, 0, "first")
    with pytest.raises(ValueError, match="already used"):
        logic.renameCase(p, 1, "first")
    logic.removeCases(p, [0, 5])
    assert p.caseIds == ["case1", "case2", "case3", "case4"]
    logic.removeCases(p, None)
    assert p.caseIds == [] and p.caseImages == [] and p.caseLabels == [] and p.caseSplits == []


def test_qt_uic_accepts_the_ui_file(tmp_path):
    """Qt's own .ui compiler reads the file (skipped where Qt's uic is not installed)."""
    import shutil
    uic = next((p for p in (shutil.which("uic"), "/usr/lib/qt5/bin/uic",
                            "/usr/lib/qt6/libexec/uic") if p and os.path.exists(p)), None)
    if uic is None:
        pytest.skip("Qt's uic is not installed (apt-get install qtbase5-dev-tools)")
    out = tmp_path / "ui.h"
    run = subprocess.run([uic, UI, "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    text = out.read_text()
    for name in KEY_WIDGETS:
        assert f'setObjectName(QString::fromUtf8("{name}"))' in text, name
