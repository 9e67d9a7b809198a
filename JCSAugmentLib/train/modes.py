"""Training modes: the table lives in :mod:`JCSAugmentLib.run.modes` (plain data, shared with
job validation); this name is kept for the trainer's imports."""

from ..run.modes import MODE_TABLE as MODES, ModeSpec, mode_spec

__all__ = ["MODES", "ModeSpec", "mode_spec"]
