"""``jcsaugment augment-demo``: the augmentation engine on an embedded synthetic case.

Writes a synthetic labelled case (NIfTI), preview grids of a foreground and a background patch
under the nnU-Net and DeepMedic heuristic policies, the initial policies as JSON, the operation
tables, and a TEA round-trip check, into one folder. Runs in well under a minute on a CPU.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import SimpleITK as sitk
import torch

from .augment import TEA_OPS, table_rows, tea_invert, tea_transform
from .augment.preview import make_preview
from .charts.preview_grid import draw_preview_grid
from .policy import make_tea_policy, make_tra_policy, save_policy


def synthetic_case(size=(72, 96, 96), seed: int = 0):
    """A textured 'organ' volume with a few small bright lesions (label 1) and one dark lesion
    (label 2); spacing 1.5 x 1 x 1 mm, oblique-free. Returns (image, label) SimpleITK images."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in size], indexing="ij")
    organ = (zz / 0.9) ** 2 + (yy / 0.8) ** 2 + (xx / 0.75) ** 2 < 1
    coarse = rng.normal(size=tuple(max(2, s // 8) for s in size))
    texture = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None, None], size=size,
                                              mode="trilinear", align_corners=False)[0, 0].numpy()
    image = np.where(organ, 1.0 + 0.3 * texture, -1.0) + 0.08 * rng.normal(size=size)
    label = np.zeros(size, dtype=np.uint8)
    for k in range(4):
        c = [rng.integers(int(s * 0.35), int(s * 0.65)) for s in size]
        r = rng.uniform(4, 8)
        blob = (zz * size[0] / 2 - (c[0] - size[0] / 2)) ** 2 + \
               (yy * size[1] / 2 - (c[1] - size[1] / 2)) ** 2 + \
               (xx * size[2] / 2 - (c[2] - size[2] / 2)) ** 2 < r * r
        cls = 2 if k == 3 else 1
        label[blob & organ] = cls
        image[blob & organ] += 1.2 if cls == 1 else -0.9
    image = (image - image[organ].mean()) / image[organ].std()
    img = sitk.GetImageFromArray(image.astype(np.float32))
    lab = sitk.GetImageFromArray(label)
    roi = sitk.GetImageFromArray(organ.astype(np.uint8))
    for im in (img, lab, roi):
        im.SetSpacing((1.0, 1.0, 1.5))
    return img, lab, roi


def run_augment_demo(out_dir: str, seed: int = 0) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    img, lab, roi = synthetic_case(seed=seed)
    sitk.WriteImage(img, os.path.join(out_dir, "case_image.nii.gz"))
    sitk.WriteImage(lab, os.path.join(out_dir, "case_label.nii.gz"))
    sitk.WriteImage(roi, os.path.join(out_dir, "case_roi.nii.gz"))
    organ = sitk.GetArrayFromImage(roi) > 0
    image = sitk.GetArrayFromImage(img)[None].astype(np.float32)
    label = sitk.GetArrayFromImage(lab)[None].astype(np.int64)
    written = []
    for name in ("nnunet", "deepmedic"):
        policy = make_tra_policy(name)
        rows = make_preview(image, label, policy, n=4, patch_size=(48, 48, 48), seed=seed,
                            roi=organ)
        path = os.path.join(out_dir, f"preview_{name}.png")
        draw_preview_grid([r.as_grid_row() for r in rows], out_path=path,
                          title=f"{name} heuristic TRA on the synthetic case (48^3 patches)")
        save_policy(os.path.join(out_dir, f"policy_{name}.json"), policy,
                    make_tea_policy(name), meta={"source": f"{name} heuristic initial policy"})
        written += [path, os.path.join(out_dir, f"policy_{name}.json")]
    with open(os.path.join(out_dir, "ops.json"), "w", encoding="utf-8") as f:
        json.dump(table_rows(), f, indent=1)
    # TEA round trip on the case: exact ops must come back bit-exactly.
    x = torch.from_numpy(image)[None]
    exact = [op.index for op in TEA_OPS if op.kind == "spatial" and op.invertible_exactly]
    exact_ok = all(torch.equal(tea_invert(tea_transform(x, i), i), x) for i in exact)
    summary = {"outputs": written + [os.path.join(out_dir, "ops.json")],
               "tea_exact_round_trips": f"{len(exact)} ops, all exact: {exact_ok}",
               "seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    for p in summary["outputs"]:
        print(f"wrote {p}")
    print(f"TEA round trips: {summary['tea_exact_round_trips']}; {summary['seconds']} s")
    return summary
