"""`jcsaugment bench infer` made short from the command line: shape, rounds, z, window, step,
window batch and peers; a tiny run goes end to end and prints the ratio table."""

import importlib.util
import json

import pytest

from JCSAugmentLib.augment.tables import TEA_MIRROR_OPS_NNUNET
from JCSAugmentLib.bench import infer_bench
from JCSAugmentLib.cli import build_parser, main

TINY = ["bench", "infer", "--shape", "32,32,40", "--patch", "32", "--zs", "1,2",
        "--rounds", "2", "--base-features", "4"]


def _has_nnunet() -> bool:
    try:
        return importlib.util.find_spec("nnunetv2.inference.predict_from_raw_data") is not None
    except ImportError:
        return False


def test_a_tiny_run_prints_the_ratio_table(capsys):
    assert main(TINY) == 0
    out = capsys.readouterr().out
    assert "One (32, 32, 40) volume (2 windows of 32^3, step 0.5" in out
    assert "median of 2 round(s); load average" in out
    rows = {line.split("  ")[0].strip() for line in out.splitlines()}
    assert {"jcs z=1 before", "jcs z=1", "jcs z=2"} <= rows
    assert "jcs z=8" not in rows  # only the z asked for
    assert "x  jcs z=1 now / before (one window per call) (speed; > 1: ours faster)" in out
    if _has_nnunet():
        assert "nnunet no TTA" in rows and "nnunet 8 mirrors" in rows
        assert "x  jcs z=1 / nnunet no TTA" in out
    else:  # said, not silently left out
        assert "peer: nnU-Net's predictor skipped: " in out and "nnunetv2" in out
        assert "nnunet no TTA" not in rows


def test_json_and_the_options_reach_the_bench(capsys, monkeypatch):
    seen = {}
    real = infer_bench.run_infer_bench

    def spy(**kw):
        seen.update(kw)
        return real(**kw)
    monkeypatch.setattr(infer_bench, "run_infer_bench", spy)
    assert main(["bench", "infer", "--size", "32", "32", "36", "--patch", "32", "--zs", "1",
                 "--step", "0.75", "--batch-windows", "3", "--no-peers", "--base-features",
                 "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert seen["size"] == (32, 32, 36) and seen["zs"] == (1,) and seen["rounds"] == 1
    assert seen["batch_windows"] == 3 and seen["peers"] is False and seen["step"] == 0.75
    assert res["size"] == [32, 32, 36] and res["step"] == 0.75 and res["zs"] == [1]
    assert set(res["results"]) == {"jcs z=1 before", "jcs z=1"}
    assert res["results"]["jcs z=1"]["seconds"] > 0
    assert res["notes"]["nnunet"] == "nnU-Net's predictor skipped (peers off: --no-peers)"
    assert res["speed_ratios"]["jcs z=1 now / before (one window per call)"] > 0


def test_the_defaults_are_the_documented_ones():
    args = build_parser().parse_args(["bench", "infer"])
    assert args.size is None and args.zs == [1, 4, 8] and args.rounds == 1
    assert args.step == 0.5 and args.batch_windows is None and args.patch is None
    assert infer_bench.DEFAULT_SIZE == (155, 240, 240) and infer_bench.DEFAULT_PATCH == 64
    assert infer_bench.MAX_Z == len(TEA_MIRROR_OPS_NNUNET)
    text = build_parser()._subparsers._group_actions[0].choices["bench"].format_help()
    assert "(default: 155,240,240" in text and "(default: 1,4,8)" in text


@pytest.mark.parametrize("argv, message", [
    (["--shape", "16,16,16"], "smaller than one 64^3 window"),
    (["--shape", "32,32"], "--shape takes 3 whole numbers"),
    (["--shape", "32,32,32", "--patch", "32", "--zs", "0,9"], "from 1 to 8"),
    (["--shape", "32,32,32", "--patch", "32", "--step", "1.5"], "step"),
    (["--shape", "32,32,32", "--patch", "32", "--rounds", "0"], "rounds"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert main(["bench", "infer"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jcsaugment bench: error: ") and message in err


def test_a_list_that_is_not_numbers_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "infer", "--zs", "1,eight"])
    assert "not a comma-separated list" in capsys.readouterr().err
