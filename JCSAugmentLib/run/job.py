"""``job.json``: everything a run needs, versioned (``"schema": 1``) and validated on read.

A job is plain data (JSON, never pickle or code).  :meth:`Job.from_dict` checks every field and
raises :class:`JobError` naming the field as a dotted path (``training.mode``,
``data.cases[2].images``) and the problem, suggesting close matches for misspelt keys and values.

Shape (defaults are the method's reference defaults; ``null`` means "the backbone's / mode's
default", filled in by :meth:`Job.resolved`)::

    {
     "schema": 1,
     "data": {
      "dataset": "path/to/folder",            # either a dataset folder ...
      "cases": [{"id": "c1", "images": ["c1_t1.nrrd"], "label": "c1_seg.nrrd", "roi": null}],
                                               # ... or explicit cases (label null = unlabelled)
      "splits": {"train": ["c1"], "validation": [], "test": []},   # or null: drawn with
      "split_seed": 0, "split_fractions": {"train": 0.7, "validation": 0.1, "test": 0.2},
      "target_spacing": null,                  # [z, y, x] mm, null = keep each case's spacing
      "normalisation": "auto"                  # auto | zscore | ct | none
     },
     "model": {"backbone": "unet3d", "patch_size": null, "base_features": 10,
               "deep_supervision": true},
     "training": {"mode": "joint", "init": null, "epochs": 100, "iterations_per_epoch": 100,
                  "batch_size": 10, "val_batch_size": 10, "tea_copies": 10, "policy_every": 1,
                  "meta_grad": "exact", "optimizer": "sgd", "lr": 0.01, "policy_lr": null,
                  "tea_lr": null, "momentum": 0.99, "nesterov": true, "weight_decay": 3e-05, "grad_clip": 12.0,
                  "poly_power": 0.9, "fg_fraction": 0.5, "val_loss": "ce+dice",
                  "validate_every": 5, "preview_every": 10, "checkpoint_every": 100,
                  "pretrained": null, "explore": 0.0},
     "inference": {"tea": "auto", "tea_top_z": null, "step": 0.5, "predict": ["test"]},
     "device": "auto", "seed": 0, "time_budget_minutes": null
    }

Relative paths are relative to the folder that holds ``job.json`` (the run folder): see
:func:`resolve_path` and :meth:`Job.missing_files`.

Imports neither torch nor numpy: the GUI process writes jobs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .modes import MODE_TABLE
from .status import atomic_write_text

JOB_FILE = "job.json"
SCHEMA = 1

BACKBONES = ("unet3d", "deepmedic")
MODES = tuple(MODE_TABLE)
#: modes whose policies are learned against validation data (they need a validation split)
POLICY_MODES = tuple(m for m, spec in MODE_TABLE.items() if spec.learns_policy)
#: modes that learn the TEA policy
TEA_MODES = tuple(m for m, spec in MODE_TABLE.items() if spec.learn_tea)
INITS = ("nnunet", "deepmedic")
META_GRADS = ("exact", "finite-difference")
VAL_LOSSES = ("ce", "dice", "ce+dice")
# The task optimiser: SGD with Nesterov momentum is the paper's (and nnU-Net's); Adam reaches a
# usable model in far fewer iterations, which is what a short CPU budget (the demo) needs. The
# meta-gradient's inner step is the paper's SGD step of size lr either way.
OPTIMIZERS = ("sgd", "adam")
NORMALISATIONS = ("auto", "zscore", "ct", "none")
TEA_INFERENCE = ("auto", "none", "heuristic", "learned")
#: TEA choices a user makes at prediction time (the job's "auto" resolves to one of them)
TEA_CHOICES = ("learned", "heuristic", "none")
SPLITS = ("train", "validation", "test")

# model.patch_size is the patch the loss is computed on (the network's output): the U-Net's
# input and output agree; DeepMedic's 21^3 output comes from 37^3 voxels of its normal pathway
# (and a 105^3 context for its subsampled ones, see nets/factory.py).
DEFAULT_PATCH_SIZE = {"unet3d": [64, 64, 64], "deepmedic": [21, 21, 21]}
DEFAULT_INIT = {"unet3d": "nnunet", "deepmedic": "deepmedic"}
DEFAULT_POLICY_LR = {"unet3d": 5e-4, "deepmedic": 1e-3}
DEFAULT_TEA_LR = {"joint": 5e-5, "tea-only": 5e-3}
DEFAULT_TEA_LR_OTHER = 5e-5
DEFAULT_TEA_TOP_Z = {"unet3d": 8, "deepmedic": 4}

#: what a device setting may say (the job's, the panel's and the command line's)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class JobError(ValueError):
    """A problem in a job spec.  ``field`` is the dotted path (``None`` for the whole file)."""

    def __init__(self, field: Optional[str], problem: str, message: Optional[str] = None):
        self.field = field
        self.problem = problem
        if message is None:
            message = f"job.json: {field}: {problem}" if field else f"job.json: {problem}"
        super().__init__(message)


# ----------------------------------------------------------------------------- value checks

def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _show(v: Any) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({_json_type(v)})"


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Check:
    """A field check: ``check(path, value) -> normalised value`` (raises JobError)."""

    null = False

    def __call__(self, path: str, v: Any) -> Any:
        if v is None:
            if self.null:
                return None
            raise JobError(path, f"must not be null (expected {self.expected})")
        return self.check(path, v)

    expected = "a value"

    def check(self, path: str, v: Any) -> Any:  # pragma: no cover - overridden
        return v


#: upper bounds of the job's sizes (the message names the bound when one is exceeded)
MAX_EPOCHS = 100_000
MAX_ITERATIONS_PER_EPOCH = 1_000_000
MAX_BATCH_SIZE = 1024
MAX_TEA_COPIES = 256
MAX_PATCH_EDGE = 1024


class _Int(_Check):
    def __init__(self, lo: Optional[int] = None, hi: Optional[int] = None, null: bool = False,
                 note: str = ""):
        self.lo, self.hi, self.null, self.note = lo, hi, null, note
        self.expected = "an integer" + (" or null" if null else "")

    def check(self, path, v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise JobError(path, f"expected {self.expected}, got {_show(v)}")
        _range(path, v, self.lo, self.hi, False, False, self.note)
        return int(v)


class _Float(_Check):
    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, hi_open: bool = False, null: bool = False,
                 note: str = ""):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.null, self.note = null, note
        self.expected = "a number" + (" or null" if null else "")

    def check(self, path, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise JobError(path, f"expected {self.expected}, got {_show(v)}")
        v = float(v)
        if not math.isfinite(v):
            raise JobError(path, f"must be a finite number, got {v}")
        _range(path, v, self.lo, self.hi, self.lo_open, self.hi_open, self.note)
        return v


def _range(path, v, lo, hi, lo_open, hi_open, note):
    bad = ((lo is not None and (v <= lo if lo_open else v < lo))
           or (hi is not None and (v >= hi if hi_open else v > hi)))
    if not bad:
        return
    def fmt(x):
        return str(x) if isinstance(x, int) else f"{x:g}"

    if lo is not None and hi is not None:
        want = f"in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        want = f"{'>' if lo_open else '>='} {fmt(lo)}"
    else:
        want = f"{'<' if hi_open else '<='} {fmt(hi)}"
    raise JobError(path, f"{fmt(v)} is out of range: must be {want}{note}")


class _Bool(_Check):
    expected = "true or false"

    def check(self, path, v):
        if not isinstance(v, bool):
            raise JobError(path, f"expected true or false, got {_show(v)}")
        return v


class _Choice(_Check):
    def __init__(self, choices: Sequence[str], what: str, null: bool = False):
        self.choices, self.what, self.null = tuple(choices), what, null
        self.expected = f"one of {', '.join(self.choices)}" + (" or null" if null else "")

    def check(self, path, v):
        if not isinstance(v, str):
            raise JobError(path, f"expected a string, {self.expected}; got {_show(v)}")
        if v not in self.choices:
            lower = v.strip().lower()
            hint = (f"; did you mean {lower!r}?" if lower in self.choices
                    else _suggest(v, self.choices))
            raise JobError(path, f"unknown {self.what} {v!r}; choose one of "
                                 f"{', '.join(self.choices)}{hint}")
        return v


class _Path(_Check):
    def __init__(self, null: bool = False, what: str = "a path"):
        self.null = null
        self.expected = what + (" or null" if null else "")

    def check(self, path, v):
        if not isinstance(v, str):
            raise JobError(path, f"expected {self.expected} (a string), got {_show(v)}")
        if not v.strip():
            raise JobError(path, "is an empty path")
        return v


class _Triple(_Check):
    """Three positive numbers: a patch size (ints, at most ``hi`` each) or a spacing."""

    def __init__(self, ints: bool, null: bool = False, what: str = "",
                 hi: Optional[float] = None):
        self.ints, self.null, self.what, self.hi = ints, null, what, hi
        kind = "integers" if ints else "numbers"
        self.expected = f"3 positive {kind} {what}".rstrip() + (" or null" if null else "")

    def check(self, path, v):
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            raise JobError(path, f"expected {self.expected}, got {_show(v)}")
        out = []
        for x in v:
            ok = not isinstance(x, bool) and (isinstance(x, int) if self.ints
                                              else isinstance(x, (int, float)))
            if not ok or not math.isfinite(x) or x <= 0:
                raise JobError(path, f"expected {self.expected}, got {_show(list(v))}")
            if self.hi is not None and x > self.hi:
                raise JobError(path, f"{_show(list(v))} is out of range: each value must be "
                                     f"<= {self.hi:g}")
            out.append(int(x) if self.ints else float(x))
        return out


class _Device(_Check):
    expected = "'auto', 'cpu', 'cuda' or 'cuda:N'"

    def check(self, path, v):
        if not isinstance(v, str) or not DEVICE_PATTERN.match(v.strip().lower()):
            raise JobError(path, f"unknown device {_show(v)}; use {self.expected}")
        return v.strip().lower()


class _Raw(_Check):
    """Checked by the section's own cross-field validation."""

    def __init__(self, null: bool = True):
        self.null = null

    def check(self, path, v):
        return copy.deepcopy(v)


def _f(default, check: _Check, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d),
                     metadata={"check": check}, **kw)
    return field(default=default, metadata={"check": check}, **kw)


def _section(cls):
    return field(default_factory=cls, metadata={"section": cls})


# ----------------------------------------------------------------------------- the sections

@dataclass
class Case:
    id: str
    images: List[str]
    label: Optional[str] = None
    roi: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "images": list(self.images), "label": self.label, "roi": self.roi}


@dataclass
class DataSpec:
    dataset: Optional[str] = _f(None, _Path(null=True, what="a dataset folder"))
    cases: Optional[List[Case]] = _f(None, _Raw())
    splits: Optional[Dict[str, List[str]]] = _f(None, _Raw())
    split_seed: int = _f(0, _Int(0, 2 ** 63 - 1))
    split_fractions: Dict[str, float] = _f({"train": 0.7, "validation": 0.1, "test": 0.2},
                                           _Raw(null=False))
    target_spacing: Optional[List[float]] = _f(None, _Triple(False, null=True, what="(mm)"))
    normalisation: str = _f("auto", _Choice(NORMALISATIONS, "normalisation"))

    def _validate(self, path: str) -> None:
        if self.cases is not None:
            self.cases = _check_cases(_join(path, "cases"), self.cases)
        if self.dataset is not None and self.cases is not None:
            raise JobError(path, "give either data.dataset (a folder) or data.cases (a list), "
                                 "not both")
        if self.dataset is None and self.cases is None:
            raise JobError(path, "no data: give data.dataset (a dataset folder) or data.cases "
                                 "(a list of {id, images, label})")
        self.split_fractions = _check_fractions(_join(path, "split_fractions"),
                                                self.split_fractions)
        if self.splits is not None:
            ids = None if self.cases is None else [c.id for c in self.cases]
            self.splits = _check_splits(_join(path, "splits"), self.splits, ids)
        if self.cases is not None:
            channels = {len(c.images) for c in self.cases}
            if len(channels) > 1:
                first = self.cases[0]
                for i, c in enumerate(self.cases):
                    if len(c.images) != len(first.images):
                        raise JobError(f"{path}.cases[{i}].images",
                                       f"case {c.id!r} has {len(c.images)} image(s) but case "
                                       f"{first.id!r} has {len(first.images)}; every case needs "
                                       f"the same channels")
            needs_label = (set(self.splits["train"]) | set(self.splits["validation"])
                           if self.splits is not None else None)
            for i, c in enumerate(self.cases):
                if c.label is not None:
                    continue
                if needs_label is None:
                    raise JobError(f"{path}.cases[{i}].label",
                                   f"case {c.id!r} has no label; with split_fractions any case "
                                   f"may be drawn for training, so every case needs a label "
                                   f"(or give explicit data.splits with it under test)")
                if c.id in needs_label:
                    which = "train" if c.id in self.splits["train"] else "validation"
                    raise JobError(f"{path}.cases[{i}].label",
                                   f"case {c.id!r} is in the {which} split but has no label")


@dataclass
class ModelSpec:
    backbone: str = _f("unet3d", _Choice(BACKBONES, "backbone"))
    patch_size: Optional[List[int]] = _f(None, _Triple(True, null=True, what="[D, H, W]",
                                                       hi=MAX_PATCH_EDGE))
    base_features: int = _f(10, _Int(1, 1024))
    deep_supervision: bool = _f(True, _Bool())


@dataclass
class TrainingSpec:
    mode: str = _f("joint", _Choice(MODES, "mode"))
    init: Optional[str] = _f(None, _Choice(INITS, "initial policy", null=True))
    # upper bounds: far above any useful value, low enough that a typo (batch_size 200000)
    # is refused with the bound named instead of hanging or exhausting memory
    epochs: int = _f(100, _Int(1, MAX_EPOCHS))
    iterations_per_epoch: int = _f(100, _Int(1, MAX_ITERATIONS_PER_EPOCH))
    batch_size: int = _f(10, _Int(1, MAX_BATCH_SIZE))
    val_batch_size: int = _f(10, _Int(1, MAX_BATCH_SIZE))
    tea_copies: int = _f(10, _Int(1, MAX_TEA_COPIES))
    policy_every: int = _f(1, _Int(1, MAX_ITERATIONS_PER_EPOCH))
    meta_grad: str = _f("exact", _Choice(META_GRADS, "meta-gradient method"))
    optimizer: str = _f("sgd", _Choice(OPTIMIZERS, "optimizer"))
    lr: float = _f(1e-2, _Float(0, lo_open=True))
    policy_lr: Optional[float] = _f(None, _Float(0, lo_open=True, null=True))
    tea_lr: Optional[float] = _f(None, _Float(0, lo_open=True, null=True))
    momentum: float = _f(0.99, _Float(0, 1, hi_open=True))
    nesterov: bool = _f(True, _Bool())
    weight_decay: float = _f(3e-5, _Float(0))
    grad_clip: Optional[float] = _f(12.0, _Float(0, lo_open=True, null=True,
                                                  note=" (null turns clipping off)"))
    poly_power: float = _f(0.9, _Float(0))
    fg_fraction: float = _f(0.5, _Float(0, 1))
    val_loss: str = _f("ce+dice", _Choice(VAL_LOSSES, "validation loss"))
    validate_every: int = _f(5, _Int(0, MAX_EPOCHS, note=" (epochs; 0 = only at the end)"))
    preview_every: int = _f(10, _Int(0, MAX_ITERATIONS_PER_EPOCH,
                                     note=" (policy updates; 0 = never)"))
    checkpoint_every: int = _f(100, _Int(1, MAX_EPOCHS * MAX_ITERATIONS_PER_EPOCH,
                                         note=" (iterations)"))
    pretrained: Optional[str] = _f(None, _Path(null=True, what="a checkpoint path"))
    # the exploration floor (not the paper's; 0 = off): this share of the TRA (per group) and
    # TEA draws that carry a policy gradient is drawn uniformly over the options
    explore: float = _f(0.0, _Float(0, 1, hi_open=True, note=" (a share of the draws)"))

    def _validate(self, path: str) -> None:
        if self.nesterov and self.momentum == 0:
            raise JobError(_join(path, "nesterov"), "Nesterov momentum needs momentum > 0 "
                                                   "(set training.nesterov to false)")
        if self.mode == "tea-only" and self.pretrained is None:
            raise JobError(_join(path, "pretrained"),
                           "mode 'tea-only' learns TEA on a trained model: give the checkpoint "
                           "of that model")


@dataclass
class InferenceSpec:
    tea: str = _f("auto", _Choice(TEA_INFERENCE, "TEA at inference"))
    tea_top_z: Optional[int] = _f(None, _Int(1, 84, null=True))
    step: float = _f(0.5, _Float(0, 1, lo_open=True, note=" (fraction of the patch size)"))
    predict: List[str] = _f(["test"], _Raw(null=False))

    def _validate(self, path: str) -> None:
        p = _join(path, "predict")
        if not isinstance(self.predict, list):
            raise JobError(p, f"expected an array of split names, got {_show(self.predict)}")
        seen = set()
        for s in self.predict:
            if not isinstance(s, str) or s not in SPLITS:
                raise JobError(p, f"unknown split {_show(s)}; choose from "
                                  f"{', '.join(SPLITS)}"
                                  + (_suggest(s, SPLITS) if isinstance(s, str) else ""))
            if s in seen:
                raise JobError(p, f"split {s!r} is listed twice")
            seen.add(s)


@dataclass
class Job:
    schema: int = SCHEMA
    data: DataSpec = _section(DataSpec)
    model: ModelSpec = _section(ModelSpec)
    training: TrainingSpec = _section(TrainingSpec)
    inference: InferenceSpec = _section(InferenceSpec)
    device: str = _f("auto", _Device())
    seed: int = _f(0, _Int(0, 2 ** 63 - 1))
    time_budget_minutes: Optional[float] = _f(None, _Float(0, lo_open=True, null=True))

    # -- conversion
    @classmethod
    def from_dict(cls, d: Any) -> "Job":
        """Validate a parsed ``job.json`` and build the Job (raises :class:`JobError`)."""
        if not isinstance(d, dict):
            raise JobError(None, f"expected a JSON object at the top level, got {_show(d)}")
        # the schema decides whether this version can read the folder at all: these messages
        # are what a command and the panel say about a folder from another version
        if "schema" not in d:
            raise JobError("schema", f"missing: no schema, so another program or an early "
                                     f"version wrote it; this JCSAugment reads job.json schema "
                                     f"{SCHEMA} (add \"schema\": {SCHEMA}), or start a new run")
        schema = d["schema"]
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
            raise JobError("schema", f"expected a positive integer schema version, got "
                                     f"{_show(schema)}")
        if schema > SCHEMA:
            raise JobError("schema", f"schema {schema} is newer than this JCSAugment",
                           message=f"job.json schema {schema} is newer than this JCSAugment "
                                   f"(reads {SCHEMA}): a newer JCSAugment made this run folder; "
                                   f"update JCSAugment to open it, or start a new run")
        job = _build(cls, d, "")
        job._validate("")
        return job

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data; ``Job.from_dict(job.to_dict()) == job``."""
        out = dataclasses.asdict(self)
        if self.data.cases is not None:
            out["data"]["cases"] = [c.to_dict() for c in self.data.cases]
        return out

    def validate(self) -> "Job":
        """Check a Job built or edited in code; returns the normalised copy."""
        return Job.from_dict(self.to_dict())

    def with_overrides(self, dotted: Dict[str, Any]) -> "Job":
        """A validated copy with ``{"training.epochs": 5, "model.patch_size": [32, 32, 32]}``
        applied (the trainer's command-line options map onto these)."""
        d = self.to_dict()
        for key, value in dotted.items():
            parts = key.split(".")
            if not key or any(not p for p in parts):
                raise JobError(key or "(empty)", "is not a dotted field name like training.epochs")
            node = d
            for i, part in enumerate(parts[:-1]):
                nxt = node.get(part) if isinstance(node, dict) else None
                if part not in node:
                    where = ".".join(parts[:i])
                    raise JobError(".".join(parts[:i + 1]),
                                   "unknown key" + (f" in {where}" if where else "")
                                   + _suggest(part, list(node)))
                if not isinstance(nxt, dict):
                    raise JobError(key, f"{'.'.join(parts[:i + 1])} is not a section, so it has "
                                        f"no field {parts[i + 1]!r}")
                node = nxt
            node[parts[-1]] = copy.deepcopy(value)
        return Job.from_dict(d)

    # -- defaults that depend on other fields
    def resolved(self) -> "Job":
        """A copy with every ``null``-means-default field filled in (patch size, initial policy,
        policy and TEA learning rates, TEA top-z, TEA at inference)."""
        j = copy.deepcopy(self)
        bb = j.model.backbone
        if j.model.patch_size is None:
            j.model.patch_size = list(DEFAULT_PATCH_SIZE[bb])
        if j.training.init is None:
            j.training.init = DEFAULT_INIT[bb]
        if j.training.policy_lr is None:
            j.training.policy_lr = DEFAULT_POLICY_LR[bb]
        if j.training.tea_lr is None:
            j.training.tea_lr = DEFAULT_TEA_LR.get(j.training.mode, DEFAULT_TEA_LR_OTHER)
        if j.inference.tea_top_z is None:
            j.inference.tea_top_z = DEFAULT_TEA_TOP_Z[bb]
        if j.inference.tea == "auto":
            j.inference.tea = "learned" if j.training.mode in TEA_MODES else "heuristic"
        return j

    def value(self, dotted: str) -> Any:
        """The value of a dotted field (``"training.epochs"``), as ``to_dict`` has it; None for
        a name that is not a field."""
        node: Any = self.to_dict()
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    @property
    def total_iterations(self) -> int:
        return self.training.epochs * self.training.iterations_per_epoch

    def missing_files(self, base_dir: str) -> List[Tuple[str, str]]:
        """``(field, path)`` for each file or folder the job names that does not exist
        (relative paths resolved against ``base_dir``, the folder holding job.json)."""
        out = []

        def need(fld, p, folder=False):
            if p is None:
                return
            full = resolve_path(base_dir, p)
            ok = os.path.isdir(full) if folder else os.path.isfile(full)
            if not ok:
                out.append((fld, full))

        need("data.dataset", self.data.dataset, folder=True)
        for i, c in enumerate(self.data.cases or []):
            for k, im in enumerate(c.images):
                need(f"data.cases[{i}].images[{k}]", im)
            need(f"data.cases[{i}].label", c.label)
            need(f"data.cases[{i}].roi", c.roi)
        need("training.pretrained", self.training.pretrained)
        return out

    def _validate(self, path: str) -> None:
        for sec in (self.data, self.model, self.training, self.inference):
            v = getattr(sec, "_validate", None)
            if v is not None:
                v(_join(path, {DataSpec: "data", ModelSpec: "model", TrainingSpec: "training",
                               InferenceSpec: "inference"}[type(sec)]))
        mode = self.training.mode
        if self.inference.tea == "learned" and mode not in TEA_MODES:
            raise JobError("inference.tea", f"'learned' TEA needs a mode that learns it "
                                            f"({', '.join(TEA_MODES)}); mode is {mode!r}")
        if self.data.splits is not None:
            if mode != "tea-only" and not self.data.splits["train"]:
                raise JobError("data.splits.train", "is empty; training needs at least one case")
            if mode in POLICY_MODES and not self.data.splits["validation"]:
                raise JobError("data.splits.validation",
                               f"is empty; mode {mode!r} learns its policies on validation data")
        else:
            fr = self.data.split_fractions
            if mode != "tea-only" and fr["train"] <= 0:
                raise JobError("data.split_fractions.train",
                               "must be > 0; training needs at least one case")
            if mode in POLICY_MODES and fr["validation"] <= 0:
                raise JobError("data.split_fractions.validation",
                               f"must be > 0; mode {mode!r} learns its policies on validation "
                               f"data")


# ----------------------------------------------------------------------------- building

def _all_field_paths() -> Dict[str, List[str]]:
    """Leaf name -> dotted paths, to point a key put in the wrong section to its home."""
    out: Dict[str, List[str]] = {}
    for f in fields(Job):
        sec = f.metadata.get("section")
        if sec is None:
            out.setdefault(f.name, []).append(f.name)
        else:
            out.setdefault(f.name, []).append(f.name)
            for g in fields(sec):
                out.setdefault(g.name, []).append(f"{f.name}.{g.name}")
    return out


def _unknown_keys(path: str, d: Dict[str, Any], names: Sequence[str],
                  elsewhere: Optional[Dict[str, List[str]]] = None) -> None:
    unknown = [k for k in d if k not in names]
    if not unknown:
        return
    parts = []
    for k in unknown:
        hint = ""
        if isinstance(k, str):
            homes = [p for p in (elsewhere or {}).get(k, []) if p != _join(path, k)]
            if homes:
                hint = f" (it belongs in {homes[0]})"
            else:
                close = difflib.get_close_matches(k, list(names), n=1, cutoff=0.6)
                if close:
                    hint = f" (did you mean {_join(path, close[0])!r}?)"
        parts.append(f"{_join(path, str(k))!r}{hint}")
    where = f"in {path}" if path else "at the top level"
    noun = "unknown key" if len(unknown) == 1 else "unknown keys"
    raise JobError(_join(path, str(unknown[0])), f"{noun} {where}: {', '.join(parts)}; known: "
                                                 f"{', '.join(names)}")


def _build(cls, d: Any, path: str):
    if not isinstance(d, dict):
        raise JobError(path or None, f"expected an object, got {_show(d)}")
    names = [f.name for f in fields(cls)]
    _unknown_keys(path, d, names, _all_field_paths() if cls in (Job, DataSpec, ModelSpec,
                                                                 TrainingSpec, InferenceSpec)
                  else None)
    kwargs = {}
    for f in fields(cls):
        if f.name not in d or f.name == "schema":
            continue
        p = _join(path, f.name)
        if "section" in f.metadata:
            kwargs[f.name] = _build(f.metadata["section"], d[f.name], p)
        else:
            kwargs[f.name] = f.metadata["check"](p, d[f.name])
    if cls is Job:
        kwargs["schema"] = SCHEMA
    return cls(**kwargs)


_CASE_KEYS = ("id", "images", "label", "roi")


def _check_cases(path: str, cases: Any) -> List[Case]:
    if not isinstance(cases, list):
        raise JobError(path, f"expected an array of cases, got {_show(cases)}")
    if not cases:
        raise JobError(path, "is empty; give at least one case")
    out: List[Case] = []
    where: Dict[str, int] = {}
    for i, c in enumerate(cases):
        p = f"{path}[{i}]"
        if isinstance(c, Case):
            c = c.to_dict()
        if not isinstance(c, dict):
            raise JobError(p, f"expected a case object {{id, images, label}}, got {_show(c)}")
        _unknown_keys(p, c, _CASE_KEYS)
        for req in ("id", "images"):
            if req not in c:
                raise JobError(f"{p}.{req}", "missing")
        cid = c["id"]
        if not isinstance(cid, str) or not cid.strip():
            raise JobError(f"{p}.id", f"expected a non-empty string, got {_show(cid)}")
        if cid in where:
            raise JobError(f"{p}.id", f"case {cid!r} is listed twice (also {path}[{where[cid]}])")
        where[cid] = i
        images = c["images"]
        if isinstance(images, str):
            raise JobError(f"{p}.images", f"expected an array of image paths, got {_show(images)}"
                                          f" (write [{json.dumps(images)}])")
        if not isinstance(images, list) or not images:
            raise JobError(f"{p}.images", f"expected a non-empty array of image paths, got "
                                          f"{_show(images)}")
        imgs = [_Path(what="an image path")(f"{p}.images[{k}]", im) for k, im in enumerate(images)]
        label = _Path(null=True, what="a label path")(f"{p}.label", c.get("label"))
        roi = _Path(null=True, what="an ROI mask path")(f"{p}.roi", c.get("roi"))
        out.append(Case(id=cid, images=imgs, label=label, roi=roi))
    return out


def _check_splits(path: str, splits: Any, case_ids: Optional[List[str]]) -> Dict[str, List[str]]:
    if not isinstance(splits, dict):
        raise JobError(path, f"expected an object {{train, validation, test}}, got {_show(splits)}")
    _unknown_keys(path, splits, SPLITS)
    out: Dict[str, List[str]] = {}
    seen: Dict[str, str] = {}
    for name in SPLITS:
        p = _join(path, name)
        ids = splits.get(name, [])
        if ids is None:
            ids = []
        if not isinstance(ids, list):
            raise JobError(p, f"expected an array of case ids, got {_show(ids)}")
        lst = []
        for cid in ids:
            if not isinstance(cid, str) or not cid.strip():
                raise JobError(p, f"expected case ids (strings), got {_show(cid)}")
            if cid in seen:
                also = "" if seen[cid] == name else f" (also in {_join(path, seen[cid])})"
                raise JobError(p, f"case {cid!r} is listed twice{also}")
            if case_ids is not None and cid not in case_ids:
                raise JobError(p, f"case {cid!r} is not in data.cases"
                                  + _suggest(cid, case_ids))
            seen[cid] = name
            lst.append(cid)
        out[name] = lst
    return out


def _check_fractions(path: str, fr: Any) -> Dict[str, float]:
    if not isinstance(fr, dict):
        raise JobError(path, f"expected an object {{train, validation, test}}, got {_show(fr)}")
    _unknown_keys(path, fr, SPLITS)
    out = {name: _Float(0, 1)(_join(path, name), fr.get(name, 0.0)) for name in SPLITS}
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise JobError(path, f"fractions add up to {total:g}, not 1")
    return out


# ----------------------------------------------------------------------------- files

def resolve_path(base_dir: str, p: str) -> str:
    """A path from job.json: ``~`` expanded; relative ones are relative to ``base_dir``."""
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))


def _job_file(run_dir_or_file: str) -> str:
    if os.path.isdir(run_dir_or_file) or not run_dir_or_file.endswith(".json"):
        return os.path.join(run_dir_or_file, JOB_FILE)
    return run_dir_or_file


def _no_duplicate_keys(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise JobError(None, f"key {k!r} appears twice in one object")
        d[k] = v
    return d


def parse_job(text: str, source: str = JOB_FILE) -> Job:
    """Parse and validate job.json text."""
    try:
        d = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise JobError(None, f"{source} is not valid JSON: {e.msg} (line {e.lineno}, column "
                             f"{e.colno})") from None
    return Job.from_dict(d)


def load_job(run_dir: str) -> Job:
    """Read and validate ``run_dir/job.json`` (``run_dir`` may also be the file itself)."""
    path = _job_file(run_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise JobError(None, f"no job file: {path} does not exist") from None
    except OSError as e:
        raise JobError(None, f"cannot read {path}: {e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JobError(None, f"{path} is not UTF-8 text: {e}") from None
    return parse_job(text, path)


def save_job(run_dir: str, job: "Job | Dict[str, Any]") -> str:
    """Validate ``job`` and write ``run_dir/job.json`` atomically; returns the file's path."""
    if isinstance(job, dict):
        job = Job.from_dict(job)
    job = job.validate()
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, JOB_FILE)
    atomic_write_text(path, json.dumps(job.to_dict(), indent=1, allow_nan=False) + "\n")
    return path
