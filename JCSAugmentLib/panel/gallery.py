"""The policy gallery in the panel: which case, which row, which command, which file.

The panel shows what a policy *does* to the user's own scan: one TRA group's row (each option
at its nominal magnitude, with its learned and initial probability) or the TEA row, for a
foreground- and a background-centred patch of a labelled case of the run. The picture is drawn
by ``jcsaugment policy RUN --gallery IMAGE LABEL --group G --out PNG`` in its own process (it
needs torch); this module is Qt-free and torch-free, so the GUI process can list the choices
and build the command without importing either.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

#: the TRA groups in table order (augment/tables.py TRA_GROUPS; test_panel_gallery.py checks
#: that they agree, since importing the table here would import torch)
TRA_GROUP_NAMES = ("scaling", "rotation_axis0", "rotation_axis1", "rotation_axis2",
                   "mirror_axis0", "mirror_axis1", "mirror_axis2", "gamma", "inverted_gamma",
                   "brightness_shift", "brightness_scale", "contrast", "blur_sharpen", "noise",
                   "low_resolution")
#: the gallery's TEA row
TEA_ROW = "tea"

#: where the gallery pictures of a run go
GALLERY_FOLDER = "gallery"


@dataclass(frozen=True)
class GalleryCase:
    """A labelled case of the run the gallery can show (its files as the run reads them)."""
    id: str
    images: List[str]
    label: str
    split: str


@dataclass(frozen=True)
class GalleryJob:
    """A gallery being drawn for the panel: its process (a WorkerProcess), the picture it
    writes, and what that shows (for the status line)."""
    worker: object
    png: str
    what: str
    npz: Optional[str] = None  #: the same rows as volumes (gallery_npz_path), if asked for


def gallery_notes(log_text: str) -> List[str]:
    """The command's ``note: ...`` lines (a case without foreground, a run without a learned
    policy), as sentences for the panel."""
    return [line.strip()[len("note: "):] for line in log_text.splitlines()
            if line.strip().startswith("note: ")]


@dataclass(frozen=True)
class GalleryRow:
    """A choice of the panel's row combo box: what it says and what ``--group`` gets (None:
    every row)."""
    text: str
    group: Optional[str]


def gallery_rows() -> List[GalleryRow]:
    """The rows a user can ask for: every row, each TRA group, the TEA row."""
    rows = [GalleryRow("Every group", None)]
    rows += [GalleryRow(f"TRA: {name.replace('_', ' ')}", name) for name in TRA_GROUP_NAMES]
    rows.append(GalleryRow("TEA: the most probable ops", TEA_ROW))
    return rows


def gallery_cases(run_dir: str) -> List[GalleryCase]:
    """The run's labelled cases, training cases first, then validation, then test (a gallery
    needs a label: its foreground centre and outline). Raises ValueError with a sentence when
    the run's job cannot be read."""
    from ..data.job_data import dataset_and_splits
    from ..run.folder import RunFolder
    folder = RunFolder(run_dir)
    dataset, splits = dataset_and_splits(folder.job(), folder.path)
    order = {"train": 0, "validation": 1, "test": 2}
    split_of = {case_id: name for name, members in splits.items() for case_id in members}
    out = []
    for case in dataset.cases:
        if case.label:
            out.append(GalleryCase(case.case_id, list(case.images), case.label,
                                   split_of.get(case.case_id, "unused")))
    return sorted(out, key=lambda c: (order.get(c.split, 3), c.id))


def gallery_png_path(run_dir: str, case_id: str, group: Optional[str]) -> str:
    """``RUN/gallery/<case>_<group or all>.png`` (names made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id).strip("_") or "case"
    return os.path.join(os.path.abspath(run_dir), GALLERY_FOLDER,
                        f"{safe}_{group or 'all'}.png")


def gallery_npz_path(png: str) -> str:
    """The volumes beside a gallery picture: ``<picture>.npz``."""
    return os.path.splitext(png)[0] + ".npz"


def gallery_command(run_dir: str, case: GalleryCase, out_png: str,
                    group: Optional[str] = None, python: Optional[str] = None,
                    device: str = "cpu", arrays: Optional[str] = None,
                    extra: Sequence[str] = ()) -> List[str]:
    """``python -m JCSAugmentLib policy RUN --gallery IMAGE LABEL [--channel F ...] [--group G]
    --out PNG [--arrays NPZ] --device D``: the gallery of ``case`` under the run's policies (the
    initial ones when it has learned none; the picture says so); ``arrays``: also the drawn
    rows as volumes for the slice views."""
    from .worker_process import find_python_slicer
    if group is not None and group not in TRA_GROUP_NAMES + (TEA_ROW,):
        raise ValueError(f"no gallery row {group!r}")
    cmd = [python or find_python_slicer(), "-m", "JCSAugmentLib", "policy",
           os.path.abspath(run_dir), "--gallery", os.path.abspath(case.images[0]),
           os.path.abspath(case.label)]
    for channel in case.images[1:]:
        cmd += ["--channel", os.path.abspath(channel)]
    if group is not None:
        cmd += ["--group", group]
    cmd += ["--out", os.path.abspath(out_png)]
    if arrays is not None:
        cmd += ["--arrays", os.path.abspath(arrays)]
    cmd += ["--device", device, *extra]
    return cmd
