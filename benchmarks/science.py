"""The evidence behind the README's result sentences: N seeds x five methods, paired per seed.

    python benchmarks/science.py --data synthetic --seeds 5 --iterations 300 --out science-synth
    python benchmarks/science.py --data ../shared/data/brats6 --seeds 3 --iterations 150 \
        --patch 48 --out science-brats

Methods (each trained by the product's worker, ``run_worker``, and segmented by the product's
``predict_cases``, exactly as ``jcsaugment train`` / ``predict`` run them):

====================================  ===================  ===========================
row                                   training mode        TEA at inference
====================================  ===================  ===========================
heuristic                             heuristic (nnU-Net)  none
heuristic + heuristic TEA             heuristic            heuristic (8 mirrors)
class-specific                        class-specific       none
joint                                 joint                none
joint + learned TEA                   joint                learned (top z)
====================================  ===================  ===========================

With ``--explore E`` two rows more, from a joint run with the exploration floor E
(``training.explore``, off by default in the product): ``joint, explore E`` and ``joint +
learned TEA, explore E``, each paired with its run without the floor.

Per seed every method sees the same seed (same initial network, same case draws where the
modes share them). The report gives, for each method against ``heuristic`` and for the headline
pair (joint + learned TEA against heuristic + heuristic TEA), the mean paired foreground-DSC
difference with a 95 % bootstrap interval over seeds and an exact sign test; and, on the
synthetic shift, the direction the policies moved: P(TRA rotation about axis 0 by 90 degrees)
per class and P(TEA rot90 about axis 0, either direction), initial -> final, per seed. Absolute
DSC differs between CPUs (the same seed draws the same numbers but sums them in another order);
the paired interval is the result.

A run that fails writes its reason into the report and the others go on. A budget too small to
train (fewer iterations than one policy update and one validation need) is refused up front.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

from JCSAugmentLib.augment.tables import TEA_OPS, TRA_GROUP_INDEX  # noqa: E402
from JCSAugmentLib.evaluate.evaluate_folders import evaluate_folders  # noqa: E402
from JCSAugmentLib.evaluate.paired import format_paired_row, paired_difference  # noqa: E402
from JCSAugmentLib.infer.predict import predict_cases  # noqa: E402
from JCSAugmentLib.run.folder import RunFolder  # noqa: E402
from JCSAugmentLib.train.worker import run_worker  # noqa: E402

METHODS = (("heuristic", "heuristic", "none"),
           ("heuristic + heuristic TEA", "heuristic", "heuristic"),
           ("class-specific", "class-specific", "none"),
           ("joint", "joint", "none"),
           ("joint + learned TEA", "joint", "learned"))
#: with ``--explore E``: the joint run again with the exploration floor (training.explore)
EXPLORE_RUN = "joint-explore"
BASELINE = "heuristic"
HEADLINE = ("heuristic + heuristic TEA", "joint + learned TEA")
MIN_ITERATIONS = 20
# the synthetic shift (synth.py) is a quarter turn about array axis 0: these ops match it
ROT90_GROUP = TRA_GROUP_INDEX["rotation_axis0"]
ROT90_OPTION = 4  # option 4 of the rotation groups is the 90-degree turn (method.md table)
TEA_ROT90 = [i for i, op in enumerate(TEA_OPS) if op.name in ("rot90_axis0_+90",
                                                              "rot90_axis0_-90")]
BRATS_REGIONS = {"whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4], "enhancing": [4]}


class BudgetError(SystemExit):
    pass


# -- data ----------------------------------------------------------------------------------------
def synthetic_data(out: str, **dataset):
    """The demo's two-site dataset; returns (job data, test images, reference folder, regions).
    ``dataset``: arguments of ``make_synthetic_dataset`` (size, case counts) other than its
    defaults (the tests make a smaller one)."""
    from JCSAugmentLib.synth import make_synthetic_dataset
    root = os.path.join(out, "dataset")
    if os.path.exists(root):
        shutil.rmtree(root)
    made = make_synthetic_dataset(root, seed=0, **dataset)
    splits = made["splits"]
    refs = os.path.join(out, "reference")
    os.makedirs(refs, exist_ok=True)
    images = []
    for cid in splits["test"]:
        shutil.copy(os.path.join(root, "labelsTr", f"{cid}.nii.gz"),
                    os.path.join(refs, f"{cid}.nii.gz"))
        images.append([os.path.join(root, "imagesTr", f"{cid}_0000.nii.gz")])
    return {"dataset": os.path.abspath(root), "splits": splits}, images, refs, None


def brats_data(src: str, out: str):
    """The six BraTS cases cropped to the brain (benchmarks/brats6.py), their given splits."""
    sys.path.insert(0, HERE)
    import brats6
    cases, splits = brats6.prepare(os.path.abspath(src), out)
    images, refs = brats6.test_inputs(cases, splits, out)
    return {"cases": cases, "splits": splits}, images, refs, BRATS_REGIONS


# -- runs ----------------------------------------------------------------------------------------
def methods(a) -> List[tuple]:
    """(row name, run, TEA at inference) of this benchmark; a run is a training mode, or
    :data:`EXPLORE_RUN`."""
    rows = list(METHODS)
    if a.explore:
        rows += [(f"joint, explore {a.explore:g}", EXPLORE_RUN, "none"),
                 (f"joint + learned TEA, explore {a.explore:g}", EXPLORE_RUN, "learned")]
    return rows


def job(data: Dict, run_name: str, seed: int, a) -> Dict:
    mode = "joint" if run_name == EXPLORE_RUN else run_name
    training = {"mode": mode, "epochs": 1, "iterations_per_epoch": a.iterations,
                "batch_size": a.batch, "val_batch_size": a.batch, "validate_every": 0,
                "preview_every": 0, "checkpoint_every": a.iterations,
                "optimizer": a.optimizer, "lr": a.lr, "policy_every": a.policy_every,
                "tea_copies": a.tea_copies}
    if a.policy_lr is not None:
        training["policy_lr"] = a.policy_lr
    if a.tea_lr is not None:
        training["tea_lr"] = a.tea_lr
    if run_name == EXPLORE_RUN:
        training["explore"] = a.explore
    return {"schema": 1, "data": data,
            "model": {"backbone": "unet3d", "patch_size": [a.patch] * 3,
                      "base_features": a.base},
            "training": training, "device": a.device, "seed": seed}


def foreground_dsc(result: Dict) -> Optional[float]:
    """The mean over test cases of the first region's DSC ("foreground" on the synthetic data,
    whole tumour on BraTS)."""
    summary = result.get("summary") or {}
    if not summary:
        return None
    first = summary.get("foreground") or next(iter(summary.values()))
    v = first.get("dsc")
    return v.get("mean") if isinstance(v, dict) else v


def policy_direction(run: RunFolder, learns_tea: bool) -> Dict:
    """P(TRA rot90 about axis 0) per class and P(TEA rot90 about axis 0), initial -> final."""
    from JCSAugmentLib.policy import load_policy, make_tea_policy, make_tra_policy
    out: Dict = {}
    if not os.path.isfile(run.policy_path):
        return out
    tra, tea, _meta = load_policy(run.policy_path)
    start = make_tra_policy("nnunet")  # a ClassSpecificTRAPolicy: its classes start alike
    p0 = float(start.policies[0].probabilities()[ROT90_GROUP][ROT90_OPTION])
    if tra is not None:
        for name, pol in zip(tra.class_names, tra.policies):
            out[f"tra_{name}"] = [p0, float(pol.probabilities()[ROT90_GROUP][ROT90_OPTION])]
    if tea is not None and learns_tea:
        p_start = float(make_tea_policy("nnunet").probabilities()[TEA_ROT90].sum())
        out["tea"] = [p_start, float(tea.probabilities()[TEA_ROT90].sum())]
    return out


def one_seed(seed: int, data: Dict, images, refs, regions, out: str, a, log) -> Dict:
    """Train the three modes and segment with the five methods; failures are recorded."""
    row: Dict = {"seed": seed, "dsc": {}, "errors": {}, "policy": {}, "seconds": {}}
    runs: Dict[str, RunFolder] = {}
    table = methods(a)
    for mode in sorted({m for _n, m, _t in table}, key=[m for _n, m, _t in table].index):
        path = os.path.join(out, "runs", f"{mode}_seed{seed}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        run = RunFolder(path)
        t0 = time.time()
        try:
            run.save_job(job(data, mode, seed, a))
            rc = run_worker(run, quiet=True)
            if rc != 0:
                raise RuntimeError(f"the worker exited {rc}; see {run.events_path}")
            runs[mode] = run
            if mode != "heuristic" and a.data == "synthetic":  # the shift is known there only
                row["policy"][mode] = policy_direction(run, learns_tea=mode in ("joint",
                                                                                EXPLORE_RUN))
        except Exception as e:  # one failed run must not end the benchmark
            row["errors"][mode] = f"{type(e).__name__}: {e}"
            log(f"  seed {seed} {mode}: FAILED ({e})")
            traceback.print_exc()
        row["seconds"][mode] = time.time() - t0
        log(f"  seed {seed} {mode}: trained in {row['seconds'][mode]:.0f} s")
    for name, mode, tea in table:
        if mode not in runs:
            row["dsc"][name] = None
            continue
        try:
            pred = runs[mode].new_predictions_folder(f"tea-{tea}")
            predict_cases(runs[mode], images, pred, tea=tea, checkpoint="last",
                          device=a.device)
            res = (evaluate_folders(pred, refs, labels=regions) if regions
                   else evaluate_folders(pred, refs))
            row["dsc"][name] = foreground_dsc(res)
        except Exception as e:
            row["errors"][name] = f"{type(e).__name__}: {e}"
            row["dsc"][name] = None
        log(f"  seed {seed} {name}: DSC {row['dsc'][name]}")
    return row


# -- report --------------------------------------------------------------------------------------
def summarise(rows: List[Dict], table: Optional[List[tuple]] = None) -> Dict:
    table = list(METHODS) if table is None else table
    names = [n for n, _m, _t in table]
    col = {n: [r["dsc"].get(n) for r in rows] for n in names}
    diffs = {f"{n} - {BASELINE}": paired_difference(col[BASELINE], col[n])
             for n in names if n != BASELINE}
    a, b = HEADLINE
    diffs[f"{b} - {a}"] = paired_difference(col[a], col[b])
    for name, run, tea in table:  # each floored row against the same row without the floor
        if run == EXPLORE_RUN:
            without = "joint + learned TEA" if tea == "learned" else "joint"
            diffs[f"{name} - {without}"] = paired_difference(col[without], col[name])
    moved: Dict[str, List[bool]] = {}
    for r in rows:
        for mode, probs in r["policy"].items():
            for key, (p0, p1) in probs.items():
                moved.setdefault(f"{mode} {key}", []).append(p1 > p0)
    return {"dsc": col, "differences": {k: v.as_dict() for k, v in diffs.items()},
            "verdicts": {k: v.verdict(k) for k, v in diffs.items()},
            "policy_rose": {k: [sum(v), len(v)] for k, v in moved.items()},
            "_diffs": diffs}


def machine() -> Dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}


def report(args, rows: List[Dict], summary: Dict, seconds: float) -> str:
    m = machine()
    lines = [f"# Science benchmark: {args.data}", "",
             f"{time.strftime('%Y-%m-%d')}; {m['cpu']}, {m['cores']} cores, {m['threads']} "
             f"torch thread(s), GPU {m['gpu'] or 'none'}, device {args.device}; torch {m['torch']}."
             f" {len(rows)} seeds; 3D U-Net base {args.base}, {args.patch}^3 patches, batch "
             f"{args.batch}, {args.iterations} iterations per run ({args.optimizer} lr "
             f"{args.lr}, policy_every {args.policy_every}, tea_copies {args.tea_copies}"
             f"{f', explore {args.explore:g} in the explore rows' if args.explore else ''}); "
             f"whole benchmark {seconds / 60:.1f} min.", "",
             "Absolute DSC differs between CPUs; read the paired intervals.", "",
             f"## {'Foreground' if args.data == 'synthetic' else 'Whole-tumour'} DSC per seed "
             f"(mean over the test cases)", "",
             "| method | " + " | ".join(f"seed {r['seed']}" for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for name, vals in summary["dsc"].items():
        lines.append(f"| {name} | " + " | ".join("failed" if v is None else f"{v:.3f}"
                                                 for v in vals) + " |")
    lines += ["", "## Paired differences over seeds (95 % bootstrap interval, sign test)", "",
              "| B - A | mean | 95 % interval | up/down | sign p |", "|---|---|---|---|---|"]
    for k, d in summary["_diffs"].items():
        lines.append(format_paired_row(k, d))
    lines += [""] + [f"- {v}" for v in summary["verdicts"].values()]
    if summary["policy_rose"]:
        lines += ["", "## Policy direction (shift-matching ops, initial -> final)", "",
                  "| seed | run | probability | initial | final |", "|---|---|---|---|---|"]
        for r in rows:
            for mode, probs in r["policy"].items():
                for key, (p0, p1) in probs.items():
                    lines.append(f"| {r['seed']} | {mode} | {key} | {p0:.4f} | {p1:.4f} |")
        lines += [""] + [f"- {k}: rose in {up} of {n} seeds"
                         for k, (up, n) in summary["policy_rose"].items()]
    elif args.data != "synthetic":
        lines += ["", "No policy direction: real data has no known shift for a policy to "
                      "follow (the synthetic shift's is a quarter turn about axis 0)."]
    errors = [(r["seed"], k, v) for r in rows for k, v in r["errors"].items()]
    if errors:
        lines += ["", "## Failures", ""] + [f"- seed {s}, {k}: {v}" for s, k, v in errors]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (the demo's two-site shift) or the brats6 folder "
                        "(default: synthetic)")
    p.add_argument("--out", default="science-report", help="report folder (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=5,
                   help="number of seeds, from --first-seed on (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first seed (default: 0); more seeds for an earlier run's report "
                        "are --first-seed N with the same other options")
    p.add_argument("--iterations", type=int, default=300,
                   help="training iterations per run (default: %(default)s)")
    p.add_argument("--patch", type=int, default=32, help="cubic patch edge (default: %(default)s)")
    p.add_argument("--base", type=int, default=8, help="U-Net base width (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam"],
                   help="task optimiser (default: %(default)s, the short-budget choice)")
    p.add_argument("--lr", type=float, default=3e-3, help="task learning rate (default: 3e-3)")
    p.add_argument("--policy-lr", type=float, default=0.05,
                   help="TRA policy learning rate (default: 0.05, 100x the paper's U-Net 5e-4 "
                        "for a CPU budget)")
    p.add_argument("--tea-lr", type=float, default=0.05,
                   help="TEA policy learning rate (default: 0.05)")
    p.add_argument("--policy-every", type=int, default=2,
                   help="policy update every k iterations (default: %(default)s)")
    p.add_argument("--tea-copies", type=int, default=6,
                   help="TEA copies per validation patch (default: %(default)s)")
    p.add_argument("--explore", type=float, default=0.0, metavar="SHARE",
                   help="also train joint with this exploration floor (training.explore) and "
                        "report its rows (default: 0, off)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: %(default)s)")
    a = p.parse_args(argv)
    if not 0 <= a.explore < 1:
        raise BudgetError(f"--explore must be a share in [0, 1), got {a.explore}")
    if a.seeds < 1:
        raise BudgetError("--seeds must be at least 1 (and 5 or more to tell a gain from noise)")
    if a.iterations < max(MIN_ITERATIONS, 2 * a.policy_every):
        raise BudgetError(f"--iterations {a.iterations} is too small to train: a run needs at "
                          f"least {max(MIN_ITERATIONS, 2 * a.policy_every)} iterations for the "
                          f"network to leave its initialisation and the policy to be updated "
                          f"more than once (policy_every {a.policy_every})")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.time()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    if a.data == "synthetic":
        data, images, refs, regions = synthetic_data(out)
    else:
        data, images, refs, regions = brats_data(a.data, out)

    def log(msg):
        print(msg, flush=True)
    rows = []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        log(f"seed {seed}")
        rows.append(one_seed(seed, data, images, refs, regions, out, a, log))
        # written after every seed: an interrupted benchmark keeps what it measured
        summary = summarise(rows, methods(a))
        text = report(a, rows, summary, time.time() - t0)
        with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
            json.dump({"args": vars(a), "machine": machine(), "rows": rows,
                       "summary": {k: v for k, v in summary.items() if k != "_diffs"},
                       "seconds": time.time() - t0}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
