"""JCSAugment: the 3D Slicer module over the JCSAugmentLib engine.

This file stays thin: everything the panel shows is computed by Qt-free code in JCSAugmentLib,
which runs the training in its own process (never in Slicer's GUI process). The full panel
(data, training, run, policies, preview, results) is built on the run-folder protocol; until it
lands, the module registers itself, documents the method and offers the engine's command line.
"""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)

PAPER = ("Z. Li, K. Kamnitsas, Q. Dou, C. Qin, B. Glocker, \"Joint Optimization of Class-Specific "
         "Training- and Test-Time Data Augmentation in Segmentation\", IEEE Transactions on "
         "Medical Imaging, 2023.")


class JCSAugment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "JCSAugment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["The JCSAugment developers"]
        self.parent.helpText = (
            "Train a 3D segmentation network (3D U-Net or DeepMedic) on your labelled volumes "
            "while it learns which data augmentation to use: separate training-time policies "
            "for foreground and background patches, and a test-time augmentation policy, "
            "learned jointly by meta-gradients from a validation split. The engine also runs "
            "from the command line: <code>python -m JCSAugmentLib --help</code>.")
        self.parent.acknowledgementText = "The method: " + PAPER


class JCSAugmentWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import qt
        label = qt.QLabel(
            "The training panel is being built on the engine's run-folder protocol.\n"
            "Meanwhile the engine runs from a terminal with Slicer's Python:\n"
            "  PythonSlicer -m JCSAugmentLib preview IMAGE LABEL --out preview.png")
        label.wordWrap = True
        self.layout.addWidget(label)
        self.layout.addStretch(1)


class JCSAugmentLogic(ScriptedLoadableModuleLogic):
    """Logic without widget references (scripts and tests use it directly)."""

    @staticmethod
    def libraryFolder():
        """Folder of the JCSAugmentLib package that this module ships with."""
        import importlib.util
        spec = importlib.util.find_spec("JCSAugmentLib")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("JCSAugmentLib is not installed beside the JCSAugment module")
        return list(spec.submodule_search_locations)[0]


class JCSAugmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_is_installed()

    def test_library_is_installed(self):
        folder = JCSAugmentLogic.libraryFolder()
        for name in ("__init__.py", "cli.py", os.path.join("augment", "tables.py")):
            self.assertTrue(os.path.exists(os.path.join(folder, name)), name)
