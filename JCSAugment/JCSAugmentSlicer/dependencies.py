"""Dependencies of the JCSAugment module, checked and installed only when the user starts
something (never at import, never in a constructor).

- torch comes from the PyTorch extension (``PyTorchUtils``, imported inside a function so the
  module loads without the extension);
- the packages of ``Resources/requirements.txt`` (matplotlib) through
  ``slicer.packaging.pip_ensure`` where Slicer has it (5.12 and later), with a constraints file
  that pins the installed SimpleITK / numpy / torch / requests (so pip cannot replace them),
  else ``slicer.util.pip_install`` after the user confirms;
- SimpleITK, numpy, torch and requests are never installed or upgraded into Slicer's Python
  (Slicer ships its own; a PyPI SimpleITK breaks Slicer's).

The worker runs with ``PythonSlicer``, so everything must be present in Slicer's own Python.
"""

import os
import re

#: never installed or upgraded into Slicer's Python
NEVER_INSTALL = ("simpleitk", "numpy", "torch", "requests")
TORCH_REQUIREMENT = ">=2.1"


class DependencyError(RuntimeError):
    """A dependency is missing and was not installed; the message says what to do."""


def _requirementsPath():
    """JCSAugment/Resources/requirements.txt (this package sits in the module's folder)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "Resources", "requirements.txt")


def readRequirements(path=None):
    """The requirement lines of requirements.txt, without comments and without the packages
    that are never installed into Slicer (NEVER_INSTALL)."""
    out = []
    with open(path or _requirementsPath(), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            name = re.split(r"[\s<>=!~;\[]", line, 1)[0].lower().replace("_", "-")
            if name in NEVER_INSTALL:
                continue
            out.append(line)
    return out


def missingRequirements(lines):
    """The requirement lines that the running Python does not satisfy."""
    import importlib.metadata
    missing = []
    for line in lines:
        try:
            from packaging.requirements import Requirement
            req = Requirement(line)
            name, spec = req.name, req.specifier
        except ImportError:  # pragma: no cover - Slicer ships packaging
            name, spec = re.split(r"[\s<>=!~;\[]", line, 1)[0], None
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if spec is not None and version not in spec:
            missing.append(line)
    return missing


def _torchVersionOk(version):
    parts = re.findall(r"\d+", version or "")[:2]
    return len(parts) == 2 and (int(parts[0]), int(parts[1])) >= (2, 1)


def ensureTorch(askConfirmation=True, torchFound=None):
    """PyTorch in Slicer's Python (the worker runs with PythonSlicer), through the PyTorch
    extension's PyTorch Utils. Never imports torch here unless PyTorch Utils installs it."""
    import importlib.metadata
    import importlib.util
    if torchFound is None:
        torchFound = importlib.util.find_spec("torch") is not None
    if torchFound:
        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is not None and not _torchVersionOk(version):
            raise DependencyError(
                f"PyTorch {version} is installed, but JCSAugment needs PyTorch "
                f"{TORCH_REQUIREMENT}. "
                f"Update it in the PyTorch Utils module (uninstall, restart Slicer, install), then "
                f"try again.")
        return
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError(
            "JCSAugment needs PyTorch, which comes from the 'PyTorch' extension: install it from "
            "the Extensions Manager, restart Slicer, then try again.") from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise DependencyError("PyTorch was not installed, so training cannot start. Install it "
                              "from the PyTorch Utils module, or press Start again.")


def _pipEnsureFunction():
    """(slicer.packaging, its pip_ensure) on Slicer >= 5.12, else (None, None)."""
    try:
        module = __import__("slicer.packaging", fromlist=["pip_ensure"])
    except ImportError:
        return None, None
    function = getattr(module, "pip_ensure", None)
    return (module, function) if function is not None else (None, None)


def _constraintsFile():
    """A pip constraints file pinning the installed versions of NEVER_INSTALL (pip's own way to
    keep them; pip_ensure's skip_packages is documented upstream as a discouraged
    workaround), or None when none of them is installed."""
    import importlib.metadata
    import tempfile
    pins = []
    for name in NEVER_INSTALL:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if not pins:
        return None
    handle, path = tempfile.mkstemp(prefix="JCSAugment-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write("\n".join(pins) + "\n")
    return path


def ensureDependencies(askConfirmation=True, requireTorch=True):
    """Make sure Slicer's Python has what the worker needs: torch (PyTorch extension) and the
    packages of Resources/requirements.txt (matplotlib). Asks before installing anything; never
    reinstalls SimpleITK, numpy, torch or requests; never runs at import. Raises
    DependencyError with what to do when something is missing and was not installed."""
    if requireTorch:
        ensureTorch(askConfirmation)
    lines = readRequirements()
    missing = missingRequirements(lines)
    if not missing:
        return
    module, pipEnsure = _pipEnsureFunction()
    if pipEnsure is not None:
        loader = getattr(module, "load_requirements", None)
        if loader is not None:
            reqs = [r for r in loader(_requirementsPath())
                    if r.name.lower().replace("_", "-") not in NEVER_INSTALL]
        else:
            from packaging.requirements import Requirement
            reqs = [Requirement(line) for line in lines]
        import inspect
        accepted = inspect.signature(pipEnsure).parameters
        wanted = {"prompt_install": askConfirmation, "requester": "JCSAugment",
                  "constraints": _constraintsFile()}
        # only the keywords this Slicer's pip_ensure has: one call, so the user is asked once
        keywords = {k: v for k, v in wanted.items() if k in accepted and v is not None}
        try:
            pipEnsure(reqs, **keywords)
        except RuntimeError as e:  # the user declined
            raise DependencyError(f"Python packages {', '.join(missing)} were not installed: "
                                  f"{e}") from None
        finally:
            if wanted["constraints"] is not None:
                os.remove(wanted["constraints"])
    else:
        if askConfirmation and not _slicer().util.confirmOkCancelDisplay(
                "JCSAugment needs these Python packages in Slicer: " + ", ".join(missing)
                + ". Install them now (this takes a minute)?", "JCSAugment dependencies"):
            raise DependencyError(f"Python packages {', '.join(missing)} were not installed.")
        _slicer().util.pip_install(" ".join(missing))
    import importlib
    importlib.invalidate_caches()
    still = missingRequirements(lines)
    if still:
        raise DependencyError(f"Python packages {', '.join(still)} are still missing (Slicer may "
                              f"need a restart after installing them).")


def _slicer():
    import slicer
    return slicer
