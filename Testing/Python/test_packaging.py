"""Packaging: every library file is listed for Slicer's installer, and the library imports
without Slicer, Qt or VTK."""

import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _listed(cmake_path):
    text = open(cmake_path, encoding="utf-8").read()
    return set(re.findall(r"^\s+([\w/]+\.(?:py|png|ui|txt|json))\s*$", text, re.M))


def test_every_library_file_is_in_its_cmakelists():
    lib = os.path.join(ROOT, "JCSAugmentLib")
    on_disk = set()
    for folder, _dirs, files in os.walk(lib):
        if "__pycache__" in folder:
            continue
        for f in files:
            if f.endswith(".py"):
                on_disk.add(os.path.relpath(os.path.join(folder, f), lib).replace(os.sep, "/"))
    listed = _listed(os.path.join(lib, "CMakeLists.txt"))
    assert on_disk - listed == set(), "add these to JCSAugmentLib/CMakeLists.txt"
    assert listed - on_disk == set(), "listed in JCSAugmentLib/CMakeLists.txt but missing"


def test_every_module_script_and_resource_is_in_its_cmakelists():
    mod = os.path.join(ROOT, "JCSAugment")
    text = open(os.path.join(mod, "CMakeLists.txt"), encoding="utf-8").read()
    text = text.replace("${MODULE_NAME}", "JCSAugment")
    for folder, _dirs, files in os.walk(mod):
        for f in files:
            rel = os.path.relpath(os.path.join(folder, f), mod).replace(os.sep, "/")
            if rel == "CMakeLists.txt" or "__pycache__" in rel:
                continue
            assert rel in text, f"{rel} is not listed in JCSAugment/CMakeLists.txt"


def test_module_parses_as_python_3_10():
    src = open(os.path.join(ROOT, "JCSAugment", "JCSAugment.py"), encoding="utf-8").read()
    ast.parse(src, feature_version=(3, 10))
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "JCSAugmentLib")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                ast.parse(open(path, encoding="utf-8").read(), path, feature_version=(3, 10))


def test_library_imports_without_slicer_qt_or_vtk():
    code = ("import sys, JCSAugmentLib.augment, JCSAugmentLib.policy, JCSAugmentLib.cli, "
            "JCSAugmentLib.io, JCSAugmentLib.charts, JCSAugmentLib.augment.preview\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('slicer', 'qt', 'vtk', 'vtkmodules', 'ctk', 'matplotlib.pyplot')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
