"""The main job: ``jcsaugment demo --quick`` end to end, exactly as the README runs it.

About two minutes on a 2-core CPU: the quick budget trains the demo's two U-Nets (heuristic
TRA, joint learning) for 90 iterations each, segments the test site four ways and writes the
report. This test is the CI run of it.
"""

import glob
import json
import os

from JCSAugmentLib.cli import main
from JCSAugmentLib.demo import METHODS
from JCSAugmentLib.run.folder import RunFolder


def test_demo_quick_writes_a_complete_meaningful_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    summary = results["summary"]
    for name, _mode, _tea in METHODS:
        assert name in report and name in summary
        fg = summary[name]["foreground"]
        for metric in ("dsc", "sensitivity", "precision"):
            assert 0.0 <= fg[metric]["mean"] <= 1.0
    # meaningful, not a degenerate all-background model: the trained networks find lesions
    assert max(summary[name]["foreground"]["dsc"]["mean"] for name, _m, _t in METHODS) > 0.2
    for figure in ("policy.png", "preview.png"):
        assert (out / figure).stat().st_size > 10_000, figure
    n_test = len(json.loads((out / "dataset" / "splits.json").read_text())["test"])
    # each method's label maps, in the prediction folder of the run that made them
    folders = results["label_maps"]["seed0"]
    assert sorted(folders) == sorted(name for name, _m, _t in METHODS)
    for name, mode, _tea in METHODS:
        run = RunFolder(out / "runs" / f"{mode}_seed0")
        assert os.path.dirname(folders[name]) == run.predictions_dir
        assert len(glob.glob(os.path.join(folders[name], "*.nii.gz"))) == n_test
    assert "minutes" in report
