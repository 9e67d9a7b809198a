"""The joint meta-learning trainer: one object that owns the data, the network, the policies and
their optimisers, and runs iterations (method.md sections 2-4, 8, 9).

One iteration:

1. Draw n training patches (foreground / background centres by ``fg_fraction``), their TRA ops
   from the policy of each patch's class, augment them (``augment_patches``).
2. When the mode learns TRA and ``iteration % policy_every == 0``: draw m validation patches (in
   joint mode each one TEA-transformed by an op drawn from p_V among the ops the network can
   take, its prediction inverted, padded voxels left out of L_val), compute ``dL_val/dw_i`` for
   every training patch (``meta_gradient``: exact JVP or finite differences), normalise (Eq. 10
   by the patch's centre class, Eq. 11 within the policy), step the TRA logits with Adam.
3. When the mode learns TEA (and on the same schedule): the TEA step at the current theta on one
   foreground-centred validation patch with Z copies (``tea_meta_gradient``; copies under ops
   the network cannot take are left out), Adam on the TEA logits.
4. Model step with the training gradient of step 2 (or of a plain forward/backward), SGD with
   Nesterov momentum, weight decay, gradient clipping, poly learning rate.

All randomness comes from the run's seed: patch centres from ``rng`` (numpy), policy draws,
augmentation parameters and TEA noise from ``gen`` (torch, CPU; noise on another device from a
generator seeded by one draw of it).

The trainer knows nothing of the run folder's files except through the callbacks a worker
passes (``on_event``); it is also usable from Python directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import augment_patches, sample_tra_params
from ..augment.stats import CaseStats
from ..augment.tea import tea_invert, tea_transform
from ..augment.tra import identity_params
from ..data import PatchSampler, PreprocessSettings, preprocess_dataset
from ..data.job_data import dataset_and_splits
from ..data.preprocess import cached_ct_statistics
from ..meta import meta_gradient
from ..meta.tea_step import (draw_seed, evaluable_tea_ops, group_by_shape, noise_generator,
                             tea_meta_gradient)
from ..nets.factory import build_network
from ..nets.losses import batch_soft_dice_loss, full_resolution, per_sample_soft_dice
from ..policy import (assign_gradients, make_tea_policy, make_tra_policy, tea_logit_gradient,
                      tra_logit_gradients)
from ..policy.categorical import CategoricalDraw, sample_categorical
from ..run.checkpoint import load_checkpoint, pack_rng_states, unpack_rng_states
from ..run.folder import RunFolder
from ..run.job import Job, resolve_path
from .distributed import DistContext, rank_device
from .modes import mode_spec

CHECKPOINT_KIND = "jcsaugment-trainer"


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


@dataclass
class MappedBack:
    """Validation logits predicted under TEA ops and mapped back onto the patch grid; ``valid``
    (B, 1, ...) is False where an inverse affine had only padding to offer."""

    logits: torch.Tensor
    valid: torch.Tensor


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
        self.cache_dir = cache_dir or RunFolder(base_dir).cache_dir
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
        return None if p is None else resolve_path(self.base_dir, p)

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
        self.ct_stats = self._training_ct_statistics()
        self.val_cases = preprocess_dataset(dataset.subset(splits["validation"]), settings,
                                            self.cache_dir,
                                            report("preprocessing validation cases"),
                                            modality=dataset.modality,
                                            ct_dataset_stats=self.ct_stats)
        labels = set()
        for c in self.train_cases + self.val_cases:
            labels.update(np.unique(c.label).tolist())
        self.num_classes = int(max(max(labels), max(dataset.labels.values(), default=0))) + 1
        self.in_channels = self.train_cases[0].image.shape[0]

    def _training_ct_statistics(self) -> Optional[Dict]:
        """The training cases' CT statistics (``lo``, ``hi``, ``mean``, ``std`` per channel)
        when a channel is CT-normalised, else None. Preprocessing the training cases has just
        computed or checked them; the cache keeps them as ``{"key": ..., "stats": ...}``, and
        the validation cases and inference need the ``stats``."""
        modes = self.settings.channel_modes(self.train_cases[0].num_channels,
                                            self.dataset.modality)
        if "ct" not in modes:
            return None
        return cached_ct_statistics(self.dataset.subset(self.splits["train"]), self.settings,
                                    self.cache_dir)

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
        # TEA ops whose transformed patch the network can predict and map back (quarter turns
        # of a non-square plane change the patch's shape)
        self.tea_evaluable = evaluable_tea_ops(self.model, self.info.input_size,
                                               self.info.output_size)
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
        if not self.mode.train_model and not t.pretrained:
            raise ValueError("training.mode 'tea-only' learns TEA on a trained model: set "
                             "training.pretrained to its checkpoint (checkpoints/last.pt "
                             "or best.pt of a finished run)")
        if t.pretrained:  # tea-only: the frozen model; any other mode: its starting weights
            self._load_pretrained(t.pretrained)
        if not self.mode.train_model:
            for p in self.model.parameters():
                p.requires_grad_(False)
        # Fixed validation patches for model selection (seeded apart from the training stream).
        sel_rng = np.random.default_rng([self.job.seed, 1])
        n_sel = max(4, 2 * len(self.val_cases))
        self._selection = self.val_sampler.sample(n_sel, sel_rng)

    def _load_pretrained(self, path: str) -> None:
        """The network's weights from ``training.pretrained`` (only the weights: the
        optimiser, the policies and the iteration count start afresh, as nnU-Net's
        ``-pretrained_weights``); a checkpoint of another network is one clear error."""
        state = load_checkpoint(self._resolve(path), map_location="cpu")
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as e:
            detail = " ".join(str(e).split())[:300]
            raise ValueError(f"training.pretrained {path!r}: its network does not fit this "
                             f"job's model block (backbone, patch size, base_features and "
                             f"the channels must be the pretrained run's): {detail}") from None

    # -- batches --------------------------------------------------------------------------------
    def _policy_classes(self, draw) -> torch.Tensor:
        """Which TRA policy augments each patch: its centre class, or 0 when one policy serves
        every class."""
        if self.mode.tra_classes == 1:
            return torch.zeros_like(draw.patch_class)
        return draw.patch_class

    def training_batch(self, n: int, keep_graph: bool):
        """Augmented patches ``x``, labels ``y``, their TRA draw, the policy each drew from and
        the class of each patch's centre voxel (what Eq. 10 normalises within)."""
        draw = self.train_sampler.sample(n, self.rng)
        policy_classes = self._policy_classes(draw)
        with torch.set_grad_enabled(keep_graph):
            # the floor only where a policy gradient is taken (keep_graph: a policy turn)
            tra_draw = self.tra.sample(policy_classes, self.gen,
                                       explore=self.job.training.explore if keep_graph else 0.0)
        params = sample_tra_params(tra_draw.choices, self.gen)
        s = self.train_sampler
        x, y = augment_patches(s.images(draw.case_index), s.labels(draw.case_index),
                               draw.centres, params, s.stats(draw.case_index),
                               self.info.input_size)
        return x, y.long(), tra_draw, policy_classes, draw.patch_class

    def validation_batch(self, m: int, draw=None):
        draw = draw if draw is not None else self.val_sampler.sample(m, self.rng)
        s = self.val_sampler
        x, y = augment_patches(s.images(draw.case_index), s.labels(draw.case_index),
                               draw.centres, identity_params(len(draw.centres)),
                               s.stats(draw.case_index), self.info.input_size)
        return x, y.long(), s.stats(draw.case_index)

    # -- losses ---------------------------------------------------------------------------------
    def _val_loss(self, out, y):
        """L_val (CE, batch soft Dice or both) on the full-resolution logits; on TEA predictions
        mapped back (joint mode) only over the voxels the inverses could fill."""
        if isinstance(out, MappedBack):
            logits, valid = out.logits, out.valid
        else:
            logits, valid = self._full(out), None
        target = self.info.crop_target(y)
        kind = self.job.training.val_loss
        loss = 0.0
        if "ce" in kind:
            loss = loss + masked_cross_entropy(logits, target[:, 0], valid)
        if "dice" in kind:
            loss = loss + masked_batch_soft_dice_loss(logits, target, valid)
        return loss

    def _tea_val_forward(self, stats: CaseStats):
        """Joint mode: each validation patch predicted under a TEA op drawn from p_V restricted
        to the ops the network can take (p_V conditioned on them, not a stand-in identity), the
        prediction mapped back with its valid voxels. Ops and the noise seed are drawn here,
        once, so the returned forward is a fixed function of the parameters it is given."""
        n = stats.mean.shape[0]
        takeable = self.tea.logits.detach().masked_fill(~self.tea_evaluable, -math.inf)
        ops = sample_categorical(takeable, n, self.gen).index.tolist()
        noise_seed = draw_seed(self.gen)
        rows = [stats.select(torch.tensor([j], device=stats.mean.device)) for j in range(n)]

        def forward(f, x):
            noise = noise_generator(x.device, noise_seed)
            transformed = [tea_transform(x[j:j + 1], op, stats=rows[j], generator=noise)
                           for j, op in enumerate(ops)]
            logits, valid = [None] * n, [None] * n
            for js in group_by_shape(transformed).values():
                out = self._full(f(torch.cat([transformed[j] for j in js])))
                for k, j in enumerate(js):
                    logits[j], padded = tea_invert(out[k:k + 1], ops[j], return_mask=True)
                    valid[j] = ~padded
            return MappedBack(torch.cat(logits), torch.cat(valid))
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
        grads = None
        if self.mode.train_model:
            if self.mode.learn_tra and policy_turn:
                grads = self._tra_step(lr, losses)
                updated = True
            else:
                grads = self._training_gradient(losses)
        if self.mode.learn_tea and policy_turn:
            # at the current theta: the model step below comes after (method.md section 4)
            losses["tea"] = self._tea_step()
            updated = True
        if grads is not None:
            self._model_step(grads)
        if updated:
            self.policy_updates += 1
        self.iteration += 1
        return IterationResult(self.iteration, losses, updated)

    def _trainable(self) -> List[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _tra_step(self, lr: float, losses: Dict[str, float]) -> List[torch.Tensor]:
        """Meta-gradients of the TRA weights, the TRA policy step; returns the training
        gradient for the model step."""
        t = self.job.training
        x, y, tra_draw, policy_classes, centre_classes = self.training_batch(t.batch_size,
                                                                             keep_graph=True)
        xv, yv, vstats = self.validation_batch(t.val_batch_size)
        val_forward = self._tea_val_forward(vstats) if self.mode.learn_tea else None
        step = meta_gradient(self.model, self.info.per_sample_loss, self._val_loss, x, y,
                             xv, yv, alpha=lr, method=t.meta_grad, val_forward=val_forward,
                             reduce=self.dist.all_reduce_mean if self.dist.active else None,
                             world=self.dist.world)
        losses["train"] = float(step.train_losses.mean())
        losses["val"] = step.val_loss
        pg = tra_logit_gradients(self.tra, tra_draw, step.g, policy_classes, normalise=True,
                                 centre_classes=centre_classes)
        assign_gradients(self.tra.parameters(), self.dist.all_reduce_mean(pg))
        self.tra_opt.step()
        return step.grads

    def _training_gradient(self, losses: Dict[str, float]) -> List[torch.Tensor]:
        """The plain training gradient (no policy step this iteration)."""
        x, y, *_ = self.training_batch(self.job.training.batch_size, keep_graph=False)
        loss = self.info.per_sample_loss(self.model(x), y).mean()
        losses["train"] = float(loss.detach())
        return self.dist.all_reduce_mean(list(torch.autograd.grad(loss, self._trainable())))

    def _model_step(self, grads: List[torch.Tensor]) -> None:
        params = self._trainable()
        for p, gr in zip(params, grads):
            p.grad = gr.detach().clone()
        if self.job.training.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.job.training.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _tea_step(self) -> float:
        """The TEA step (method.md section 4) on one foreground-centred validation patch. Copies
        under ops the network cannot take are left out of the loss, of the gradient and of the
        Eq. 15 counts: predicting a stand-in would credit the drawn op with another op's
        result."""
        t = self.job.training
        x, y, stats = self.validation_batch(1, self.val_sampler.sample_foreground(1, self.rng))
        drawn = self.tea.sample(t.tea_copies, self.gen, explore=t.explore)
        taken = self.tea_evaluable[drawn.index]
        evaluated = CategoricalDraw(drawn.index[taken], drawn.weight[taken], drawn.soft[taken])
        noise = noise_generator(x.device, draw_seed(self.gen))
        self.model.eval()
        try:
            res = tea_meta_gradient(lambda b: self._full(self.model(b)), x, y,
                                    evaluated.index.tolist(), per_sample_soft_dice_loss,
                                    stats=stats, generator=noise, target_for=lambda lg, yy:
                                    self.info.crop_target(yy))
        finally:
            self.model.train()
        # every rank steps, even one whose copies were all left out (a zero gradient), so the
        # collective below is entered by all of them
        grad = tea_logit_gradient(self.tea, evaluated, res.g, normalise=True)
        assign_gradients([self.tea.logits], self.dist.all_reduce_mean([grad]))
        self.tea_opt.step()
        return res.loss

    _full = staticmethod(full_resolution)

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


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross entropy averaged over the voxels where ``valid`` (B, 1, ...) holds (all without)."""
    if valid is None:
        return F.cross_entropy(logits, labels)
    weight = valid[:, 0].to(logits.dtype)
    per_voxel = F.cross_entropy(logits, labels, reduction="none")
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1)


def masked_batch_soft_dice_loss(logits: torch.Tensor, target: torch.Tensor,
                                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - batch soft Dice over the foreground classes, voxels outside ``valid`` left out. The
    batch Dice sums over samples and voxels alike, so it is the per-sample Dice of one sample
    that holds the whole batch (stacked along the first spatial axis)."""
    if valid is None:
        return batch_soft_dice_loss(logits, target)

    def as_one_sample(t):
        return t.transpose(0, 1).reshape(1, t.shape[1], -1, *t.shape[3:])

    probs = torch.softmax(logits, 1)
    return 1 - per_sample_soft_dice(as_one_sample(probs), as_one_sample(target),
                                    mask=as_one_sample(valid))[0]


def per_sample_soft_dice_loss(probs, target, valid):
    """1 - soft Dice over the foreground classes, per copy, voxels outside ``valid`` left out."""
    return 1 - per_sample_soft_dice(probs, target, mask=valid)
