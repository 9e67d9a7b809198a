"""The panel's training settings and the ``job.json`` they make.

:class:`PanelSettings` holds what the panel's widgets edit; :func:`build_job` turns it and the
exported cases (:func:`build_dataset_job`: a dataset folder) into a job dict that
:meth:`Job.from_dict` accepts (it is validated before it is returned, so a mistake surfaces as a
:class:`~JCSAugmentLib.run.job.JobError` naming the field).  Which job field each setting is
comes from :class:`~JCSAugmentLib.run.job_builder.TrainSettings`
(:meth:`PanelSettings.train_settings`), the mapping the command line uses too.

Budget: ``epochs`` always bounds the run (and sets the length of the learning-rate schedule);
``minutes`` (None = no time limit) adds ``job.time_budget_minutes``: the worker then stops
after that many minutes, saves a checkpoint and the policies, and finishes with reason
``budget``.  To train "for 30 minutes", give ``minutes=30`` and enough epochs.

Device: ``"auto"``, ``"cpu"`` or ``"cuda:N"`` as the panel lists them (:mod:`.devices`).  The
job records ``"cuda"`` for ``"cuda:N"``: the worker is started with ``CUDA_VISIBLE_DEVICES``
naming that one GPU (``WorkerProcess(run_dir, device=settings.device)``), so inside the worker
it is the only (first) CUDA device and no other GPU gets a context.

Imports neither torch nor numpy (the GUI process uses it).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..run.job import BACKBONES, DEVICE_PATTERN, INITS, MODES, Job
from ..run.job_builder import TrainSettings, new_job
from .cases import SPLITS, auto_split, normalise_split

__all__ = ["PanelSettings", "build_job", "build_dataset_job", "settings_from_job",
           "new_run_dir", "job_device", "MODE_LABELS", "BACKBONE_LABELS"]

#: what the panel's mode combo box shows for each trainer mode
MODE_LABELS = {
    "joint": "Joint TRA + TEA, class-specific (the method)",
    "class-specific": "Class-specific TRA (learned)",
    "learned": "Learned TRA, one policy for all patches",
    "tea-only": "TEA only, on a trained model",
    "heuristic": "Heuristic augmentation (nnU-Net / DeepMedic)",
    "randaugment-s": "RandAugment, small magnitude",
    "randaugment-m": "RandAugment, medium magnitude",
    "randaugment-l": "RandAugment, large magnitude",
    "none": "No augmentation",
}
BACKBONE_LABELS = {"unet3d": "3D U-Net", "deepmedic": "DeepMedic"}



@dataclass
class PanelSettings:
    """What the panel's training section edits.

    ``init`` None = the backbone's heuristic (nnU-Net's for the U-Net, DeepMedic's for
    DeepMedic).  ``patch_size``, ``batch_size`` and ``iterations_per_epoch`` None = the engine's
    defaults.  ``pretrained``: a checkpoint, needed by mode ``tea-only``.  ``split_fractions``
    draw the splits of cases that come without one.
    """
    backbone: str = "unet3d"
    mode: str = "joint"
    init: Optional[str] = None
    epochs: int = 100
    minutes: Optional[float] = None
    device: str = "auto"
    output_folder: str = ""
    seed: int = 0
    patch_size: Optional[Sequence[int]] = None
    batch_size: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    pretrained: Optional[str] = None
    tea_at_inference: str = "auto"
    predict_splits: List[str] = field(default_factory=lambda: ["test"])
    split_fractions: Dict[str, float] = field(
        default_factory=lambda: {"train": 0.6, "validation": 0.2, "test": 0.2})

    # -- persistence (QSettings, a JSON file)
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["patch_size"] is not None:
            d["patch_size"] = list(d["patch_size"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PanelSettings":
        """Known keys only (unknown ones, from another version, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: copy.deepcopy(v) for k, v in dict(d).items() if k in names})

    def problems(self) -> List[str]:
        """What is wrong with these settings, as sentences (empty: fine)."""
        out = []
        if self.backbone not in BACKBONES:
            out.append(f"Unknown backbone {self.backbone!r}: choose "
                       f"{' or '.join(BACKBONES)}.")
        if self.mode not in MODES:
            out.append(f"Unknown training mode {self.mode!r}: choose one of "
                       f"{', '.join(MODES)}.")
        if self.init is not None and self.init not in INITS:
            out.append(f"Unknown initial policy {self.init!r}: choose {' or '.join(INITS)}.")
        if not _positive_int(self.epochs):
            out.append(f"Epochs must be a whole number of at least 1 (got {self.epochs!r}).")
        if self.minutes is not None and not (_number(self.minutes) and self.minutes > 0):
            out.append(f"The time budget must be more than 0 minutes (got {self.minutes!r}); "
                       f"leave it empty for no time limit.")
        if not isinstance(self.device, str) or \
                not DEVICE_PATTERN.match(self.device.strip().lower()):
            out.append(f"Unknown device {self.device!r}: choose auto, cpu or cuda:N.")
        if not self.output_folder or not str(self.output_folder).strip():
            out.append("Choose an output folder for the run.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            out.append(f"The seed must be a whole number >= 0 (got {self.seed!r}).")
        if self.patch_size is not None and (
                len(list(self.patch_size)) != 3
                or not all(_positive_int(v) for v in self.patch_size)):
            out.append(f"The patch size must be three whole numbers >= 1 (got "
                       f"{self.patch_size!r}).")
        for name in ("batch_size", "iterations_per_epoch"):
            v = getattr(self, name)
            if v is not None and not _positive_int(v):
                out.append(f"{name.replace('_', ' ').capitalize()} must be a whole number of at "
                           f"least 1 (got {v!r}).")
        if self.mode == "tea-only" and not self.pretrained:
            out.append("Mode 'TEA only' learns test-time augmentation for a trained model: "
                       "choose that model's checkpoint.")
        return out

    def train_settings(self) -> TrainSettings:
        """These settings as the engine's :class:`TrainSettings` (the job fields they set):
        None stays "the engine's default"; the device as the job records it
        (:func:`job_device`)."""
        return TrainSettings(
            backbone=self.backbone, mode=self.mode, init=self.init, epochs=int(self.epochs),
            time_budget_minutes=None if self.minutes is None else float(self.minutes),
            device=job_device(self.device), seed=int(self.seed),
            patch_size=None if self.patch_size is None else [int(v) for v in self.patch_size],
            batch_size=None if self.batch_size is None else int(self.batch_size),
            iterations_per_epoch=(None if self.iterations_per_epoch is None
                                  else int(self.iterations_per_epoch)),
            pretrained=os.fspath(self.pretrained) if self.pretrained else None,
            tea_at_inference=self.tea_at_inference,
            predict_splits=list(self.predict_splits))

    def _check_for_job(self) -> None:
        """Raise ValueError with the problems that stop a job (the output folder is the GUI's
        business, where job.json goes, not the job's)."""
        problems = [p for p in self.problems() if not p.startswith("Choose an output folder")]
        if problems:
            raise ValueError(" ".join(problems))


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def job_device(device: str) -> str:
    """The job's ``device`` for the panel's choice: ``cuda:N`` -> ``cuda`` (the worker sees only
    GPU N, through ``CUDA_VISIBLE_DEVICES``), the rest as they are."""
    d = (device or "auto").strip().lower()
    return "cuda" if d.startswith("cuda:") else d


def build_job(case_dicts: Sequence[Mapping[str, Any]], settings: PanelSettings) -> Dict[str, Any]:
    """A validated ``job.json`` dict (schema 1) for these cases and settings.

    ``case_dicts``: ``{"id", "images": [paths], "label": path or None, "split": ...}`` as
    :func:`JCSAugmentLib.slicer_scene.export_cases` returns them (``roi`` may be given too).
    ``split`` is train / validation / test (aliases such as "val" are accepted) or unused/None
    (the case is left out of the job).  When no case has a ``split`` key, the splits are drawn
    by :func:`~.cases.auto_split` with ``settings.seed`` and ``settings.split_fractions``; when
    only some have one, ``ValueError`` names those without.  The splits are always written out
    explicitly, so the job trains on exactly what the panel showed.

    Raises ``ValueError`` (``JobError`` is one) with a sentence on a problem.
    """
    settings._check_for_job()
    cases = [dict(c) for c in case_dicts]
    if not cases:
        raise ValueError("There are no cases: add at least two labelled volumes.")
    has_split = ["split" in c for c in cases]
    if all(has_split):
        splits_of = {}
        for c in cases:
            try:
                splits_of[str(c["id"])] = normalise_split(c["split"])
            except ValueError as e:
                raise ValueError(f"case {c.get('id')!r}: {e}") from None
    elif any(has_split):
        missing = [str(c.get("id")) for c, h in zip(cases, has_split) if not h]
        raise ValueError(f"cases {missing} have no split while others have one: give every "
                         f"case a split (train, validation, test or unused)")
    else:
        splits_of = auto_split([str(c.get("id")) for c in cases], settings.split_fractions,
                               settings.seed)
    job_cases = []
    splits: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for c in cases:
        cid = str(c.get("id"))
        split = splits_of.get(cid)
        if split is None:
            continue
        images = c.get("images")
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        entry = {"id": cid, "images": [os.fspath(p) for p in (images or [])],
                 "label": None if c.get("label") is None else os.fspath(c["label"])}
        if c.get("roi") is not None:
            entry["roi"] = os.fspath(c["roi"])
        job_cases.append(entry)
        splits[split].append(cid)
    if not job_cases:
        raise ValueError("Every case is marked unused: put cases in the train and validation "
                         "splits.")
    data = {"cases": job_cases, "splits": splits, "split_seed": int(settings.seed)}
    return new_job(data, settings.train_settings()).to_dict()


def build_dataset_job(folder: str, settings: PanelSettings,
                      split_fractions: Optional[Mapping[str, float]] = None,
                      split_seed: int = 0) -> Dict[str, Any]:
    """A validated ``job.json`` dict for a dataset folder (nnU-Net v2 raw or Medical
    Segmentation Decathlon: a folder with ``dataset.json``); the worker draws the splits from
    ``split_fractions`` (scaled to add up to 1; default the settings') and ``split_seed``.

    Raises ``ValueError`` with a sentence when the folder is not a dataset or a setting is
    wrong."""
    settings._check_for_job()
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"Choose a dataset folder (a folder with dataset.json); {folder!r} "
                         f"is not a folder.")
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise ValueError(f"{folder} has no dataset.json: choose an nnU-Net v2 raw or "
                         f"Medical Segmentation Decathlon dataset folder.")
    fractions = dict(split_fractions or settings.split_fractions)
    total = sum(fractions.values()) or 1.0
    data = {"dataset": os.path.abspath(folder), "split_seed": int(split_seed),
            "split_fractions": {k: v / total for k, v in fractions.items()}}
    return new_job(data, settings.train_settings()).to_dict()


def settings_from_job(job: Any, output_folder: str = "") -> PanelSettings:
    """The panel's settings for an existing job (a Job or a job dict), e.g. on re-attaching to a
    run folder; cases and splits are not part of the settings."""
    if isinstance(job, Mapping):
        job = Job.from_dict(dict(job))
    t = TrainSettings.from_job(job)
    return PanelSettings(
        backbone=t.backbone, mode=t.mode, init=t.init, epochs=t.epochs,
        minutes=t.time_budget_minutes, device=t.device, output_folder=output_folder,
        seed=t.seed, patch_size=t.patch_size, batch_size=t.batch_size,
        iterations_per_epoch=t.iterations_per_epoch, pretrained=t.pretrained,
        tea_at_inference=t.tea_at_inference, predict_splits=list(t.predict_splits),
        split_fractions=dict(job.data.split_fractions))


def new_run_dir(output_folder: str, name: str = "run", now: Optional[float] = None) -> str:
    """A new, empty run folder ``OUTPUT/NAME-YYYYMMDD-HHMMSS[-k]`` (created); raises OSError
    with the folder's name when it cannot be made."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"
    base = os.path.join(os.path.expanduser(output_folder), f"{safe}-{stamp}")
    path, k = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            k += 1
            path = f"{base}-{k}"
