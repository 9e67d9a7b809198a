"""Measure two places where the product's gradients differ from the paper's formulas, on the
batches ``Trainer.step`` really draws (the demo's synthetic two-site dataset, mode
``class-specific``), so the README can state them with numbers.

1. **Drawn-option logit gradient.** The paper's Eq. 9 chains ``dL_val/dw_i`` through the
   straight-through weight ``w_i = s_i[j*] + const`` into *every* logit of the group
   (``d s[j*]/d p[k] = s[j*](delta_jk - s[k])``). We keep only the diagonal term (the drawn
   option's logit; ``policy/normalise.py`` says why). Here both are computed from the same
   normalised ``h_i`` and Eq. 11 counts of each real batch, and compared per policy update:
   cosine, and the share of the full gradient's norm that falls on options no sample drew.
2. **Finite-difference precision.** ``--meta-grad finite-difference`` approximates the
   directional derivative ``<grad loss_i, v>`` with central differences at radius
   ``R = r / ||v||``. Its relative error against the exact JVP is measured on the same batch
   for several ``r`` (0.01 is the reference code's and the product's default), on the
   product's 3D U-Net and DeepMedic.

Usage::

    python benchmarks/gradient_claims.py --iterations 40 --out gradient_claims.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

import JCSAugmentLib.train.trainer as trainer_module
from JCSAugmentLib.meta import meta_gradient
from JCSAugmentLib.policy.normalise import gradient_normalisation, sampling_counts
from JCSAugmentLib.run.job import Job
from JCSAugmentLib.synth import make_synthetic_dataset
from JCSAugmentLib.train.trainer import Trainer


def full_chain_gradients(policy, draw, g, classes, centre_classes) -> List[torch.Tensor]:
    """Eq. 9 with the product's normalisations (Eq. 10 h_i, Eq. 11 counts) but every softmax
    cross term kept: sum over samples and groups of (h_i / count_il) * d w_il / d p."""
    g = torch.as_tensor(g, dtype=torch.float64).reshape(-1)
    h = gradient_normalisation(g, torch.as_tensor(centre_classes, dtype=torch.long))
    scale = h[:, None] / sampling_counts(draw.choices, torch.as_tensor(classes,
                                                                      dtype=torch.long))
    params = list(policy.parameters())
    grads = torch.autograd.grad((scale.to(draw.group_weights.dtype)
                                 * draw.group_weights).sum(), params, allow_unused=True,
                                retain_graph=True)
    return [torch.zeros_like(p) if d is None else d.detach() for p, d in zip(params, grads)]


def flat(grads) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(torch.float64) for t in grads])


def drawn_mask(policy, draw, classes) -> torch.Tensor:
    """True for every (class, group, option) logit some sample of that class drew."""
    classes = torch.as_tensor(classes, dtype=torch.long)
    masks = []
    for c, cls_policy in enumerate(policy.policies):
        mine = classes == c
        for gi, logits in enumerate(cls_policy.logits):
            m = torch.zeros(logits.shape, dtype=torch.bool)
            m[draw.choices[mine, gi]] = True
            masks.append(m)
    return torch.cat([m.reshape(-1) for m in masks])


def job_for(dataset: str, splits: Dict, backbone: str, iterations: int, seed: int,
            patch: int) -> Job:
    return Job.from_dict({
        "schema": 1, "data": {"dataset": dataset, "splits": splits},
        "model": {"backbone": backbone, "patch_size": [patch] * 3, "base_features": 8},
        "training": {"mode": "class-specific", "epochs": 1, "iterations_per_epoch": iterations,
                     "batch_size": 8, "val_batch_size": 4, "validate_every": 0,
                     "preview_every": 0, "checkpoint_every": iterations},
        "device": "cpu", "seed": seed})


def logit_gradient_check(dataset: str, splits: Dict, iterations: int, seed: int) -> Dict:
    """Run ``Trainer.step`` and compare, at every policy update, the product's drawn-only
    gradient with the full Eq. 9 chain (same h_i, same counts)."""
    rows = []
    original = trainer_module.tra_logit_gradients

    def recording(policy, draw, g, classes, normalise=True, centre_classes=None):
        ours = original(policy, draw, g, classes, normalise=normalise,
                        centre_classes=centre_classes)
        full = full_chain_gradients(policy, draw, g, classes,
                                    classes if centre_classes is None else centre_classes)
        a, b = flat(ours), flat(full)
        undrawn = ~drawn_mask(policy, draw, classes)
        if float(b.norm()) > 0:
            rows.append({"cosine": float(torch.dot(a, b) / (a.norm() * b.norm())),
                         "undrawn_share": float(b[undrawn].norm() / b.norm()),
                         "ours_on_undrawn": float(a[undrawn].abs().max())})
        return ours

    trainer_module.tra_logit_gradients = recording
    try:
        with tempfile.TemporaryDirectory() as cache:
            trainer = Trainer(job_for(dataset, splits, "unet3d", iterations, seed, 32),
                              os.path.dirname(dataset), cache_dir=cache)
            for _ in range(iterations):
                trainer.step()
    finally:
        trainer_module.tra_logit_gradients = original
    cos = np.array([r["cosine"] for r in rows])
    share = np.array([r["undrawn_share"] for r in rows])
    return {"updates": len(rows), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "cosine_max": float(cos.max()),
            "undrawn_share_mean": float(share.mean()),
            "ours_on_undrawn_max": float(max(r["ours_on_undrawn"] for r in rows))}


def fd_precision(dataset: str, splits: Dict, backbone: str, radii, batches: int,
                 seed: int) -> Dict:
    """Relative error ||g_fd - g_exact|| / ||g_exact|| of the per-sample meta-gradients on
    ``batches`` real training/validation batches of ``Trainer`` (same batch for every radius)."""
    patch = 32 if backbone == "unet3d" else 25
    errors = {r: [] for r in radii}
    with tempfile.TemporaryDirectory() as cache:
        trainer = Trainer(job_for(dataset, splits, backbone, batches, seed, patch),
                          os.path.dirname(dataset), cache_dir=cache)
        model, info = trainer.model, trainer.info
        for _ in range(batches):
            x, y, _draw, _pc, _cc = trainer.training_batch(8, keep_graph=False)
            xv, yv, _ = trainer.validation_batch(4)
            exact = meta_gradient(model, info.per_sample_loss, trainer._val_loss, x, y, xv, yv,
                                  alpha=0.01, method="exact").g.double()
            for r in radii:
                fd = meta_gradient(model, info.per_sample_loss, trainer._val_loss, x, y, xv,
                                   yv, alpha=0.01, method="finite-difference",
                                   fd_radius=r).g.double()
                errors[r].append(float((fd - exact).norm() / exact.norm()))
            trainer.step()  # move theta so the batches are not all at initialisation
    return {str(r): {"median": float(np.median(v)), "min": float(np.min(v)),
                     "max": float(np.max(v))} for r, v in errors.items()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f
                         if ln.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=40,
                    help="Trainer.step calls for the logit-gradient comparison (default 40)")
    ap.add_argument("--fd-batches", type=int, default=4,
                    help="real batches per network for the finite-difference error (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="jcs_grad_claims_") as tmp:
        data = os.path.join(tmp, "dataset")
        made = make_synthetic_dataset(data, seed=0)
        splits = made["splits"]
        logit = logit_gradient_check(data, splits, args.iterations, args.seed)
        print(f"drawn-only vs full Eq. 9 logit gradient over {logit['updates']} policy "
              f"updates: cosine mean {logit['cosine_mean']:.3f} (min {logit['cosine_min']:.3f}, "
              f"max {logit['cosine_max']:.3f}); share of the full gradient's norm on options "
              f"no sample drew {logit['undrawn_share_mean']:.3f}; ours there: "
              f"{logit['ours_on_undrawn_max']:.1e}")
        radii = (0.0001, 0.001, 0.01, 0.1, 1.0)
        fd = {}
        for backbone in ("unet3d", "deepmedic"):
            fd[backbone] = fd_precision(data, splits, backbone, radii, args.fd_batches,
                                        args.seed)
            for r in radii:
                e = fd[backbone][str(r)]
                print(f"finite difference, {backbone}, r = {r:g}: relative error median "
                      f"{e['median']:.1e} (min {e['min']:.1e}, max {e['max']:.1e})")
    result = {"logit_gradient": logit, "finite_difference": fd,
              "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d"), "seconds": time.time() - t0}
    print(f"{result['machine']['cpu']}, {result['machine']['threads']} threads, "
          f"{result['seconds']:.0f} s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
