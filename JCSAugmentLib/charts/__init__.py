"""Charts (matplotlib, object-oriented API only; no pyplot, no global backend change)."""

from .preview_grid import draw_preview_grid

__all__ = ["draw_preview_grid"]
