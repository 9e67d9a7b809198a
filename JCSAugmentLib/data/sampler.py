"""Patch centres for training: foreground / background (nnU-Net style) or balanced over all label
values (DeepMedic), with the case volumes kept as tensors on the training device.

The sampler only chooses *where* patches are; cropping and augmentation happen together in
``augment.tra.augment_patches``, straight from the whole-volume tensors this sampler holds::

    draw = sampler.sample(batch, rng)
    tra = policy.sample(draw.patch_class, generator)
    params = sample_tra_params(tra.choices, generator)
    x, y = augment_patches(sampler.images(draw.case_index), sampler.labels(draw.case_index),
                           draw.centres, params, sampler.stats(draw.case_index), patch_size)

A patch may reach past the volume border (``augment_patches`` pads it); only a patch larger
than a whole case is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..augment.stats import CaseStats
from .dataset import DataError
from .preprocess import Case

__all__ = ["PatchDraw", "PatchSampler"]

#: A class covering more than this fraction of a volume is sampled by rejection instead of
#: through a stored index list (which would cost 4 bytes per voxel of the class).
DENSE_FRACTION = 0.5


@dataclass
class PatchDraw:
    """Where n patches come from: ``case_index`` (n ints, into the sampler's cases),
    ``centres`` (n ``(z, y, x)`` voxel tuples), ``centre_label`` LongTensor (n,) the label value
    at each centre, ``patch_class`` LongTensor (n,) 1 where that value is > 0 else 0 (the class
    whose TRA policy augments the patch). Tensors are on the CPU."""

    case_index: List[int]
    centres: List[Tuple[int, int, int]]
    centre_label: torch.Tensor
    patch_class: torch.Tensor

    def __len__(self) -> int:
        return len(self.case_index)


class _VoxelSet:
    """The voxels of one class in one case, drawn uniformly with replacement: a stored
    flat-index list (int32 when the volume allows) for sparse classes, rejection sampling
    against the label (and ROI) for classes that fill most of the volume."""

    def __init__(self, label_flat: np.ndarray, roi_flat: Optional[np.ndarray], value,
                 index: Optional[np.ndarray], count: int):
        self.label_flat, self.roi_flat, self.value = label_flat, roi_flat, value
        self.index, self.count = index, count

    @classmethod
    def build(cls, label_flat: np.ndarray, roi_flat: Optional[np.ndarray], value) -> "_VoxelSet":
        """``value`` is an int label value or ``'fg'`` (any label > 0)."""
        mask = label_flat > 0 if value == "fg" else label_flat == value
        if roi_flat is not None:
            mask &= roi_flat
        count = int(np.count_nonzero(mask))
        if count > DENSE_FRACTION * label_flat.size:
            return cls(label_flat, roi_flat, value, None, count)
        idx_type = np.int32 if label_flat.size <= np.iinfo(np.int32).max else np.int64
        return cls(label_flat, roi_flat, value, np.flatnonzero(mask).astype(idx_type), count)

    def _accept(self, cand: np.ndarray) -> np.ndarray:
        lab = self.label_flat[cand]
        ok = lab > 0 if self.value == "fg" else lab == self.value
        if self.roi_flat is not None:
            ok &= self.roi_flat[cand]
        return ok

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.index is not None:
            return self.index[rng.integers(0, self.index.size, size=n)].astype(np.int64)
        out, need = [], n
        while need > 0:
            cand = rng.integers(0, self.label_flat.size, size=max(2 * need, 16))
            ok = cand[self._accept(cand)][:need]
            out.append(ok)
            need -= ok.size
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def _patch3(patch_size) -> Tuple[int, int, int]:
    try:
        p = tuple(int(v) for v in patch_size)
    except (TypeError, ValueError) as exc:
        raise DataError(f"patch sampler: patch_size must be 3 integers (D, H, W), got "
                        f"{patch_size!r}") from exc
    if len(p) != 3 or min(p) < 1:
        raise DataError(f"patch sampler: patch_size must be 3 positive integers (D, H, W), got "
                        f"{patch_size!r}")
    return p  # type: ignore[return-value]


class PatchSampler:
    """Draws patch centres from preprocessed cases and holds their tensors on ``device``.

    ``patch_size`` ``(D, H, W)`` must fit inside every case (a :class:`DataError` names the
    case and both sizes otherwise). Default mode: of n samples, the first ``round(n *
    fg_fraction)`` (half up) are centred on a foreground voxel (label > 0), the rest on a
    background voxel (label 0, inside the case's ROI when it has one); each sample's case is
    drawn uniformly. ``class_balanced=True`` (DeepMedic): samples are spread as evenly as
    possible over every label value present in the cases (background last; remainders go to
    randomly chosen values), each from a case drawn uniformly among those that contain the
    value; ``fg_fraction`` is then unused.

    Images are float32 ``(C, Z, Y, X)`` tensors and labels ``(1, Z, Y, X)`` uint8/int16
    tensors; on the CPU they share memory with the cases' arrays.
    """

    def __init__(self, cases: Sequence[Case], patch_size, fg_fraction: float = 0.5,
                 class_balanced: bool = False, device="cpu"):
        cases = list(cases)
        if not cases:
            raise DataError("patch sampler: no case given")
        self.patch_size = _patch3(patch_size)
        try:
            fg_fraction = float(fg_fraction)
        except (TypeError, ValueError) as exc:
            raise DataError(f"patch sampler: fg_fraction must be a number in [0, 1], got "
                            f"{fg_fraction!r}") from exc
        if not 0.0 <= fg_fraction <= 1.0:
            raise DataError(f"patch sampler: fg_fraction must be in [0, 1], got {fg_fraction}")
        self.fg_fraction = fg_fraction
        self.class_balanced = bool(class_balanced)
        self.device = torch.device(device)
        self.cases = cases
        n_ch = cases[0].num_channels
        for c in cases:
            if c.num_channels != n_ch:
                raise DataError(f"case '{c.case_id}': {c.num_channels} channel(s) but case "
                                f"'{cases[0].case_id}' has {n_ch}")
            if c.label.shape != c.shape or (c.roi is not None and c.roi.shape != c.shape):
                raise DataError(f"case '{c.case_id}': label {c.label.shape}"
                                + ("" if c.roi is None else f" / ROI {c.roi.shape}")
                                + f" do not match the image's spatial shape {c.shape}")
            if any(p > s for p, s in zip(self.patch_size, c.shape)):
                raise DataError(f"case '{c.case_id}': patch size {self.patch_size} (D, H, W) is "
                                f"larger than the image {c.shape} (Z, Y, X); use a smaller "
                                "patch or a finer target spacing")

        self._label_flat = [np.ascontiguousarray(c.label).reshape(-1) for c in cases]
        self._roi_flat = [None if c.roi is None else np.ascontiguousarray(c.roi, bool).reshape(-1)
                          for c in cases]
        self._images = [torch.from_numpy(_writeable(c.image)).to(self.device) for c in cases]
        self._labels = [torch.from_numpy(_writeable(c.label)).to(self.device).unsqueeze(0)
                        for c in cases]
        self._rois = [None if c.roi is None else torch.from_numpy(_writeable(c.roi)).to(self.device)
                      for c in cases]
        self._all_stats = CaseStats.from_cases([c.stats for c in cases], device=self.device)

        self._fg: List[Optional[_VoxelSet]] = []
        self._bg: List[Optional[_VoxelSet]] = []
        self._by_value: List[dict] = []
        for i, c in enumerate(cases):
            lab, roi = self._label_flat[i], self._roi_flat[i]
            if self.class_balanced:
                values = _present_values(lab)
                sets = {}
                for v in values:
                    s = _VoxelSet.build(lab, roi if v == 0 else None, v)
                    if s.count:
                        sets[v] = s
                self._by_value.append(sets)
                continue
            fg = _VoxelSet.build(lab, None, "fg") if fg_fraction > 0 else None
            bg = _VoxelSet.build(lab, roi, 0) if fg_fraction < 1 else None
            if fg is not None and fg.count == 0:
                raise DataError(f"case '{c.case_id}': no foreground voxel (label > 0) to centre "
                                "foreground patches on")
            if bg is not None and bg.count == 0:
                where = " inside the ROI" if roi is not None else ""
                raise DataError(f"case '{c.case_id}': no background voxel (label 0){where} to "
                                "centre background patches on")
            self._fg.append(fg)
            self._bg.append(bg)
        if self.class_balanced:
            present = sorted(set().union(*[set(d) for d in self._by_value]))
            self.label_values = [v for v in present if v > 0] + ([0] if 0 in present else [])
            self._cases_with = {v: [i for i, d in enumerate(self._by_value) if v in d]
                                for v in self.label_values}
        else:
            self.label_values = sorted(set().union(*[set(_present_values(lab))
                                                     for lab in self._label_flat]))

    # ------------------------------------------------------------------------------------
    @property
    def num_cases(self) -> int:
        return len(self.cases)

    def sample(self, n: int, rng: np.random.Generator) -> PatchDraw:
        """Draw ``n`` patch centres with ``rng`` (a ``numpy.random.Generator``)."""
        n = _count(n)
        if self.class_balanced:
            plan = self._class_plan(n, rng)
        else:
            n_fg = int(np.floor(n * self.fg_fraction + 0.5))
            plan = [("fg", int(rng.integers(0, self.num_cases))) for _ in range(n_fg)]
            plan += [("bg", int(rng.integers(0, self.num_cases))) for _ in range(n - n_fg)]
        return self._draw(plan, rng)

    def sample_foreground(self, n: int, rng: np.random.Generator) -> PatchDraw:
        """Draw ``n`` centres on foreground voxels (label > 0) whatever ``fg_fraction`` says
        (the TEA step's validation patch, method.md section 4): each from a case drawn
        uniformly; class-balanced, from a foreground value drawn uniformly, then a case that
        has it."""
        n = _count(n)
        if self.class_balanced:
            values = [v for v in self.label_values if v > 0]
            if not values:
                raise DataError("patch sampler: no case has a foreground voxel (label > 0)")
            plan = []
            for _ in range(n):
                value = values[int(rng.integers(0, len(values)))]
                owners = self._cases_with[value]
                plan.append((value, owners[int(rng.integers(0, len(owners)))]))
        else:
            if any(fg is None for fg in self._fg):
                raise DataError("patch sampler: built with fg_fraction 0, it keeps no "
                                "foreground voxels to centre patches on")
            plan = [("fg", int(rng.integers(0, self.num_cases))) for _ in range(n)]
        return self._draw(plan, rng)

    def _draw(self, plan, rng: np.random.Generator) -> PatchDraw:
        """One centre per ``(what, case)`` of ``plan``: ``what`` is ``'fg'``, ``'bg'`` or a
        label value."""
        case_index, centres, values = [], [], []
        for what, ci in plan:
            if what == "fg":
                vs = self._fg[ci]
            elif what == "bg":
                vs = self._bg[ci]
            else:
                vs = self._by_value[ci][what]
            flat = int(vs.draw(1, rng)[0])
            z, y, x = np.unravel_index(flat, self.cases[ci].shape)
            case_index.append(ci)
            centres.append((int(z), int(y), int(x)))
            values.append(int(self._label_flat[ci][flat]))
        centre_label = torch.tensor(values, dtype=torch.long)
        return PatchDraw(case_index, centres, centre_label, (centre_label > 0).long())

    def _class_plan(self, n: int, rng: np.random.Generator):
        k = len(self.label_values)
        counts = np.full(k, n // k, dtype=np.int64)
        extra = n % k
        if extra:
            counts[rng.choice(k, size=extra, replace=False)] += 1
        plan = []
        for v, cnt in zip(self.label_values, counts.tolist()):
            owners = self._cases_with[v]
            for _ in range(cnt):
                plan.append((v, owners[int(rng.integers(0, len(owners)))]))
        return plan

    # ------------------------------------------------------------------------------------
    def stats(self, case_index: Sequence[int]) -> CaseStats:
        """Per-sample case statistics (B, C) on ``device``, for ``augment_patches``."""
        index = torch.as_tensor(list(case_index), dtype=torch.long, device=self.device)
        return self._all_stats.select(index)

    def images(self, case_index: Sequence[int]) -> List[torch.Tensor]:
        """The image tensor ``(C, Z, Y, X)`` of each sample's case (shared, not copied)."""
        return [self._images[i] for i in case_index]

    def labels(self, case_index: Sequence[int]) -> List[torch.Tensor]:
        """The label tensor ``(1, Z, Y, X)`` of each sample's case (shared, not copied)."""
        return [self._labels[i] for i in case_index]

    def rois(self, case_index: Sequence[int]) -> List[Optional[torch.Tensor]]:
        """The bool ROI tensor ``(Z, Y, X)`` (or None) of each sample's case."""
        return [self._rois[i] for i in case_index]


def _count(n) -> int:
    n = int(n)
    if n < 0:
        raise DataError(f"patch sampler: cannot draw {n} samples")
    return n


def _present_values(label_flat: np.ndarray) -> List[int]:
    """The label values present (labels are small non-negative integers)."""
    return np.flatnonzero(np.bincount(label_flat.astype(np.int64, copy=False))).tolist()


def _writeable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays; those (rare: memory-mapped) are copied."""
    return a if a.flags.writeable else a.copy()
