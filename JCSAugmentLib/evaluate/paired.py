"""Paired comparisons of two methods over the same seeds (or the same test cases).

"Learning helped" is a claim about the *paired* difference: the same seed (same initial network,
same patches and draws where the methods share them) or the same test case, method B minus
method A. With a handful of pairs the spread between seeds is larger than most effects, so a
mean alone says nothing; this module gives the mean difference with a percentile bootstrap
interval and an exact two-sided sign test, and says in words whether the interval excludes 0.

No SciPy: the sign test is an exact binomial sum, the bootstrap a seeded numpy resample, so the
same pairs give the same interval on every machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """B - A over ``n`` pairs: ``mean`` with a 95 % (by default) bootstrap ``low``/``high``,
    how many pairs went up / down / tied, and the sign test's two-sided ``p_sign``."""

    n: int
    mean: float
    low: float
    high: float
    up: int
    down: int
    ties: int
    p_sign: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def verdict(self, what: str = "B - A") -> str:
        """One sentence a reader can act on."""
        if self.n < 2:
            return (f"{what}: {self.mean:+.3f} from a single pair -- one pair cannot tell a "
                    f"gain from noise; run more seeds")
        ci = f"{self.level:.0%} interval [{self.low:+.3f}, {self.high:+.3f}]"
        if self.excludes_zero:
            side = "higher" if self.low > 0 else "lower"
            counts = f"{ci}, {self.up} up / {self.down} down, sign test p = {self.p_sign:.3g}"
            if self.p_sign < 1 - self.level:
                return f"{what}: {self.mean:+.3f} ({counts}): B is {side} than A beyond the noise"
            # a percentile bootstrap over few pairs is optimistic; the sign test is not
            return (f"{what}: {self.mean:+.3f} ({counts}): the interval excludes 0 but the "
                    f"sign test does not reach {1 - self.level:.2g} -- B looks {side} than A; "
                    f"more pairs would settle it")
        return (f"{what}: {self.mean:+.3f} ({ci}, {self.up} up / {self.down} down, sign test "
                f"p = {self.p_sign:.3g}): the interval includes 0, so this is not "
                f"distinguishable from noise at {self.n} pairs")

    def as_dict(self) -> Dict:
        return dict(asdict(self), excludes_zero=self.excludes_zero)


def sign_test(up: int, down: int) -> float:
    """Exact two-sided sign test p-value for ``up`` increases and ``down`` decreases (ties
    dropped): P(a fair coin gives a split at least this uneven)."""
    n = up + down
    if n == 0:
        return 1.0
    k = min(up, down)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                      resamples: int = 10000, seed: int = 0,
                      tie: float = 0.0) -> PairedDifference:
    """Paired ``b - a`` (one value per seed or case, in the same order in both).

    ``tie``: differences with ``|d| <= tie`` count as ties for the sign test. Pairs where
    either value is missing (None or NaN) are dropped, so a failed run does not poison the
    rest; ``n`` says how many pairs remained."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, got {len(a)} and {len(b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = np.array([float(y) - float(x) for x, y in zip(a, b)
                  if x is not None and y is not None
                  and math.isfinite(float(x)) and math.isfinite(float(y))], dtype=np.float64)
    n = int(d.size)
    if n == 0:
        nan = float("nan")
        return PairedDifference(0, nan, nan, nan, 0, 0, 0, 1.0, level)
    up, down = int((d > tie).sum()), int((d < -tie).sum())
    mean = float(d.mean())
    if n == 1:
        return PairedDifference(1, mean, mean, mean, up, down, n - up - down, 1.0, level)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return PairedDifference(n, mean, float(low), float(high), up, down, n - up - down,
                            sign_test(up, down), level)


def format_paired_row(name: str, diff: Optional[PairedDifference]) -> str:
    """A Markdown table row: name | mean | interval | up/down | sign p."""
    if diff is None or diff.n == 0:
        return f"| {name} | n/a | n/a | n/a | n/a |"
    return (f"| {name} | {diff.mean:+.3f} | [{diff.low:+.3f}, {diff.high:+.3f}] | "
            f"{diff.up}/{diff.down} | {diff.p_sign:.3g} |")
