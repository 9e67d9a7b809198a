"""Initial and fixed policies (method.md section 7 and the paper's baselines), as data.

TRA: a group applied with probability ``p`` puts ``1 - p`` on identity and splits ``p`` evenly
over its other options (foreground and background start equal). RandAugment-S/M/L keep the
nnU-Net apply-probabilities but put all of ``p`` on the small / medium / large magnitude
(``TRAOption.level`` 1 / 2 / 3; a mirror has one option, blur/sharpen splits between its blur and
its sharpen of that level, a rotation group's 90-degree option gets nothing). ``none`` is
identity everywhere.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from ..augment.tables import (TEA_MIRROR_OPS_DEEPMEDIC, TEA_MIRROR_OPS_NNUNET, TEA_OPS,
                              TRA_GROUPS)
from .policies import ClassSpecificTRAPolicy, TEAPolicy, TRAPolicy

# P(identity) per TRA group, in TRA_GROUPS order. Audit against method.md section 7.
IDENTITY_PROBABILITY: Dict[str, Dict[str, float]] = {
    "nnunet": {
        "scaling": 0.80, "rotation_axis0": 0.90, "rotation_axis1": 0.90, "rotation_axis2": 0.90,
        "mirror_axis0": 0.50, "mirror_axis1": 0.50, "mirror_axis2": 0.50,
        "gamma": 0.70, "inverted_gamma": 0.90, "brightness_shift": 0.95,
        "brightness_scale": 0.85, "contrast": 0.85, "blur_sharpen": 0.80, "noise": 0.90,
        "low_resolution": 0.90,
    },
    "deepmedic": {
        "scaling": 0.80, "rotation_axis0": 0.80, "rotation_axis1": 0.80, "rotation_axis2": 0.80,
        "mirror_axis0": 0.50, "mirror_axis1": 0.95, "mirror_axis2": 0.95,
        "gamma": 0.95, "inverted_gamma": 0.95, "brightness_shift": 0.85,
        "brightness_scale": 0.95, "contrast": 0.95, "blur_sharpen": 0.95, "noise": 0.95,
        "low_resolution": 0.95,
    },
}
RANDAUGMENT_LEVEL = {"randaugment-s": 1, "randaugment-m": 2, "randaugment-l": 3}
TRA_POLICY_NAMES = ("nnunet", "deepmedic", "randaugment-s", "randaugment-m", "randaugment-l",
                    "none")
TEA_POLICY_NAMES = ("nnunet", "deepmedic", "none")


def tra_probabilities(name: str) -> List[List[float]]:
    """Per-group option probabilities of the named initial or fixed TRA policy."""
    name = name.lower()
    if name not in TRA_POLICY_NAMES:
        raise ValueError(f"unknown TRA policy {name!r}; choose one of {', '.join(TRA_POLICY_NAMES)}")
    out = []
    for g in TRA_GROUPS:
        if name == "none":
            out.append([1.0] + [0.0] * (g.size - 1))
            continue
        base = "nnunet" if name.startswith("randaugment") else name
        keep = IDENTITY_PROBABILITY[base][g.name]
        if name in RANDAUGMENT_LEVEL:
            level = RANDAUGMENT_LEVEL[name]
            targets = [i for i, o in enumerate(g.options) if i and o.level == level]
            if not targets:  # a group with a single option (mirror) has only level 1
                targets = [i for i in range(1, g.size)]
        else:
            targets = list(range(1, g.size))
        p = [0.0] * g.size
        p[0] = keep
        for i in targets:
            p[i] = (1 - keep) / len(targets)
        out.append(p)
    return out


def tea_probabilities(name: str) -> List[float]:
    """Option probabilities of the named initial TEA policy (``none``: identity only)."""
    name = name.lower()
    if name not in TEA_POLICY_NAMES:
        raise ValueError(f"unknown TEA policy {name!r}; choose one of {', '.join(TEA_POLICY_NAMES)}")
    n = len(TEA_OPS)
    if name == "none":
        return [1.0] + [0.0] * (n - 1)
    chosen, each = ((TEA_MIRROR_OPS_NNUNET, 0.10) if name == "nnunet"
                    else (TEA_MIRROR_OPS_DEEPMEDIC, 0.20))
    rest = (1 - each * len(chosen)) / (n - len(chosen))
    return [each if i in chosen else rest for i in range(n)]


def heuristic_tea_ops(backbone: str) -> List[int]:
    """The ops heuristic TEA averages at inference, with equal weights: nnU-Net's 8 mirror
    combinations for the U-Net, identity and the 3 flips for DeepMedic."""
    if backbone in ("unet3d", "nnunet"):
        return list(TEA_MIRROR_OPS_NNUNET)
    if backbone == "deepmedic":
        return list(TEA_MIRROR_OPS_DEEPMEDIC)
    raise ValueError(f"unknown backbone {backbone!r}; choose unet3d or deepmedic")


def make_tra_policy(name: str, num_classes: int = 2,
                    class_names: Sequence[str] = None) -> ClassSpecificTRAPolicy:
    """A class-specific TRA policy with every class starting from the named policy."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    probs = tra_probabilities(name)
    return ClassSpecificTRAPolicy([TRAPolicy(probs) for _ in range(num_classes)], class_names)


def make_tea_policy(name: str) -> TEAPolicy:
    return TEAPolicy(tea_probabilities(name))
