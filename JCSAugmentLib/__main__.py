"""``python -m JCSAugmentLib`` (also what ``torchrun -m JCSAugmentLib`` and Slicer's worker run)."""

import sys

from .cli import main

sys.exit(main())
