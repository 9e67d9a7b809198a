"""Compare with the heuristic (``train --compare heuristic``): two ordinary runs in one folder,
both segment the test split, one comparison record; stop and resume; bad inputs.

Tiny runs (U-Net base 2, 16^3 patches, 2 iterations per half) on five synthetic cases whose
files lie in the comparison folder's inputs/ and are named relative to it, as the panel writes
them (so the halves' jobs must rebase them)."""

import json
import os

import pytest
import SimpleITK as sitk

from JCSAugmentLib.cli import main
from JCSAugmentLib.demo_augment import synthetic_case
from JCSAugmentLib.run.compare import (ComparePlan, HalfPlan, VariantResult, build_comparison,
                                       compare_status, read_comparison, read_plan)
from JCSAugmentLib.run.events import read_events
from JCSAugmentLib.run.folder import RunFolder


def _make_run(folder, mode="joint"):
    """A folder with inputs/ and a job.json naming them relative to the folder."""
    os.makedirs(os.path.join(folder, "inputs"), exist_ok=True)
    cases = []
    for i in range(5):
        img, lab, _roi = synthetic_case(size=(28, 32, 32), seed=i)
        sitk.WriteImage(img, os.path.join(folder, "inputs", f"c{i}_img.nii.gz"))
        sitk.WriteImage(lab, os.path.join(folder, "inputs", f"c{i}_lab.nii.gz"))
        cases.append({"id": f"c{i}", "images": [f"inputs/c{i}_img.nii.gz"],
                      "label": f"inputs/c{i}_lab.nii.gz"})
    job = {"schema": 1,
           "data": {"cases": cases, "splits": {"train": ["c0", "c1"], "validation": ["c2"],
                                               "test": ["c3", "c4"]}},
           "model": {"backbone": "unet3d", "patch_size": [16, 16, 16], "base_features": 2},
           "training": {"mode": mode, "epochs": 1, "iterations_per_epoch": 2, "batch_size": 4,
                        "val_batch_size": 2, "tea_copies": 2, "preview_every": 0,
                        "checkpoint_every": 1, "validate_every": 1},
           "inference": {"step": 1.0, "tea_top_z": 2},  # few windows and TEA ops: fast
           "device": "cpu", "seed": 3}
    with open(os.path.join(folder, "job.json"), "w") as f:
        json.dump(job, f)
    return str(folder)


def _kinds(folder, kind):
    return [e for e in read_events(folder) if e.get("kind") == kind]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    run = _make_run(tmp_path_factory.mktemp("compare"))
    rc = main(["train", run, "--compare", "heuristic", "--quiet"])
    return run, rc


def test_a_comparison_trains_both_halves_and_scores_every_test_case(compared):
    run, rc = compared
    assert rc == 0
    halves = {m: RunFolder(os.path.join(run, "seed3", m)) for m in ("heuristic", "joint")}
    jobs = {m: f.job() for m, f in halves.items()}
    assert (jobs["heuristic"].training.mode, jobs["joint"].training.mode) == ("heuristic",
                                                                                "joint")
    for field in ("seed", "data.splits", "model.backbone", "training.epochs",
                  "training.iterations_per_epoch", "training.batch_size"):
        assert jobs["heuristic"].value(field) == jobs["joint"].value(field), field
    # each half is an ordinary, finished run folder; the paths were rebased onto it
    assert jobs["joint"].data.cases[0].images == ["../../inputs/c0_img.nii.gz"]
    for f in halves.values():
        assert f.status()["state"] == "finished" and f.checkpoint_iteration("last") == 2
        assert len(_kinds(f.path, "started")) == 1  # trained once: no extra training
        assert _kinds(f.path, "progress")[-1]["compare"]["method"] in halves
        # exactly the two predictions (the half's TEA and none), nothing more
        assert sorted(os.listdir(os.path.join(f.path, "predictions"))) == sorted(
            ["compare-tea-none", "compare-tea-" + f.job().resolved().inference.tea])
    assert not os.path.exists(halves["joint"].cache_dir)  # one cache for both halves
    assert os.path.isdir(os.path.join(run, "cache"))

    c = read_comparison(run)
    assert c is not None and c.complete and c.labels[-1] == "foreground"
    for method, tea in (("heuristic", "heuristic"), ("joint", "learned")):
        for variant in ("tea", "none"):
            rows = {r.case: r for r in c.cases if (r.method, r.variant) == (method, variant)}
            assert sorted(rows) == ["c3", "c4"], (method, variant)
            for r in rows.values():
                assert r.tea == (tea if variant == "tea" else "none")
                assert 0.0 <= r.metrics["foreground"]["dsc"] <= 1.0
                assert os.path.isfile(os.path.join(run, r.prediction))
    # the paired difference is mean(learned) - mean(heuristic) of the per-case rows
    for variant in ("tea", "none"):
        col = {m: [r.metrics["foreground"]["dsc"] for r in c.cases
                   if (r.method, r.variant) == (m, variant)] for m in ("heuristic", "joint")}
        d = c.difference(variant, "foreground", "dsc")
        assert d.n == 2
        assert d.mean == pytest.approx(sum(col["joint"]) / 2 - sum(col["heuristic"]) / 2,
                                       abs=1e-12)
        assert d.low <= d.mean <= d.high
        assert c.mean("joint", variant, "foreground", "dsc") == pytest.approx(
            sum(col["joint"]) / 2)
    head = c.difference("tea", "foreground", "dsc")
    assert "one seed cannot tell" in c.verdict and "run more seeds" in c.verdict
    if not head.excludes_zero:
        assert "noise" in c.verdict
    md = open(os.path.join(run, "comparison.md"), encoding="utf-8").read()
    assert c.verdict in md and "| 3 | c4 | joint learned TRA + learned TEA | foreground |" in md

    status = compare_status(run)
    assert status.state == "finished" and not status.live
    assert [h.state for h in status.halves] == ["done", "done"]
    assert status.current_folder == halves["joint"].path and status.eta_seconds == 0
    names = [n for n, _p in c.label_maps]
    assert "c3 heuristic TRA + heuristic TEA (seed 3)" in names
    assert "c3 joint learned TRA, no TEA (seed 3)" in names


def test_a_finished_comparison_is_not_started_again(compared, capsys):
    run, _rc = compared
    before = open(os.path.join(run, "compare.json"), "rb").read()
    assert main(["train", run, "--compare", "heuristic", "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "already holds a comparison" in err[0]
    assert main(["train", run, "--quiet"]) == 2  # nor as an ordinary run
    assert "holds a comparison" in capsys.readouterr().err
    assert open(os.path.join(run, "compare.json"), "rb").read() == before


def test_stop_between_and_within_halves_then_resume(tmp_path, monkeypatch, capsys):
    from JCSAugmentLib.train import compare as orchestrator
    run = _make_run(tmp_path / "run")
    heuristic = RunFolder(os.path.join(run, "seed3", "heuristic"))
    joint = RunFolder(os.path.join(run, "seed3", "joint"))

    # 1. a stop asked while the first half finishes: it is scored, the second never starts
    real_train_half = orchestrator._train_half

    def then_stop(folder, plan, i, *a, **k):
        out = real_train_half(folder, plan, i, *a, **k)
        folder.request_stop("test")
        return out
    monkeypatch.setattr(orchestrator, "_train_half", then_stop)
    assert main(["train", run, "--compare", "heuristic", "--quiet"]) == 0
    monkeypatch.undo()
    plan = read_plan(run)
    assert plan.state == "stopped" and plan.halves[0].has_results and not joint.has_job()
    c = read_comparison(run)  # the table shows what exists
    assert {r.method for r in c.cases} == {"heuristic"} and not c.complete
    assert [h.results for h in c.halves] == [True, False] and c.halves[1].note
    assert c.differences == [] and "nothing is compared" in c.verdict
    status = compare_status(run)
    assert [h.state for h in status.halves] == ["done", "pending"] and status.state == "stopped"
    # the pending half's ETA: the heuristic half's speed times the learned mode's cost ratio
    pending = status.halves[1]
    assert pending.eta_estimated and pending.eta_seconds > 0
    assert pending.eta_seconds == pytest.approx(
        plan.halves[0].seconds_per_iteration * 2 * (1 + 2.5 / 1))
    first = open(heuristic.checkpoint_path("last"), "rb").read()
    first_events = len(read_events(heuristic.path))

    # 2. resumed, and stopped again as the second half starts: it stops with a checkpoint
    real_run_worker = orchestrator.run_worker

    def stop_first(*a, **k):
        RunFolder(run).request_stop("test")
        return real_run_worker(*a, **k)
    monkeypatch.setattr(orchestrator, "run_worker", stop_first)
    assert main(["train", run, "--resume", "--quiet"]) == 0
    monkeypatch.undo()
    assert read_plan(run).state == "stopped" and joint.status()["state"] == "stopped"
    assert joint.checkpoint_iteration("last") == 0
    assert compare_status(run).halves[1].state == "stopped"
    assert "stopped at iteration 0 of 2" in read_comparison(run).halves[1].note

    # 3. resumed: the second half continues from its checkpoint; the first is untouched
    assert main(["train", run, "--resume", "--quiet"]) == 0
    assert open(heuristic.checkpoint_path("last"), "rb").read() == first
    assert len(read_events(heuristic.path)) == first_events
    started = _kinds(joint.path, "started")
    assert [s["info"]["resumed_from"] for s in started] == [None, 0]
    assert joint.checkpoint_iteration("last") == 2
    c = read_comparison(run)
    assert c.complete and read_plan(run).state == "finished"
    assert c.difference("tea", "foreground", "dsc").n == 2
    capsys.readouterr()


def test_more_seeds_on_resume_add_pairs(compared, tmp_path, monkeypatch):
    import shutil
    from JCSAugmentLib.run.compare import compare_arguments
    from JCSAugmentLib.train import compare as orchestrator
    run = str(shutil.copytree(compared[0], tmp_path / "moved"))  # relocatable, too
    monkeypatch.setattr(orchestrator, "_run_plan", lambda *a, **k: 0)  # the plan only
    assert compare_arguments(2) == ["--compare", "heuristic", "--seeds", "2"]
    assert main(["train", run, "--resume", "--quiet"] + compare_arguments(2)) == 0
    plan = read_plan(run)
    assert plan.seeds == [3, 4]
    assert [h.folder for h in plan.halves] == ["seed3/heuristic", "seed3/joint",
                                              "seed4/heuristic", "seed4/joint"]
    status = compare_status(run)
    assert [h.state for h in status.halves] == ["done", "done", "pending", "pending"]
    # the new pairs' ETAs come from the speeds each method showed in seed 3
    for h, measured in zip(status.halves[2:], plan.halves[:2]):
        assert not h.eta_estimated
        assert h.eta_seconds == pytest.approx(measured.seconds_per_iteration * 2)
    assert status.eta_seconds == pytest.approx(sum(h.eta_seconds for h in status.halves[2:]))
    # the readers never raise on a half-written file: they say "nothing (yet)"
    for name in ("comparison.json", "compare.json"):
        with open(os.path.join(run, name), "r+b") as f:
            f.truncate(40)
    assert read_comparison(run) is None and compare_status(run) is None
    assert read_plan(run) is None


def _refused(capsys, argv, words, watch):
    before = {p: sorted(os.listdir(p)) for p in watch}
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jcsaugment train: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert {p: sorted(os.listdir(p)) for p in watch} == before
    return lines[0]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("fresh"))


@pytest.mark.parametrize("extra,words", [
    (["--compare", "heuristic", "--mode", "heuristic"], ["--mode heuristic", "heuristic itself"]),
    (["--compare", "heuristic", "--seeds", "0"], ["--seeds 0", "at least 1"]),
    (["--compare", "something"], ["--compare 'something'", "heuristic"]),
    (["--seeds", "2"], ["--seeds", "--compare heuristic"]),
    (["--compare", "heuristic", "--restart"], ["--restart"]),
    (["--compare", "heuristic", "--resume"], ["--resume", "no comparison"]),
])
def test_bad_compare_options_are_one_line(fresh, capsys, extra, words):
    _refused(capsys, ["train", fresh, "--quiet"] + extra, words, [fresh])


def test_a_heuristic_job_cannot_be_compared_with_the_heuristic(tmp_path, capsys):
    run = _make_run(tmp_path / "h", mode="heuristic")
    _refused(capsys, ["train", run, "--compare", "heuristic", "--quiet"],
             ["'heuristic' itself"], [run])


def test_resume_of_a_comparison_keeps_its_job(compared, capsys):
    run, _rc = compared
    _refused(capsys, ["train", run, "--resume", "--epochs", "3", "--quiet"],
             ["training.epochs", "both halves"], [run])
    _refused(capsys, ["train", run, "--resume", "--compare", "heuristic", "--seeds", "0"],
             ["--seeds 0"], [run])


# ---------------------------------------------------------------------------- the record alone

def _plan(values, seeds=(0,)):
    """A plan whose halves hold foreground DSC ``values[(seed, method)]`` per case."""
    halves = []
    for s in seeds:
        for method, role in (("heuristic", "baseline"), ("joint", "learned")):
            h = HalfPlan(s, method, role, f"seed{s}/{method}", 10, trained=True)
            for variant, tea in (("tea", "learned" if method == "joint" else "heuristic"),
                                 ("none", "none")):
                h.results[variant] = VariantResult(tea, "x", {
                    f"c{k}": {"prediction": f"p{k}", "metrics": {"foreground": {
                        "dsc": v, "sensitivity": v, "precision": v, "hd95": None}}}
                    for k, v in enumerate(values[(s, method)])})
            halves.append(h)
    return ComparePlan("heuristic", "joint", list(seeds), {}, halves)


def test_the_verdict_says_noise_when_the_interval_includes_zero():
    c = build_comparison(_plan({(0, "heuristic"): [0.5, 0.6, 0.7],
                                (0, "joint"): [0.6, 0.5, 0.75]}), resamples=2000)
    d = c.difference("tea", "foreground", "dsc")
    assert d.low < 0 < d.high and not d.excludes_zero
    assert d.mean == pytest.approx((0.1 - 0.1 + 0.05) / 3)
    assert "includes 0" in c.verdict and "noise" in c.verdict and "run more seeds" in c.verdict
    assert c.difference("tea", "foreground", "hd95").n == 0  # undefined values: no pairs
    json.dumps(c.to_dict(), allow_nan=False)  # no NaN reaches the file


def test_several_seeds_are_paired_over_seeds_too():
    values = {(s, m): [0.5 + 0.01 * s + (0.1 if m == "joint" else 0.0)] * 2
              for s in range(3) for m in ("heuristic", "joint")}
    c = build_comparison(_plan(values, seeds=(0, 1, 2)), resamples=2000)
    d = c.difference("tea", "foreground", "dsc", over="seeds")
    assert d.n == 3 and d.mean == pytest.approx(0.1) and d.excludes_zero
    assert c.difference("tea", "foreground", "dsc", over="cases").n == 6
    assert "3 seeds" in c.verdict and "higher" in c.verdict
