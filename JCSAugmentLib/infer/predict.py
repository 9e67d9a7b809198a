"""``jcsaugment predict``: a trained run's network, with TEA, on new images.

For each case: read the image (one file per channel), preprocess it exactly as the training
cases were (normalisation and resampling stored in the checkpoint), predict by sliding window
with the chosen TEA ops (``learned``: the run's p_V, top z ops weighted by their renormalised
probabilities; ``heuristic``: nnU-Net's 8 or DeepMedic's 4 mirror ops, equal weights; ``none``),
map the logits back onto the input's grid (linear resampling of the class probabilities where
training resampled), and write the label map with the input's exact geometry (size, spacing,
origin, direction), as NIfTI or NRRD by the input's extension; optionally the TEA disagreement
map too. Every input is checked before the first prediction, and every output is written
atomically, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..data.preprocess import PreprocessSettings, preprocess_image, preprocessed_shape
from ..io.volume import SUPPORTED_EXTENSIONS, VolumeError, read_images
from ..nets.factory import build_network
from ..policy.initial import heuristic_tea_ops
from ..policy.policies import TEAPolicy
from ..run.checkpoint import best_checkpoint_path, last_checkpoint_path, load_checkpoint
from .sliding_window import sliding_window_predict


class PredictionError(ValueError):
    """A problem with the run folder or the inputs, found before anything is written."""


@dataclass
class LoadedRun:
    model: torch.nn.Module
    info: object
    state: Dict
    tea: TEAPolicy
    device: torch.device


def load_run(run_dir: str, checkpoint: str = "best", device: str = "auto") -> LoadedRun:
    """The trained network and TEA policy of a run folder (``best`` falls back to ``last``)."""
    path = best_checkpoint_path(run_dir) if checkpoint == "best" else last_checkpoint_path(run_dir)
    if checkpoint == "best" and not os.path.exists(path):
        path = last_checkpoint_path(run_dir)
    if not os.path.exists(path):
        raise PredictionError(f"{run_dir}: no trained checkpoint (checkpoints/best.pt or "
                              f"last.pt); train the run first")
    state = load_checkpoint(path, map_location="cpu")
    if "network" not in state:
        raise PredictionError(f"{path}: this checkpoint does not describe its network (written "
                              f"by an older JCSAugment); retrain the run")
    net = state["network"]
    model, info = build_network(net["backbone"], net["in_channels"], net["num_classes"],
                                tuple(net["patch_size"]), spacing=tuple(net["spacing"]),
                                **net.get("overrides", {}))
    model.load_state_dict(state["model"])
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    model.to(dev).eval()
    tea = TEAPolicy()
    tea.load_state_dict(state["tea"])
    return LoadedRun(model, info, state, tea, dev)


def tea_plan(run: LoadedRun, tea: str = "learned", z: Optional[int] = None):
    """(ops, weights) for the TEA mode: learned top-z of p_V, the heuristic mirrors, or none."""
    backbone = run.state["network"]["backbone"]
    if tea == "none":
        return [0], [1.0]
    if tea == "heuristic":
        ops = heuristic_tea_ops(backbone)
        return ops, [1.0 / len(ops)] * len(ops)
    if tea != "learned":
        raise PredictionError(f"--tea must be learned, heuristic or none, got {tea!r}")
    z = z or (8 if backbone == "unet3d" else 4)
    return run.tea.top(z)


def _output_path(out_dir: str, image_path: str, suffix: str = "") -> str:
    name = os.path.basename(image_path)
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            stem, ending = name[:-len(ext)], ext
            break
    else:
        stem, ending = name, ".nii.gz"
    if stem.endswith("_0000"):  # nnU-Net channel suffix: name the result after the case
        stem = stem[:-5]
    if ending in (".nhdr", ".mhd"):
        ending = ".nrrd" if ending == ".nhdr" else ".mha"
    return os.path.join(out_dir, stem + suffix + ending)


def _write_atomic(image: sitk.Image, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    ending = path[len(os.path.splitext(path)[0]):]
    if path.endswith(".nii.gz"):
        ending = ".nii.gz"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ending, dir=folder)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def predict_cases(run_dir: str, images: Sequence[Sequence[str]], out_dir: str,
                  tea: str = "learned", z: Optional[int] = None, uncertainty: bool = False,
                  checkpoint: str = "best", device: str = "auto", step: float = 0.5,
                  progress: Optional[Callable[[str], None]] = None) -> List[Dict]:
    """Predict every case (a list of channel files each); returns one record per case."""
    run = load_run(run_dir, checkpoint, device)
    ops, weights = tea_plan(run, tea, z)
    pre = run.state.get("preprocess") or {}
    settings = PreprocessSettings.from_dict(pre.get("settings") or {})
    n_ch = run.state["network"]["in_channels"]
    volumes = []
    for files in images:  # check everything before predicting anything
        try:
            vol = read_images(list(files))
        except VolumeError as e:
            raise PredictionError(str(e)) from None
        if vol.num_channels != n_ch:
            raise PredictionError(f"{files[0]}: {vol.num_channels} channel(s), but the run was "
                                  f"trained on {n_ch}")
        shape = preprocessed_shape(vol.size, vol.spacing, settings)
        if any(s < o for s, o in zip(shape, run.info.output_size)):
            raise PredictionError(f"{files[0]}: the image {shape} (after preprocessing) is "
                                  f"smaller than one patch {tuple(run.info.output_size)}")
        volumes.append(vol)
    outputs = [_output_path(out_dir, files[0]) for files in images]
    for files, out_path in zip(images, outputs):
        if any(os.path.abspath(out_path) == os.path.abspath(f) for f in files):
            raise PredictionError(f"{out_path}: the output would overwrite its input; choose "
                                  f"another --out folder")
    if len(set(outputs)) != len(outputs):
        raise PredictionError("two inputs would write the same output name; give images with "
                              "distinct file names")
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for files, vol in zip(images, volumes):
        out_path = _output_path(out_dir, files[0])
        if progress:
            progress(f"predicting {os.path.basename(files[0])} with TEA ops {ops}")
        data, spacing, geom = preprocess_image(vol, settings, pre.get("ct_statistics"),
                                               pre.get("modality") or None,
                                               case_id=os.path.basename(files[0]))
        x = torch.from_numpy(data).to(run.device)
        from ..augment.stats import CaseStats
        from ..io.volume import case_statistics
        stats = CaseStats.from_cases([case_statistics(data)], device=run.device)

        def net(b):
            out = run.model(b)
            return out[0] if isinstance(out, (tuple, list)) else out

        logits, disagreement = sliding_window_predict(
            net, x, run.info.input_size, run.info.output_size,
            run.state["network"]["num_classes"], ops, weights, step=step, stats=stats,
            uncertainty=uncertainty)
        probs = torch.softmax(logits, 0).cpu().numpy()
        reference = _reference_image(vol)
        labels = _back_to_input_grid(probs, spacing, geom, reference)
        out = sitk.GetImageFromArray(labels.astype(np.uint8))
        out.CopyInformation(reference)
        _write_atomic(out, out_path)
        rec = {"image": list(files), "prediction": out_path, "tea_ops": list(ops),
               "tea_weights": [float(w) for w in weights]}
        if uncertainty:
            u = _resample_float(disagreement.cpu().numpy(), spacing, geom, reference)
            u_img = sitk.GetImageFromArray(u.astype(np.float32))
            u_img.CopyInformation(reference)
            u_path = _output_path(out_dir, files[0], "_tea_disagreement")
            _write_atomic(u_img, u_path)
            rec["uncertainty"] = u_path
        records.append(rec)
    return records


def _reference_image(vol) -> sitk.Image:
    """An empty image on the input's grid (size, spacing, origin, direction)."""
    ref = sitk.Image([int(s) for s in vol.size], sitk.sitkUInt8)
    ref.SetSpacing(vol.spacing)
    ref.SetOrigin(vol.origin)
    ref.SetDirection(vol.direction)
    return ref


def _on_grid(array: np.ndarray, spacing_zyx, geom) -> sitk.Image:
    img = sitk.GetImageFromArray(array.astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin(geom.origin)
    img.SetDirection(geom.direction)
    return img


def _resample_float(array: np.ndarray, spacing_zyx, geom, reference: sitk.Image) -> np.ndarray:
    if tuple(array.shape) == tuple(reversed(reference.GetSize())) and np.allclose(
            spacing_zyx[::-1], reference.GetSpacing()):
        return array
    img = sitk.Resample(_on_grid(array, spacing_zyx, geom), reference, sitk.Transform(),
                        sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(img)


def _back_to_input_grid(probs: np.ndarray, spacing_zyx, geom, reference) -> np.ndarray:
    """Class probabilities (K, Z, Y, X) on the preprocessed grid -> labels on the input grid."""
    resampled = np.stack([_resample_float(p, spacing_zyx, geom, reference) for p in probs])
    return resampled.argmax(0)
