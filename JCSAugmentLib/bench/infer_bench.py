"""``jcsaugment bench infer``: seconds to segment one volume with TEA z = 1, 4, 8, side by side.

The same network (the reference 3D U-Net by default, random weights: timing does not depend on
them) predicts one synthetic volume of ``size`` by sliding window (step half a patch, Gaussian
importance) with the first z ops of the nnU-Net mirror set; the TEA variants of each window run
as one batch, so z = 8 should cost well under 8 times z = 1 (target: at most 8.5x).
"""

from __future__ import annotations

import platform
import time
from typing import Dict, Sequence

import torch

from ..augment.tables import TEA_MIRROR_OPS_NNUNET
from ..infer.sliding_window import sliding_window_predict
from ..nets.factory import build_network
from ..nets.losses import full_resolution


def run_infer_bench(device: str = "cpu", size: Sequence[int] = (155, 240, 240), patch: int = 64,
                    base_features: int = 10, zs: Sequence[int] = (1, 4, 8),
                    print_table: bool = True) -> Dict:
    dev = torch.device(device)
    model, info = build_network("unet3d", 1, 3, (patch,) * 3, base=base_features)
    model.to(dev).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, *size, generator=g).to(dev)

    def net(b):
        return full_resolution(model(b))

    results = {}
    for z in zs:
        ops = list(TEA_MIRROR_OPS_NNUNET[:z])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        sliding_window_predict(net, image, info.input_size, info.output_size, 3, ops)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        results[f"z={z}"] = {"seconds": time.perf_counter() - t0}
    base = results[f"z={zs[0]}"]["seconds"]
    for r in results.values():
        r["ratio_to_z1"] = r["seconds"] / base
    out = {"benchmark": "infer", "device": str(dev), "size": list(size), "patch": patch,
           "base_features": base_features, "parameters": info.parameters,
           "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "results": results}
    if print_table:
        print(f"One {tuple(size)} volume, 3D U-Net (base {base_features}, "
              f"{info.parameters:,} parameters), {patch}^3 windows, step 1/2 "
              f"({out['date']}, {out['machine']}, {out['device']})")
        for k, r in results.items():
            print(f"{k:<5} {r['seconds']:>8.1f} s  {r['ratio_to_z1']:>5.2f}x z=1")
    return out
