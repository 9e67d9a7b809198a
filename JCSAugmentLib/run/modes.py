"""Training modes (the paper's baselines and methods), as data: the one table that job.json's
``training.mode`` is checked against and the trainer follows.

| mode            | TRA policy                       | learns TRA | learns TEA | model trains |
|-----------------|----------------------------------|------------|------------|--------------|
| none            | identity                         | no         | no         | yes          |
| heuristic       | the ``init`` heuristic           | no         | no         | yes          |
| randaugment-s/m/l | nnU-Net probabilities, one level | no       | no         | yes          |
| learned         | one policy for every class       | yes        | no         | yes          |
| class-specific  | one policy per class (fg / bg)   | yes        | no         | yes          |
| joint           | one policy per class             | yes        | yes (+ TEA-transformed validation) | yes |
| tea-only        | the ``init`` heuristic (unused)  | no         | yes        | no (frozen, pretrained) |

Plain data: imports neither torch nor numpy (the GUI process checks jobs with it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModeSpec:
    tra_policy: str  # "init" (the job's init policy), or a fixed policy name
    tra_classes: int  # 1 = one policy for all patch classes, 2 = background / foreground
    learn_tra: bool
    learn_tea: bool
    train_model: bool

    @property
    def learns_policy(self) -> bool:
        """Learns a policy on validation data (so the job needs a validation split)."""
        return self.learn_tra or self.learn_tea


MODE_TABLE = {
    "none": ModeSpec("none", 1, False, False, True),
    "heuristic": ModeSpec("init", 2, False, False, True),
    "randaugment-s": ModeSpec("randaugment-s", 1, False, False, True),
    "randaugment-m": ModeSpec("randaugment-m", 1, False, False, True),
    "randaugment-l": ModeSpec("randaugment-l", 1, False, False, True),
    "learned": ModeSpec("init", 1, True, False, True),
    "class-specific": ModeSpec("init", 2, True, False, True),
    "joint": ModeSpec("init", 2, True, True, True),
    "tea-only": ModeSpec("init", 2, False, True, False),
}


def mode_spec(name: str) -> ModeSpec:
    if name not in MODE_TABLE:
        raise ValueError(f"unknown training mode {name!r}; choose one of "
                         f"{', '.join(MODE_TABLE)}")
    return MODE_TABLE[name]
