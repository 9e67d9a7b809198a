"""The JCSAugment Slicer module's own helpers (beside JCSAugment.py, installed with it):

- :mod:`.logic`: the panel's actions without widget references (``RunLogic``, which the
  module's ``JCSAugmentLogic`` extends with its parameter node);
- :mod:`.dependencies`: ``ensureDependencies()``, torch through the PyTorch extension and
  ``Resources/requirements.txt``, on first use only.

Importing this package imports nothing; neither module imports torch or matplotlib.
"""
