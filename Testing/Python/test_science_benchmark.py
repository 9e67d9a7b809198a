"""benchmarks/science.py, the evidence behind the README's result sentences: it refuses a
budget too small to train and says why, a failed run writes its reason into the report while
the others go on, and ``--explore`` adds the exploration floor's rows, each paired with its
run without the floor."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import science  # noqa: E402


@pytest.mark.parametrize("argv, words", [
    (["--iterations", "5"], "too small to train"),
    (["--seeds", "0"], "at least 1"),
    (["--explore", "1.5"], "--explore"),
])
def test_a_budget_too_small_or_a_bad_option_is_refused_with_the_reason(argv, words):
    with pytest.raises(science.BudgetError, match=words):
        science.parse(argv)


def test_a_tiny_run_reports_every_row_and_a_failed_run_does_not_stop_the_others(
        tmp_path, monkeypatch, capsys):
    real = science.run_worker

    def failing_class_specific(run, **kw):
        if os.path.basename(run.path).startswith("class-specific"):
            raise RuntimeError("injected failure")
        return real(run, **kw)

    monkeypatch.setattr(science, "run_worker", failing_class_specific)
    small = science.synthetic_data  # two training cases, one validation, one test, 24x32x32
    monkeypatch.setattr(science, "synthetic_data", lambda out: small(
        out, size=(24, 32, 32), n_train=2, n_val=1, n_test=1))
    out = tmp_path / "report"
    rc = science.main(["--seeds", "1", "--iterations", "20", "--patch", "16", "--base", "2",
                       "--batch", "2", "--tea-copies", "2", "--explore", "0.2", "--device",
                       "cpu", "--out", str(out)])
    assert rc == 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    dsc = results["rows"][0]["dsc"]
    # every row is there; the failed run's rows say so, the others have a DSC
    assert set(dsc) == {n for n, _r, _t in science.methods(science.parse(["--explore", "0.2"]))}
    assert dsc["class-specific"] is None
    assert all(isinstance(v, float) for k, v in dsc.items() if k != "class-specific")
    assert "injected failure" in report and "## Failures" in report
    assert "joint + learned TEA, explore 0.2 - joint + learned TEA" in report
    assert results["rows"][0]["policy"]["joint-explore"]  # its policy direction is reported
    job = json.loads((out / "runs" / "joint-explore_seed0" / "job.json").read_text())
    assert job["training"]["explore"] == 0.2
    assert json.loads((out / "runs" / "joint_seed0" / "job.json").read_text())[
        "training"].get("explore", 0.0) == 0.0
