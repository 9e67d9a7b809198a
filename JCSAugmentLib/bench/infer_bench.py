"""``jcsaugment bench infer``: seconds to segment one volume, ours and nnU-Net v2's predictor.

The same synthetic volume of ``size`` is segmented by sliding window (``patch``^3 windows,
step half a patch, Gaussian importance) by

* ours, the reference 3D U-Net (random weights: timing does not depend on them): TEA z = 1
  as before this batching (one window per call, the network in its plain layout), and as
  predict runs it now (the default window batch, the network laid out by
  :func:`~JCSAugmentLib.infer.sliding_window.prepare_for_inference`), and z = 4, 8 with the
  first z of nnU-Net's mirror ops (z = 8 is the heuristic TEA of the U-Net: all 8 mirrors);
* nnU-Net v2's ``nnUNetPredictor`` (when nnunetv2 is installed: the ``bench-nnunet`` extra) on
  its PlainConvUNet built with our stages (:mod:`.nnunet_predictor`), without test-time
  mirroring and with its 8 mirrors.

Contestants take turns within each round (``rounds`` of them, the median kept), so the
machine's load hits all alike. Printed side by side: our z = 1 batched against one window at a
time, our heuristic TEA (z = 8) against nnU-Net's mirroring, our z = 1 against nnU-Net without
mirroring (each "x" a speed ratio: > 1 means ours is faster), and the cost of z against z = 1.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from typing import Callable, Dict, Optional, Sequence

# torch and the engine are imported by run_infer_bench: the command line's parser reads the
# defaults below without loading torch

ONE_WINDOW = "jcs z=1 before"
#: the defaults of ``run_infer_bench`` (and of ``jcsaugment bench infer``): one BraTS-sized
#: volume (155x240x240: 196 windows; close to an hour on a 2-core VM), TEA z = 1, 4 and 8, one
#: round
DEFAULT_SIZE = (155, 240, 240)
DEFAULT_ZS = (1, 4, 8)
DEFAULT_PATCH = 64
DEFAULT_STEP = 0.5
#: the most TEA copies timed: nnU-Net's 8 mirror ops (len(TEA_MIRROR_OPS_NNUNET))
MAX_Z = 8


def _ours(z: int) -> str:
    return f"jcs z={z}"


def run_infer_bench(device: str = "cpu", size: Sequence[int] = DEFAULT_SIZE,
                    patch: int = DEFAULT_PATCH, base_features: int = 10,
                    zs: Sequence[int] = DEFAULT_ZS, print_table: bool = True, peers: bool = True,
                    rounds: int = 1, batch_windows: Optional[int] = None,
                    step: float = DEFAULT_STEP) -> Dict:
    """Time the contestants (module docstring) on one random volume of ``size`` (z, y, x) with
    ``patch``^3 windows at ``step``; ``zs``: our TEA copies to time (1 to :data:`MAX_Z`);
    ``peers=False``: ours only; ``batch_windows``: our window batch (None: predict's default).
    Returns the results (JSON-ready); prints the table with ``print_table``. A bad argument
    is a ValueError before anything runs."""
    size, zs = tuple(int(v) for v in size), tuple(int(z) for z in zs)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"the volume size must be 3 whole numbers >= 1 (z, y, x), got {size}")
    if isinstance(patch, bool) or int(patch) != patch or patch < 8:
        raise ValueError(f"the window edge must be a whole number >= 8, got {patch!r}")
    if min(size) < patch:
        raise ValueError(f"the volume {'x'.join(map(str, size))} is smaller than one "
                         f"{patch}^3 window: give a smaller window (--patch) or a larger "
                         f"volume")
    if not zs or any(not 1 <= z <= MAX_Z for z in zs) or len(set(zs)) != len(zs):
        raise ValueError(f"the TEA copies z must be distinct whole numbers from 1 to {MAX_Z}, "
                         f"got {','.join(map(str, zs)) or 'none'}")
    if isinstance(step, bool) or not 0 < float(step) <= 1:
        raise ValueError(f"the sliding-window step must be a fraction in (0, 1], got {step!r}")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
    step = float(step)
    from ..threads import apply_thread_policy
    threads = apply_thread_policy()  # before torch is imported, where it is not yet
    import torch

    from ..augment.tables import TEA_MIRROR_OPS_NNUNET
    from ..infer.sliding_window import (prepare_for_inference, sliding_window_predict,
                                        window_grid)
    from ..nets.factory import build_network
    from ..nets.losses import full_resolution
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    model, info = build_network("unet3d", 1, 3, (patch,) * 3, base=base_features)
    model.to(dev).eval()
    reference = copy.deepcopy(model)  # nnU-Net's network copies these weights, plain layout
    prepare_for_inference(model, dev)  # as predict does
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, *size, generator=g).to(dev)

    def net(b):
        return full_resolution(model(b))

    def before(b):
        return full_resolution(reference(b))

    def ours(ops, windows, network=net):
        return lambda: sliding_window_predict(network, image, info.input_size,
                                              info.output_size, 3, ops, step=step,
                                              batch_windows=windows)

    contestants: Dict[str, Callable] = {ONE_WINDOW: ours([0], 1, before)}
    for z in zs:
        contestants[_ours(z)] = ours(list(TEA_MIRROR_OPS_NNUNET[:z]), batch_windows)
    notes: Dict[str, str] = {}
    peer_parameters = None
    if peers:
        from .nnunet_predictor import nnunet_predictor_peer
        from .peers import PeerUnavailable
        try:
            plain = nnunet_predictor_peer(reference, 1, 3, (patch,) * 3, step, False, device)
            mirrored = nnunet_predictor_peer(reference, 1, 3, (patch,) * 3, step, True, device)
        except PeerUnavailable as e:
            notes["nnunet"] = f"nnU-Net's predictor skipped: {e}"
        else:
            peer_parameters = plain.parameters
            contestants["nnunet no TTA"] = lambda: plain.predict(image)
            contestants["nnunet 8 mirrors"] = lambda: mirrored.predict(image)
            notes["nnunet"] = (f"nnunetv2 {plain.version} nnUNetPredictor, PlainConvUNet with "
                               f"our stages, {plain.parameters:,} parameters")
    else:
        notes["nnunet"] = "nnU-Net's predictor skipped (peers off: --no-peers)"
    with torch.no_grad():  # warm-up: allocations, kernel choices
        for network in (net, before):
            network(image.new_zeros((1, 1, *info.input_size)))
    times: Dict[str, list] = {k: [] for k in contestants}
    load_before = _load_average()
    for _ in range(max(int(rounds), 1)):
        for name, fn in contestants.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[name].append(time.perf_counter() - t0)
    results = {k: {"seconds": statistics.median(v), "rounds": v} for k, v in times.items()}
    base = results[_ours(zs[0])]["seconds"]
    for k in zs:
        results[_ours(k)]["cost_to_z1"] = results[_ours(k)]["seconds"] / base
    speed = {"jcs z=1 now / before (one window per call)": results[ONE_WINDOW]["seconds"] /
             results[_ours(1)]["seconds"]} if 1 in zs else {}
    if "nnunet 8 mirrors" in results and 8 in zs:
        speed["jcs heuristic TEA z=8 / nnunet 8 mirrors"] = (
            results["nnunet 8 mirrors"]["seconds"] / results[_ours(8)]["seconds"])
    if "nnunet no TTA" in results and 1 in zs:
        speed["jcs z=1 / nnunet no TTA"] = (results["nnunet no TTA"]["seconds"] /
                                            results[_ours(1)]["seconds"])
    out = {"benchmark": "infer", "device": str(dev), "size": list(size), "patch": patch,
           "step": step, "windows": len(window_grid(size, info.output_size, step)),
           "zs": list(zs), "batch_windows": batch_windows,
           "base_features": base_features, "parameters": info.parameters,
           "nnunet_parameters": peer_parameters, "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                      f"OMP_WAIT_POLICY={threads.wait_policy}"
                      f"{'' if threads.wait_policy_effective else ' (set after torch: unused)'}",
           "rounds": max(int(rounds), 1), "results": results, "speed_ratios": speed,
           "load_average": {"before": load_before, "after": _load_average()}, "notes": notes}
    if print_table:
        plural = "" if out["windows"] == 1 else "s"
        print(f"One {tuple(size)} volume ({out['windows']} window{plural} of {patch}^3, step "
              f"{step:g}, "
              f"Gaussian); 3D U-Net "
              f"(base {base_features}, {info.parameters:,} parameters); {out['date']}, "
              f"{out['machine']}, {out['device']}, median of {out['rounds']} round(s); "
              f"load average {_load_text(load_before)} before, "
              f"{_load_text(out['load_average']['after'])} after")
        if "nnunet" in notes:
            print(f"  peer: {notes['nnunet']}")
        for k, r in results.items():
            cost = f"  {r['cost_to_z1']:>5.2f}x z={zs[0]} cost" if "cost_to_z1" in r else ""
            sec = r["seconds"]
            print(f"{k:<20} {sec:>8.{1 if sec >= 10 else 2}f} s{cost}")
        for k, v in speed.items():
            print(f"{v:>5.2f}x  {k} (speed; > 1: ours faster)")
    return out


def _load_average() -> Optional[float]:
    """The 1-minute load average (None where the system does not say)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _load_text(load: Optional[float]) -> str:
    return "?" if load is None else f"{load:.2f}"
