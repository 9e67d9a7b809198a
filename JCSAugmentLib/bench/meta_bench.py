"""``jcsaugment bench meta``: seconds per training iteration, joint learning vs heuristic TRA.

All rows train the same network on the same synthetic cases with the same batch sizes on the
same device, in one process, taking turns iteration by iteration so the machine's noise hits
them alike; the table gives the median seconds per iteration and the ratio to heuristic TRA
(a plain training step with the cascade). Rows: heuristic; class-specific TRA (no TEA) and
joint (TRA + TEA), each with ``policy_every`` 1 and 10 and the exact (JVP) and finite-difference
meta-gradients. Peak memory is reported on CUDA.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from typing import Dict, List

import torch


def _cases(folder: str, n: int, size) -> List[Dict]:
    import SimpleITK as sitk
    from ..demo_augment import synthetic_case
    out = []
    for i in range(n):
        img, lab, _roi = synthetic_case(size=size, seed=i)
        p = os.path.join(folder, f"c{i}")
        sitk.WriteImage(img, p + "_img.nii.gz")
        sitk.WriteImage(lab, p + "_lab.nii.gz")
        out.append({"id": f"c{i}", "images": [p + "_img.nii.gz"], "label": p + "_lab.nii.gz"})
    return out


def run_meta_bench(device: str = "cpu", patch: int = 48, batch: int = 4, val_batch: int = 4,
                   base_features: int = 8, iterations: int = 6, tea_copies: int = 10,
                   print_table: bool = True) -> Dict:
    from ..run.job import Job
    from ..train.trainer import Trainer
    rows = [("heuristic", "heuristic", 1, "exact"),
            ("class-specific k=1 exact", "class-specific", 1, "exact"),
            ("class-specific k=1 fd", "class-specific", 1, "finite-difference"),
            ("class-specific k=10 exact", "class-specific", 10, "exact"),
            ("joint k=1 exact", "joint", 1, "exact"),
            ("joint k=1 fd", "joint", 1, "finite-difference"),
            ("joint k=10 exact", "joint", 10, "exact")]
    size = (patch + 16, patch + 24, patch + 24)
    with tempfile.TemporaryDirectory(prefix="jcs-bench-meta-") as tmp:
        cases = _cases(tmp, 3, size)
        trainers = {}
        for name, mode, k, meta in rows:
            job = Job.from_dict({
                "schema": 1,
                "data": {"cases": cases, "splits": {"train": ["c0", "c1"], "validation": ["c2"],
                                                    "test": []}},
                "model": {"backbone": "unet3d", "patch_size": [patch] * 3,
                          "base_features": base_features},
                "training": {"mode": mode, "epochs": 1, "iterations_per_epoch": 10 ** 6,
                             "batch_size": batch, "val_batch_size": val_batch,
                             "tea_copies": tea_copies, "policy_every": k, "meta_grad": meta},
                "device": device, "seed": 0})
            trainers[name] = Trainer(job, os.path.join(tmp, name.replace(" ", "_")),
                                     cache_dir=os.path.join(tmp, "cache"))
        dev = trainers["heuristic"].device
        times: Dict[str, List[float]] = {n: [] for n in trainers}
        peaks: Dict[str, int] = {}
        for name, tr in trainers.items():  # warm-up
            tr.step()
        # k = 10 rows need 10 iterations to show their average: time blocks of 10 steps
        for _ in range(iterations):
            for name, tr in trainers.items():
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                t0 = time.perf_counter()
                for _ in range(10):
                    tr.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(dev))
                times[name].append((time.perf_counter() - t0) / 10)
    base = statistics.median(times["heuristic"])
    results = {n: {"s_per_iteration": statistics.median(v),
                   "ratio_to_heuristic": statistics.median(v) / base,
                   "peak_mb": round(peaks[n] / 2 ** 20) if n in peaks else None}
               for n, v in times.items()}
    out = {"benchmark": "meta", "device": str(dev), "patch": patch, "batch": batch,
           "val_batch": val_batch, "tea_copies": tea_copies, "base_features": base_features,
           "blocks_of_10": iterations, "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "results": results}
    if print_table:
        print(f"Seconds per iteration, 3D U-Net (base {base_features}) {patch}^3, batch {batch}, "
              f"{val_batch} validation patches, Z = {tea_copies}, median of {iterations} blocks "
              f"of 10 iterations ({out['date']}, {out['machine']}, {out['device']})")
        print(f"{'row':<28} {'s/it':>8} {'x heuristic':>12} {'peak MB':>8}")
        for n, r in results.items():
            peak = "" if r["peak_mb"] is None else str(r["peak_mb"])
            print(f"{n:<28} {r['s_per_iteration']:>8.3f} {r['ratio_to_heuristic']:>12.2f} "
                  f"{peak:>8}")
    return out
