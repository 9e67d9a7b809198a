"""bench augment's headline: the same-work ratio (our cascade resampling every resampled patch
in 3-D, as the peers must) comes first, the default-policy ratio second, each labelled."""

import pytest

from JCSAugmentLib.bench.augment_bench import headline_lines, run_augment_bench


def test_the_same_work_ratio_comes_first_and_each_is_labelled():
    lines = headline_lines({"jcs-3d-only/nnunet_v2": 3.07, "jcs-3d-only/torchio": 4.0},
                           {"jcsaugment/nnunet_v2": 3.28, "jcsaugment/torchio": 4.76})
    assert len(lines) == 2
    assert lines[0].startswith("same-work ratio (jcs-3d-only")
    assert "3.07x nnunet_v2, 4.00x torchio" in lines[0]
    assert lines[1].startswith("default-policy ratio (jcsaugment")
    assert "3.28x nnunet_v2, 4.76x torchio" in lines[1]
    assert headline_lines({}, {}) == []


def test_the_bench_prints_the_headline_in_that_order(capsys):
    pytest.importorskip("batchgeneratorsv2")
    res = run_augment_bench(batch=2, patch=24, repeats=1)
    out = capsys.readouterr().out
    assert set(res["same_work_ratios"]) >= {"jcs-3d-only/nnunet_v2"}
    assert set(res["ratios"]) >= {"jcsaugment/nnunet_v2"}
    rates = res["results"]
    assert res["same_work_ratios"]["jcs-3d-only/nnunet_v2"] == pytest.approx(
        rates["jcs-3d-only"]["patches_per_s"] / rates["nnunet_v2"]["patches_per_s"])
    assert 0 <= out.index("same-work ratio") < out.index("default-policy ratio")
