"""JCSAugmentSlicer/dependencies.py against the pip_ensure of Slicer 5.12.3 (its signature as in
slicer/packaging.py): one call, so the user is asked once; the never-install packages pinned by
a constraints file (not the discouraged skip_packages)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "JCSAugment"))
from JCSAugmentSlicer import dependencies as deps  # noqa: E402


def test_pip_ensure_called_once_with_constraints(monkeypatch):
    pytest.importorskip("packaging")
    calls = []
    state = {"missing": ["matplotlib"]}

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True,
                   prompt_restart=True, requester=None, skip_in_testing=True,
                   show_progress=True):
        with open(constraints, encoding="utf-8") as f:
            pins = f.read().split()
        calls.append({"requirements": [str(r) for r in requirements], "pins": pins,
                      "skip": skip_packages, "prompt": prompt_install, "by": requester,
                      "constraints": constraints})
        state["missing"] = []  # installed

    monkeypatch.setattr(deps, "missingRequirements", lambda lines: list(state["missing"]))
    monkeypatch.setattr(deps, "readRequirements", lambda: ["matplotlib>=3.5"])
    monkeypatch.setattr(deps, "_pipEnsureFunction", lambda: (object(), pip_ensure))
    deps.ensureDependencies(askConfirmation=True, requireTorch=False)
    assert len(calls) == 1
    call = calls[0]
    assert call["requirements"] == ["matplotlib>=3.5"] and call["skip"] is None
    assert call["prompt"] is True and call["by"] == "JCSAugment"
    assert any(p.startswith("numpy==") for p in call["pins"]), call["pins"]
    assert not os.path.exists(call["constraints"]), "the constraints file is removed"
