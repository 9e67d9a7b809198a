"""Cases for the panel: pair volumes with label maps by name, split them, check them.

Pairing rule (:func:`pair_by_name`)
-----------------------------------
A name is compared by its *key*: lower-cased, a file extension removed (``.nii.gz``, ``.nrrd``,
``.seg.nrrd``, ``.nii``, ``.mha``, ``.mhd``, ``.nhdr``), and cut into words at every run of
characters that are not letters or digits (spaces, ``_``, ``-``, ``.``, ...).  A label name loses
its label words (:data:`LABEL_WORDS`: label, labels, labelmap, seg, segmentation, mask, gt,
ground truth, annotation, manual, ...) at its end, or failing that at its start; a volume name
loses image words (:data:`IMAGE_WORDS`: image, img, volume, vol, scan, and nnU-Net's channel
suffix ``0000``) at its end.  So ``case1`` pairs with ``case1-label`` (Slicer's label-map
naming), ``case1_seg``, ``case1 segmentation`` (Slicer's segmentation naming), ``Case1_label``,
``case1_label_map``, ``seg_case1`` and ``case1.nii.gz`` with ``case1_gt.nii.gz``.

1. Exact keys first: a volume and a label whose keys are equal are paired.
2. Then, for what is left, a unique prefix match: a label whose words start with a volume's words
   (``case1 liver segmentation`` -> ``case1``), or a volume whose words start with the label's
   (``case1_t1`` -> ``case1_seg``), when exactly one candidate is left on both sides.

Each volume and each label is used at most once; a name that several others match equally well
is left unpaired (and reported by :func:`pair_report`) rather than guessed.  Digits are compared
as text: ``case01`` does not pair with ``case1``.

Imports neither torch nor numpy (the GUI process uses it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..image_files import IMAGE_EXTENSIONS
from ..run.job import POLICY_MODES  # plain data: imports neither torch nor numpy

__all__ = ["pair_by_name", "pair_report", "PairReport", "name_key", "auto_split",
           "normalise_split", "check_cases", "LABEL_WORDS", "IMAGE_WORDS", "SPLITS"]

SPLITS = ("train", "validation", "test")

#: words that mark a label map (removed from the end, or else the start, of a label's name)
LABEL_WORDS = frozenset({
    "label", "labels", "labelmap", "labelmaps", "lab", "lbl", "map", "seg", "segs",
    "segmentation", "segmentations", "segment", "mask", "masks", "gt", "groundtruth", "ground",
    "truth", "annotation", "annotations", "annot", "manual", "reference", "ref", "roi", "target",
})
#: words that mark an image volume (removed from the end of a volume's name)
IMAGE_WORDS = frozenset({"image", "images", "img", "volume", "vol", "scan", "0000"})

# name endings stripped before a name is split into words: the image files the engine reads,
# Slicer's segmentation files, and a stray compression suffix
_EXTENSIONS = (".seg.nrrd",) + IMAGE_EXTENSIONS + (".gz",)
_SPLIT_WORDS = re.compile(r"[^0-9a-z]+")

_SPLIT_ALIASES = {
    "train": "train", "training": "train", "tr": "train",
    "validation": "validation", "val": "validation", "valid": "validation",
    "validate": "validation", "va": "validation",
    "test": "test", "testing": "test", "ts": "test",
    "unused": None, "none": None, "ignore": None, "ignored": None, "skip": None, "": None,
}


def _words(name: str) -> List[str]:
    s = str(name).strip().lower()
    for ext in _EXTENSIONS:
        if s.endswith(ext) and len(s) > len(ext):
            s = s[:-len(ext)]
            break
    return [w for w in _SPLIT_WORDS.split(s) if w]


def _strip_end(words: List[str], vocabulary) -> List[str]:
    out = list(words)
    while len(out) > 1 and out[-1] in vocabulary:
        out.pop()
    return out


def name_key(name: str, label: bool = False) -> Tuple[str, ...]:
    """The words a name is compared by (see the module's pairing rule)."""
    words = _words(name)
    if label:
        stripped = _strip_end(words, LABEL_WORDS)
        if stripped == words:  # no label word at the end: try the start ("seg_case1")
            lead = list(words)
            while len(lead) > 1 and lead[0] in LABEL_WORDS:
                lead.pop(0)
            stripped = lead
        return tuple(stripped)
    return tuple(_strip_end(words, IMAGE_WORDS))


@dataclass
class PairReport:
    """What :func:`pair_report` found: pairs (in volume order) and what stayed unpaired."""
    pairs: List[Tuple[str, str]] = field(default_factory=list)
    unpaired_volumes: List[str] = field(default_factory=list)
    unpaired_labels: List[str] = field(default_factory=list)
    #: sentences about names that matched more than one other name (left unpaired)
    ambiguous: List[str] = field(default_factory=list)


def pair_report(volume_names: Sequence[str], label_names: Sequence[str]) -> PairReport:
    """Pair volumes with label maps by name (the module's rule); also say what stayed unpaired."""
    vols = list(volume_names)
    labs = list(label_names)
    vkeys = [name_key(v) for v in vols]
    lkeys = [name_key(lab, label=True) for lab in labs]
    match: Dict[int, int] = {}  # volume index -> label index
    used_labels = set()
    report = PairReport()

    # 1. exact keys, one-to-one; a key shared by several volumes or labels is ambiguous
    by_vkey: Dict[Tuple[str, ...], List[int]] = {}
    for i, k in enumerate(vkeys):
        by_vkey.setdefault(k, []).append(i)
    by_lkey: Dict[Tuple[str, ...], List[int]] = {}
    for j, k in enumerate(lkeys):
        by_lkey.setdefault(k, []).append(j)
    blocked_v, blocked_l = set(), set()
    for k, vi in by_vkey.items():
        lj = by_lkey.get(k, [])
        if not lj:
            continue
        if len(vi) == 1 and len(lj) == 1:
            match[vi[0]] = lj[0]
            used_labels.add(lj[0])
        else:
            report.ambiguous.append(
                f"{_names(vols[i] for i in vi)} and {_names(labs[j] for j in lj)} have the same "
                f"name once the label words are removed; pair them by hand")
            blocked_v.update(vi)
            blocked_l.update(lj)

    # 2. unique prefix matches among what is left
    free_v = [i for i in range(len(vols)) if i not in match and i not in blocked_v]
    free_l = [j for j in range(len(labs)) if j not in used_labels and j not in blocked_l]

    def prefix(a, b):
        return len(a) < len(b) and b[:len(a)] == a

    cand_v = {i: [j for j in free_l if prefix(vkeys[i], lkeys[j]) or prefix(lkeys[j], vkeys[i])]
              for i in free_v}
    cand_l: Dict[int, List[int]] = {}
    for i, js in cand_v.items():
        for j in js:
            cand_l.setdefault(j, []).append(i)
    for i in free_v:
        js = cand_v[i]
        if len(js) == 1 and len(cand_l[js[0]]) == 1:
            match[i] = js[0]
            used_labels.add(js[0])
        elif len(js) > 1:
            report.ambiguous.append(f"{vols[i]!r} could go with {_names(labs[j] for j in js)}; "
                                    f"pair it by hand")
    for j, iv in cand_l.items():
        if len(iv) > 1 and j not in used_labels:
            report.ambiguous.append(f"{labs[j]!r} could go with {_names(vols[i] for i in iv)}; "
                                    f"pair it by hand")

    report.pairs = [(vols[i], labs[match[i]]) for i in range(len(vols)) if i in match]
    report.unpaired_volumes = [v for i, v in enumerate(vols) if i not in match]
    report.unpaired_labels = [lab for j, lab in enumerate(labs) if j not in used_labels]
    return report


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def pair_by_name(volume_names: Sequence[str], label_names: Sequence[str]
                 ) -> List[Tuple[str, str]]:
    """``[(volume name, label name), ...]`` in the volumes' order; see the module's rule."""
    return pair_report(volume_names, label_names).pairs


# ----------------------------------------------------------------------------- splits

def normalise_split(value: Any) -> Optional[str]:
    """``"train"``, ``"validation"``, ``"test"`` or ``None`` (not used) from a user's word
    (``Training``, ``val``, ``Test``, ``unused``, ``None`` ...); ``ValueError`` otherwise."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[key]
    raise ValueError(f"unknown split {value!r}; use train, validation, test or unused")


def auto_split(case_ids: Sequence[str],
               fractions: Optional[Mapping[str, float]] = None,
               seed: int = 0) -> Dict[str, str]:
    """``{case id: "train" | "validation" | "test"}``, drawn reproducibly.

    The same ids and seed give the same split whatever their order (the ids are sorted, then
    shuffled by ``random.Random(seed)``).  ``fractions`` (default 0.6 / 0.2 / 0.2) are
    normalised; validation and test get ``round(n * fraction)`` cases.  With two or more cases
    there is always at least one training case and, unless the validation fraction is 0, at
    least one validation case; a test case needs three or more cases (training and validation
    come first).  One case goes to training.
    """
    fr = {"train": 0.6, "validation": 0.2, "test": 0.2}
    if fractions is not None:
        unknown = [k for k in fractions if k not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split name(s) {unknown}; use {', '.join(SPLITS)}")
        fr = {k: float(fractions.get(k, 0.0)) for k in SPLITS}
    if any(v < 0 or v != v for v in fr.values()) or sum(fr.values()) <= 0:
        raise ValueError(f"split fractions must be non-negative and not all 0, got {fr}")
    total = sum(fr.values())
    fr = {k: v / total for k, v in fr.items()}
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"case id(s) {dup} appear more than once")
    n = len(ids)
    if n == 0:
        return {}
    if n == 1:
        return {ids[0]: "train"}
    n_val = int(round(n * fr["validation"]))
    n_test = int(round(n * fr["test"]))
    if fr["validation"] > 0:
        n_val = max(1, n_val)
    if fr["test"] > 0 and n >= 3:
        n_test = max(1, n_test)
    while n - n_val - n_test < 1:  # keep a training case: give up test cases first
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    order = sorted(ids)
    random.Random(int(seed)).shuffle(order)
    out = {}
    for k, cid in enumerate(order):
        out[cid] = "validation" if k < n_val else "test" if k < n_val + n_test else "train"
    return {cid: out[cid] for cid in ids}


# ----------------------------------------------------------------------------- checks

def _get(row: Mapping[str, Any], *keys, default=None):
    for k in keys:
        if k in row:
            return row[k]
    return default


def _display(x: Any) -> str:
    """A node's name (``GetName()``), a path's base name, or ``str``."""
    get_name = getattr(x, "GetName", None)
    if callable(get_name):
        try:
            return str(get_name())
        except Exception:  # pragma: no cover - a dead node
            pass
    return str(x)


def _identity(x: Any) -> Any:
    """What decides that two rows use the same image or label: a node's ID, else the value."""
    get_id = getattr(x, "GetID", None)
    if callable(get_id):
        try:
            return ("node", get_id())
        except Exception:  # pragma: no cover
            pass
    return ("value", x if isinstance(x, (str, int, float, tuple)) else id(x))


def check_cases(rows: Sequence[Mapping[str, Any]], mode: Optional[str] = None) -> List[str]:
    """Problems with the case table, as sentences a user can act on (empty: ready to train).

    Each row is a dict with ``id`` (or ``case_id``), ``images`` (a list of nodes or paths; or
    ``image`` / ``image_nodes``), ``label`` (or ``label_node``; None for none) and ``split``
    (train, validation, test, or unused/None).  ``mode`` (the training mode) decides whether a
    validation case is required: the modes that learn policies need one; with ``mode=None`` it
    is always required.
    """
    problems: List[str] = []
    if not rows:
        return ["There are no cases: add at least two labelled volumes (one for training, one "
                "for validation)."]
    seen_ids: Dict[str, int] = {}
    image_users: Dict[Any, List[str]] = {}
    label_users: Dict[Any, List[str]] = {}
    channels: Dict[int, List[str]] = {}
    counts = {"train": 0, "validation": 0, "test": 0}
    for k, row in enumerate(rows, 1):
        cid = _get(row, "id", "case_id")
        name = str(cid).strip() if cid is not None else ""
        shown = repr(name) if name else f"row {k}"
        if not name:
            problems.append(f"Case in row {k} has no name: give every case a name.")
        elif name in seen_ids:
            problems.append(f"The case name {name!r} is used twice (rows {seen_ids[name]} and "
                            f"{k}): give each case its own name.")
        else:
            seen_ids[name] = k
        images = _get(row, "images", "image_nodes", "image")
        if images is None or images == "":
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        images = [im for im in images if im is not None and im != ""]
        label = _get(row, "label", "label_node")
        if label == "":
            label = None
        try:
            split = normalise_split(_get(row, "split"))
        except ValueError as e:
            problems.append(f"Case {shown}: {e}.")
            continue
        if split is None:
            continue  # not used: nothing else to check
        counts[split] += 1
        if not images:
            problems.append(f"Case {shown} has no image volume: choose one.")
        else:
            channels.setdefault(len(images), []).append(name or f"row {k}")
        for im in images:
            image_users.setdefault(_identity(im), []).append(name or f"row {k}")
        if label is None:
            if split in ("train", "validation"):
                what = "training" if split == "train" else "validation"
                problems.append(f"Case {shown} is a {what} case but has no label map: choose "
                                f"one, or move the case to test.")
        else:
            label_users.setdefault(_identity(label), []).append(name or f"row {k}")
            if any(_identity(label) == _identity(im) for im in images):
                problems.append(f"Case {shown} uses the same volume as its image and its label "
                                f"map: choose its label map.")
    for users in image_users.values():
        if len(users) > 1:
            problems.append(f"Cases {_names(users)} use the same image volume: each case needs "
                            f"its own.")
    for users in label_users.values():
        if len(users) > 1:
            problems.append(f"Cases {_names(users)} use the same label map: each case needs "
                            f"its own.")
    if len(channels) > 1:
        parts = [f"{n} image(s) in {_names(names)}" for n, names in sorted(channels.items())]
        problems.append("Every case needs the same number of image channels, but there are "
                        + "; ".join(parts) + ".")
    if counts["train"] == 0 and mode != "tea-only":
        problems.append("No case is in the training split: put at least one labelled case "
                        "there.")
    if counts["validation"] == 0 and (mode is None or mode in POLICY_MODES):
        why = (f"mode {mode!r} learns its augmentation on validation data" if mode
               else "the modes that learn augmentation need it")
        problems.append(f"No case is in the validation split ({why}): put at least one "
                        f"labelled case there.")
    return problems
