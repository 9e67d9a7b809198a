"""The one mapping from a user's training settings to job fields.

The command line (``jcsaugment train --epochs 5 ...``), the panel's settings
(:class:`~JCSAugmentLib.panel.settings.PanelSettings`) and the Slicer module's logic all say
what to train with a :class:`TrainSettings`; it knows which job field each setting is::

    settings = TrainSettings(backbone="deepmedic", epochs=5, time_budget_minutes=30)
    settings.to_overrides()        # {"model.backbone": "deepmedic", "training.epochs": 5, ...}
    job = settings.apply(stored)   # a validated copy of a Job with them applied
    job = new_job({"dataset": "/data/Dataset001"}, settings)   # a new job (validated once)
    TrainSettings.from_job(job)    # back again (the panel re-attaching to a run)

A setting left at None keeps the job's value (for a new job: the engine's default), so the
same settings give the same Job whichever way they came in.

Imports neither torch nor numpy (the GUI process and the command line's start use it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional

from .job import (DEFAULT_INIT, DEFAULT_PATCH_SIZE, DEFAULT_POLICY_LR, DEFAULT_TEA_LR,
                  DEFAULT_TEA_LR_OTHER, Job)

__all__ = ["TrainSettings", "new_job"]


def _setting(job_field: str):
    """A setting (default None: keep the job's value) and the dotted job field it sets."""
    return field(default=None, metadata={"job_field": job_field})


@dataclass(frozen=True)
class TrainSettings:
    """What a user chooses about training; each field names its job field (``job_field`` in
    its metadata).  The names are the command line's option names (``--patch-size`` is
    ``patch_size``).  ``device`` is written as given: the panel turns its ``cuda:N`` into
    ``cuda`` first, since it starts the worker with that one GPU visible."""
    backbone: Optional[str] = _setting("model.backbone")
    patch_size: Optional[List[int]] = _setting("model.patch_size")
    base_features: Optional[int] = _setting("model.base_features")
    mode: Optional[str] = _setting("training.mode")
    init: Optional[str] = _setting("training.init")
    epochs: Optional[int] = _setting("training.epochs")
    iterations_per_epoch: Optional[int] = _setting("training.iterations_per_epoch")
    batch_size: Optional[int] = _setting("training.batch_size")
    val_batch_size: Optional[int] = _setting("training.val_batch_size")
    tea_copies: Optional[int] = _setting("training.tea_copies")
    policy_every: Optional[int] = _setting("training.policy_every")
    meta_grad: Optional[str] = _setting("training.meta_grad")
    # the optimisers: the task network's, and the learning rates of the two policies
    optimizer: Optional[str] = _setting("training.optimizer")
    lr: Optional[float] = _setting("training.lr")
    momentum: Optional[float] = _setting("training.momentum")
    nesterov: Optional[bool] = _setting("training.nesterov")
    weight_decay: Optional[float] = _setting("training.weight_decay")
    poly_power: Optional[float] = _setting("training.poly_power")
    policy_lr: Optional[float] = _setting("training.policy_lr")
    tea_lr: Optional[float] = _setting("training.tea_lr")
    pretrained: Optional[str] = _setting("training.pretrained")
    explore: Optional[float] = _setting("training.explore")
    tea_at_inference: Optional[str] = _setting("inference.tea")
    predict_splits: Optional[List[str]] = _setting("inference.predict")
    device: Optional[str] = _setting("device")
    seed: Optional[int] = _setting("seed")
    time_budget_minutes: Optional[float] = _setting("time_budget_minutes")

    @classmethod
    def names(cls) -> List[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def job_field(cls, name: str) -> str:
        """The dotted job field the setting ``name`` sets (``"epochs"`` -> its training field)."""
        return cls.__dataclass_fields__[name].metadata["job_field"]

    @classmethod
    def job_default(cls, name: str) -> str:
        """The job's default for setting ``name`` in words, read from the job schema (what a
        new job has when the setting is not given): ``"100"``, ``"64 64 64"``, or for a field
        whose null means "depends on another field" what it resolves to."""
        job_field = cls.job_field(name)
        value = Job().value(job_field)
        if value is None:
            return _NULL_MEANS.get(job_field, "none")
        return _words(value)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainSettings":
        """The settings among ``values`` (e.g. ``vars(args)`` of the train command); other
        keys are not settings and are left out."""
        return cls(**{name: values[name] for name in cls.names() if name in values})

    def to_overrides(self) -> Dict[str, Any]:
        """``{dotted job field: value}`` for each setting that is set (lists and paths as JSON
        wants them)."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                value = list(value)
            elif isinstance(value, os.PathLike):
                value = os.fspath(value)
            out[f.metadata["job_field"]] = value
        return out

    def apply(self, job: Job) -> Job:
        """A validated copy of ``job`` with these settings (raises ``JobError`` naming the
        field a setting does not fit)."""
        return job.with_overrides(self.to_overrides())

    @classmethod
    def from_job(cls, job: Job) -> "TrainSettings":
        """Every setting as ``job`` has it."""
        return cls(**{f.name: job.value(f.metadata["job_field"]) for f in fields(cls)})


def _words(value: Any) -> str:
    """A job value as a command line spells it (lists space-separated, booleans lower-case)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(_words(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _per(what: str, table: Mapping[str, Any], other: Any = None) -> str:
    parts = [f"{k} {_words(v)}" for k, v in table.items()]
    if other is not None:
        parts.append(f"other modes {_words(other)}")
    return f"per {what}: " + ", ".join(parts)


#: what a null job default resolves to (Job.resolved), for the settings whose default is null
_NULL_MEANS = {
    "model.patch_size": _per("backbone", DEFAULT_PATCH_SIZE),
    "training.init": _per("backbone", DEFAULT_INIT),
    "training.policy_lr": _per("backbone", DEFAULT_POLICY_LR),
    "training.tea_lr": _per("mode", DEFAULT_TEA_LR, DEFAULT_TEA_LR_OTHER),
    "time_budget_minutes": "no limit",
}


def new_job(data: Mapping[str, Any], settings: TrainSettings) -> Job:
    """A new job: the ``data`` section (cases and splits, or a dataset folder) and the
    settings on the engine's defaults, validated once as a whole (a check that involves both,
    such as a validation split for a policy-learning mode, sees the final job)."""
    overrides = {f"data.{k}": v for k, v in data.items()}
    overrides.update(settings.to_overrides())
    # Job() is not validated on its own: its data section is empty until the overrides land
    return Job().with_overrides(overrides)
