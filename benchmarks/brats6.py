"""Real-data benchmark: heuristic vs joint augmentation on the six BraTS 2013 cases.

Not a test: a script that trains, predicts and writes a table, within a stated time budget.

    python benchmarks/brats6.py --data ../shared/data/brats6 --out brats6-bench \
        --minutes 6 [--device auto] [--patch 48] [--base 8] [--batch 2]

What it does
------------
1. Reads the dataset as it is distributed (``{train,validation,test}/CASE/``: T1c and FLAIR,
   already z-scored inside the brain; ``OTMultiClass`` labels 0-4; ``brainmask``) and uses its
   given splits: 2 training, 2 validation, 2 test cases.  To halve the CPU time of training and
   sliding-window inference, every case is cropped to its brain-mask bounding box (plus a
   margin) into ``OUT/data``: a derived copy outside the repository; the geometry (origin) is
   kept, so predictions stay in scanner space.
2. Trains the 3D U-Net twice under the same wall-clock budget (``--minutes`` each, the worker's
   ``time_budget_minutes``; the iteration count is whatever the budget allows and is reported):
   nnU-Net's heuristic TRA (fixed) and joint learning (class-specific TRA + TEA).  The brain
   mask is the ROI for background patch centres.
3. Predicts the test cases: heuristic model without TEA and with the 8 mirror TEA ops, joint
   model without TEA and with its learned top-z TEA (``--z``, by default the job's 8), and
   evaluates whole tumour (labels 1-4), tumour core (1, 3, 4) and enhancing tumour (4) with
   DSC, sensitivity, precision, HD95 (mm).
4. Writes ``OUT/report.md`` (the table, the budget, the machine, iterations reached),
   ``OUT/results.json`` (with the label-map folders, inside the run folders ``OUT/runs/*``)
   and the learned policy picture ``OUT/policy.png``.

Two training and two validation volumes are a tiny dataset; on a CPU the budget allows a few
hundred iterations at most, far from the paper's 50k.  Read the table as "the pipeline runs on
real data end to end, and this is what a short budget gives", not as a reproduction of the
paper's numbers (method.md lists those).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

import numpy as np
import SimpleITK as sitk

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from JCSAugmentLib.evaluate.evaluate_folders import evaluate_folders, format_table  # noqa: E402
from JCSAugmentLib.infer.predict import predict_cases  # noqa: E402
from JCSAugmentLib.run.folder import RunFolder  # noqa: E402
from JCSAugmentLib.train.worker import run_worker  # noqa: E402

CHANNELS = ("T1c_subtrMeanDivStd.nii.gz", "Flair_subtrMeanDivStd.nii.gz")
LABEL, MASK = "OTMultiClass.nii.gz", "brainmask.nii.gz"
REGIONS = {"whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4], "enhancing": [4]}
METHODS = (("heuristic TRA, no TEA", "heuristic", "none"),
           ("heuristic TRA + heuristic TEA (8 mirrors)", "heuristic", "heuristic"),
           ("joint learned TRA, no TEA", "joint", "none"),
           ("joint learned TRA + learned TEA", "joint", "learned"))


def crop_case(src: str, dst: str, margin: int = 4) -> None:
    """Crop every file of a case to the brain mask's bounding box (+ margin voxels)."""
    mask = sitk.ReadImage(os.path.join(src, MASK))
    arr = sitk.GetArrayViewFromImage(mask) > 0
    if not arr.any():
        raise SystemExit(f"{src}: the brain mask is empty")
    idx = np.nonzero(arr)
    lo = [max(0, int(i.min()) - margin) for i in idx]
    hi = [min(s, int(i.max()) + 1 + margin) for i, s in zip(idx, arr.shape)]
    os.makedirs(dst, exist_ok=True)
    for name in CHANNELS + (LABEL, MASK):
        img = sitk.ReadImage(os.path.join(src, name))
        # RegionOfInterest takes (x, y, z) size and index; numpy order is (z, y, x)
        size = [h - l for l, h in zip(lo, hi)][::-1]
        crop = sitk.RegionOfInterest(img, size, lo[::-1])
        sitk.WriteImage(crop, os.path.join(dst, name))


def prepare(data: str, out: str):
    cases, splits = [], {"train": [], "validation": [], "test": []}
    for split in splits:
        folder = os.path.join(data, split)
        if not os.path.isdir(folder):
            raise SystemExit(f"{folder}: not found; pass --data pointing at the brats6 folder")
        for cid in sorted(os.listdir(folder)):
            dst = os.path.join(out, "data", cid)
            if not os.path.exists(os.path.join(dst, MASK)):
                crop_case(os.path.join(folder, cid), dst)
            cases.append({"id": cid, "images": [os.path.join(dst, c) for c in CHANNELS],
                          "label": os.path.join(dst, LABEL), "roi": os.path.join(dst, MASK)})
            splits[split].append(cid)
    return cases, splits


def test_inputs(cases, splits, out: str):
    """(channel files of each test case, the reference folder): the test labels copied into
    ``OUT/reference`` under the names the predictions will have."""
    refs = os.path.join(out, "reference")
    os.makedirs(refs, exist_ok=True)
    images = []
    for c in cases:
        if c["id"] in splits["test"]:
            shutil.copy(c["label"], os.path.join(refs, f"{c['id']}.nii.gz"))
            # predictions are named after the first channel file: give each case its own name
            named = os.path.join(out, "data", c["id"], f"{c['id']}.nii.gz")
            if not os.path.exists(named):
                shutil.copy(c["images"][0], named)
            images.append([named, c["images"][1]])
    return images, refs


def job(cases, splits, mode, args) -> dict:
    return {"schema": 1,
            "data": {"cases": cases, "splits": splits},
            "model": {"backbone": "unet3d", "patch_size": [args.patch] * 3,
                      "base_features": args.base},
            "training": {"mode": mode, "epochs": 1, "iterations_per_epoch": args.max_iterations,
                         "batch_size": args.batch, "val_batch_size": args.batch,
                         "tea_copies": 4, "validate_every": 0, "preview_every": 0,
                         "checkpoint_every": 50, "lr": args.lr, "optimizer": args.optimizer},
            "device": args.device, "seed": args.seed,
            "time_budget_minutes": args.minutes}


def iterations_reached(run: RunFolder) -> int:
    return int((run.status() or {}).get("iteration") or 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "brats6"))
    p.add_argument("--out", default="brats6-bench")
    p.add_argument("--minutes", type=float, default=6.0, help="training budget per run")
    p.add_argument("--max-iterations", type=int, default=100000)
    p.add_argument("--device", default="auto")
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--base", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--z", type=int, default=None,
                   help="learned TEA: top z ops (default: the job's inference.tea_top_z, 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    cases, splits = prepare(os.path.abspath(args.data), out)
    test_images, refs = test_inputs(cases, splits, out)
    runs, reached = {}, {}
    for mode in ("heuristic", "joint"):
        # a fresh run folder every time: the worker refuses to start one that holds a
        # checkpoint, and the table must describe this run, not an earlier one
        path = os.path.join(out, "runs", mode)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        run = RunFolder(path)
        run.save_job(job(cases, splits, mode, args))
        print(f"training {mode} for {args.minutes} min ...", flush=True)
        if run_worker(run, quiet=True) != 0:
            raise SystemExit(f"training {mode} failed; see {run.events_path}")
        runs[mode], reached[mode] = run, iterations_reached(run)
        print(f"  {reached[mode]} iterations", flush=True)
    results, label_maps = {}, {}
    for name, mode, tea in METHODS:
        # the label maps go with the model that made them: into its (fresh) run folder
        pred = label_maps[name] = runs[mode].new_predictions_folder(f"tea-{tea}")
        t = time.time()
        predict_cases(runs[mode], test_images, pred, tea=tea, z=args.z, checkpoint="last",
                      device=args.device)
        results[name] = evaluate_folders(pred, refs, labels=REGIONS)
        print(f"  {name}: {time.time() - t:.0f} s", flush=True)
    from JCSAugmentLib.charts.policy_chart import draw_policy_file
    draw_policy_file(runs["joint"].policy_path, os.path.join(out, "policy.png"),
                     initial="nnunet")
    lines = ["# BraTS 2013, six cases (2 train / 2 validation / 2 test)", "",
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"device {args.device}; 3D U-Net base {args.base}, {args.patch}^3 patches, batch "
             f"{args.batch}, {args.optimizer} lr {args.lr}; {args.minutes} min of training per "
             f"run: heuristic reached {reached['heuristic']} iterations, joint "
             f"{reached['joint']}; whole run {(time.time() - t0) / 60:.1f} min.", "",
             "| method | region | DSC | SEN | PRC | HD95 (mm) |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        for region, s in res["summary"].items():
            def cell(m, d=3):
                v = s[m]
                return "n/a" if v["mean"] is None else f"{v['mean']:.{d}f} ± {v['std']:.{d}f}"
            lines.append(f"| {name} | {region} | {cell('dsc')} | {cell('sensitivity')} | "
                         f"{cell('precision')} | {cell('hd95', 1)} |")
    lines += ["", "Mean ± std over the 2 test cases.", "", "![learned policy](policy.png)", ""]
    report = "\n".join(lines)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "iterations": reached, "label_maps": label_maps,
                   "results": {k: v["summary"] for k, v in results.items()}}, f, indent=1)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
