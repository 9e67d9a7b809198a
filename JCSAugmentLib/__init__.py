"""JCSAugment engine: joint, class-specific learning of training- and test-time augmentation
for 3D segmentation (Li et al., IEEE TMI 2023).

Imports no slicer, qt or vtk, so it runs in plain Python and in Slicer's worker process alike.
"""

__version__ = "0.1.0"
