"""Foreground and background patches of a real case under a TRA policy (the panel's preview).

``make_preview`` picks one foreground-centred and one background-centred patch, draws ``n``
augmented samples of each from the policy of the patch's class, and returns the arrays plus the
captions (the ops each sample drew). ``charts.draw_preview_grid`` turns the result into a PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..io.volume import case_statistics, crop_with_padding, sample_centres
from ..policy.policies import ClassSpecificTRAPolicy
from .stats import CaseStats
from .tra import apply_tra, required_crop_size, sample_tra_params


@dataclass
class PreviewRow:
    """One patch class: the original patch and its augmented samples, as numpy arrays."""

    name: str
    centre: tuple
    images: List[np.ndarray]  # each (C, D, H, W)
    labels: List[np.ndarray]  # each (D, H, W)
    captions: List[str]

    def as_grid_row(self) -> dict:
        return {"name": self.name, "images": self.images, "labels": self.labels,
                "captions": self.captions}


def augment_around(image: np.ndarray, label: np.ndarray, centre: Sequence[int],
                   policy: ClassSpecificTRAPolicy, patch_class: int, stats: dict, n: int,
                   patch_size: Sequence[int], generator: torch.Generator,
                   device: str = "cpu"):
    """``n`` augmented patches centred on ``centre`` of the case (image (C, Z, Y, X), label
    (1, Z, Y, X)), drawn from the policy of ``patch_class``. Returns (images, labels, params)."""
    classes = torch.full((n,), patch_class, dtype=torch.long)
    with torch.no_grad():
        draw = policy.sample(classes, generator)
    params = sample_tra_params(draw.choices, generator)
    crop = required_crop_size(params, patch_size)
    pad = np.asarray(stats["min"], dtype=np.float32)
    img = crop_with_padding(image, centre, crop, pad_value=pad)
    lab = crop_with_padding(label, centre, crop, pad_value=0)
    img_t = torch.from_numpy(np.ascontiguousarray(img)).to(device)[None].repeat(n, 1, 1, 1, 1)
    lab_t = torch.from_numpy(np.ascontiguousarray(lab)).to(device)[None].repeat(n, 1, 1, 1, 1)
    case = CaseStats.from_cases([stats] * n, device=device)
    out, out_lab = apply_tra(img_t, lab_t, params, case, patch_size)
    return out.cpu().numpy(), out_lab[:, 0].cpu().numpy(), params


def make_preview(image: np.ndarray, label: np.ndarray, policy: ClassSpecificTRAPolicy,
                 n: int = 3, patch_size: Sequence[int] = (64, 64, 64), seed: int = 0,
                 roi: Optional[np.ndarray] = None, device: str = "cpu") -> List[PreviewRow]:
    """Preview rows (foreground patch, background patch) for a case.

    The foreground patch uses the policy of the last class (foreground in the paper's two-class
    setting), the background patch that of class 0. With a one-class policy both use it.
    """
    if image.ndim != 4 or label.ndim != 4 or label.shape[1:] != image.shape[1:]:
        raise ValueError(f"image (C, Z, Y, X) and label (1, Z, Y, X) must share a grid, got "
                         f"{image.shape} and {label.shape}")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    fg, bg = sample_centres(label[0], 1, 1, rng, roi=roi)
    stats = case_statistics(image, mask=roi)
    rows = []
    for name, centre, cls in (("foreground patch", fg[0], policy.num_classes - 1),
                              ("background patch", bg[0], 0)):
        centre = tuple(int(v) for v in centre)
        original = crop_with_padding(image, centre, patch_size, pad_value=np.asarray(
            stats["min"], dtype=np.float32))
        original_lab = crop_with_padding(label, centre, patch_size, pad_value=0)[0]
        imgs, labs, params = augment_around(image, label, centre, policy, cls, stats, n,
                                            patch_size, generator, device)
        captions = [f"original, centre {centre}"]
        captions += [", ".join(ops) if ops else "identity" for ops in params.op_names()]
        rows.append(PreviewRow(name, centre, [original] + list(imgs),
                               [original_lab] + list(labs), captions))
    return rows
