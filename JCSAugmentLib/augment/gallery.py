"""The policy gallery: what every operation of a policy does to the user's own scan.

For one case, ``make_gallery`` crops a foreground-centred and a background-centred patch and
applies, to each, every TRA option alone at its nominal magnitude (each of the 15 groups'
identity and each magnitude, the other groups at identity: 62 tiles) and the most probable TEA
ops. Each tile carries the option's probability under the policy passed in for that patch's
class, and under the initial policy when one is given, so a tile says both what an op does and
how often training (or inference) uses it. ``charts.policy_gallery.draw_gallery`` draws the
result, grouped as the policy pies are (one row per TRA group, then the TEA ops).

The arrays are plain numpy, so a GUI can draw a single group's row from a ``Gallery`` made in
a worker or subprocess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..io.volume import case_statistics, crop_with_padding, sample_centres
from ..policy.policies import ClassSpecificTRAPolicy, TEAPolicy
from . import geometry
from .labels import tea_op_label, tra_draw_caption, tra_group_title
from .ops import OPS
from .stats import CaseStats
from .tables import TEA_OPS, TRA_GROUPS
from .tea import tea_matrix, tea_transform
from .tra import TRAParams, augment_patches, identity_params
# the cascade's own label resampling (indicators, largest wins), so TEA tiles match TRA's
from .tra import _resample_with_labels as resample_with_labels

NO_FOREGROUND_MESSAGE = ("the label has no foreground voxel (label > 0): the gallery shows the "
                         "background patch only")


@dataclass
class GalleryTile:
    """One op applied to one patch.

    ``source`` is ``"tra"`` or ``"tea"``; ``group_index``/``option_index`` locate a TRA option
    in ``TRA_GROUPS`` (``option_index`` is the TEA op index for TEA tiles, ``group_index``
    -1); ``value`` is the magnitude applied (scale factor, signed angle, quarter turns, gamma,
    shift, factor, sigma, noise std or zoom; None for a mirror or identity); ``probability``
    the op's probability under the gallery's policy for this patch's class, ``initial`` the
    same under the initial policy (None when none was given). ``image`` (C, D, H, W) and
    ``label`` (D, H, W) are the augmented patch.
    """

    source: str
    group_index: int
    option_index: int
    name: str
    value: Optional[float]
    probability: float
    initial: Optional[float]
    image: np.ndarray
    label: np.ndarray
    caption: str


@dataclass
class GalleryBlock:
    """A row of tiles: one TRA group (titled as its pie is) or the TEA ops."""

    title: str
    tiles: List[GalleryTile]


@dataclass
class GalleryPatch:
    """One patch class: its centre, the original crop and its blocks (15 TRA groups, then TEA
    when TEA ops were asked for)."""

    name: str
    patch_class: int
    class_name: str
    centre: Tuple[int, int, int]
    image: np.ndarray  # (C, D, H, W), the original crop
    label: np.ndarray  # (D, H, W)
    blocks: List[GalleryBlock]


@dataclass
class Gallery:
    """What ``draw_gallery`` draws. ``title`` names the policy (and says "initial" when it is
    the initial policy); ``messages`` are the notes a user should read (e.g. no foreground)."""

    title: str
    patches: List[GalleryPatch]
    tea_ops: List[int]
    messages: List[str] = field(default_factory=list)
    patch_size: Tuple[int, int, int] = (64, 64, 64)

    @property
    def tiles(self) -> List[GalleryTile]:
        return [t for p in self.patches for b in p.blocks for t in b.tiles]


# --------------------------------------------------------------------------------------------
# One TRA option at its nominal magnitude
# --------------------------------------------------------------------------------------------

def nominal_value(group_index: int, option_index: int) -> Optional[float]:
    """The magnitude ``TRAParams.values`` holds for an option applied at its table value: the
    centre of its jitter, on the side that ``Jitter.spread`` calls positive (``+m`` for a
    rotation or shift, the factor ``1 + m`` for scaling, gamma, brightness scale and contrast,
    ``m`` itself for sigma, noise std and zoom), one quarter turn for rot90, 1 (on) for a
    mirror, and the registry's neutral value for identity."""
    g = TRA_GROUPS[group_index]
    o = g.options[option_index]
    if o.op == "identity":
        return OPS["identity"].neutral
    if o.op == "rot90":
        return 1.0
    if o.op == "flip":
        return 1.0
    spread = g.jitter.spread if g.jitter is not None else "none"
    if spread == "sign":
        return float(o.magnitude)
    if spread == "invert":
        return 1.0 + float(o.magnitude)
    return float(o.magnitude)


def nominal_tra_params(options: Sequence[Tuple[int, int]], noise_seed: int = 0) -> TRAParams:
    """Parameters applying, for sample i, option ``options[i] = (group, option)`` alone at its
    nominal magnitude (every other group at identity)."""
    params = identity_params(len(options))
    for i, (gi, oi) in enumerate(options):
        if not 0 <= gi < len(TRA_GROUPS) or not 0 <= oi < TRA_GROUPS[gi].size:
            raise ValueError(f"no TRA option ({gi}, {oi})")
        params.choices[i, gi] = oi
        params.values[i, gi] = nominal_value(gi, oi)
    return TRAParams(params.choices, params.values, int(noise_seed))


def _tra_caption(gi: int, oi: int, value: Optional[float]) -> str:
    g = TRA_GROUPS[gi]
    o = g.options[oi]
    if o.op == "identity":
        return "identity"
    if o.op == "rot90":  # a draw's caption gives only the direction; here say the angle
        return OPS["rot90"].labels.tick.format(axis=g.axis, value=f"{90 * value:+.0f}")
    return tra_draw_caption(o.op, g.axis, float(value))


def _probability_text(p: float, initial: Optional[float], is_initial: bool) -> str:
    text = f"p={p:.3f}"
    if is_initial or initial is None:
        return text + (" (initial)" if is_initial else "")
    # an arrow says at a glance whether learning raised or lowered the op (1 % relative slack)
    arrow = "\u25b2" if p > initial * 1.01 else "\u25bc" if p < initial * 0.99 else "="
    return f"{text} {arrow} init {initial:.3f}"


# --------------------------------------------------------------------------------------------
# The gallery
# --------------------------------------------------------------------------------------------

def _check_policies(tra, tea, initial_tra, initial_tea):
    if not isinstance(tra, ClassSpecificTRAPolicy):
        raise TypeError(f"tra_policy must be a ClassSpecificTRAPolicy, got {type(tra).__name__}")
    if tea is not None and not isinstance(tea, TEAPolicy):
        raise TypeError(f"tea_policy must be a TEAPolicy or None, got {type(tea).__name__}")
    if initial_tra is not None and not isinstance(initial_tra, ClassSpecificTRAPolicy):
        raise TypeError("initial_tra must be a ClassSpecificTRAPolicy or None")
    if initial_tea is not None and not isinstance(initial_tea, TEAPolicy):
        raise TypeError("initial_tea must be a TEAPolicy or None")


def choose_tea_ops(tea: TEAPolicy, top: int = 8, min_probability: float = 0.0) -> List[int]:
    """The TEA ops worth a tile: the ``top`` most probable whose probability exceeds
    ``min_probability``, most probable first (ties in table order)."""
    if top < 0:
        raise ValueError(f"tea_top must be >= 0, got {top}")
    p = tea.probabilities().double()
    order = sorted(range(len(TEA_OPS)), key=lambda i: (-float(p[i]), i))
    return [i for i in order if float(p[i]) > min_probability][:top]


def _centres(label: np.ndarray, roi, rng, fg_centre, bg_centre, messages):
    """(foreground centre or None, background centre or None)."""
    lab = label[0]
    fg = bg = None
    if fg_centre is not None:
        fg = tuple(int(v) for v in fg_centre)
    elif (lab > 0).any():
        # the foreground voxel nearest the foreground's centre of mass: the middle of the
        # structure, reproducibly (a random foreground voxel may sit on its rim)
        pts = np.argwhere(lab > 0)
        mean = pts.mean(0)
        fg = tuple(int(v) for v in pts[np.argmin(((pts - mean) ** 2).sum(1))])
    else:
        messages.append(NO_FOREGROUND_MESSAGE)
    if bg_centre is not None:
        bg = tuple(int(v) for v in bg_centre)
    else:
        try:
            _, b = sample_centres(lab, 0, 1, rng, roi=roi)
            bg = tuple(int(v) for v in b[0])
        except ValueError as e:  # no background (inside the ROI)
            messages.append(f"{e}: the gallery shows the foreground patch only")
    if fg is None and bg is None:
        raise ValueError("the case has neither a foreground nor a background voxel to centre "
                         "a patch on: " + "; ".join(messages))
    return fg, bg


def _apply_options(image_t, label_t, centre, raw_stats, pad, patch_size, options, seed,
                   device):
    """``options`` [(group, option)] each alone at its nominal magnitude on the patch at
    ``centre``: (images (n, C, D, H, W), labels (n, D, H, W)) as numpy. Straight from the
    volume, as the training loader does it: each sample reads only the block its own op
    needs (a patch for intensity ops, more for a rotation or a zoom-out)."""
    params = nominal_tra_params(options, noise_seed=seed)
    n = params.batch_size
    out, out_lab = augment_patches([image_t] * n, [label_t] * n, [centre] * n, params,
                                   CaseStats.from_cases([raw_stats] * n, device=device),
                                   patch_size, pad_values=[pad] * n)
    return out.cpu().numpy(), out_lab[:, 0].cpu().numpy()


def _tra_tiles(image_t, label_t, centre, raw_stats, pad, patch_size, policy, initial, cls,
               is_initial, device, seed) -> List[GalleryBlock]:
    options = [(0, 0)] + [(gi, oi) for gi, g in enumerate(TRA_GROUPS)
                          for oi in range(1, g.size)]
    imgs, labs = _apply_options(image_t, label_t, centre, raw_stats, pad, patch_size, options,
                                seed, device)
    results = {key: (imgs[k], labs[k]) for k, key in enumerate(options)}
    probs = [p.double() for p in policy.policies[cls].probabilities()]
    init = (None if initial is None else
            [p.double() for p in initial.policies[min(cls, initial.num_classes - 1)]
             .probabilities()])
    blocks = []
    for gi, g in enumerate(TRA_GROUPS):
        tiles = []
        for oi, o in enumerate(g.options):
            img, lab = results[(gi, oi) if oi else (0, 0)]
            value = nominal_value(gi, oi)
            p = float(probs[gi][oi])
            p0 = None if init is None else float(init[gi][oi])
            caption = (_tra_caption(gi, oi, value) + "\n"
                       + _probability_text(p, p0, is_initial))
            shown = None if o.op in ("identity", "flip") else value
            tiles.append(GalleryTile("tra", gi, oi, o.name, shown, p, p0, img, lab, caption))
        blocks.append(GalleryBlock(f"{tra_group_title(g)}\n{g.name}", tiles))
    return blocks


def _tea_tile(image_t, label_t, centre, stats, pad, patch_size, index, generator, device):
    """TEA op ``index`` on the patch at ``centre``, as inference applies it to the whole
    volume: a resampled op reads a crop large enough that the patch sees no border."""
    op = TEA_OPS[index]
    entry = OPS[op.op]
    if entry.kind != "resampled":
        img = geometry.crop_around(image_t, centre, patch_size, pad).to(device)[None]
        lab = geometry.crop_around(label_t, centre, patch_size, 0).to(device)[None]
        if entry.kind == "intensity":
            img = tea_transform(img, index, stats=stats, generator=generator)
        else:  # exact: the same voxel permutation of image and label
            img = entry.forward(img, op.axis, op.magnitude)
            lab = entry.forward(lab, op.axis, op.magnitude)
        return img[0].cpu().numpy(), lab[0, 0].cpu().numpy()
    # resampled: the op's own matrix, read from an enlarged crop straight into the patch;
    # labels as the TRA cascade resamples them (per-label indicators, then the largest)
    a = tea_matrix(index)[None]
    ext = geometry.source_extent(a, patch_size)[0].tolist()
    size = [max(int(np.ceil(e - 1e-6)), p) for e, p in zip(ext, patch_size)]
    size = [s + (s - p) % 2 for s, p in zip(size, patch_size)]
    img = geometry.crop_around(image_t, centre, size, pad).to(device)[None]
    lab = geometry.crop_around(label_t, centre, size, 0).to(device)[None]

    def resample(t, mode, a=a.to(device)):
        return geometry.affine_resample(t, a, patch_size, padding_mode="border")

    img, lab = resample_with_labels(img, lab, "linear", resample)
    return img[0].cpu().numpy(), lab[0, 0].cpu().numpy()


def _tea_block(image_t, label_t, centre, stats, pad, patch_size, tea, initial_tea, ops,
               is_initial, device, seed) -> GalleryBlock:
    p = tea.probabilities().double()
    p0 = None if initial_tea is None else initial_tea.probabilities().double()
    generator = torch.Generator(device=device).manual_seed(seed)
    tiles = []
    for index in ops:
        img, lab = _tea_tile(image_t, label_t, centre, stats, pad, patch_size, index,
                             generator, device)
        op = TEA_OPS[index]
        prob = float(p[index])
        init = None if p0 is None else float(p0[index])
        caption = f"TEA {tea_op_label(op)}\n" + _probability_text(prob, init, is_initial)
        tiles.append(GalleryTile("tea", -1, index, op.name, op.magnitude, prob, init, img, lab,
                                 caption))
    return GalleryBlock("TEA\ntop ops", tiles)


def make_gallery(image: np.ndarray, label: np.ndarray, tra_policy: ClassSpecificTRAPolicy,
                 tea_policy: Optional[TEAPolicy] = None,
                 initial_tra: Optional[ClassSpecificTRAPolicy] = None,
                 initial_tea: Optional[TEAPolicy] = None, is_initial: bool = False,
                 title: str = "policy", patch_size: Sequence[int] = (64, 64, 64),
                 tea_top: int = 8, tea_min_probability: float = 0.0,
                 roi: Optional[np.ndarray] = None, seed: int = 0,
                 foreground_centre: Optional[Sequence[int]] = None,
                 background_centre: Optional[Sequence[int]] = None,
                 device: str = "cpu") -> Gallery:
    """The gallery of a case under a policy.

    ``image`` (C, Z, Y, X) float, ``label`` (1, Z, Y, X) integer label values (> 0 is
    foreground). The foreground patch is centred on the foreground voxel nearest the
    foreground's centre of mass and uses the policy of the last class; the background patch on
    a background voxel drawn with ``seed`` (inside ``roi`` when given, e.g. a brain mask) and
    uses class 0. ``tea_policy`` None, or ``tea_top`` 0, leaves the TEA row out; otherwise the
    ``tea_top`` most probable TEA ops above ``tea_min_probability`` get a tile.
    ``initial_tra``/``initial_tea``: the policy learning started from, shown next to each
    probability; ``is_initial``: the policy shown *is* the initial one (no learned policy yet),
    said in every caption. A case without foreground gives the background patch only and a
    message in ``Gallery.messages``.
    """
    _check_policies(tra_policy, tea_policy, initial_tra, initial_tea)
    image = np.asarray(image)
    label = np.asarray(label)
    if label.ndim == 3:
        label = label[None]
    if (image.ndim != 4 or label.ndim != 4 or label.shape[0] != 1
            or label.shape[1:] != image.shape[1:]):
        raise ValueError(f"image (C, Z, Y, X) and label (1, Z, Y, X) must share a grid, got "
                         f"{image.shape} and {label.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    if np.issubdtype(label.dtype, np.floating):
        raise TypeError(f"label must hold integer label values, got {label.dtype}")
    patch_size = tuple(int(s) for s in patch_size)
    if len(patch_size) != 3 or min(patch_size) < 2:
        raise ValueError(f"patch_size must be 3 sizes of at least 2, got {patch_size}")
    messages: List[str] = []
    rng = np.random.default_rng(seed)
    fg, bg = _centres(label, roi, rng, foreground_centre, background_centre, messages)
    raw = case_statistics(image, mask=roi)
    stats = CaseStats.from_cases([raw])
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    label_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64, copy=False)).to(
        device)
    tea_ops = [] if tea_policy is None else choose_tea_ops(tea_policy, tea_top,
                                                           tea_min_probability)
    pad = np.asarray(raw["min"], dtype=np.float32)
    pad_list = [float(v) for v in raw["min"]]
    patches = []
    last = tra_policy.num_classes - 1
    for name, centre, cls in (("foreground patch", fg, last), ("background patch", bg, 0)):
        if centre is None:
            continue
        blocks = _tra_tiles(image_t, label_t, centre, raw, pad_list, patch_size, tra_policy,
                            initial_tra, cls, is_initial, device, seed)
        if tea_ops:
            blocks.append(_tea_block(image_t, label_t, centre, stats, pad_list, patch_size,
                                     tea_policy, initial_tea, tea_ops, is_initial, device,
                                     seed))
        original = crop_with_padding(image, centre, patch_size, pad_value=pad).astype(
            np.float32, copy=False)
        original_lab = crop_with_padding(label, centre, patch_size, pad_value=0)[0]
        patches.append(GalleryPatch(name, cls, tra_policy.class_names[cls], centre, original,
                                    original_lab, blocks))
    return Gallery(title, patches, tea_ops, messages, patch_size)


def gallery_strips(gallery: Gallery, groups: Optional[Sequence[str]] = None, channel: int = 0,
                   gap: int = 2) -> Dict[str, np.ndarray]:
    """The gallery as volumes to scroll through in a viewer: per patch, the original crop and
    then each tile of the chosen rows (``groups``: TRA group names or ``"tea"``; default all),
    side by side along x with ``gap`` voxels between, in ``channel``; and the labels the same
    way. Keys ``"<patch>"`` (float32, z y x) and ``"<patch> labels"`` (int16); the captions, in
    x order, under ``"<patch> captions"`` (a 1-D unicode array, no object dtype)."""
    wanted = None if groups is None else {str(g).lower() for g in groups}
    out: Dict[str, np.ndarray] = {}
    for patch in gallery.patches:
        images = [patch.image[channel]]
        labels = [patch.label]
        captions = ["original"]
        for block in patch.blocks:
            if not block.tiles:
                continue
            first = block.tiles[0]
            name = "tea" if first.source == "tea" else TRA_GROUPS[first.group_index].name
            if wanted is not None and name not in wanted:
                continue
            for tile in block.tiles:
                images.append(tile.image[channel])
                labels.append(tile.label)
                captions.append(tile.caption.replace("\n", " "))
        fill = float(min(float(np.min(i)) for i in images))
        strip, strip_labels = [], []
        for k, (im, lab) in enumerate(zip(images, labels)):
            if k:
                strip.append(np.full(im.shape[:2] + (gap,), fill, np.float32))
                strip_labels.append(np.zeros(im.shape[:2] + (gap,), np.int16))
            strip.append(np.asarray(im, np.float32))
            strip_labels.append(np.asarray(lab, np.int16))
        out[patch.name] = np.concatenate(strip, axis=2)
        out[f"{patch.name} labels"] = np.concatenate(strip_labels, axis=2)
        out[f"{patch.name} captions"] = np.asarray(captions, dtype=np.str_)
    return out


# --------------------------------------------------------------------------------------------
# Which policy a run folder shows
# --------------------------------------------------------------------------------------------

@dataclass
class GalleryPolicies:
    """The policies a gallery shows: ``tra``/``tea`` (the learned ones, or the initial ones
    when ``is_initial``), the initial ones to compare with (None: no comparison) and a title
    that names the source and says "initial" when nothing was learned yet."""

    tra: ClassSpecificTRAPolicy
    tea: Optional[TEAPolicy]
    initial_tra: Optional[ClassSpecificTRAPolicy]
    initial_tea: Optional[TEAPolicy]
    is_initial: bool
    title: str


def load_gallery_policies(run_or_file: str, initial: Optional[str] = "nnunet"
                          ) -> GalleryPolicies:
    """The policies of a run folder (its ``policy.json``) or of a policy JSON file.

    The initial policy compared with is the file's ``meta["init"]``, else the run's job
    ``training.init``, else ``initial`` (None: no comparison). A run folder without a
    ``policy.json`` (nothing learned yet) shows its initial policy: the one its job's mode and
    ``init`` start from, or ``initial`` (default nnunet) without a ``job.json``; the title says
    so. Raises ``FileNotFoundError`` for a path that does not exist.
    """
    import os
    from ..policy.initial import TEA_POLICY_NAMES, make_tea_policy, make_tra_policy
    from ..policy.policy_json import load_policy
    from ..run.folder import RunFolder
    from ..run.modes import mode_spec

    is_file = os.path.isfile(run_or_file)
    if not is_file and not os.path.isdir(run_or_file):
        raise FileNotFoundError(f"{run_or_file}: neither a run folder nor a policy JSON file")
    folder = None if is_file else RunFolder(run_or_file)
    job = None
    if folder is not None and folder.has_job():
        job = folder.job().resolved()
    name = os.path.basename(os.path.normpath(run_or_file))
    path = run_or_file if is_file else folder.policy_path
    if os.path.isfile(path):
        tra, tea, meta = load_policy(path)
        init = meta.get("init") or (job.training.init if job else None) or initial
        classes = tra.num_classes if tra is not None else 2
        init_tra = None if not init or init == "none" else make_tra_policy(init, classes)
        init_tea = (make_tea_policy(init) if init and init in TEA_POLICY_NAMES
                    and init != "none" else None)
        details = [f"{k} {meta[k]}" for k in ("mode", "backbone", "iteration") if k in meta]
        mode = meta.get("mode")
        try:  # a heuristic or RandAugment run writes its fixed policy too
            kind = "learned" if mode is None or mode_spec(str(mode)).learns_policy else "fixed"
        except ValueError:
            kind = "learned"
        title = (f"{kind} policy {os.path.basename(os.path.dirname(os.path.abspath(path)))}/"
                 f"{os.path.basename(path)}" + (f" ({', '.join(details)})" if details else "")
                 + (f"; init: the initial policy ({init})" if init_tra else ""))
        if tra is None:  # a TEA-only policy file: its TRA is the initial one
            tra = make_tra_policy(init or "nnunet")
        return GalleryPolicies(tra, tea, init_tra, init_tea, False, title)
    # nothing learned yet: the policy the run starts from
    if job is not None:
        init = job.training.init
        spec = mode_spec(job.training.mode)
        tra_name = init if spec.tra_policy == "init" else spec.tra_policy
        tra = make_tra_policy(tra_name, spec.tra_classes)
        source = f"job.json: mode {job.training.mode}, init {init}"
    else:
        init = initial or "nnunet"
        tra_name = init
        tra = make_tra_policy(init)
        source = f"no job.json: {init}"
    tea = make_tea_policy(init) if init in TEA_POLICY_NAMES else None
    title = (f"INITIAL policy {tra_name} ({source}) \u2014 {name} has no learned policy yet "
             f"(no policy.json)")
    return GalleryPolicies(tra, tea, None, None, True, title)
