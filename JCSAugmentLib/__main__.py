"""``python -m JCSAugmentLib`` (also what ``torchrun -m JCSAugmentLib`` and Slicer's worker run)."""

import sys

from .threads import apply_thread_policy

try:
    apply_thread_policy()  # before anything imports torch: see threads.py
except ValueError:
    pass  # a bad JCSAUGMENT_NUM_THREADS: main() says so in one line

from .cli import main  # noqa: E402

sys.exit(main(own_process=True))
