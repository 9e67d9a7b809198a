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
import platform
import statistics
import time
from typing import Callable, Dict, Optional, Sequence

import torch

from ..augment.tables import TEA_MIRROR_OPS_NNUNET
from ..infer.sliding_window import prepare_for_inference, sliding_window_predict
from ..nets.factory import build_network
from ..nets.losses import full_resolution
from ..threads import apply_thread_policy

ONE_WINDOW = "jcs z=1 before"


def _ours(z: int) -> str:
    return f"jcs z={z}"


def run_infer_bench(device: str = "cpu", size: Sequence[int] = (155, 240, 240), patch: int = 64,
                    base_features: int = 10, zs: Sequence[int] = (1, 4, 8),
                    print_table: bool = True, peers: bool = True, rounds: int = 1,
                    batch_windows: Optional[int] = None) -> Dict:
    threads = apply_thread_policy()
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
                                              info.output_size, 3, ops, step=0.5,
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
            plain = nnunet_predictor_peer(reference, 1, 3, (patch,) * 3, 0.5, False, device)
            mirrored = nnunet_predictor_peer(reference, 1, 3, (patch,) * 3, 0.5, True, device)
        except PeerUnavailable as e:
            notes["nnunet"] = str(e)
        else:
            peer_parameters = plain.parameters
            contestants["nnunet no TTA"] = lambda: plain.predict(image)
            contestants["nnunet 8 mirrors"] = lambda: mirrored.predict(image)
            notes["nnunet"] = (f"nnunetv2 {plain.version} nnUNetPredictor, PlainConvUNet with "
                               f"our stages, {plain.parameters:,} parameters")
    with torch.no_grad():  # warm-up: allocations, kernel choices
        for network in (net, before):
            network(image.new_zeros((1, 1, *info.input_size)))
    times: Dict[str, list] = {k: [] for k in contestants}
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
           "step": 0.5, "base_features": base_features, "parameters": info.parameters,
           "nnunet_parameters": peer_parameters, "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                      f"OMP_WAIT_POLICY={threads.wait_policy}"
                      f"{'' if threads.wait_policy_effective else ' (set after torch: unused)'}",
           "rounds": max(int(rounds), 1), "results": results, "speed_ratios": speed,
           "notes": notes}
    if print_table:
        print(f"One {tuple(size)} volume, {patch}^3 windows, step 1/2, Gaussian; 3D U-Net "
              f"(base {base_features}, {info.parameters:,} parameters); {out['date']}, "
              f"{out['machine']}, {out['device']}, median of {out['rounds']} round(s)")
        if "nnunet" in notes:
            print(f"  peer: {notes['nnunet']}")
        for k, r in results.items():
            cost = f"  {r['cost_to_z1']:>5.2f}x z=1 cost" if "cost_to_z1" in r else ""
            print(f"{k:<20} {r['seconds']:>8.1f} s{cost}")
        for k, v in speed.items():
            print(f"{v:>5.2f}x  {k} (speed; > 1: ours faster)")
    return out
