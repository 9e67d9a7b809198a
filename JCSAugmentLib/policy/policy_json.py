"""Policies as human-readable JSON (``policy.json`` of a run, ``--policy FILE`` of the CLI).

A policy file is data: it is parsed with ``json`` and validated against the operation tables
(group names, option names, sizes, finite numbers) before any tensor is built. Either
``logits`` or ``probabilities`` may be given per categorical (hand-written policies can use
probabilities); when both are present the logits are used. Files are written atomically
(temporary file in the same folder, then rename), so a reader never sees half a policy.

Layout::

    {"format": "jcsaugment-policy", "version": 1,
     "tra": {"classes": [{"name": "background",
                          "groups": [{"group": "scaling", "options": [...],
                                      "logits": [...], "probabilities": [...]}, ...]}, ...]},
     "tea": {"options": [...], "logits": [...], "probabilities": [...]},
     "meta": {...}}
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional, Tuple

import torch

from ..augment.tables import TEA_OPS, TRA_GROUPS
from .policies import ClassSpecificTRAPolicy, TEAPolicy, TRAPolicy

FORMAT = "jcsaugment-policy"
VERSION = 1


class PolicyFileError(ValueError):
    """A policy file or dict that does not match the operation tables."""


def _categorical(logits: torch.Tensor, options) -> Dict[str, Any]:
    lg = logits.detach().double().cpu()
    return {"options": list(options), "logits": [round(float(v), 8) for v in lg],
            "probabilities": [round(float(v), 8) for v in torch.softmax(lg, -1)]}


def policy_to_dict(tra: Optional[ClassSpecificTRAPolicy] = None,
                   tea: Optional[TEAPolicy] = None, meta: Optional[dict] = None) -> dict:
    out: Dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if tra is not None:
        classes = []
        for name, pol in zip(tra.class_names, tra.policies):
            groups = []
            for g, lg in zip(TRA_GROUPS, pol.logits):
                groups.append({"group": g.name, **_categorical(lg, [o.name for o in g.options])})
            classes.append({"name": name, "groups": groups})
        out["tra"] = {"classes": classes}
    if tea is not None:
        out["tea"] = _categorical(tea.logits, [op.name for op in TEA_OPS])
    if meta:
        out["meta"] = meta
    return out


def _logits_of(entry: dict, where: str, options) -> torch.Tensor:
    if not isinstance(entry, dict):
        raise PolicyFileError(f"{where}: expected an object, got {type(entry).__name__}")
    if "options" in entry and list(entry["options"]) != list(options):
        raise PolicyFileError(f"{where}: options {entry['options']} do not match the table "
                              f"{list(options)}")
    key = "logits" if "logits" in entry else "probabilities" if "probabilities" in entry else None
    if key is None:
        raise PolicyFileError(f"{where}: needs 'logits' or 'probabilities'")
    values = entry[key]
    if not isinstance(values, list) or len(values) != len(options):
        raise PolicyFileError(f"{where}: '{key}' must be a list of {len(options)} numbers, got "
                              f"{len(values) if isinstance(values, list) else type(values).__name__}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise PolicyFileError(f"{where}: '{key}' must contain only numbers")
    if not all(math.isfinite(v) for v in values):
        raise PolicyFileError(f"{where}: '{key}' contains a non-finite value (NaN or inf)")
    t = torch.tensor(values, dtype=torch.float64)
    if key == "probabilities":
        if (t < 0).any() or abs(float(t.sum()) - 1) > 1e-4:
            raise PolicyFileError(f"{where}: probabilities must be >= 0 and sum to 1 "
                                  f"(sum {float(t.sum()):.6f})")
        t = torch.where(t > 0, t.clamp_min(1e-300).log(), torch.full_like(t, -1e4))
    return t


def policy_from_dict(d: dict) -> Tuple[Optional[ClassSpecificTRAPolicy], Optional[TEAPolicy],
                                       dict]:
    """Validate and build (tra, tea, meta); a missing part is None."""
    if not isinstance(d, dict):
        raise PolicyFileError("a policy must be a JSON object")
    if d.get("format") != FORMAT:
        raise PolicyFileError(f"not a JCSAugment policy (format {d.get('format')!r}, expected "
                              f"{FORMAT!r})")
    if d.get("version") != VERSION:
        raise PolicyFileError(f"policy version {d.get('version')!r} is not supported (this "
                              f"version reads {VERSION})")
    tra = tea = None
    if "tra" in d:
        classes = d["tra"].get("classes") if isinstance(d["tra"], dict) else None
        if not isinstance(classes, list) or not classes:
            raise PolicyFileError("tra.classes must be a non-empty list")
        policies, names = [], []
        for ci, cls in enumerate(classes):
            name = cls.get("name", f"class{ci}") if isinstance(cls, dict) else None
            groups = cls.get("groups") if isinstance(cls, dict) else None
            if not isinstance(groups, list) or len(groups) != len(TRA_GROUPS):
                raise PolicyFileError(f"tra class '{name}': needs {len(TRA_GROUPS)} groups, got "
                                      f"{len(groups) if isinstance(groups, list) else groups!r}")
            logits = []
            for g, entry in zip(TRA_GROUPS, groups):
                if isinstance(entry, dict) and entry.get("group", g.name) != g.name:
                    raise PolicyFileError(f"tra class '{name}': group '{entry.get('group')}' "
                                          f"found where '{g.name}' belongs")
                logits.append(_logits_of(entry, f"tra class '{name}' group '{g.name}'",
                                         [o.name for o in g.options]))
            pol = TRAPolicy()
            with torch.no_grad():
                for p, v in zip(pol.logits, logits):
                    p.copy_(v)
            policies.append(pol)
            names.append(str(name))
        tra = ClassSpecificTRAPolicy(policies, names)
    if "tea" in d:
        logits = _logits_of(d["tea"], "tea", [op.name for op in TEA_OPS])
        tea = TEAPolicy()
        with torch.no_grad():
            tea.logits.copy_(logits)
    return tra, tea, dict(d.get("meta") or {})


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON to ``path`` atomically."""
    from ..run.status import atomic_write_json
    atomic_write_json(path, obj)


def save_policy(path: str, tra: Optional[ClassSpecificTRAPolicy] = None,
                tea: Optional[TEAPolicy] = None, meta: Optional[dict] = None) -> None:
    d = policy_to_dict(tra, tea, meta)
    # Validate what we are about to write (non-finite logits must not reach a file).
    policy_from_dict(json.loads(json.dumps(d, allow_nan=True)))
    write_json_atomic(path, d)


def load_policy(path: str):
    """Read and validate a policy file; returns (tra, tea, meta)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise PolicyFileError(f"policy file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyFileError(f"{path}: not valid JSON ({e})") from None
    try:
        return policy_from_dict(d)
    except PolicyFileError as e:
        raise PolicyFileError(f"{path}: {e}") from None
