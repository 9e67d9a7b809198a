"""Evaluate a folder of predicted label maps against a folder of reference label maps.

``evaluate_folders(pred_dir, ref_dir, labels=None, csv_path=None, json_path=None)``

* Files are matched by *case name*: the file name without its extension (``.nii.gz``,
  ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``; case-insensitive).  Names must match
  exactly and both folders must hold the same set of cases; otherwise an
  :class:`EvaluationError` lists the cases missing on each side (and, when nothing matches at
  all, the names found on each side).  Hidden files, sub-folders and other extensions are
  ignored; two files with the same case name in one folder are an error.
* Each pair is read with SimpleITK and must share its grid: size, spacing, origin and
  direction equal within 1e-4 (absolute, or relative to the value when it is larger than 1).
  Unreadable files, grid mismatches, multi-component or non-integer label maps raise an
  :class:`EvaluationError` that names the case and the file.
* Metrics per case and label come from :func:`~.metrics.case_metrics` (definitions, HD95 and
  the empty-mask rules are in that module's docstring), with the spacing of the reference.
* ``labels=None``: every value > 0 found in any case, each on its own, plus ``"foreground"``
  (all values > 0).  A value absent from both maps of a case gets the both-empty result
  there (DSC 1, HD95 0), exactly as if it had been asked for by name.
* Summary per label and metric: mean and population standard deviation (``ddof=0``) over the
  cases where the metric is defined, ``n`` (how many) and ``nulls`` (how many were ``None``);
  mean and std are ``None`` when every case was ``None``.
* Outputs are written only after every case was computed, each through a temporary file in
  the destination folder and ``os.replace``; on any error nothing is written or replaced.

The returned dict (also the JSON file)::

    {"pred_dir": ..., "ref_dir": ..., "labels": {name: [values]}, "metric_definitions": {...},
     "cases": {case: {label: {dsc, sensitivity, precision, hd95, hd95_undefined,
                              volume_pred_ml, volume_ref_ml, tp, fp, fn}}},
     "summary": {label: {metric: {"mean", "std", "n", "nulls"}}}}

CSV columns: ``row, case, label`` then the metric keys.  ``row`` is ``case`` for the per-case
rows, then ``mean``, ``std`` and ``nulls`` for the summary rows of each label (``case`` empty
there).  ``None`` is an empty cell.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..image_files import GRID_TOLERANCE, IMAGE_EXTENSIONS

from .metrics import (
    METRIC_KEYS,
    SUMMARY_KEYS,
    EvaluationError,
    case_metrics,
    empty_metrics,
    normalise_labels,
)

__all__ = [
    "CASE_EXTENSIONS",
    "GRID_TOLERANCE",
    "EvaluationError",
    "evaluate_folders",
    "list_cases",
    "summarise",
    "format_table",
    "parse_labels",
    "add_evaluate_arguments",
    "run_evaluate_from_args",
]

#: Longest first, so ``.nii.gz`` wins over ``.gz``-less ``.nii`` (see image_files.py).
CASE_EXTENSIONS = IMAGE_EXTENSIONS
_SHOW = 10  # names listed in an error message before "..."


def _case_name(filename: str) -> Optional[str]:
    low = filename.lower()
    for ext in CASE_EXTENSIONS:
        if low.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)]
    return None


def list_cases(folder: str, what: str = "folder") -> Dict[str, str]:
    """``{case name: path}`` of the label files in ``folder`` (see the module docstring)."""
    if not os.path.isdir(folder):
        raise EvaluationError(f"{what} {folder!r} is not a folder")
    out: Dict[str, str] = {}
    for f in sorted(os.listdir(folder)):
        path = os.path.join(folder, f)
        if f.startswith(".") or not os.path.isfile(path):
            continue
        case = _case_name(f)
        if case is None:
            continue
        if case in out:
            raise EvaluationError(f"{what} {folder!r}: case {case!r} has two files, "
                                  f"{os.path.basename(out[case])} and {f}")
        out[case] = path
    return out


def _names(names: Sequence[str]) -> str:
    names = sorted(names)
    text = ", ".join(names[:_SHOW])
    return text + (f", ... ({len(names)} in all)" if len(names) > _SHOW else "")


def _match_cases(preds: Dict[str, str], refs: Dict[str, str], pred_dir: str,
                 ref_dir: str, ignore_unreferenced: bool = False) -> List[str]:
    if not refs:
        raise EvaluationError(f"no reference label files ({', '.join(CASE_EXTENSIONS)}) in "
                              f"{ref_dir!r}")
    if not preds:
        raise EvaluationError(f"no prediction label files ({', '.join(CASE_EXTENSIONS)}) in "
                              f"{pred_dir!r}")
    common = set(preds) & set(refs)
    if not common:
        raise EvaluationError(f"no case name matches between the folders (names must be equal "
                              f"without the extension): predictions {pred_dir!r} have "
                              f"[{_names(preds)}]; references {ref_dir!r} have "
                              f"[{_names(refs)}]")
    no_pred = set(refs) - set(preds)
    no_ref = set() if ignore_unreferenced else set(preds) - set(refs)
    if no_pred or no_ref:
        parts = []
        if no_pred:
            parts.append(f"{len(no_pred)} reference case(s) have no prediction: "
                         f"[{_names(no_pred)}]")
        if no_ref:
            parts.append(f"{len(no_ref)} prediction case(s) have no reference: "
                         f"[{_names(no_ref)}]")
        raise EvaluationError("the folders hold different cases: " + "; ".join(parts))
    return sorted(common)


def _read(path: str, case: str, what: str) -> sitk.Image:
    from ..io.file_checks import check_volume_file
    from ..io.volume import VolumeError
    try:  # the one checked reading path: memory budget and a complete payload first
        check_volume_file(path, "label")
    except VolumeError as e:
        raise EvaluationError(f"case {case!r}: cannot read the {what} {e.path}: "
                              f"{e.problem}") from None
    try:
        img = sitk.ReadImage(path)
    except Exception as e:  # SimpleITK raises RuntimeError with a long ITK trace
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if ln.strip()), "unreadable")
        raise EvaluationError(f"case {case!r}: cannot read the {what} {path}: "
                              f"{detail.strip()[:300]}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"case {case!r}: the {what} {path} has "
                              f"{img.GetNumberOfComponentsPerPixel()} components per voxel; "
                              f"expected a label map")
    if img.GetDimension() not in (2, 3):
        raise EvaluationError(f"case {case!r}: the {what} {path} is {img.GetDimension()}D; "
                              f"expected 2D or 3D")
    return img


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(
        abs(x - y) <= GRID_TOLERANCE * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))


def _check_grids(pred: sitk.Image, ref: sitk.Image, case: str, pred_path: str,
                 ref_path: str) -> None:
    checks = [("size", pred.GetSize(), ref.GetSize(), pred.GetSize() == ref.GetSize()),
              ("spacing", pred.GetSpacing(), ref.GetSpacing(), None),
              ("origin", pred.GetOrigin(), ref.GetOrigin(), None),
              ("direction", pred.GetDirection(), ref.GetDirection(), None)]
    if pred.GetDimension() != ref.GetDimension():
        raise EvaluationError(f"case {case!r}: the prediction is {pred.GetDimension()}D and "
                              f"the reference {ref.GetDimension()}D ({pred_path}, {ref_path})")
    for what, a, b, same in checks:
        if same is None:
            same = _close(a, b)
        if not same:
            fa = tuple(round(v, 6) for v in a)
            fb = tuple(round(v, 6) for v in b)
            raise EvaluationError(f"case {case!r}: prediction and reference grids differ in "
                                  f"{what}: {fa} ({pred_path}) vs {fb} ({ref_path}); "
                                  f"resample the prediction onto the reference grid")


def _label_array(img: sitk.Image, case: str, path: str, what: str) -> np.ndarray:
    """The label values, checked as training checks them: finite (NaN is an error, not 0),
    integer-valued and non-negative."""
    arr = sitk.GetArrayFromImage(img)
    if np.issubdtype(arr.dtype, np.floating):
        from ..io.volume import _nifti_nonfinite
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if not n_bad:  # ITK's NIfTI reader turns NaN and inf into 0: count them in the file
            raw = _nifti_nonfinite(path)
            n_bad = raw[0] + raw[1] if raw is not None else 0
        if n_bad:
            raise EvaluationError(f"case {case!r}: the {what} {path} holds {n_bad} NaN or inf "
                                  f"value(s); a label map holds whole numbers >= 0")
        if not np.array_equal(arr, np.round(arr)):
            raise EvaluationError(f"case {case!r}: the {what} {path} holds non-integer values; "
                                  f"expected a label map")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise EvaluationError(f"case {case!r}: the {what} {path} has pixel type "
                              f"{img.GetPixelIDTypeAsString()}; expected integer labels")
    if arr.size and arr.min() < 0:
        raise EvaluationError(f"case {case!r}: the {what} {path} holds "
                              f"{int(np.count_nonzero(arr < 0))} negative value(s) (smallest "
                              f"{arr.min()}); labels must be >= 0")
    return arr


def _label_values(arr: np.ndarray) -> List[int]:
    if arr.size and arr.min() >= 0 and arr.max() < 2 ** 16:
        counts = np.bincount(arr.ravel())
        return [int(v) for v in np.flatnonzero(counts) if v > 0]
    return [int(v) for v in np.unique(arr) if v > 0]


def summarise(cases: Mapping[str, Mapping[str, dict]],
              label_names: Sequence[str]) -> Dict[str, Dict[str, dict]]:
    """``{label: {metric: {"mean", "std", "n", "nulls"}}}`` over the cases (nulls ignored;
    population std)."""
    out: Dict[str, Dict[str, dict]] = {}
    for name in label_names:
        per_metric = {}
        for key in SUMMARY_KEYS:
            vals = [c[name][key] for c in cases.values() if name in c]
            good = [float(v) for v in vals if v is not None]
            n_null = len(vals) - len(good)
            if good:
                arr = np.asarray(good, dtype=np.float64)
                mean, std = float(arr.mean()), float(arr.std())
            else:
                mean = std = None
            per_metric[key] = {"mean": mean, "std": std, "n": len(good), "nulls": n_null}
        out[name] = per_metric
    return out


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _csv_text(result: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "case", "label", *METRIC_KEYS])
    for case, per_label in result["cases"].items():
        for name, m in per_label.items():
            w.writerow(["case", case, name, *(_cell(m[k]) for k in METRIC_KEYS)])
    for stat in ("mean", "std", "nulls"):
        for name, per_metric in result["summary"].items():
            row = []
            for k in METRIC_KEYS:
                row.append(_cell(per_metric[k][stat]) if k in per_metric else "")
            w.writerow([stat, "", name, *row])
    return buf.getvalue()


def _check_out_path(path: Optional[str], what: str) -> Optional[str]:
    if path is None:
        return None
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EvaluationError(f"{what} {path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise EvaluationError(f"{what} {path!r} is a folder")
    return path


def _write_all(files: Sequence[Tuple[str, str]]) -> None:
    """Write every ``(path, text)`` to a temp file first, then ``os.replace`` them all; if any
    temp file cannot be written, nothing is replaced and the temp files are removed."""
    tmps: List[Tuple[str, str]] = []
    try:
        for path, text in files:
            folder = os.path.dirname(os.path.abspath(path))
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                                       suffix=".tmp", dir=folder)
            tmps.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in tmps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _path in tmps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def evaluate_folders(pred_dir: str, ref_dir: str,
                     labels: Optional[Mapping[str, object]] = None,
                     csv_path: Optional[str] = None,
                     json_path: Optional[str] = None,
                     ignore_unreferenced: bool = False) -> dict:
    """Metrics of every prediction in ``pred_dir`` against the reference of the same case name
    in ``ref_dir``; see the module docstring for matching, checks, outputs and the result.
    ``ignore_unreferenced``: predictions without a reference are left out instead of being an
    error (a predictions folder that also holds other outputs, or cases nobody labelled); every
    reference still needs its prediction."""
    pred_dir, ref_dir = os.fspath(pred_dir), os.fspath(ref_dir)
    spec = normalise_labels(labels) if labels is not None else None
    csv_path = _check_out_path(csv_path, "--csv")
    json_path = _check_out_path(json_path, "--json")
    if csv_path and json_path and os.path.abspath(csv_path) == os.path.abspath(json_path):
        raise EvaluationError("the CSV and JSON outputs must be different files")

    preds = list_cases(pred_dir, "prediction folder")
    refs = list_cases(ref_dir, "reference folder")
    cases = _match_cases(preds, refs, pred_dir, ref_dir, ignore_unreferenced)

    per_case: Dict[str, Dict[str, dict]] = {}
    seen_values = set()
    for case in cases:
        p_img = _read(preds[case], case, "prediction")
        r_img = _read(refs[case], case, "reference")
        _check_grids(p_img, r_img, case, preds[case], refs[case])
        p = _label_array(p_img, case, preds[case], "prediction")
        r = _label_array(r_img, case, refs[case], "reference")
        spacing = tuple(reversed(r_img.GetSpacing()))
        if spec is None:
            values = sorted(set(_label_values(p)) | set(_label_values(r)))
            seen_values.update(values)
            case_spec = {str(v): [v] for v in values}
            if values:
                case_spec["foreground"] = values
            per_case[case] = case_metrics(p, r, spacing, case_spec) if case_spec else {}
        else:
            per_case[case] = case_metrics(p, r, spacing, spec)

    if spec is None:
        values = sorted(seen_values)
        spec = {str(v): [v] for v in values}
        spec["foreground"] = values  # [] when no case has any label: all both-empty
        for case in cases:  # labels absent from both maps of a case: the both-empty result
            per_case[case] = {name: per_case[case].get(name) or empty_metrics()
                              for name in spec}
    result = {
        "pred_dir": os.path.abspath(pred_dir),
        "ref_dir": os.path.abspath(ref_dir),
        "labels": spec,
        "metric_definitions": {
            "dsc": "2TP/(2TP+FP+FN)",
            "sensitivity": "TP/(TP+FN); null when the reference is empty",
            "precision": "TP/(TP+FP); null when the prediction is empty",
            "hd95": "mm; 95th percentile (numpy linear) of the pooled distances from each "
                    "surface voxel of either mask to the nearest surface voxel of the other; "
                    "surface = voxels with a 6-neighbour outside the mask; null when exactly "
                    "one mask is empty (see hd95_undefined), 0 when both are",
            "summary": "mean and population std over cases, nulls ignored and counted",
        },
        "cases": per_case,
        "summary": summarise(per_case, list(spec)),
    }
    files = []
    if csv_path:
        files.append((csv_path, _csv_text(result)))
    if json_path:
        files.append((json_path, json.dumps(result, indent=1, allow_nan=False) + "\n"))
    if files:
        try:
            _write_all(files)
        except OSError as e:  # read-only folder, full disk: nothing was replaced
            from ..run.control import describe_os_error
            where = ", ".join(p for p, _ in files)  # the user's names, not the temp file's
            why = describe_os_error(OSError(e.errno, e.strerror)) if e.errno else str(e)
            raise EvaluationError(f"cannot write {where}: {why}; nothing was written"
                                  ) from None
    return result


# --------------------------------------------------------------------------------------------
# reporting


def _pm(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        text = "n/a"
    else:
        text = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    if stat["nulls"]:
        text += f" ({stat['nulls']} undefined)"
    return text


def format_table(result: dict) -> str:
    """Markdown table of ``result["summary"]``: label, cases, DSC, SEN, PRC (fractions, 3
    decimals) and HD95 (mm, 2 decimals) as mean ± std, with the count of undefined values."""
    lines = ["| label | cases | DSC | SEN | PRC | HD95 (mm) |",
             "|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        n = s["dsc"]["n"] + s["dsc"]["nulls"]
        lines.append(f"| {name} | {n} | {_pm(s['dsc'], 3)} | {_pm(s['sensitivity'], 3)} | "
                     f"{_pm(s['precision'], 3)} | {_pm(s['hd95'], 2)} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# command line


def parse_labels(spec: str) -> Dict[str, List[int]]:
    """``--labels``: ``"whole=1,2,3,4;core=1,3,4;enhancing=4"``, inline JSON (``{...}``) or a
    JSON file holding ``{name: value or [values]}``.  A JSON object with a ``"labels"`` key
    (nnU-Net ``dataset.json``) uses that key; the older ``{"1": "name"}`` (value -> name) form
    is accepted too.  In JSON, entries whose value is 0 (background) are dropped."""
    if spec is None or not str(spec).strip():
        raise EvaluationError("--labels is empty")
    spec = str(spec).strip()
    if spec.startswith("{") or os.path.isfile(spec):
        if spec.startswith("{"):
            source = "--labels"
            text = spec
        else:
            source = spec
            try:
                with open(spec, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise EvaluationError(f"{spec}: cannot read ({e.strerror})") from None
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise EvaluationError(f"{source}: not valid JSON ({e})") from None
        if isinstance(obj, dict) and isinstance(obj.get("labels"), dict):
            obj = obj["labels"]
        if not isinstance(obj, dict) or not obj:
            raise EvaluationError(f"{source}: expected a JSON object name -> label value(s)")
        if all(isinstance(v, str) for v in obj.values()):  # {"1": "edema"}: value -> name
            try:
                obj = {name: int(v) for v, name in obj.items()}
            except ValueError:
                raise EvaluationError(f"{source}: expected name -> label value(s)") from None
        obj = {k: v for k, v in obj.items() if v != 0 and v != [0]}
        try:
            return normalise_labels(obj)
        except EvaluationError as e:
            raise EvaluationError(f"{source}: {e}") from None
    if spec.lower().endswith(".json"):
        raise EvaluationError(f"--labels {spec!r}: no such file")
    out: Dict[str, List[int]] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        name, eq, values = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise EvaluationError(f"--labels: {part!r} is not name=values (e.g. "
                                  f"'whole=1,2,3,4;core=1,3,4;enhancing=4')")
        if name in out:
            raise EvaluationError(f"--labels: label {name!r} is given twice")
        try:
            out[name] = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise EvaluationError(f"--labels: {part!r}: values must be integers separated by "
                                  f"commas") from None
    return normalise_labels(out)


def add_evaluate_arguments(parser) -> None:
    """The options of ``jcsaugment evaluate`` on an ``argparse`` (sub)parser."""
    parser.add_argument("--pred", required=True, metavar="DIR",
                        help="folder of predicted label maps (NIfTI, NRRD, MHA)")
    parser.add_argument("--ref", required=True, metavar="DIR",
                        help="folder of reference label maps with the same case names")
    parser.add_argument("--ignore-unreferenced", action="store_true",
                        help="leave out predictions that have no reference (default: that is "
                             "an error; every reference always needs its prediction)")
    parser.add_argument("--labels", metavar="SPEC",
                        help="'whole=1,2,3,4;core=1,3,4;enhancing=4' or a JSON file "
                             "{name: value or [values]}; default: each label value and "
                             "'foreground'")
    parser.add_argument("--csv", metavar="FILE",
                        help="write one row per case and label (default: not written)")
    parser.add_argument("--json", metavar="FILE",
                        help="write every number as JSON (default: not written)")


def run_evaluate_from_args(args) -> int:
    """Run ``jcsaugment evaluate``: evaluate, print the markdown table, return 0.  Errors the
    user can fix raise :class:`EvaluationError` (the CLI prints it and exits 2)."""
    labels = parse_labels(args.labels) if getattr(args, "labels", None) else None
    result = evaluate_folders(args.pred, args.ref, labels=labels,
                              csv_path=getattr(args, "csv", None),
                              json_path=getattr(args, "json", None),
                              ignore_unreferenced=getattr(args, "ignore_unreferenced", False))
    print(format_table(result), end="")
    return 0
