"""Several processes (``torchrun --nproc_per_node N -m JCSAugmentLib train RUN_DIR``).

Data-parallel training without a DDP wrapper (the meta step calls the network functionally,
which DDP's hooks do not see): every rank holds the same model and policies, draws its own
patches (training cases sharded by rank where there are enough), and the gradients are averaged
across ranks by ``all_reduce`` before every step, so models and policies stay identical:

* the model gradient of the training batch (also inside the meta step, so the inner step
  ``theta*`` and ``v = grad L_val(theta*)`` are those of the global batch, and each rank's
  ``dL_val/dw_i`` is exact for the global batch);
* the TRA and TEA policy-logit gradients (each rank normalises its own draws, Eq. 10-11, then
  the ranks average).

Only rank 0 writes the run folder. The backend is NCCL on GPUs and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean(self, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        """Average each tensor across ranks (one flat buffer, one collective call)."""
        if not self.active or not tensors:
            return tensors
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        out, start = [], 0
        for t in tensors:
            out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.dtype))
            start += t.numel()
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any (a stop asked on rank 0 stops all)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64,
                         device=self._collective_device())
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)

    def _collective_device(self):
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else "cpu"

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device: str = "auto") -> DistContext:
    """The context torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), initialised; a single
    process when those are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local)


def rank_device(spec: str, ctx: DistContext) -> Optional[str]:
    """Each rank's device under torchrun: cuda:LOCAL_RANK unless the job asks for the CPU."""
    if not ctx.active or spec == "cpu":
        return None
    if torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return None
