"""Known-answer probe of the product's training loop: does ``Trainer.step`` move the TRA policy
towards the mirror that matches a mirrored validation site?

Why hand-made cases and not ``demo_augment.synthetic_case``: its lesions are balls, so a mirror
of the volume only moves them, and a convolutional network (translation-equivariant) cannot
tell a mirrored site from the original. Here every object is a bright ball with a dark cap on
one side along axis 0 (z): a *lesion* (label 1) has its cap on the -z side, a *decoy* (label 0)
the same ball with its cap on the +z side. Mirroring along axis 0 swaps the two, so

* on the training site (site A), patches mirrored along axis 0 teach the opposite of the truth;
* on a validation site that is site A mirrored along axis 0, only mirrored training patches
  teach what validation needs: the meta-gradient must raise P(mirror axis 0);
* on a validation site that is site A itself (the control), it must not.

Both runs go through ``Trainer(job, base_dir).step()`` exactly as the CLI and the panel run it,
with the product's defaults except the budget (patch, base features, batch sizes, iteration
count) and the two learning rates given on the command line.

Only the TRA known answer is built here (the TEA one, ``tea-only`` on a pretrained model, is
not). The table a run prints compares paired runs: the same seed draws the same cases, patches
and policy noise for the shifted and the control run, so their difference is the validation
site's effect.

Usage::

    python benchmarks/trainer_known_answers.py --seeds 5 --iterations 200 --policy-lr 0.02 --out tra.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
import torch

from JCSAugmentLib.augment.tables import TRA_GROUP_INDEX
from JCSAugmentLib.run.job import Job
from JCSAugmentLib.train.trainer import Trainer

MIRROR_AXIS0 = TRA_GROUP_INDEX["mirror_axis0"]
MIRRORS = [TRA_GROUP_INDEX[f"mirror_axis{a}"] for a in range(3)]
FLIP_OPTION = 1  # option 0 of a mirror group is identity, option 1 the flip


# -- data ----------------------------------------------------------------------------------------
def capped_ball_case(size: int, seed: int, objects: int = 8, radius: float = 2.5):
    """(image, label) numpy arrays (z, y, x) of ``objects`` bright balls, half lesions (dark cap
    on the -z side, label 1), half decoys (the same ball, cap on the +z side, label 0). Only the
    cap side tells them apart, so the site is not mirror-symmetric along axis 0."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij")
    image = 0.15 * rng.normal(size=(size,) * 3).astype(np.float32)
    label = np.zeros((size,) * 3, dtype=np.uint8)
    margin = int(np.ceil(radius)) + 2
    for k in range(objects):
        c = rng.integers(margin, size - margin, 3)
        r2 = (yy - c[1]) ** 2 + (xx - c[2]) ** 2
        ball = (zz - c[0]) ** 2 + r2 <= radius ** 2
        is_lesion = k % 2 == 0
        cap_z = c[0] - (margin - 1) if is_lesion else c[0] + (margin - 1)
        cap = (np.abs(zz - cap_z) <= 0.5) & (r2 <= radius ** 2)
        image[ball] = 1.0
        image[cap] = -1.0
        if is_lesion:
            label[ball] = 1
        else:
            label[ball & (label == 1)] = 0  # a decoy overlapping a lesion wins its voxels
    return image, label


def write_case(folder: str, case_id: str, image: np.ndarray, label: np.ndarray) -> Dict:
    paths = {"images": [os.path.join(folder, f"{case_id}_img.nii.gz")],
             "label": os.path.join(folder, f"{case_id}_lab.nii.gz")}
    for arr, path in ((image, paths["images"][0]), (label, paths["label"])):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(im, path)
    return {"id": case_id, **paths}


def write_sites(folder: str, seed: int, size: int, n_train: int, n_val: int,
                validation_mirrored: bool, objects: int = 8) -> Dict:
    """Training cases (site A) and validation cases; the validation cases are further site-A
    cases, mirrored along axis 0 when ``validation_mirrored`` (the shifted site)."""
    cases, train, val = [], [], []
    for i in range(n_train + n_val + 1):
        image, label = capped_ball_case(size, seed=1000 * seed + i, objects=objects)
        if n_train <= i < n_train + n_val and validation_mirrored:
            image, label = image[::-1].copy(), label[::-1].copy()
        cid = f"c{i}"
        cases.append(write_case(folder, cid, image, label))
        (train if i < n_train else val if i < n_train + n_val else []).append(cid)
    return {"cases": cases, "splits": {"train": train, "validation": val,
                                       "test": [f"c{n_train + n_val}"]}}


# -- runs ----------------------------------------------------------------------------------------
@dataclass
class ProbeSettings:
    iterations: int = 200
    policy_lr: float = 0.02  # 40x the U-Net default (5e-4): 200 steps must be able to move it
    lr: float = 0.01  # the product's default SGD learning rate
    optimizer: str = "sgd"  # the product's default; "adam" is its short-budget choice
    mode: str = "learned"
    patch: int = 16
    base_features: int = 4
    batch_size: int = 16  # many patches per centre class make Eq. 10's class means usable
    val_batch_size: int = 8
    case_size: int = 32
    n_train: int = 4
    n_val: int = 2
    objects: int = 14  # balls per case, half lesions, half decoys


def tra_job(data: Dict, s: ProbeSettings, seed: int) -> Job:
    # one epoch of ``iterations``: the poly schedule stays at factor 1 for the whole probe
    training = {"mode": s.mode, "epochs": 1, "iterations_per_epoch": s.iterations,
                "batch_size": s.batch_size, "val_batch_size": s.val_batch_size,
                "policy_lr": s.policy_lr, "lr": s.lr, "optimizer": s.optimizer}
    return Job.from_dict({"schema": 1, "data": data,
                          "model": {"backbone": "unet3d", "patch_size": [s.patch] * 3,
                                    "base_features": s.base_features},
                          "training": training, "device": "cpu", "seed": seed})


def mirror_probabilities(trainer: Trainer) -> Dict[str, List[float]]:
    """P(flip) of the three mirror groups, per TRA policy (one in ``learned`` mode)."""
    return {name: [float(pol.probabilities()[gi][FLIP_OPTION]) for gi in MIRRORS]
            for name, pol in zip(trainer.tra.class_names, trainer.tra.policies)}


def reported_probability(mirrors: Dict[str, List[float]]) -> float:
    """P(mirror axis 0) the criterion reads: the foreground policy's in class-specific modes,
    the single shared policy's in ``learned`` mode."""
    name = "foreground" if "foreground" in mirrors else next(iter(mirrors))
    return mirrors[name][0]


def run_tra(seed: int, validation_mirrored: bool, s: ProbeSettings) -> Dict:
    with tempfile.TemporaryDirectory(prefix="jcs_known_answer_") as folder:
        data = write_sites(folder, seed, s.case_size, s.n_train, s.n_val, validation_mirrored,
                           s.objects)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        trainer = Trainer(tra_job(data, s, seed), folder)
        start = mirror_probabilities(trainer)
        t0 = time.perf_counter()
        val_losses = []
        for _ in range(s.iterations):
            res = trainer.step()
            if "val" in res.losses:
                val_losses.append(float(res.losses["val"]))
        seconds = time.perf_counter() - t0
        end = mirror_probabilities(trainer)
    k = max(1, len(val_losses) // 5)
    return {"initial": reported_probability(start), "final": reported_probability(end),
            "mirrors_initial": start, "mirrors_final": end, "seconds": seconds,
            "val_loss_first": float(np.mean(val_losses[:k])) if val_losses else None,
            "val_loss_last": float(np.mean(val_losses[-k:])) if val_losses else None}


def tra_known_answer(seeds: List[int], s: ProbeSettings, log=print) -> Dict:
    """Shifted and control runs per seed; a seed passes when the shifted run's P(mirror axis 0)
    ends above its initial value and above the control run's final value."""
    rows = []
    for seed in seeds:
        shifted = run_tra(seed, True, s)
        control = run_tra(seed, False, s)
        passed = (shifted["final"] > shifted["initial"]
                  and shifted["final"] > control["final"])
        row = {"seed": seed, "initial": shifted["initial"], "final_shifted": shifted["final"],
               "final_control": control["final"], "passed": passed,
               "seconds": shifted["seconds"] + control["seconds"],
               "shifted": shifted, "control": control}
        rows.append(row)
        log(f"seed {seed}: initial {row['initial']:.4f}  shifted {row['final_shifted']:.4f}  "
            f"control {row['final_control']:.4f}  {'pass' if passed else 'FAIL'}  "
            f"({row['seconds']:.1f} s; mirrors shifted {fmt(shifted['mirrors_final'])}, "
            f"control {fmt(control['mirrors_final'])})")
    passes = sum(r["passed"] for r in rows)
    return {"settings": asdict(s), "rows": rows, "passes": passes, "seeds": len(rows)}


def fmt(mirrors: Dict[str, List[float]]) -> str:
    return "; ".join(f"{k}: " + "/".join(f"{p:.3f}" for p in v) for k, v in mirrors.items())


def machine() -> Dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0 .. N-1)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=ProbeSettings.iterations)
    ap.add_argument("--policy-lr", type=float, default=ProbeSettings.policy_lr)
    ap.add_argument("--lr", type=float, default=ProbeSettings.lr, help="model learning rate")
    ap.add_argument("--optimizer", default=ProbeSettings.optimizer, choices=["sgd", "adam"])
    ap.add_argument("--mode", default=ProbeSettings.mode, choices=["learned", "class-specific"])
    ap.add_argument("--patch", type=int, default=ProbeSettings.patch)
    ap.add_argument("--base", type=int, default=ProbeSettings.base_features)
    ap.add_argument("--batch-size", type=int, default=ProbeSettings.batch_size)
    ap.add_argument("--val-batch-size", type=int, default=ProbeSettings.val_batch_size)
    ap.add_argument("--objects", type=int, default=ProbeSettings.objects)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    a = ap.parse_args(argv)
    s = ProbeSettings(iterations=a.iterations, policy_lr=a.policy_lr, lr=a.lr,
                      optimizer=a.optimizer, mode=a.mode,
                      patch=a.patch, base_features=a.base, batch_size=a.batch_size,
                      val_batch_size=a.val_batch_size, objects=a.objects)
    t0 = time.perf_counter()
    result = tra_known_answer(list(range(a.first_seed, a.first_seed + a.seeds)), s)
    result["machine"] = machine()
    result["wall_seconds"] = time.perf_counter() - t0
    print(f"TRA known answer: {result['passes']} of {result['seeds']} seeds pass "
          f"({result['wall_seconds']:.0f} s wall)")
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
