"""JCSAugment: the 3D Slicer module over the JCSAugmentLib engine.

A thin file, as Slicer's module manager needs it: the module's description, its widget (which
makes the panel, JCSAugmentSlicer/widget.py, and forwards Slicer's calls to it), its logic
(JCSAugmentSlicer/logic.py, no widget references, with the parameter node of
JCSAugmentSlicer/parameters.py) and the self-test (JCSAugmentSlicer/selftest.py, imported here so
that Slicer and ctest find it). Everything the panel shows is computed by Qt-free code in
JCSAugmentLib; training and prediction run in their own process, never in Slicer's GUI process.
"""

from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleWidget)

from JCSAugmentSlicer.dependencies import (DependencyError, ensureDependencies,  # noqa: F401
                                           ensureTorch)
from JCSAugmentSlicer.logic import RunLogic
from JCSAugmentSlicer.parameters import JCSAugmentParameterNode
from JCSAugmentSlicer.widget import JCSAugmentPanel

PAPER = ("Z. Li, K. Kamnitsas, Q. Dou, C. Qin, B. Glocker, \"Joint Optimization of Class-Specific "
         "Training- and Test-Time Data Augmentation in Segmentation\", IEEE Transactions on "
         "Medical Imaging, 2023.")


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
# JCSAugmentWidget
#

class JCSAugmentWidget(ScriptedLoadableModuleWidget):
    """The module panel: a :class:`JCSAugmentPanel` in the module's layout."""

    def __init__(self, parent=None):
        self.panel = None  # before the base class, which calls setup() when there is no parent
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.panel = JCSAugmentPanel(self.resourcePath("UI/JCSAugment.ui"), JCSAugmentLogic(),
                                     isEntered=lambda: bool(self.parent.isEntered))
        self.logic = self.panel.logic
        self.ui = self.panel.ui
        self.layout.addWidget(self.panel.widget)

    def enter(self):
        self.panel.enter()

    def exit(self):
        self.panel.exit()

    def cleanup(self):
        if self.panel is not None:
            self.panel.cleanup()

    def onReload(self):
        self.panel.prepareReload()
        ScriptedLoadableModuleWidget.onReload(self)


#
# JCSAugmentLogic
#

class JCSAugmentLogic(RunLogic, ScriptedLoadableModuleLogic):
    """The module's logic: RunLogic (JCSAugmentSlicer/logic.py, no widget references) with the
    module's typed parameter node."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)
        self._wrapper = None

    def getParameterNode(self):
        """The typed wrapper of the module's parameter node: one per node (each wrapper adds
        observers to the node, so a new one per call would pile them up)."""
        node = super().getParameterNode()
        if self._wrapper is None or self._wrapper.parameterNode is not node:
            self._wrapper = JCSAugmentParameterNode(node)
        return self._wrapper


# the self-test (Reload and Test, ctest) lives beside the logic; imported here so that Slicer
# and slicer_add_python_unittest find JCSAugmentTest in this module
from JCSAugmentSlicer.selftest import JCSAugmentTest  # noqa: E402,F401
