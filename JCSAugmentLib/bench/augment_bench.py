"""``jcsaugment bench augment``: TRA patches per second, ours and the peers', in one run.

Every contestant does the whole job of a training data pipeline for a batch: take B patch
centres of a case (half foreground, half background), crop around them, augment to the patch
size. Ours draws the ops from the nnU-Net heuristic policy (class-specific, both classes
equal), reads from the case only what each sample's draws need (``augment_patches``) and runs
on ``--device``. The peers
run on the CPU, one sample at a time as their data loaders do, on crops of the size nnU-Net's
loader hands its spatial transform for this patch (``nnunet_initial_patch``). Pipelines take
turns batch by batch, so the machine's noise hits all of them alike; the rate is the batch size
over the median batch time.

The headline puts the same-work ratio first: ``jcs-3d-only`` (CPU) resamples every patch that
drew a rotation or scaling with one 3-D ``grid_sample``, as the peers must (nnU-Net v2 rotates
about all three axes at once), so it compares the speed of the same kind of work. The
default-policy ratio (``jcsaugment``) comes second: it also counts that our heuristic rotates
about one axis at a time, which lets more patches take the cheaper slice-wise path.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from ..augment import CaseStats, augment_patches, sample_tra_params
from ..augment import geometry
from ..policy import make_tra_policy


def nnunet_initial_patch(patch: int, max_degrees: float = 30.0, min_scale: float = 0.85) -> int:
    """Edge of the enlarged crop nnU-Net v2's loader gives its spatial transform for a cubic
    patch: the patch's corner vector rotated by the largest angle about each axis in turn
    (largest absolute coordinate kept), divided by 0.85 (nnU-Net's get_patch_size, which it
    calls with +-30 degrees and the scale range (0.85, 1.25) for 3D)."""
    corner = torch.full((3,), float(patch), dtype=torch.float64)
    shape = corner.clone()
    for a in range(3):
        m = geometry.rotation_matrix(a, torch.tensor([max_degrees]))[0]
        shape = torch.maximum(shape, (m @ corner).abs())
    return int(float(shape.max()) / min_scale)


def synthetic_case(size: int = 160, seed: int = 0):
    """A smooth textured volume (1 channel) with a few blob lesions (label 1)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, size // 8, size // 8, size // 8, generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear",
                                            align_corners=False)[0]
    image = image + 0.1 * torch.randn(image.shape, generator=g)
    zz, yy, xx = torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij")
    label = torch.zeros(1, size, size, size, dtype=torch.long)
    for _ in range(4):
        c = torch.randint(size // 4, 3 * size // 4, (3,), generator=g)
        r = int(torch.randint(6, 14, (1,), generator=g))
        label[0][(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = 1
    return image.float(), label


def _centres(label: torch.Tensor, b: int, rng: np.random.Generator) -> List[tuple]:
    fg = torch.nonzero(label[0] > 0)
    bg = torch.nonzero(label[0] == 0)
    out = []
    for i in range(b):
        pool = fg if i % 2 == 0 else bg
        out.append(tuple(int(v) for v in pool[int(rng.integers(len(pool)))]))
    return out


def _crop_batch(padded: torch.Tensor, margin: int, centres, size) -> torch.Tensor:
    """Stack crops of ``size`` around ``centres`` from a volume padded by ``margin``."""
    crops = []
    for c in centres:
        sl = tuple(slice(margin + ci - s // 2, margin + ci - s // 2 + s) for ci, s in zip(c, size))
        crops.append(padded[(slice(None),) + sl])
    return torch.stack(crops)


def _ratios_over_peers(results: Dict, ours: str) -> Dict[str, float]:
    """``{"ours/peer": ours' rate over the peer's}`` for every peer row of ``results``."""
    rate = results[ours]["patches_per_s"]
    return {f"{ours}/{k}": rate / v["patches_per_s"]
            for k, v in results.items() if not k.startswith("jcs")}


def headline_lines(same_work: Dict[str, float], default_policy: Dict[str, float]) -> List[str]:
    """The headline, same-work ratio first: it compares speed alone. The default-policy ratio
    also counts that our heuristic rotates about one axis at a time, so more of our patches
    take the cheap slice-wise path than the peers' (which rotate about all three at once)."""
    def join(ratios):
        return ", ".join(f"{v:.2f}x {k.split('/', 1)[1]}" for k, v in ratios.items())
    lines = []
    if same_work:
        lines.append(f"same-work ratio (jcs-3d-only: every resampled patch in 3-D, as the "
                     f"peers): {join(same_work)}")
    if default_policy:
        lines.append(f"default-policy ratio (jcsaugment: nnU-Net heuristic policy, slice-wise "
                     f"where it can): {join(default_policy)}")
    return lines


def run_augment_bench(device: str = "cpu", batch: int = 10, patch: int = 64, repeats: int = 5,
                      peers: bool = True, print_table: bool = True) -> Dict:
    from ..threads import apply_thread_policy
    apply_thread_policy()  # JCSAUGMENT_NUM_THREADS, OMP_WAIT_POLICY (see threads.py)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    patch_size = (patch,) * 3
    image, label = synthetic_case()
    margin = 2 * patch
    pad_img = torch.nn.functional.pad(image, (margin,) * 6, value=float(image.min()))
    pad_lab = torch.nn.functional.pad(label, (margin,) * 6, value=0)
    flat = image.flatten()
    q = torch.quantile(flat[:: max(1, flat.numel() // 100000)], torch.linspace(0, 1, 101))
    case = {"mean": [float(flat.mean())], "std": [float(flat.std())], "min": [float(flat.min())],
            "max": [float(flat.max())], "quantiles": [q.tolist()]}
    stats = CaseStats.from_cases([case] * batch, device=dev)
    # Ours reads the unpadded case (it pads what leaves the volume itself); labels as uint8,
    # as a training loader keeps them.
    dev_img, dev_lab = image.to(dev), label.to(device=dev, dtype=torch.uint8)
    policy = make_tra_policy("nnunet")
    gen = torch.Generator().manual_seed(0)
    classes = torch.tensor([1 - (i % 2) for i in range(batch)])

    def ours(centres, slice_wise=True):
        with torch.no_grad():
            draw = policy.sample(classes, gen)
        params = sample_tra_params(draw.choices, gen)
        out = augment_patches([dev_img] * batch, [dev_lab] * batch, centres, params, stats,
                              patch_size, slice_wise=slice_wise)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    pipelines: Dict[str, Callable] = {"jcsaugment": ours}
    if dev.type == "cpu":
        pipelines["jcs-3d-only"] = lambda centres: ours(centres, slice_wise=False)
    peer_crop = nnunet_initial_patch(patch)
    notes = {"jcsaugment": f"nnU-Net heuristic policy, class-specific, on {device}",
             "jcs-3d-only": "the same without slice-wise resampling (3-D grid_sample only)"}
    if peers:
        from .peers import available_peers
        for name, factory in available_peers().items():
            run = factory(patch_size=patch_size)

            def peer(centres, run=run):
                img = _crop_batch(pad_img, margin, centres, (peer_crop,) * 3)
                lab = _crop_batch(pad_lab, margin, centres, (peer_crop,) * 3)
                return run(img, lab.to(torch.int16))

            pipelines[name] = peer
            notes[name] = f"CPU, crops of {peer_crop}^3"
    rng = np.random.default_rng(0)
    times: Dict[str, List[float]] = {k: [] for k in pipelines}
    for fn in pipelines.values():  # warm-up (allocations, kernel choices)
        fn(_centres(label, batch, rng))
    for _ in range(repeats):
        centres = _centres(label, batch, rng)
        for name, fn in pipelines.items():
            torch.manual_seed(int(rng.integers(1 << 30)))
            np.random.seed(int(rng.integers(1 << 30)))
            t0 = time.perf_counter()
            fn(centres)
            times[name].append(time.perf_counter() - t0)
    results = {k: {"patches_per_s": batch / statistics.median(v),
                   "median_batch_s": statistics.median(v), "note": notes[k]}
               for k, v in times.items()}
    ratios = _ratios_over_peers(results, "jcsaugment")
    # the same-work ratio: every resampled patch through a 3-D grid_sample, as the peers do
    # (they rotate about all three axes at once, where a 3-D resampling is the only way)
    same_work = _ratios_over_peers(results, "jcs-3d-only") if "jcs-3d-only" in results else {}
    out = {"benchmark": "augment", "device": device, "batch": batch, "patch": patch,
           "repeats": repeats, "torch_threads": torch.get_num_threads(),
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                      f"{torch.get_num_threads()} threads",
           "date": time.strftime("%Y-%m-%d"), "results": results, "ratios": ratios,
           "same_work_ratios": same_work}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    if print_table:
        print(f"TRA cascade, {patch}^3 patches, batch {batch}, median of {repeats} batches "
              f"({out['date']}, {out['machine']}{', ' + out['gpu'] if 'gpu' in out else ''})")
        print(f"{'pipeline':<12} {'patches/s':>10} {'s/batch':>9}  note")
        for k, v in results.items():
            print(f"{k:<12} {v['patches_per_s']:>10.1f} {v['median_batch_s']:>9.3f}  {v['note']}")
        for line in headline_lines(same_work, ratios):
            print(line)
        if not peers or len(results) == 1:
            print("(no peers: pip install batchgeneratorsv2 torchio, or see README)")
    return out
