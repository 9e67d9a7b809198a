"""``jcsaugment predict``: a trained run's network, with TEA, on new images.

For each case: read the image (one file per channel), preprocess it exactly as the training
cases were (normalisation and resampling stored in the checkpoint), predict by sliding window
with the chosen TEA ops (``learned``: the run's p_V, top z ops weighted by their renormalised
probabilities; ``heuristic``: nnU-Net's 8 or DeepMedic's 4 mirror ops, equal weights; ``none``),
map the logits back onto the input's grid (linear resampling of the class probabilities where
training resampled), and write the label map with the input's exact geometry (size, spacing,
origin, direction), as NIfTI or NRRD by the input's extension; optionally the TEA disagreement
map too.

What is not given is the run's: the TEA mode, its top z and the sliding-window step default to
the job's ``inference`` settings (job.json), and the checkpoint is the one
:meth:`RunFolder.pick_checkpoint` names (best.pt, or last.pt with a note saying why); the choice
is reported through ``progress`` and stored in every record.  Every input and every output is
checked before the first prediction (an existing output is replaced only with
``overwrite=True``), and every output is written atomically, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..augment.tables import TEA_OPS
from ..data.preprocess import PreprocessSettings, preprocess_image, preprocessed_shape
from ..io.volume import VolumeError, read_images
from ..image_files import split_image_name
from ..meta.tea_step import evaluable_tea_ops
from ..nets.factory import build_network
from ..nets.losses import full_resolution
from ..policy.initial import heuristic_tea_ops
from ..policy.policies import TEAPolicy
from ..run.checkpoint import CheckpointError, load_checkpoint
from ..run.control import RunFolderError
from ..run.folder import CheckpointChoice, RunFolder, as_run_folder
from ..run.job import InferenceSpec, Job, JobError
from .progress import PredictProgress, ProgressFile
from .sliding_window import (WindowProgress, prepare_for_inference, sliding_window_predict,
                             window_grid)

Progress = Optional[Callable[[str], None]]


class PredictionError(ValueError):
    """A problem with the run folder, the inputs or the outputs, found before anything is
    written."""


@dataclass
class PredictOptions:
    """How :func:`predict_cases` predicts.  ``None`` means the run's own setting: ``tea``
    (learned, heuristic or none; ``"auto"`` is the job's rule too), ``z`` (learned TEA: how
    many top ops) and ``step`` (sliding-window step, a fraction of the patch) come from the
    job's ``inference`` section."""
    tea: Optional[str] = None
    z: Optional[int] = None
    step: Optional[float] = None
    uncertainty: bool = False
    checkpoint: str = "best"
    device: str = "auto"
    overwrite: bool = False
    #: windows per network batch (None: chosen from the device, see
    #: :func:`~JCSAugmentLib.infer.sliding_window.default_batch_windows`)
    batch_windows: Optional[int] = None
    #: keep the latest progress in ``out_dir``/``predict_progress.json`` for a poller (the
    #: Slicer panel): :class:`~JCSAugmentLib.infer.progress.ProgressFile`; the command line
    #: always does
    progress_file: bool = False


@dataclass
class LoadedRun:
    model: torch.nn.Module
    info: object
    state: Dict
    tea: TEAPolicy
    device: torch.device
    #: the checkpoint loaded, and why that one
    checkpoint: CheckpointChoice
    #: the run's inference settings, resolved (tea is never "auto", tea_top_z never None)
    inference: InferenceSpec


def load_run(run: "str | os.PathLike | RunFolder", checkpoint: str = "best",
             device: str = "auto", progress: Progress = None) -> LoadedRun:
    """The trained network, TEA policy and inference settings of a run folder.  The checkpoint
    is :meth:`RunFolder.pick_checkpoint`'s choice, said through ``progress`` ("using best.pt
    (best, iteration 40)"); a damaged one is an error, never silently replaced by the other."""
    folder = as_run_folder(run)
    try:
        choice = folder.pick_checkpoint(checkpoint, read_iteration=False)
    except (RunFolderError, ValueError) as e:
        raise PredictionError(str(e)) from None
    try:
        state = load_checkpoint(choice.path, map_location="cpu")
    except CheckpointError as e:
        other = "; --checkpoint last predicts with the last checkpoint instead" if \
            choice.which == "best" else ""
        raise PredictionError(f"{e}{other}") from None
    it = state.get("iteration")
    choice = dataclasses.replace(
        choice, iteration=it if isinstance(it, int) and not isinstance(it, bool) else None)
    if progress:
        progress(f"using {choice.describe()}")
    if "network" not in state:
        raise PredictionError(f"{choice.path}: this checkpoint does not describe its network "
                              f"(written by an older JCSAugment); retrain the run")
    dev = _device(device)
    try:  # a tampered or foreign checkpoint fails here in many ways: each is one message
        net = state["network"]
        model, info = build_network(net["backbone"], net["in_channels"], net["num_classes"],
                                    tuple(net["patch_size"]), spacing=tuple(net["spacing"]),
                                    **net.get("overrides", {}))
        model.load_state_dict(state["model"])
        tea = TEAPolicy()
        tea.load_state_dict(state["tea"])
        state["preprocess"] = _mapping(state.get("preprocess"))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        detail = " ".join(str(e).split())[:200]
        raise PredictionError(f"{choice.path}: the checkpoint's contents are damaged or not "
                              f"a JCSAugment run's ({type(e).__name__}: {detail}); use the "
                              f"other checkpoint (--checkpoint) or train again") from None
    prepare_for_inference(model.to(dev).eval(), dev)
    return LoadedRun(model, info, state, tea, dev, choice,
                     _inference_settings(folder, state, progress))


def _device(spec: str) -> torch.device:
    """``--device``: auto, cpu, cuda or cuda:N, checked against what torch sees."""
    try:
        dev = torch.device("cuda" if spec == "auto" and torch.cuda.is_available()
                           else ("cpu" if spec == "auto" else spec))
    except (RuntimeError, TypeError, ValueError):
        raise PredictionError(f"--device {spec!r} is not a device; use auto, cpu, cuda or "
                              f"cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictionError(f"--device {spec}: torch sees no CUDA device here (torch "
                              f"{torch.__version__}); use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PredictionError(f"--device {spec}: only {torch.cuda.device_count()} CUDA "
                              f"device(s) exist")
    if dev.type not in ("cpu", "cuda"):
        raise PredictionError(f"--device {spec}: only cpu and cuda are supported")
    return dev


def _mapping(value):
    """A checkpoint section that must be an object (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _inference_settings(folder: RunFolder, state: Dict, progress: Progress) -> InferenceSpec:
    """job.json's inference settings, resolved.  When job.json is unreadable, the defaults for
    the checkpoint's backbone and mode (the same rules: ``Job.resolved``), said through
    ``progress``."""
    try:
        return folder.job().resolved().inference
    except JobError as e:
        fallback = Job()
        fallback.model.backbone = state["network"]["backbone"]
        trained = (state.get("job") or {}).get("training") or {}
        if isinstance(trained.get("mode"), str):
            fallback.training.mode = trained["mode"]
        inference = fallback.resolved().inference
        if progress:
            progress(f"{e}; using the default inference settings for "
                     f"{fallback.model.backbone} (TEA {inference.tea}, top z "
                     f"{inference.tea_top_z}, step {inference.step:g})")
        return inference


def tea_plan(run: LoadedRun, tea: Optional[str] = None, z: Optional[int] = None):
    """(ops, weights) for the TEA mode: learned top-z of p_V, the heuristic mirrors, or none.
    ``tea`` and ``z`` default to the run's inference settings (``run.inference``)."""
    tea = run.inference.tea if tea in (None, "auto") else tea
    if tea == "none":
        return [0], [1.0]
    if tea == "heuristic":
        ops = heuristic_tea_ops(run.state["network"]["backbone"])
        return ops, [1.0 / len(ops)] * len(ops)
    if tea != "learned":
        raise PredictionError(f"--tea must be learned, heuristic or none, got {tea!r}")
    z = run.inference.tea_top_z if z is None else z
    if isinstance(z, bool) or not isinstance(z, int) or not 1 <= z <= len(TEA_OPS):
        raise PredictionError(f"--z must be a whole number from 1 to {len(TEA_OPS)}, got {z!r}")
    # only ops the network can evaluate on its window (a quarter turn of a non-cubic window
    # changes its shape; the U-Net takes it where the sizes stay divisible, DeepMedic never)
    evaluable = evaluable_tea_ops(run.model, run.info.input_size, run.info.output_size)
    return run.tea.top(z, allowed=evaluable)


def _output_path(out_dir: str, image_path: str, suffix: str = "") -> str:
    stem, ending = split_image_name(image_path)
    ending = ending or ".nii.gz"
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


def _case_outputs(images: Sequence[Sequence[str]], out_dir: str, uncertainty: bool,
                  overwrite: bool) -> List[Tuple[str, Optional[str]]]:
    """(label map, disagreement map or None) per case, checked: no output overwrites an input,
    no two cases share one, and none exists already unless ``overwrite``."""
    outputs = [(_output_path(out_dir, files[0]),
                _output_path(out_dir, files[0], "_tea_disagreement") if uncertainty else None)
               for files in images]
    written = [p for pair in outputs for p in pair if p is not None]
    for files, pair in zip(images, outputs):
        inputs = {os.path.abspath(f) for f in files}
        for p in pair:
            if p is not None and os.path.abspath(p) in inputs:
                raise PredictionError(f"{p}: the output would overwrite its input; choose "
                                      f"another --out folder")
    if len(set(written)) != len(written):
        raise PredictionError("two inputs would write the same output name; give images with "
                              "distinct file names")
    for p in written:
        if os.path.isdir(p):
            raise PredictionError(f"{p} is a folder where the prediction would be written; "
                                  f"choose another --out folder")
    existing = [p for p in written if os.path.lexists(p)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PredictionError(f"{existing[0]} already exists{more}; choose another --out "
                              f"folder, or replace it with --overwrite")
    return outputs


def predict_cases(run: "str | os.PathLike | RunFolder", images: Sequence[Sequence[str]],
                  out_dir: str, options: Optional[PredictOptions] = None,
                  progress: Progress = None,
                  window_progress: Optional[Callable[[PredictProgress], None]] = None,
                  **option_fields) -> List[Dict]:
    """Predict every case (a list of channel files each) into ``out_dir``; returns one record
    per case: its ``image`` files, ``prediction`` (and ``uncertainty``) paths, the ``tea``
    mode, ``tea_ops``, ``tea_weights``, ``step`` and the ``checkpoint`` used (``path``,
    ``which``, ``iteration``, ``note``).

    ``options`` (:class:`PredictOptions`) or its fields as keywords
    (``predict_cases(run, images, out, tea="none")``); what is left ``None`` is the job's.
    ``window_progress`` receives a :class:`~JCSAugmentLib.infer.progress.PredictProgress`
    after every batch of windows (this case and all cases, with ETAs)."""
    try:
        options = dataclasses.replace(options or PredictOptions(), **option_fields)
    except TypeError as e:  # a misspelt keyword
        raise TypeError(f"predict_cases: {e}") from None
    loaded = load_run(run, options.checkpoint, options.device, progress)
    tea = loaded.inference.tea if options.tea in (None, "auto") else options.tea
    ops, weights = tea_plan(loaded, tea, options.z)
    step = loaded.inference.step if options.step is None else options.step
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise PredictionError(f"--step must be a fraction of the patch in (0, 1], got {step!r}")
    bw = options.batch_windows
    if bw is not None and (isinstance(bw, bool) or not isinstance(bw, int) or bw < 1):
        raise PredictionError(f"--batch-windows must be a whole number >= 1, got {bw!r}")
    pre = loaded.state.get("preprocess") or {}
    settings = PreprocessSettings.from_dict(pre.get("settings") or {})
    n_ch = loaded.state["network"]["in_channels"]
    volumes, window_counts = [], []
    for files in images:  # check everything before predicting anything
        try:
            vol = read_images(list(files))
        except VolumeError as e:
            raise PredictionError(str(e)) from None
        if vol.num_channels != n_ch:
            raise PredictionError(f"{files[0]}: {vol.num_channels} channel(s), but the run was "
                                  f"trained on {n_ch}")
        shape = preprocessed_shape(vol.size, vol.spacing, settings)
        if any(s < o for s, o in zip(shape, loaded.info.output_size)):
            raise PredictionError(f"{files[0]}: the image {shape} (after preprocessing) is "
                                  f"smaller than one patch {tuple(loaded.info.output_size)}")
        volumes.append(vol)
        window_counts.append(len(window_grid(shape, loaded.info.output_size, step)))
    outputs = _case_outputs(images, out_dir, options.uncertainty, options.overwrite)
    os.makedirs(out_dir, exist_ok=True)
    if progress:
        progress(f"TEA {tea}: ops {ops}; sliding-window step {step:g}")
    checkpoint = dataclasses.asdict(loaded.checkpoint)
    pfile = ProgressFile(out_dir, on_error=progress) if options.progress_file else None
    callback = window_progress
    if pfile is not None:
        pfile.start(len(images), sum(window_counts), os.path.basename(images[0][0]))
        callback = pfile if window_progress is None else _both(window_progress, pfile)
    try:
        records = _predict_each(loaded, images, volumes, outputs, settings, pre, ops, weights,
                                step, tea, checkpoint, options,
                                _WindowTracker(window_counts, callback), progress)
    except BaseException as e:
        if pfile is not None:
            pfile.finish("failed", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        raise
    if pfile is not None:
        pfile.finish("done")
    return records


def _both(first, second):
    def report(p: PredictProgress) -> None:
        first(p)
        second(p)
    return report


def _predict_each(loaded, images, volumes, outputs, settings, pre, ops, weights, step, tea,
                  checkpoint, options, tracker, progress) -> List[Dict]:
    """predict_cases' loop over the checked cases: one record per case."""
    records = []
    for case, (files, vol, (out_path, u_path)) in enumerate(zip(images, volumes, outputs)):
        if progress:
            progress(f"predicting {os.path.basename(files[0])}")
        data, spacing, geom = preprocess_image(vol, settings, pre.get("ct_statistics"),
                                               pre.get("modality") or None,
                                               case_id=os.path.basename(files[0]))
        x = torch.from_numpy(data).to(loaded.device)
        from ..augment.stats import CaseStats
        from ..io.volume import case_statistics
        stats = CaseStats.from_cases([case_statistics(data)], device=loaded.device)

        def net(b):
            return full_resolution(loaded.model(b))

        logits, disagreement = sliding_window_predict(
            net, x, loaded.info.input_size, loaded.info.output_size,
            loaded.state["network"]["num_classes"], ops, weights, step=step, stats=stats,
            uncertainty=options.uncertainty, batch_windows=options.batch_windows,
            progress=tracker.for_case(case, os.path.basename(files[0])))
        probs = torch.softmax(logits, 0).cpu().numpy()
        reference = _reference_image(vol)
        labels = _back_to_input_grid(probs, spacing, geom, reference)
        out = sitk.GetImageFromArray(labels.astype(np.uint8))
        out.CopyInformation(reference)
        _write_atomic(out, out_path)
        rec = {"image": list(files), "prediction": out_path, "tea": tea, "tea_ops": list(ops),
               "tea_weights": [float(w) for w in weights], "step": float(step),
               "checkpoint": dict(checkpoint)}
        if u_path is not None:
            u = _resample_float(disagreement.cpu().numpy(), spacing, geom, reference)
            u_img = sitk.GetImageFromArray(u.astype(np.float32))
            u_img.CopyInformation(reference)
            _write_atomic(u_img, u_path)
            rec["uncertainty"] = u_path
        records.append(rec)
    return records


class _WindowTracker:
    """Turns each case's :class:`WindowProgress` into :class:`PredictProgress` records over
    all cases: the overall ETA is the windows left (every case's count, known from its
    preprocessed shape before anything runs) at the mean time per window so far."""

    def __init__(self, counts: Sequence[int], callback):
        self.counts = list(counts)
        self.callback = callback
        self.finished = 0  # windows of the cases already done
        self.started: Optional[float] = None

    def for_case(self, case: int, name: str):
        if self.callback is None:
            return None
        import time

        def report(w: WindowProgress) -> None:
            now = time.perf_counter()
            if self.started is None:
                self.started = now - w.elapsed_s
            self.counts[case] = w.windows_total  # the true count, should preprocessing differ
            done = self.finished + w.windows_done
            total = sum(self.counts)
            elapsed = now - self.started
            self.callback(PredictProgress(
                case, len(self.counts), name, w.windows_done, w.windows_total, w.elapsed_s,
                w.eta_s, done, total, elapsed, elapsed / max(done, 1) * (total - done)))
            if w.windows_done == w.windows_total:
                self.finished += w.windows_total
        return report


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
