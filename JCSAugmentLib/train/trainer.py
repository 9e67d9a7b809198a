"""The joint meta-learning trainer: one object that owns the data, the network, the policies and
their optimisers, and runs iterations (method.md sections 2-4, 8, 9).

One iteration:

1. Draw n training patches (foreground / background centres by ``fg_fraction``), their TRA ops
   from the policy of each patch's class, augment them (``augment_patches``).
2. When the mode learns TRA and ``iteration % policy_every == 0``: draw m validation patches (in
   joint mode each one TEA-transformed by an op drawn from p_V, its prediction inverted), compute
   ``dL_val/dw_i`` for every training patch (``meta_gradient``: exact JVP or finite
   differences), normalise (Eq. 10, 11), step the TRA logits with Adam.
3. Model step with the training gradient of step 2 (or of a plain forward/backward), SGD with
   Nesterov momentum, weight decay, gradient clipping, poly learning rate.
4. When the mode learns TEA (and on the same schedule): the TEA step on one foreground
   validation patch with Z copies (``tea_meta_gradient``), Adam on the TEA logits.

The trainer knows nothing of the run folder's files except through the callbacks a worker
passes (``on_event``); it is also usable from Python directly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import TEA_OPS, augment_patches, sample_tra_params
from ..augment.stats import CaseStats
from ..augment.tea import tea_invert, tea_transform
from ..augment.tra import identity_params
from ..data import (PatchSampler, PreprocessSettings, dataset_from_list, discover_dataset,
                    load_splits, make_splits, preprocess_dataset)
from ..meta import meta_gradient
from ..meta.tea_step import tea_meta_gradient
from ..nets.factory import build_network
from ..nets.losses import batch_soft_dice_loss, per_sample_soft_dice
from ..policy import (assign_gradients, make_tea_policy, make_tra_policy, tea_logit_gradient,
                      tra_logit_gradients)
from ..run.checkpoint import load_checkpoint, pack_rng_states, unpack_rng_states
from ..run.job import Job
from .distributed import DistContext, rank_device
from .modes import mode_spec

CHECKPOINT_KIND = "jcsaugment-trainer"


def dataset_and_splits(job: Job, base_dir: str):
    """The job's dataset (a folder, or the listed cases with paths relative to ``base_dir``)
    and its train / validation / test split (given, or drawn from the split seed)."""
    def resolve(p):
        return p if p is None or os.path.isabs(p) else os.path.join(base_dir, p)

    d = job.data
    if d.dataset is not None:
        dataset = discover_dataset(resolve(d.dataset))
    else:
        entries = [{"id": c.id, "images": [resolve(p) for p in c.images],
                    "label": resolve(c.label), "roi": resolve(c.roi) if c.roi else None}
                   for c in d.cases]
        dataset = dataset_from_list(entries)
    ids = dataset.case_ids()
    if d.splits is not None:
        splits = load_splits(d.splits, ids)
    else:
        fr = d.split_fractions
        splits = make_splits(ids, d.split_seed, (fr["train"], fr["validation"], fr["test"]))
    return dataset, splits


def resolve_device(spec: str) -> torch.device:
    """``auto``: the first CUDA device if torch sees one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} asked for, but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use device 'cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} "
                           f"CUDA device(s) exist")
    return dev


def poly_factor(epoch: int, epochs: int, power: float) -> float:
    """(1 - epoch / epochs) ** power, the reference code's learning-rate decay."""
    return max(0.0, 1.0 - epoch / max(1, epochs)) ** power


@dataclass
class IterationResult:
    iteration: int
    losses: Dict[str, float]
    policy_updated: bool


class Trainer:
    """Owns everything a run needs. ``base_dir``: folder that relative paths of the job are
    resolved against (the run folder). ``cache_dir``: where preprocessed cases are cached."""

    def __init__(self, job: Job, base_dir: str, cache_dir: Optional[str] = None,
                 on_event: Optional[Callable[..., None]] = None,
                 progress: Optional[Callable[[str, int, int], None]] = None,
                 dist: Optional[DistContext] = None):
        self.dist = dist or DistContext()
        self.job = job.resolved()
        per_rank_device = rank_device(self.job.device, self.dist)
        if per_rank_device:
            self.job.device = per_rank_device
        self.base_dir = base_dir
        self.cache_dir = cache_dir or os.path.join(base_dir, "cache")
        self.on_event = on_event or (lambda kind, **kw: None)
        self.progress = progress or (lambda stage, done, total: None)
        self.mode = mode_spec(self.job.training.mode)
        self.device = resolve_device(self.job.device)
        seed = self.job.seed
        torch.manual_seed(seed)  # the same initial network on every rank
        # each rank its own patches and draws; rank 0 of a single process is the plain seed
        self.rng = np.random.default_rng([seed, self.dist.rank] if self.dist.active else seed)
        self.gen = torch.Generator().manual_seed(seed + 1_000_003 * self.dist.rank)
        self.iteration = 0
        self.policy_updates = 0
        self.best_metric = -math.inf
        self.history: List[Dict] = []
        self._prepare_data()
        self._build()

    # -- set-up ---------------------------------------------------------------------------------
    def _resolve(self, p):
        return p if p is None or os.path.isabs(p) else os.path.join(self.base_dir, p)

    def _prepare_data(self):
        d = self.job.data
        dataset, splits = dataset_and_splits(self.job, self.base_dir)
        self.dataset, self.splits = dataset, splits
        settings = PreprocessSettings(
            target_spacing=tuple(d.target_spacing) if d.target_spacing else None,
            normalisation=d.normalisation)
        self.settings = settings

        def report(stage):
            return lambda done, total, case_id: self.progress(f"{stage}: {case_id}", done, total)

        train_specs = dataset.subset(splits["train"])
        self.train_cases = preprocess_dataset(train_specs, settings, self.cache_dir,
                                              report("preprocessing training cases"),
                                              modality=dataset.modality)
        ct_stats = None
        ct_file = os.path.join(self.cache_dir, "ct_statistics.json")
        if os.path.exists(ct_file):
            import json
            with open(ct_file, encoding="utf-8") as f:
                ct_stats = json.load(f)
        self.ct_stats = ct_stats
        self.val_cases = preprocess_dataset(dataset.subset(splits["validation"]), settings,
                                            self.cache_dir,
                                            report("preprocessing validation cases"),
                                            modality=dataset.modality,
                                            ct_dataset_stats=ct_stats)
        labels = set()
        for c in self.train_cases + self.val_cases:
            labels.update(np.unique(c.label).tolist())
        self.num_classes = int(max(max(labels), max(dataset.labels.values(), default=0))) + 1
        self.in_channels = self.train_cases[0].image.shape[0]

    def _build(self):
        j, t = self.job, self.job.training
        overrides = (dict(base=j.model.base_features, deep_supervision=j.model.deep_supervision)
                     if j.model.backbone == "unet3d" else {})
        # everything inference needs to rebuild this network, kept in every checkpoint
        self.network_spec = {"backbone": j.model.backbone, "in_channels": self.in_channels,
                             "num_classes": self.num_classes,
                             "patch_size": list(j.model.patch_size),
                             "spacing": list(self.train_cases[0].spacing),
                             "overrides": overrides}
        self.model, self.info = build_network(
            j.model.backbone, self.in_channels, self.num_classes, tuple(j.model.patch_size),
            spacing=self.train_cases[0].spacing, **overrides)
        self.model.to(self.device)
        self.dist.broadcast_module(self.model)
        if self.dist.active and len(self.train_cases) >= self.dist.world:
            # shard the training cases by rank (each rank still draws from all classes)
            self.train_cases = self.train_cases[self.dist.rank::self.dist.world]
        # The labelled (output) patch must fit in every case; DeepMedic's wider input context may
        # reach outside the volume (augment_patches pads it).
        patch = tuple(self.info.output_size)
        balanced = j.model.backbone == "deepmedic"
        self.train_sampler = PatchSampler(self.train_cases, patch, t.fg_fraction, balanced,
                                          self.device)
        self.val_sampler = PatchSampler(self.val_cases, patch, 0.5, False, self.device)
        if t.optimizer == "adam":  # short budgets (the CPU demo); betas as nnU-Net's Adam
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr,
                                              betas=(0.9, 0.999), weight_decay=t.weight_decay)
        else:  # the paper's task optimiser
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=t.lr,
                                             momentum=t.momentum,
                                             nesterov=t.nesterov and t.momentum > 0,
                                             weight_decay=t.weight_decay)
        tra_name = t.init if self.mode.tra_policy == "init" else self.mode.tra_policy
        self.tra = make_tra_policy(tra_name, num_classes=self.mode.tra_classes)
        self.tea = make_tea_policy(t.init)
        self.tra_opt = (torch.optim.Adam(self.tra.parameters(), lr=t.policy_lr,
                                         betas=(0.9, 0.999)) if self.mode.learn_tra else None)
        self.tea_opt = (torch.optim.Adam(self.tea.parameters(), lr=t.tea_lr, betas=(0.9, 0.999))
                        if self.mode.learn_tea else None)
        if not self.mode.train_model:
            if not t.pretrained:
                raise ValueError("training.mode 'tea-only' learns TEA on a trained model: set "
                                 "training.pretrained to its checkpoint (checkpoints/last.pt "
                                 "or best.pt of a finished run)")
            state = load_checkpoint(self._resolve(t.pretrained), map_location="cpu")
            self.model.load_state_dict(state["model"])
            for p in self.model.parameters():
                p.requires_grad_(False)
        # Fixed validation patches for model selection (seeded apart from the training stream).
        sel_rng = np.random.default_rng([self.job.seed, 1])
        n_sel = max(4, 2 * len(self.val_cases))
        self._selection = self.val_sampler.sample(n_sel, sel_rng)

    # -- batches --------------------------------------------------------------------------------
    def _patch_classes(self, draw) -> torch.Tensor:
        if self.mode.tra_classes == 1:
            return torch.zeros_like(draw.patch_class)
        return draw.patch_class

    def training_batch(self, n: int, keep_graph: bool):
        draw = self.train_sampler.sample(n, self.rng)
        classes = self._patch_classes(draw)
        with torch.set_grad_enabled(keep_graph):
            tra_draw = self.tra.sample(classes, self.gen)
        params = sample_tra_params(tra_draw.choices, self.gen)
        s = self.train_sampler
        x, y = augment_patches(s.images(draw.case_index), s.labels(draw.case_index),
                               draw.centres, params, s.stats(draw.case_index),
                               self.info.input_size)
        return x, y.long(), tra_draw, classes, params

    def validation_batch(self, m: int, draw=None):
        draw = draw if draw is not None else self.val_sampler.sample(m, self.rng)
        s = self.val_sampler
        x, y = augment_patches(s.images(draw.case_index), s.labels(draw.case_index),
                               draw.centres, identity_params(len(draw.centres)),
                               s.stats(draw.case_index), self.info.input_size)
        return x, y.long(), s.stats(draw.case_index)

    # -- losses ---------------------------------------------------------------------------------
    def _val_loss(self, out, y):
        logits = out[0] if isinstance(out, (tuple, list)) else out
        target = self.info.crop_target(y)
        kind = self.job.training.val_loss
        loss = 0.0
        if "ce" in kind:
            loss = loss + F.cross_entropy(logits, target[:, 0])
        if "dice" in kind:
            loss = loss + batch_soft_dice_loss(logits, target)
        return loss

    def _shape_kept(self, op: int) -> bool:
        o = TEA_OPS[op]
        if o.op != "rot90" or abs(o.magnitude) == 2:
            return True
        p = self.info.input_size
        b, c = [(o.axis + 1) % 3, (o.axis + 2) % 3]
        return p[b] == p[c]

    def _tea_val_forward(self, stats: CaseStats):
        """Joint mode: each validation patch predicted under a TEA op drawn from p_V, the
        prediction mapped back (quarter turns that would change a non-cubic patch's shape are
        replaced by identity)."""
        def forward(f, x):
            with torch.no_grad():
                drawn = self.tea.sample(x.shape[0], self.gen).index.tolist()
            chosen = [op if self._shape_kept(op) else 0 for op in drawn]
            xt = torch.cat([tea_transform(x[j:j + 1], op, stats=stats.select(torch.tensor([j])),
                                          generator=None) for j, op in enumerate(chosen)])
            out = f(xt)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            return torch.cat([tea_invert(logits[j:j + 1], op) for j, op in enumerate(chosen)])
        return forward

    # -- one iteration --------------------------------------------------------------------------
    def lr_factor(self) -> float:
        t = self.job.training
        epoch = self.iteration // t.iterations_per_epoch
        return poly_factor(epoch, t.epochs, t.poly_power)

    def step(self) -> IterationResult:
        t = self.job.training
        factor = self.lr_factor()
        lr = t.lr * factor
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.tra_opt:
            for g in self.tra_opt.param_groups:
                g["lr"] = t.policy_lr * factor
        if self.tea_opt:
            for g in self.tea_opt.param_groups:
                g["lr"] = t.tea_lr * factor
        policy_turn = self.iteration % t.policy_every == 0
        losses: Dict[str, float] = {}
        updated = False
        self.model.train()
        if self.mode.train_model:
            learn = self.mode.learn_tra and policy_turn
            x, y, tra_draw, classes, _params = self.training_batch(t.batch_size, keep_graph=learn)
            params = [p for p in self.model.parameters() if p.requires_grad]
            if learn:
                xv, yv, vstats = self.validation_batch(t.val_batch_size)
                val_forward = self._tea_val_forward(vstats) if self.mode.learn_tea else None
                step = meta_gradient(self.model, self.info.per_sample_loss, self._val_loss, x, y,
                                     xv, yv, alpha=lr, method=t.meta_grad,
                                     val_forward=val_forward,
                                     reduce=self.dist.all_reduce_mean if self.dist.active
                                     else None, world=self.dist.world)
                grads = step.grads
                losses["train"] = float(step.train_losses.mean())
                losses["val"] = step.val_loss
                pg = tra_logit_gradients(self.tra, tra_draw, step.g, classes, normalise=True)
                assign_gradients(self.tra.parameters(), self.dist.all_reduce_mean(pg))
                self.tra_opt.step()
                updated = True
            else:
                loss = self.info.per_sample_loss(self.model(x), y).mean()
                grads = self.dist.all_reduce_mean(list(torch.autograd.grad(loss, params)))
                losses["train"] = float(loss.detach())
            for p, gr in zip(params, grads):
                p.grad = gr.detach().clone()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.mode.learn_tea and policy_turn:
            losses["tea"] = self._tea_step()
            updated = True
        if updated:
            self.policy_updates += 1
        self.iteration += 1
        return IterationResult(self.iteration, losses, updated)

    def _tea_step(self) -> float:
        t = self.job.training
        draw = self.val_sampler.sample(1, self.rng)
        if int(draw.patch_class[0]) == 0:  # the TEA step uses a foreground patch
            draw = self.val_sampler.sample(1, self.rng)
        x, y, stats = self.validation_batch(1, draw)
        tea_draw = self.tea.sample(t.tea_copies, self.gen)
        ops = [op if self._shape_kept(op) else 0 for op in tea_draw.index.tolist()]
        self.model.eval()
        try:
            res = tea_meta_gradient(lambda b: self._full(self.model(b)), x, y, ops,
                                    per_sample_soft_dice_loss, stats=stats,
                                    generator=None, target_for=lambda lg, yy:
                                    self.info.crop_target(yy))
        finally:
            self.model.train()
        grad = tea_logit_gradient(self.tea, tea_draw, res.g, normalise=True)
        assign_gradients([self.tea.logits], self.dist.all_reduce_mean([grad]))
        self.tea_opt.step()
        return res.loss

    @staticmethod
    def _full(out):
        return out[0] if isinstance(out, (tuple, list)) else out

    # -- model selection ------------------------------------------------------------------------
    def validate(self) -> Dict[str, float]:
        """Hard Dice per foreground class on the fixed validation patches (validation split
        only: the test split never selects a model)."""
        x, y, _ = self.validation_batch(0, self._selection)
        self.model.eval()
        with torch.no_grad():
            pred = torch.cat([self._full(self.model(x[i:i + 2])).argmax(1)
                              for i in range(0, x.shape[0], 2)])
        self.model.train()
        target = self.info.crop_target(y)[:, 0]
        out = {}
        for k in range(1, self.num_classes):
            p, r = pred == k, target == k
            denom = int(p.sum() + r.sum())
            if denom:
                out[f"dice_{k}"] = 2 * float((p & r).sum()) / denom
        fg_p, fg_r = pred > 0, target > 0
        denom = int(fg_p.sum() + fg_r.sum())
        out["dice_foreground"] = 2 * float((fg_p & fg_r).sum()) / denom if denom else 1.0
        return out

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {
            "kind": CHECKPOINT_KIND,
            "job": self.job.to_dict(),
            "iteration": self.iteration,
            "policy_updates": self.policy_updates,
            "best_metric": self.best_metric,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tra": self.tra.state_dict(),
            "tea": self.tea.state_dict(),
            "tra_opt": self.tra_opt.state_dict() if self.tra_opt else None,
            "tea_opt": self.tea_opt.state_dict() if self.tea_opt else None,
            "rng": pack_rng_states({"data": self.rng}, {"policy": self.gen}),
            "class_names": list(self.tra.class_names),
            "network": self.network_spec,
            "preprocess": {"settings": self.settings.to_dict(),
                           "modality": list(self.dataset.modality or []),
                           "ct_statistics": self.ct_stats,
                           "channel_names": list(self.dataset.channel_names or [])},
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
        }

    def load_state_dict(self, state: Dict) -> List[str]:
        if state.get("kind") != CHECKPOINT_KIND:
            raise ValueError("the checkpoint was not written by the JCSAugment trainer")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tra.load_state_dict(state["tra"])
        self.tea.load_state_dict(state["tea"])
        if self.tra_opt and state.get("tra_opt"):
            self.tra_opt.load_state_dict(state["tra_opt"])
        if self.tea_opt and state.get("tea_opt"):
            self.tea_opt.load_state_dict(state["tea_opt"])
        self.iteration = int(state["iteration"])
        self.policy_updates = int(state.get("policy_updates", 0))
        self.best_metric = float(state.get("best_metric", -math.inf))
        warnings = unpack_rng_states(state["rng"], {"data": self.rng}, {"policy": self.gen})
        if self.dist.active and self.dist.rank > 0:
            # the checkpoint holds rank 0's streams: give the other ranks fresh, distinct ones
            # (a resumed multi-process run is therefore not bit-for-bit, a single process is)
            seed = self.job.seed
            self.rng = np.random.default_rng([seed, self.dist.rank, self.iteration])
            self.gen = torch.Generator().manual_seed(seed + 1_000_003 * self.dist.rank
                                                     + self.iteration)
        return warnings

    def policy_summary(self) -> Dict:
        tra = {name: [p.tolist() for p in pol.probabilities()]
               for name, pol in zip(self.tra.class_names, self.tra.policies)}
        return {"tra": tra, "tea": self.tea.probabilities().tolist()}


def per_sample_soft_dice_loss(probs, target, valid):
    """1 - soft Dice over the foreground classes, per copy, voxels outside ``valid`` left out."""
    return 1 - per_sample_soft_dice(probs, target, mask=valid)
