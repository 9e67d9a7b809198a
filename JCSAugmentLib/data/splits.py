"""Train / validation / test splits: drawn deterministically from a seed, or read from a file.

A split is a dict ``{"train": [...], "validation": [...], "test": [...]}`` of case ids. Model
selection uses the validation split only; the test split is for the final report.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from .dataset import DataError

__all__ = ["SPLIT_NAMES", "make_splits", "load_splits"]

#: The split names, in this order.
SPLIT_NAMES = ("train", "validation", "test")


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
