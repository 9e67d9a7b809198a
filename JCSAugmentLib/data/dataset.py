"""Finding the cases of a dataset: nnU-Net v2 raw folders, Medical Segmentation Decathlon
folders, or an explicit list of cases (e.g. from a job spec).

Nothing here reads voxels: discovery only parses ``dataset.json``, lists the files and checks
that every file a case names exists, so a typo surfaces before any heavy work starts.

* :func:`discover_dataset` picks the layout from the keys of ``<folder>/dataset.json``:
  ``channel_names`` + ``file_ending`` is nnU-Net v2, ``modality`` + ``training`` is the Decathlon
  (and nnU-Net v1) layout.
* :func:`dataset_from_list` builds the same :class:`DatasetSpec` from a list of dicts
  ``{"id", "images", "label", "roi"?}``.

Every problem raises :class:`DataError` (a ``ValueError``) whose message names the dataset
folder or the case and the file concerned.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ..image_files import IMAGE_EXTENSIONS

__all__ = [
    "DataError",
    "CaseSpec",
    "DatasetSpec",
    "discover_dataset",
    "dataset_from_list",
    "modality_of",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Channel names (upper case) taken to be MR sequences.
_MR_NAMES = {
    "MR", "MRI", "T1", "T1W", "T1C", "T1CE", "T1GD", "T2", "T2W", "FLAIR", "T2FLAIR",
    "ADC", "DWI", "PD", "PDW", "SWI", "DCE", "PERFUSION", "TRACE", "B0", "HBV", "CINE",
}


class DataError(ValueError):
    """A dataset, split file, case or preprocessing setting cannot be used.

    The message names the dataset folder or case (``"case 'abc': ..."``) and says what is
    wrong and, where it can, what to do about it.
    """


@dataclass
class CaseSpec:
    """The files of one case.

    ``images``: one file per channel in channel order (or a single multi-channel file: a vector
    image or a 4D NIfTI whose 4th axis is the channel axis). ``label``: the label map (integer
    values, 0 = background) on the images' grid. ``roi``: optional mask (nonzero = inside) on the
    same grid; background patch centres are drawn inside it and MR z-scores use its voxels.
    Paths are stored as absolute, normalised strings.
    """

    case_id: str
    images: List[str]
    #: None for an unlabelled case (a job's test case with ``"label": null``): it can be
    #: predicted, but :func:`~JCSAugmentLib.data.reading.read_case` refuses it for training
    label: Optional[str]
    roi: Optional[str] = None

    def files(self) -> List[str]:
        """Every file of the case: images, label (if any), then the ROI if any."""
        return (list(self.images) + ([self.label] if self.label else [])
                + ([self.roi] if self.roi else []))


@dataclass
class DatasetSpec:
    """A dataset: its cases and what their channels and labels mean.

    ``channel_names`` and ``modality`` have one entry per image channel; ``modality`` is
    ``'MR'``, ``'CT'`` or the channel's own name for anything else (e.g. ``'noNorm'``);
    ``'auto'`` normalisation z-scores every channel that is not ``'CT'`` (and leaves nnU-Net's
    ``'noNorm'`` channels untouched). ``labels`` maps label names to values (empty when unknown,
    e.g. for a list of cases given without names). ``layout`` is ``'nnunet_v2'``, ``'msd'`` or
    ``'list'``; ``root`` the dataset folder (None for a list).
    """

    name: str
    cases: List[CaseSpec]
    channel_names: List[str]
    modality: List[str]
    labels: Dict[str, int] = field(default_factory=dict)
    layout: str = "list"
    root: Optional[str] = None

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def case_ids(self) -> List[str]:
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> CaseSpec:
        """The case called ``case_id``; :class:`DataError` listing a few known ids otherwise."""
        for c in self.cases:
            if c.case_id == case_id:
                return c
        known = ", ".join(repr(c.case_id) for c in self.cases[:5])
        more = " ..." if len(self.cases) > 5 else ""
        raise DataError(f"dataset '{self.name}': no case '{case_id}' (cases: {known}{more})")

    def subset(self, case_ids: Iterable[str]) -> List[CaseSpec]:
        """The specs of ``case_ids``, in that order (e.g. one split)."""
        return [self.case(i) for i in case_ids]


def modality_of(channel_name: str) -> str:
    """``'CT'`` or ``'MR'`` for names that say so (``CT``; ``MRI``, ``T1``, ``T2w``, ``FLAIR``,
    ``ADC`` ...), else the name itself (stripped)."""
    name = str(channel_name).strip()
    upper = name.upper().replace("-", "").replace("_", "").replace(" ", "")
    if upper == "CT" or upper.startswith("CT"):
        return "CT"
    if upper in _MR_NAMES or upper.startswith("MR") or re.match(r"^T[12]", upper):
        return "MR"
    return name


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _abs(path: PathLike, base: Optional[str] = None) -> str:
    p = os.path.expanduser(os.fspath(path))
    if base is not None and not os.path.isabs(p):
        p = os.path.join(base, p)
    return os.path.normpath(os.path.abspath(p))


def _check_files(case: CaseSpec) -> None:
    for role, paths in (("image", case.images), ("label", [case.label] if case.label else []),
                        ("roi", [case.roi] if case.roi else [])):
        for p in paths:
            if not os.path.exists(p):
                raise DataError(f"case '{case.case_id}': {role} file {p} does not exist")
            if os.path.isdir(p):
                raise DataError(f"case '{case.case_id}': {role} path {p} is a folder, "
                                "not a volume file")


def _check_unique(cases: Sequence[CaseSpec], where: str) -> None:
    seen = set()
    for c in cases:
        if c.case_id in seen:
            raise DataError(f"{where}: case id '{c.case_id}' is listed twice; case ids must be "
                            "unique")
        seen.add(c.case_id)


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what}: {path} is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{what}: cannot read {path} ({exc.strerror or exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{what}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _indexed(mapping, key: str, where: str) -> List[str]:
    """Values of a {"0": ..., "1": ...} mapping in index order (must be 0..n-1)."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise DataError(f"{where}: '{key}' must be a non-empty object like "
                        f'{{"0": "T1", "1": "T2"}}, got {mapping!r}')
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: the keys of '{key}' must be channel numbers "
                        f"\"0\", \"1\", ..., got {list(mapping)}") from exc
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{where}: the keys of '{key}' must be 0..{len(items) - 1} without gaps, "
                        f"got {[i for i, _ in items]}")
    return [v for _, v in items]


def _labels_name_to_value(mapping, where: str) -> Dict[str, int]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise DataError(f"{where}: 'labels' must be a non-empty object, got {mapping!r}")
    out: Dict[str, int] = {}
    for name, value in mapping.items():
        if isinstance(value, (list, tuple)):
            raise DataError(f"{where}: label '{name}' is a region {list(value)}; nnU-Net "
                            "region-based labels are not supported, give one value per label")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
                or value < 0:
            raise DataError(f"{where}: label '{name}' must have a non-negative integer value, "
                            f"got {value!r}")
        out[str(name)] = int(value)
    if len(set(out.values())) != len(out):
        raise DataError(f"{where}: two label names share a value in {out}")
    return out


def _strip_ending(name: str, endings: Sequence[str]) -> str:
    lower = name.lower()
    for e in sorted(endings, key=len, reverse=True):
        if lower.endswith(e):
            return name[: len(name) - len(e)]
    return os.path.splitext(name)[0]


_ENDINGS = IMAGE_EXTENSIONS


# --------------------------------------------------------------------------
# nnU-Net v2
# --------------------------------------------------------------------------


def _discover_nnunet(root: str, meta: dict) -> DatasetSpec:
    where = f"nnU-Net dataset {root}"
    channel_names = _indexed(meta.get("channel_names"), "channel_names", where)
    labels = _labels_name_to_value(meta.get("labels"), where)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(f"{where}: 'file_ending' must be a string like \".nii.gz\", "
                        f"got {ending!r}")
    n_ch = len(channel_names)
    cases: List[CaseSpec] = []
    if isinstance(meta.get("dataset"), Mapping):  # explicit file lists (nnU-Net v2 option)
        for cid, entry in meta["dataset"].items():
            if not isinstance(entry, Mapping) or "images" not in entry or "label" not in entry:
                raise DataError(f"{where}: entry '{cid}' of 'dataset' needs 'images' and "
                                "'label'")
            imgs = entry["images"]
            imgs = [imgs] if isinstance(imgs, str) else list(imgs)
            cases.append(CaseSpec(str(cid), [_abs(p, root) for p in imgs],
                                  _abs(entry["label"], root)))
    else:
        img_dir = os.path.join(root, "imagesTr")
        lab_dir = os.path.join(root, "labelsTr")
        for d in (img_dir, lab_dir):
            if not os.path.isdir(d):
                raise DataError(f"{where}: folder {d} does not exist (an nnU-Net v2 raw dataset "
                                "has imagesTr/ and labelsTr/)")
        label_files = sorted(f for f in os.listdir(lab_dir)
                             if f.endswith(ending) and not f.startswith("."))
        if not label_files:
            raise DataError(f"{where}: {lab_dir} holds no '*{ending}' label file")
        ids = [f[: -len(ending)] for f in label_files]
        pattern = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + r"$")
        found: Dict[str, set] = {}
        for f in os.listdir(img_dir):
            m = pattern.match(f)
            if m and not f.startswith("."):
                found.setdefault(m.group(1), set()).add(int(m.group(2)))
        orphans = sorted(set(found) - set(ids))
        if orphans:
            raise DataError(f"{where}: image(s) of case '{orphans[0]}' in {img_dir} have no label "
                            f"file {os.path.join(lab_dir, orphans[0] + ending)}")
        for cid, lab in zip(ids, label_files):
            imgs = [os.path.join(img_dir, f"{cid}_{c:04d}{ending}") for c in range(n_ch)]
            extra = sorted(found.get(cid, set()) - set(range(n_ch)))
            if extra:
                raise DataError(f"case '{cid}': {img_dir} has channel file(s) {extra} but "
                                f"dataset.json declares {n_ch} channel(s) "
                                f"(channel_names {channel_names})")
            cases.append(CaseSpec(cid, [_abs(p) for p in imgs], _abs(os.path.join(lab_dir, lab))))
    _check_unique(cases, where)
    for c in cases:
        _check_files(c)
    name = str(meta.get("name") or os.path.basename(root))
    return DatasetSpec(name, cases, channel_names, [modality_of(n) for n in channel_names],
                       labels, "nnunet_v2", root)


# --------------------------------------------------------------------------
# Medical Segmentation Decathlon (and nnU-Net v1)
# --------------------------------------------------------------------------


def _discover_msd(root: str, meta: dict) -> DatasetSpec:
    where = f"Decathlon dataset {root}"
    channel_names = _indexed(meta.get("modality"), "modality", where)
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, Mapping) or not raw_labels:
        raise DataError(f"{where}: 'labels' must be a non-empty object like "
                        f'{{"0": "background", "1": "tumour"}}')
    try:
        labels = {str(v): int(k) for k, v in raw_labels.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: the keys of 'labels' must be label values \"0\", \"1\", ..., "
                        f"got {list(raw_labels)}") from exc
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(f"{where}: 'training' must be a non-empty list of "
                        '{"image": ..., "label": ...} entries')
    cases = []
    for k, entry in enumerate(training):
        if not isinstance(entry, Mapping) or "image" not in entry or "label" not in entry:
            raise DataError(f"{where}: training entry {k} must have 'image' and 'label', "
                            f"got {entry!r}")
        image = entry["image"]
        images = [image] if isinstance(image, str) else list(image)
        cid = _strip_ending(os.path.basename(images[0]), _ENDINGS)
        cases.append(CaseSpec(cid, [_abs(p, root) for p in images], _abs(entry["label"], root)))
    _check_unique(cases, where)
    for c in cases:
        _check_files(c)
    name = str(meta.get("name") or os.path.basename(root))
    return DatasetSpec(name, cases, channel_names, [modality_of(n) for n in channel_names],
                       labels, "msd", root)


# --------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------


def discover_dataset(path: PathLike) -> DatasetSpec:
    """The training cases of an nnU-Net v2 raw folder or a Decathlon folder.

    nnU-Net v2: ``dataset.json`` with ``channel_names`` ``{"0": "T1", ...}``, ``labels``
    ``{"background": 0, ...}`` and ``file_ending``; images ``imagesTr/{case}_{XXXX}{ending}``
    (one per channel), labels ``labelsTr/{case}{ending}``; an explicit ``dataset`` entry is used
    when present. Decathlon: ``dataset.json`` with ``modality`` ``{"0": "MRI"}``, ``labels``
    ``{"0": "background", ...}`` and ``training`` ``[{"image": "./imagesTr/x.nii.gz", "label":
    ...}]`` (images may be 4D, one channel per 4th-axis index). Test images (``imagesTs``) are
    not cases. Raises :class:`DataError` for a missing folder or ``dataset.json``, an unknown
    layout, a case whose file is missing (naming the file) or a case id listed twice.
    """
    root = _abs(path)
    if not os.path.exists(root):
        raise DataError(f"dataset folder {root} does not exist")
    if not os.path.isdir(root):
        raise DataError(f"dataset path {root} is a file; give the folder that holds "
                        "dataset.json")
    meta_path = os.path.join(root, "dataset.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"dataset folder {root} has no dataset.json (expected an nnU-Net v2 raw "
                        "dataset or a Medical Segmentation Decathlon task folder)")
    meta = _load_json(meta_path, f"dataset {root}")
    if "channel_names" in meta and "file_ending" in meta:
        return _discover_nnunet(root, meta)
    if "modality" in meta and "training" in meta:
        return _discover_msd(root, meta)
    raise DataError(f"dataset {root}: dataset.json has neither 'channel_names' + 'file_ending' "
                    "(nnU-Net v2) nor 'modality' + 'training' (Decathlon); its keys are "
                    f"{sorted(meta)}")


_LIST_KEYS = {"id", "images", "label", "roi", "split"}


def dataset_from_list(entries: Sequence[Mapping], name: str = "cases",
                      channel_names: Optional[Sequence[str]] = None,
                      modality: Optional[Sequence[str]] = None,
                      labels: Optional[Mapping[str, int]] = None,
                      base_dir: Optional[PathLike] = None) -> DatasetSpec:
    """A dataset from explicit cases, e.g. the ``cases`` of a job spec.

    Each entry is ``{"id": str, "images": [path, ...] or path, "label": path, "roi": path?}``
    (a ``"split"`` key is allowed and ignored here; see :mod:`.splits`). Relative paths are
    taken relative to ``base_dir`` (default: the current folder). ``channel_names`` default to
    ``channel0, channel1, ...`` (one per image file of the first case); ``modality`` defaults to
    :func:`modality_of` of each channel name, which gives ``'MR'`` for names such as ``T1c`` or
    ``Flair`` -- pass ``modality=["CT"]`` for CT. ``labels`` (name -> value) may be omitted.
    """
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence) or not entries:
        raise DataError("case list: expected a non-empty list of {\"id\", \"images\", \"label\"} "
                        f"entries, got {entries!r:.200}")
    base = None if base_dir is None else _abs(base_dir)
    cases = []
    for k, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise DataError(f"case list: entry {k} must be an object, got {type(e).__name__}")
        cid = e.get("id")
        what = f"case '{cid}'" if cid is not None else f"case list entry {k}"
        unknown = sorted(set(e) - _LIST_KEYS)
        if unknown:
            raise DataError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(_LIST_KEYS)}")
        if not isinstance(cid, str) or not cid.strip():
            raise DataError(f"{what}: 'id' must be a non-empty string, got {cid!r}")
        imgs = e.get("images")
        if isinstance(imgs, (str, os.PathLike)):
            imgs = [imgs]
        if not isinstance(imgs, Sequence) or not imgs:
            raise DataError(f"{what}: 'images' must be a file or a non-empty list of files, "
                            f"got {imgs!r}")
        label = e.get("label")
        if "label" not in e or (label is not None and not label):
            raise DataError(f"{what}: 'label' (the label map file) is missing (null marks an "
                            f"unlabelled test case)")
        roi = e.get("roi")
        cases.append(CaseSpec(cid, [_abs(p, base) for p in imgs],
                              _abs(label, base) if label is not None else None,
                              _abs(roi, base) if roi else None))
    _check_unique(cases, "case list")
    n_files = len(cases[0].images)
    for c in cases:
        if len(c.images) != n_files:
            raise DataError(f"case '{c.case_id}': {len(c.images)} image file(s) but case "
                            f"'{cases[0].case_id}' has {n_files}; every case needs the same "
                            "channels in the same order")
        _check_files(c)
    if channel_names is None:
        channel_names = [f"channel{i}" for i in range(n_files)]
    channel_names = [str(n) for n in channel_names]
    if modality is None:
        modality = [modality_of(n) for n in channel_names]
    modality = [modality_of(m) if modality_of(m) in ("MR", "CT") else str(m) for m in modality]
    if len(modality) != len(channel_names):
        raise DataError(f"case list: {len(channel_names)} channel name(s) but {len(modality)} "
                        "modality entries")
    return DatasetSpec(str(name), cases, channel_names, modality,
                       {} if labels is None else _labels_name_to_value(labels, "case list"),
                       "list", None)
