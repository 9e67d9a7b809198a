"""Sizes of 3D patches and kernels: an int or three, always handed on as three."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

Triple = Tuple[int, int, int]
IntOrTriple = Union[int, Sequence[int]]


def as_triple(value: IntOrTriple, what: str = "value") -> Triple:
    """``(v, v, v)`` for an int, the three ints of a sequence; ValueError naming ``what``
    otherwise."""
    if isinstance(value, int):
        return (value, value, value)
    t = tuple(int(v) for v in value)
    if len(t) != 3:
        raise ValueError(f"{what} must be an int or 3 ints, got {value!r}")
    return t  # type: ignore[return-value]
