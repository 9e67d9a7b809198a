"""Paired differences (bootstrap interval, sign test) used by the science benchmark."""

import math

import pytest

from JCSAugmentLib.evaluate.paired import format_paired_row, paired_difference, sign_test


def test_sign_test_exact_values():
    assert sign_test(5, 0) == pytest.approx(2 / 32)  # 2 * (1/2)^5
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 3) == 1.0
    # 9 up, 1 down of 10: 2 * (1 + 10) / 1024
    assert sign_test(9, 1) == pytest.approx(22 / 1024)


def test_clear_gain_excludes_zero_and_noise_does_not():
    a = [0.50, 0.40, 0.60, 0.55, 0.45]
    gain = paired_difference(a, [x + 0.05 + 0.01 * i for i, x in enumerate(a)])
    assert gain.n == 5 and gain.up == 5 and gain.down == 0
    assert gain.mean == pytest.approx(0.07)
    assert 0 < gain.low <= gain.mean <= gain.high
    # 5 of 5 up: sign test p = 0.0625 > 0.05, so the verdict says the interval alone
    assert gain.excludes_zero and "sign test does not reach" in gain.verdict()
    many = [0.1 * i for i in range(8)]
    clear = paired_difference(many, [x + 0.05 for x in many])
    assert clear.p_sign < 0.05 and "beyond the noise" in clear.verdict()
    noise = paired_difference(a, [x + d for x, d in zip(a, [0.09, -0.08, 0.02, -0.03, 0.01])])
    assert noise.low < 0 < noise.high
    assert not noise.excludes_zero and "includes 0" in noise.verdict()


def test_missing_pairs_dropped_and_single_pair_says_so():
    d = paired_difference([0.1, None, float("nan"), 0.3], [0.2, 0.5, 0.4, 0.2])
    assert d.n == 2
    one = paired_difference([0.1], [0.3])
    assert one.n == 1 and not one.excludes_zero and "single pair" in one.verdict()
    empty = paired_difference([None], [0.3])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert format_paired_row("x", empty).count("n/a") == 4


def test_same_pairs_same_interval_and_bad_arguments():
    a, b = [0.1, 0.2, 0.3, 0.4], [0.15, 0.18, 0.36, 0.41]
    assert paired_difference(a, b) == paired_difference(a, b)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="level"):
        paired_difference(a, b, level=1.5)
