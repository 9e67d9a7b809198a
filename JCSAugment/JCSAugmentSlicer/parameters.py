"""The module's parameter node: what the panel edits, saved with the scene.

Each field is bound to its widget in Resources/UI/JCSAugment.ui through the widget's
``SlicerParameterName`` property (parameterNodeWrapper's GUI connectors); the fields without a
widget are listed, with the reason, in :data:`UNBOUND_PARAMETERS` (test_module_static.py checks
both directions). The values are the engine's names (JCSAugmentLib.run.job); the combo boxes show
the readable labels of :data:`COMBO_LABELS` instead.
"""

import pathlib
from typing import Annotated, Optional, Union

from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from JCSAugmentLib.run.job import BACKBONES, INITS, MODES
from JCSAugmentSlicer.logic import TEA_CHOICES

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
    compareHeuristic: bool = False
    compareSeeds: Annotated[int, WithinRange(1, 20)] = 1
    # Run
    runFolder: pathlib.Path
    # Results
    predictTarget: Annotated[str, Choice(["test", "volume"])] = "test"
    predictVolume: vtkMRMLScalarVolumeNode
    referenceLabel: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    teaMode: Annotated[str, Choice(list(TEA_CHOICES))] = "learned"
    uncertainty: bool = False
    asSegmentation: bool = False
