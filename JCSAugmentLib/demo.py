"""``jcsaugment demo``: the main job, on the embedded synthetic two-site dataset.

1. Writes the synthetic dataset (``synth.py``): training site A, validation and test site B,
   which differ by a documented shift.
2. For each seed, trains the 3D U-Net twice under the same budget (iterations): heuristic TRA
   (the nnU-Net policy, fixed) and joint learning (class-specific TRA + TEA), each in a fresh
   run folder ``runs/<mode>_seed<k>`` (an earlier demo's is removed first: the worker refuses
   to start a folder that already holds a checkpoint, and the report describes this run).
3. Segments the test site: heuristic model without TEA and with heuristic TEA, joint model
   without TEA and with its learned TEA, into the run folders' prediction folders; evaluates
   DSC, sensitivity, precision and HD95.
4. Writes a report folder: ``report.md`` (the paper-style table, mean and spread over seeds),
   ``results.json`` (with the label-map folders), the learned policies as pie charts, a
   preview grid and the segmentations of one test case.

Budget (chosen for a 2-core CPU; a GPU runs the same budget much faster): a 3D U-Net of base
width 8 on 32^3 patches, batch 4, Adam (lr 3e-3) -- SGD with momentum 0.99, the paper's optimiser,
does not find the small lesions within a few hundred iterations, Adam does within about 50 --
and policy learning rates raised to 0.05 so that the policies can move within that budget
(the paper's 5e-4 is meant for 50k iterations). ``--quick``: one seed, 90 iterations per run;
full: three seeds, 150 iterations per run; joint learning updates the policies every second
iteration. The report states the wall-clock time it took.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from typing import Dict, List, Optional

from .run.folder import RunFolder

METHODS = (  # (row name, training run, TEA at inference)
    ("heuristic TRA, no TEA", "heuristic", "none"),
    ("heuristic TRA + heuristic TEA", "heuristic", "heuristic"),
    ("joint learned TRA, no TEA", "joint", "none"),
    ("joint learned TRA + learned TEA", "joint", "learned"),
)


def _budget(quick: bool) -> Dict:
    if quick:
        return {"seeds": [0], "iterations": 90, "patch": 32, "base": 8, "batch": 4,
                "policy_every": 2, "tea_copies": 4}
    return {"seeds": [0, 1, 2], "iterations": 150, "patch": 32, "base": 8, "batch": 4,
            "policy_every": 2}


def _job(dataset: str, splits: dict, mode: str, seed: int, b: Dict, device: str) -> dict:
    return {"schema": 1,
            "data": {"dataset": dataset, "splits": splits},
            "model": {"backbone": "unet3d", "patch_size": [b["patch"]] * 3,
                      "base_features": b["base"]},
            "training": {"mode": mode, "epochs": 1, "iterations_per_epoch": b["iterations"],
                         "batch_size": b["batch"], "val_batch_size": b["batch"],
                         "tea_copies": b.get("tea_copies", 6), "validate_every": 0,
                         # one preview, at the last policy update: the learned policy at work
                         "preview_every": max(1, b["iterations"] // b.get("policy_every", 1)),
                         "checkpoint_every": b["iterations"], "optimizer": "adam",
                         "lr": b.get("lr", 3e-3), "policy_every": b.get("policy_every", 1),
                         "policy_lr": b.get("policy_lr", 0.05),
                         "tea_lr": b.get("tea_lr", 0.05)},
            "device": device, "seed": seed}


def run_demo(out_dir: str = "jcsaugment-demo-report", quick: bool = False,
             device: str = "auto", log=print, budget: Optional[Dict] = None) -> Dict:
    from .charts.policy_chart import draw_policy_file
    from .evaluate.evaluate_folders import evaluate_folders, format_table
    from .infer.predict import predict_cases
    from .synth import describe_shift, make_synthetic_dataset
    from .train.worker import run_worker

    t_start = time.time()
    b = dict(_budget(quick), **(budget or {}))
    os.makedirs(out_dir, exist_ok=True)
    data_dir = os.path.join(out_dir, "dataset")
    if os.path.exists(data_dir):
        shutil.rmtree(data_dir)
    make_synthetic_dataset(data_dir, seed=0)
    with open(os.path.join(data_dir, "splits.json"), encoding="utf-8") as f:
        splits = json.load(f)
    refs = os.path.join(out_dir, "reference")
    os.makedirs(refs, exist_ok=True)
    test_images = []
    for cid in splits["test"]:
        shutil.copy(os.path.join(data_dir, "labelsTr", f"{cid}.nii.gz"),
                    os.path.join(refs, f"{cid}.nii.gz"))
        test_images.append([os.path.join(data_dir, "imagesTr", f"{cid}_0000.nii.gz")])
    rows: Dict[str, List[Dict]] = {m[0]: [] for m in METHODS}
    runs: Dict[str, RunFolder] = {}
    label_maps: Dict[str, Dict[str, str]] = {}  # seed -> method -> label-map folder
    for seed in b["seeds"]:
        for mode in ("heuristic", "joint"):
            run = _fresh_run(os.path.join(out_dir, "runs", f"{mode}_seed{seed}"))
            run.save_job(_job(os.path.abspath(data_dir), splits, mode, seed, b, device))
            log(f"training {mode} (seed {seed}, {b['iterations']} iterations)")
            t0 = time.time()
            rc = run_worker(run, quiet=True)
            if rc != 0:
                raise RuntimeError(f"training {mode} failed (exit {rc}); see "
                                   f"{run.events_path}")
            log(f"  {time.time() - t0:.0f} s")
            runs[mode] = run
        for name, mode, tea in METHODS:
            # the label maps go with the model that made them: into its run folder
            pred = runs[mode].new_predictions_folder(f"tea-{tea}")
            label_maps.setdefault(f"seed{seed}", {})[name] = pred
            predict_cases(runs[mode], test_images, pred, tea=tea, checkpoint="last",
                          device=device)
            res = evaluate_folders(pred, refs)
            rows[name].append(res)
            log(f"  {name}: {_headline(res)}")
    figures = {}
    last_joint = runs["joint"]  # the last seed's
    figures["policy"] = os.path.join(out_dir, "policy.png")
    draw_policy_file(last_joint.policy_path, figures["policy"], initial="nnunet")
    preview = last_joint.preview_path("png")
    if os.path.exists(preview):
        figures["preview"] = os.path.join(out_dir, "preview.png")
        shutil.copy(preview, figures["preview"])
    figures["segmentations"] = os.path.join(out_dir, "segmentations.png")
    last_seed = b["seeds"][-1]
    _segmentation_figure(out_dir, splits["test"][0], last_seed,
                         label_maps[f"seed{last_seed}"], figures["segmentations"])
    summary = _summarise(rows)
    report = _report(summary, rows, b, describe_shift("default"), figures, time.time() - t_start,
                     format_table)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"budget": b, "summary": summary, "label_maps": label_maps}, f, indent=1)
    log(report)
    return {"summary": summary, "report": os.path.join(out_dir, "report.md"),
            "label_maps": label_maps}


def _fresh_run(path: str) -> RunFolder:
    """An empty run folder at ``path``: the previous demo's run there is removed, since the
    worker refuses to start a folder that holds a checkpoint (the demo always trains anew,
    so that its report describes this run)."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return RunFolder(path)


def _segmentation_figure(out_dir: str, case_id: str, seed: int, folders: Dict[str, str],
                         out_path: str) -> None:
    """One test case: the reference and the label maps of the four methods (``folders``:
    method -> its label-map folder, of the last seed)."""
    import SimpleITK as sitk
    from .charts.segmentation_grid import draw_segmentation_grid

    def read(path):
        return sitk.GetArrayFromImage(sitk.ReadImage(path))
    image = sitk.ReadImage(os.path.join(out_dir, "dataset", "imagesTr", f"{case_id}_0000.nii.gz"))
    labels = {"reference": read(os.path.join(out_dir, "reference", f"{case_id}.nii.gz"))}
    for name, _mode, _tea in METHODS:
        labels[name.replace(", ", ",\n").replace(" + ", "\n+ ")] = read(
            os.path.join(folders[name], f"{case_id}.nii.gz"))
    sx, sy = image.GetSpacing()[:2]
    draw_segmentation_grid(sitk.GetArrayFromImage(image), labels, "reference",
                           title=f"test case {case_id} (site B), seed {seed}",
                           spacing_yx=(sy, sx), out_path=out_path)


def _headline(res: Dict) -> str:
    fg = _label_means(res).get("foreground", {})
    return ", ".join(f"{k} {v:.3f}" for k, v in fg.items() if v is not None)


def _label_means(res: Dict) -> Dict[str, Dict[str, Optional[float]]]:
    """{label: {metric: mean}} from an evaluate_folders result."""
    out = {}
    for label, metrics in (res.get("summary") or {}).items():
        out[label] = {m: (v.get("mean") if isinstance(v, dict) else v)
                      for m, v in metrics.items()}
    return out


def _summarise(rows: Dict[str, List[Dict]]) -> Dict:
    out = {}
    for name, results in rows.items():
        per_label: Dict[str, Dict[str, List[float]]] = {}
        for res in results:
            for label, metrics in _label_means(res).items():
                for m, v in metrics.items():
                    if v is not None:
                        per_label.setdefault(label, {}).setdefault(m, []).append(v)
        out[name] = {label: {m: {"mean": statistics.fmean(v),
                                 "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                                 "n_seeds": len(v)} for m, v in ms.items()}
                     for label, ms in per_label.items()}
    return out


def _report(summary, rows, budget, shift_text, figures, seconds, format_table) -> str:
    lines = ["# JCSAugment demo", "",
             f"Synthetic two-site dataset; {len(budget['seeds'])} seed(s); 3D U-Net "
             f"(base {budget['base']}, {budget['patch']}^3 patches), {budget['iterations']} "
             f"iterations per run, batch {budget['batch']}; {seconds / 60:.1f} minutes.", "",
             "## The shift between the sites", "", shift_text, "",
             "## Test site, foreground (mean ± sd over seeds of the per-seed means)", "",
             "| method | DSC | SEN | PRC | HD95 (mm) |", "|---|---|---|---|---|"]
    for name, labels in summary.items():
        fg = labels.get("foreground", {})

        def cell(m):
            v = fg.get(m)
            return "n/a" if not v else f"{v['mean']:.3f} ± {v['sd']:.3f}"
        lines.append(f"| {name} | {cell('dsc')} | {cell('sensitivity')} | "
                     f"{cell('precision')} | {cell('hd95')} |")
    lines += ["", "## Per label, last seed", ""]
    for name, results in rows.items():
        lines += [f"### {name}", "", format_table(results[-1]), ""]
    for k, path in figures.items():
        lines += [f"![{k}]({os.path.basename(path)})", ""]
    return "\n".join(lines) + "\n"
