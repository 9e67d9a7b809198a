"""Train / validation / test splits: drawn deterministically from a seed, or read from a file.

A split is a dict ``{"train": [...], "validation": [...], "test": [...]}`` of case ids. Model
selection uses the validation split only; the test split is for the final report.

A dataset folder may carry its splits (:func:`choose_dataset_splits`, what ``jcsaugment train
--dataset DIR`` uses): ``DIR/splits.json`` in that form, or nnU-Net v2's
``DIR/splits_final.json``, a list of folds ``[{"train": [...], "val": [...]}, ...]`` of which
one (``--fold``, default 0) is used. nnU-Net's folds are a cross-validation of the labelled
training cases (``imagesTr``) and name no test cases; the held-out images in ``imagesTs`` have
no labels in nnU-Net's layout and are not cases here. So a fold gives an **empty test split**:
the run selects its model on the fold's validation cases, and the test images are segmented
with ``jcsaugment predict --image``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .dataset import DataError

__all__ = ["SPLIT_NAMES", "SPLITS_FILE", "NNUNET_SPLITS_FILE", "DEFAULT_FOLD", "ChosenSplits",
           "make_splits", "load_splits", "read_splits_file", "splits_from_nnunet_folds",
           "choose_dataset_splits"]

#: The split names, in this order.
SPLIT_NAMES = ("train", "validation", "test")
#: A dataset folder's own splits, in this module's form.
SPLITS_FILE = "splits.json"
#: nnU-Net v2's cross-validation folds (it writes them beside its preprocessed data).
NNUNET_SPLITS_FILE = "splits_final.json"
#: The fold of an nnU-Net splits file used when none is asked for (nnU-Net's first fold).
DEFAULT_FOLD = 0


def make_splits(case_ids: Sequence[str], seed: int,
                fractions: Tuple[float, float, float] = (0.7, 0.15, 0.15)
                ) -> Dict[str, List[str]]:
    """Split ``case_ids`` at random, reproducibly, into train / validation / test.

    ``fractions`` (train, validation, test) are normalised to sum to 1. The same ids and seed
    give the same splits whatever the order of ``case_ids``. Validation and test get
    ``round(n * fraction)`` cases but at least one each (a test fraction of 0 gives an empty
    test split), training gets the rest; each list keeps the order of ``case_ids``. Raises
    :class:`DataError` for duplicate ids or too few cases to fill every split.
    """
    ids = [str(c) for c in case_ids]
    dup = _first_duplicate(ids)
    if dup is not None:
        raise DataError(f"make_splits: case id '{dup}' appears twice")
    try:
        fr = np.asarray(fractions, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"make_splits: fractions must be 3 numbers (train, validation, test), "
                        f"got {fractions!r}") from exc
    if fr.size != 3 or not np.all(np.isfinite(fr)) or np.any(fr < 0):
        raise DataError(f"make_splits: fractions must be 3 non-negative numbers (train, "
                        f"validation, test), got {fractions!r}")
    if fr[0] <= 0 or fr[1] <= 0:
        raise DataError(f"make_splits: the train and validation fractions must be > 0, got "
                        f"{fractions!r}")
    fr = fr / fr.sum()
    want_test = fr[2] > 0
    n = len(ids)
    need = 3 if want_test else 2
    if n < need:
        raise DataError(f"make_splits: {n} case(s) cannot fill {need} non-empty splits "
                        f"(train, validation{', test' if want_test else ''}); add cases or give "
                        "the splits explicitly")
    n_val = max(1, int(round(n * fr[1])))
    n_test = max(1, int(round(n * fr[2]))) if want_test else 0
    while n - n_val - n_test < 1:  # keep at least one training case
        if n_test > 1 and n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    order = sorted(ids)
    perm = np.random.default_rng(int(seed)).permutation(n)
    shuffled = [order[i] for i in perm]
    val = set(shuffled[:n_val])
    test = set(shuffled[n_val:n_val + n_test])
    return {
        "train": [c for c in ids if c not in val and c not in test],
        "validation": [c for c in ids if c in val],
        "test": [c for c in ids if c in test],
    }


def _first_duplicate(ids):
    seen = set()
    for c in ids:
        if c in seen:
            return c
        seen.add(c)
    return None


def load_splits(path_or_dict: Union[str, "os.PathLike[str]", Mapping],
                case_ids: Sequence[str]) -> Dict[str, List[str]]:
    """Read splits ``{"train": [...], "validation": [...], "test": [...]}`` and check them.

    ``path_or_dict`` is a JSON file or the dict itself. ``"val"`` is accepted for
    ``"validation"``; a missing ``"test"`` means none. Cases in no split are left out of
    training and evaluation. Raises :class:`DataError` for an unknown key, an id that is not
    one of ``case_ids``, an id in two splits (or twice in one), or no training or no
    validation case. Returns a dict with the three keys.
    """
    if isinstance(path_or_dict, Mapping):
        data, where = dict(path_or_dict), "splits"
    else:
        where = f"splits file {os.fspath(path_or_dict)}"
        try:
            with open(path_or_dict, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError as exc:
            raise DataError(f"{where} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a JSON object with 'train', 'validation' and "
                            f"'test' lists, got {type(data).__name__}")
    if "val" in data:
        if "validation" in data:
            raise DataError(f"{where}: give either 'val' or 'validation', not both")
        data["validation"] = data.pop("val")
    unknown = sorted(set(data) - set(SPLIT_NAMES))
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown}; expected {list(SPLIT_NAMES)}")
    known = set(str(c) for c in case_ids)
    out: Dict[str, List[str]] = {}
    owner: Dict[str, str] = {}
    for name in SPLIT_NAMES:
        ids = data.get(name, [])
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise DataError(f"{where}: '{name}' must be a list of case ids, got {ids!r:.100}")
        out[name] = []
        for cid in ids:
            if not isinstance(cid, str):
                raise DataError(f"{where}: '{name}' holds {cid!r}; case ids are strings")
            if cid not in known:
                raise DataError(f"{where}: case '{cid}' in '{name}' is not a case of the "
                                f"dataset ({len(known)} cases)")
            if cid in owner:
                other = owner[cid]
                raise DataError(f"{where}: case '{cid}' is in '{other}'"
                                + (" twice" if other == name else f" and in '{name}'")
                                + "; a case belongs to one split only")
            owner[cid] = name
            out[name].append(cid)
    if not out["train"]:
        raise DataError(f"{where}: no training case ('train' is empty or missing)")
    if not out["validation"]:
        raise DataError(f"{where}: no validation case ('validation' is empty or missing); "
                        "model selection needs at least one")
    return out


@dataclass(frozen=True)
class ChosenSplits:
    """The splits a new run takes from its dataset folder (:func:`choose_dataset_splits`).

    ``splits``: ``{"train", "validation", "test"}`` lists, or None when no file gave them (the
    job then draws them from its split seed). ``source``: the file read, or None.
    ``description``: one line saying which file was used (or that none was), for the user.
    """
    splits: Optional[Dict[str, List[str]]]
    source: Optional[str]
    description: str


def splits_from_nnunet_folds(folds: Any, fold: int, where: str) -> Dict[str, List[str]]:
    """Fold ``fold`` of nnU-Net v2's ``splits_final.json`` data (a list of ``{"train": [...],
    "val": [...]}``) as ``{"train", "validation", "test": []}`` (nnU-Net's folds name no test
    cases; see the module's docstring). Raises :class:`DataError` naming ``where`` for another
    shape or a fold that is not there."""
    if not isinstance(folds, list) or not folds:
        raise DataError(f"{where}: expected nnU-Net's list of folds [{{\"train\": [...], "
                        f"\"val\": [...]}}, ...], got {type(folds).__name__}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise DataError(f"{where}: it has folds 0 to {len(folds) - 1}; fold {fold!r} is not "
                        f"one of them")
    entry = folds[fold]
    if not isinstance(entry, Mapping) or set(entry) != {"train", "val"}:
        keys = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
        raise DataError(f"{where}: fold {fold} must be an object with 'train' and 'val' lists, "
                        f"got {keys}")
    return {"train": list(entry["train"]), "validation": list(entry["val"]), "test": []}


def _read_json(path, where: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{where} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where} cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc})") from exc


def _splits_of(data: Any, fold: Optional[int], where: str) -> Dict[str, List[str]]:
    if isinstance(data, list):
        return splits_from_nnunet_folds(data, DEFAULT_FOLD if fold is None else fold, where)
    if fold is not None:
        raise DataError(f"{where} holds one split, not nnU-Net's list of folds, so --fold "
                        f"{fold} does not apply to it")
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object with 'train', 'validation' and "
                        f"'test' lists, got {type(data).__name__}")
    if "val" in data and "validation" not in data:  # the job's splits say "validation"
        data = {("validation" if k == "val" else k): v for k, v in data.items()}
    return data


def read_splits_file(path: Union[str, "os.PathLike[str]"], fold: Optional[int] = None
                     ) -> Dict[str, List[str]]:
    """A splits file in either form: ``{"train", "validation" (or "val"), "test"}`` as it is,
    or nnU-Net's list of folds, of which fold ``fold`` (``DEFAULT_FOLD`` when None). The case
    ids are checked against the dataset later (:func:`load_splits`, the job). Raises
    :class:`DataError` for a missing or unreadable file, bad JSON, another shape, or a
    ``fold`` given for a file that has no folds."""
    where = f"splits file {os.fspath(path)}"
    return _splits_of(_read_json(path, where), fold, where)


def _describe(splits: Mapping[str, Any]) -> str:
    n = {k: len(v) if isinstance(v := splits.get(k), list) else 0 for k in SPLIT_NAMES}
    return f"{n['train']} train, {n['validation']} validation, {n['test']} test"


def choose_dataset_splits(dataset_dir: Union[str, "os.PathLike[str]"],
                          splits_path: Optional[Union[str, "os.PathLike[str]"]] = None,
                          fold: Optional[int] = None) -> ChosenSplits:
    """The splits a new run on ``dataset_dir`` uses, and a line saying where they came from.

    In this order: ``splits_path`` when given (either form); else, with ``fold`` given,
    ``DIR/splits_final.json`` (nnU-Net's folds); else ``DIR/splits.json``; else
    ``DIR/splits_final.json`` at ``DEFAULT_FOLD``; else none (``splits`` None: the job draws
    them from its split seed). Raises :class:`DataError` for a file that cannot be used, or
    for ``fold`` given where no ``splits_final.json`` is.
    """
    def chosen(path, fold_used):
        where = f"splits file {os.fspath(path)}"
        data = _read_json(path, where)
        splits = _splits_of(data, fold_used, where)
        which = (f" fold {DEFAULT_FOLD if fold_used is None else fold_used}"
                 if isinstance(data, list) else "")
        return ChosenSplits(splits, os.fspath(path),
                            f"splits: {os.fspath(path)}{which} ({_describe(splits)})")

    if splits_path is not None:
        return chosen(splits_path, fold)
    own = os.path.join(os.fspath(dataset_dir), SPLITS_FILE)
    nnunet = os.path.join(os.fspath(dataset_dir), NNUNET_SPLITS_FILE)
    if fold is not None:
        if not os.path.isfile(nnunet):
            raise DataError(f"--fold {fold}: {dataset_dir} has no {NNUNET_SPLITS_FILE} (copy "
                            f"nnU-Net's from its preprocessed folder, or pass it with --splits)")
        return chosen(nnunet, fold)
    if os.path.isfile(own):
        return chosen(own, None)
    if os.path.isfile(nnunet):
        return chosen(nnunet, DEFAULT_FOLD)
    return ChosenSplits(None, None, f"splits: none in {os.fspath(dataset_dir)} ({SPLITS_FILE} "
                                    f"or {NNUNET_SPLITS_FILE}); drawn from the job's split seed")

