"""How operations are written for people: TRA column titles, TEA bar labels, preview captions.

Every string comes from the op's ``OpLabels`` in the registry (``ops.OPS``); this module only
fills in the axis and the magnitude, so a new op is labelled by its registry entry alone.
"""

from __future__ import annotations

from .ops import OPS


def tra_group_title(group) -> str:
    """Short title of a TRA group's pie column (``rot0``, ``blur/sharp``): the short names of
    its non-identity ops, each once, joined by ``/``."""
    shorts = (OPS[o.op].labels.short.format(axis=group.axis) for o in group.options[1:])
    return "/".join(dict.fromkeys(shorts))


def tea_op_label(op) -> str:
    """Compact label of a TEA op (``rot0 +15``, ``rot90 ax2 180``, ``scale 1/1.05``). The
    magnitude is written as the TEA table writes it: the last ``_`` field of the op's name."""
    value = op.name.rsplit("_", 1)[-1]
    return OPS[op.op].labels.tick.format(axis=op.axis, value=value)


def tra_draw_caption(op_name: str, axis, value: float) -> str:
    """One drawn TRA op of a sample, for a preview caption (``rot ax1 +12deg``, ``gamma
    0.87``, ``flip2``); ``value`` is the sample's magnitude from ``TRAParams.values``."""
    return OPS[op_name].labels.caption.format(op=op_name, axis=axis, value=value,
                                              sign="+" if value > 0 else "-")
