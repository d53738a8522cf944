"""DistillRun: the one training loop. A search trial, the final run and teacher training all use it."""
import math
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.config import ConfigError, DistillConfig
from trainables.cost import count_macs, effective_macs
from trainables.data import DataSplits, DeviceLoader
from trainables.data.augment import normalize
from trainables.data.loader import to_device
from trainables.inputs import digest_bytes, load_run_splits
from trainables.losses import Connector
from trainables.methods import LOSS_PARTS, get_method
from trainables.models import create_model
from trainables.models.taps import forward_taps
from trainables.precision import autocast, resolve_memory_format, resolve_precision, set_cuda_determinism, set_cuda_fp32_math
from trainables.probe import attention_probe, measured_layer_densities
from trainables.sparsity import (
    apply_masks,
    check_density,
    get_masks,
    init_masks,
    maskable_parameters,
    prune_by_magnitude,
    pruning_plan,
)
from trainables.sparsity.channels import maskable_weight_count, prune_channels
from trainables.sparsity.dynamic import MaskUpdater
from trainables.sparsity.layers import layer_roles
from trainables.sparsity.patterns import check_nm, nm_masks
from trainables.stages import check_feature_config, distilled_maps
from trainables.teacher_file import load_student_weights, load_teacher

# Each evaluated metric's best so far, reported as best_<split>_<name>: larger accuracy, smaller loss.
BEST_OF = {"acc": max, "acc5": max, "loss": min}
EXPLODED = 1000.0  # an epoch's loss this many times the first epoch's means the run has diverged


def divergence(loss: float, first_loss: float | None) -> str | None:
    """Why a run with this epoch loss has diverged (NaN/inf, or `EXPLODED` times its first epoch's
    loss), or None while it is healthy."""
    if not math.isfinite(loss):
        return f"loss became {loss}"
    if first_loss is not None and loss > EXPLODED * abs(first_loss):
        return f"loss exploded to {loss:.4g}, {loss / abs(first_loss):.0f}x the first epoch's {first_loss:.4g}"
    return None


def as_config(config) -> DistillConfig:
    if isinstance(config, DistillConfig):
        return config
    return DistillConfig.from_dict(dict(config))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name}: CUDA is not available on this machine")
    return torch.device(name)


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, device: torch.device,
                   precision: str = "fp32", channels_last: bool = False) -> dict:
    """Top-1 and top-5 accuracy (percent) and mean CE of `model` on images x (uint8) with labels y."""
    if channels_last:  # the layout of the batches below, as in training
        # Outside inference mode: a buffer converted inside it (a mask registered since the last
        # conversion) would become an inference tensor, which the next mask update cannot write.
        model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _evaluate(model, x, y, mean, std, device, precision, channels_last)


def _evaluate(model: nn.Module, x, y, mean, std, device, precision, channels_last) -> dict:
    was_training = model.training
    model.eval()
    loader = DeviceLoader(x, y, 500, mean, std, device, train=False, channels_last=channels_last)
    top1 = top5 = loss = 0.0
    for xb, yb in loader:
        with autocast(device, precision):
            logits = model(xb).float()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (top[:, 0] == yb).sum().item()
        top5 += (top == yb[:, None]).any(dim=1).sum().item()
    model.train(was_training)
    n = len(y)
    return {"acc": 100.0 * top1 / n, "acc5": 100.0 * top5 / n, "loss": loss / n}


class DistillRun:
    """Student, teacher, masks, optimizer and data of one distillation run, stepped an epoch at a time."""

    def __init__(self, config, data: DataSplits | None = None, device: str | None = None,
                 teacher: nn.Module | None = None, full_train: bool = False, teacher_bytes: bytes | None = None):
        """`data` and `teacher_bytes` (the teacher file's contents) stand in for reading `data_dir` and
        `teacher` from this machine's disk: a search's driver sends them through Ray's object store."""
        self.cfg = cfg = as_config(config)
        self.method = get_method(cfg.method)
        self.device = pick_device(device or cfg.device)
        self.data = (data or load_run_splits(cfg, full_train=full_train)).normalised_as(cfg.mean, cfg.std)
        nc = self.data.num_classes
        check_feature_config(cfg, nc, self.data.image_size)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            set_cuda_determinism(cfg.deterministic)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.cuda:
            set_cuda_fp32_math(self.precision)
        self.channels_last = resolve_memory_format(cfg.memory_format, self.device, self.precision)
        self.teacher = teacher
        if self.teacher is None and cfg.uses_teacher:
            if cfg.teacher in ("auto", "none"):
                raise ConfigError("teacher: give a teacher file (the search driver resolves 'auto' before trials start)")
            # Building the teacher draws random initial weights; they must not come from the student's seed.
            with torch.random.fork_rng(devices=[]):
                source = cfg.teacher if teacher_bytes is None else teacher_bytes
                self.teacher, _ = load_teacher(source, cfg.teacher_arch, nc, self.device, self.data.image_size)
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        # The student's initial weights depend on `seed` alone: same seed, same start, whatever the method.
        torch.manual_seed(cfg.seed)
        self.student = create_model(cfg.student, nc).to(self.device)
        self.notes: list[str] = []  # one line each, said once by whoever runs this (the driver, a final run)
        if cfg.student_weights:
            classifier = layer_roles(self.student, self.data.image_size)["classifier"]
            note = load_student_weights(self.student, cfg.student_weights, classifier, nc)
            if note:
                self.notes.append(note)
        if cfg.sparse_init == "magnitude":
            self.student.load_state_dict(self.teacher.state_dict())
        # A channel-pruned student is a smaller dense network; its density is a fraction of this one's weights.
        self.dense_weights = maskable_weight_count(self.student) if cfg.channel else None
        if cfg.channel:
            self.student, _ = prune_channels(self.student, cfg.density, self.data.image_size,
                                             multiple=cfg.channel_multiple)
        # MACs per image, counted once (docs/sparsity.md, "Cost"); the effective count follows the masks.
        self.macs_dense, self.macs_by_layer = count_macs(self.student, self.data.image_size)
        self.teacher_macs = count_macs(self.teacher, self.data.image_size)[0] if self.teacher is not None else None
        # The taps, resolved: zoo stage indices, or module names (-1 of another model: its last spatial map)
        self.student_taps, s_shapes, self.teacher_taps, t_shapes = distilled_maps(
            cfg, nc, self.data.image_size, with_teacher=self.teacher is not None)
        self.student_taps, self.teacher_taps = list(self.student_taps), list(self.teacher_taps)
        if cfg.channel:  # fewer channels than the architecture's at each tap: the connectors adapt them
            s_shapes = self._student_tap_shapes()
        self.connectors = self._build_connectors(s_shapes, t_shapes)
        momenta = [m.momentum for m in self.student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.bn_recalibrate = (cfg.bn_recalibrate if cfg.bn_recalibrate is not None
                               else any(m is not None and m < 0.1 for m in momenta))
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)
        self.plan = pruning_plan(cfg.prune_schedule, cfg.density, cfg.prune_steps, cfg.prune_interval, cfg.epochs)
        self.scheduled_density = 1.0 if self.plan else cfg.density
        params = list(self.student.parameters()) + list(self.connectors.parameters())
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        apply_masks(self.student, self._initial_masks(), self.optimizer)
        if cfg.nm is not None or cfg.channel:  # the pattern fixes the count: N:M's dense layers, channel granularity
            self.scheduled_density = self.measured_density()
        # Compiled callables share the modules' parameters; state, masks and evaluation use the modules.
        self.student_forward, self.teacher_forward = self.student, self.teacher
        if cfg.compile:
            self.student_forward = torch.compile(self.student, backend=cfg.compile_backend)
            if self.teacher is not None:
                self.teacher_forward = torch.compile(self.teacher, backend=cfg.compile_backend)
        self.cache = self._open_cache(nc, teacher_bytes)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = DeviceLoader(self.data.train_x, self.data.train_y, cfg.batch_size, self.data.mean,
                                         self.data.std, self.device, train=True, generator=self.generator,
                                         channels_last=self.channels_last)
        self.mask_updater = None if cfg.mask_update == "none" else MaskUpdater(
            self.student, self.optimizer, cfg.mask_update, cfg.mask_update_interval, cfg.drop_fraction,
            cfg.mask_update_end, len(self.train_loader) * cfg.epochs, cfg.seed)
        self.epoch = 0
        self.best = {}
        self.density_history: list[tuple[int, float]] = []  # (epoch, measured density), drawn for iterative pruning
        self.last_probe: dict | None = None
        self.first_loss: float | None = None  # the reference an exploding loss is measured against
        self._teacher_maps = None

    # -- construction -------------------------------------------------------------------------
    def _build_connectors(self, s_shapes, t_shapes) -> nn.ModuleList:
        connectors = nn.ModuleList()
        if self.teacher is None or not self.method.connectors:
            return connectors
        for s, t in zip(s_shapes, t_shapes):
            c_s, c_t = s[0], t[0]
            connectors.append(Connector(c_s, c_t) if c_s != c_t else nn.Identity())
        return connectors.to(self.device)

    def _student_tap_shapes(self) -> tuple:
        """C x H x W at each student tap of the student as built (after channel pruning), one dummy forward."""
        was_training = self.student.training
        x = torch.zeros(1, 3, self.data.image_size, self.data.image_size, device=self.device)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            _, maps = forward_taps(self.student.eval(), x, self.student_taps)
        self.student.train(was_training)
        return tuple(tuple(m.shape[1:]) for m in maps)

    def _distilled(self, taps: list) -> list:
        """The taps the method distils: all of them, or none (KD and FT read logits only)."""
        return list(taps) if self.method.distils_stages else []

    def _open_cache(self, num_classes: int, teacher_bytes: bytes | None):
        cfg = self.cfg
        # The cache is keyed by the teacher file's bytes; a teacher handed in as a module has none.
        if not cfg.teacher_cache or self.teacher is None or not self.method.needs_teacher or cfg.teacher in ("auto", "none"):
            return None
        from trainables.teacher_cache import file_digest, open_teacher_cache

        digest = digest_bytes(teacher_bytes) if teacher_bytes is not None else file_digest(cfg.teacher)

        # Every teacher-using method stores the maps of all feature_stages, so the arms of a study with one
        # seed share one fill whichever arm runs first (KD reads only the logits of it).
        _, _, taps, shapes = distilled_maps(cfg, num_classes, self.data.image_size)
        return open_teacher_cache(cfg, digest, self.data, list(taps), list(shapes), num_classes,
                                  precision=self.precision, channels_last=self.channels_last)

    def view_of(self, epoch: int) -> int:
        """The augmentation view a 0-based epoch trains on: its own fresh draw, or with the opt-in
        `cache_views: V`, view epoch mod V. The same with the cache on or off and for every method."""
        return epoch if self.cfg.cache_views is None else epoch % self.cfg.cache_views

    def _cached_teacher_view(self, view: int):
        """This epoch's shared teacher outputs, filling them if this trial is the first to need them."""
        if self.cache is None:
            return None
        return self.cache.load(view) or self.cache.fill(
            view, lambda x: forward_taps(self.teacher, x, self.teacher_taps), self.train_loader.images,
            self.data.mean, self.data.std, autocast=lambda: autocast(self.device, self.precision),
            channels_last=self.channels_last, device=self.device)

    def learning_rate(self, epoch: int) -> float:
        """The lr of a 0-based epoch: multistep with milestones scaled to the budget, or cosine.
        A pure function of the epoch, so the run state needs no scheduler object."""
        cfg = self.cfg
        if cfg.lr_schedule == "cosine":
            return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
        milestones = {max(1, round(m * cfg.epochs)) for m in cfg.lr_milestones}
        return cfg.lr * cfg.lr_decay ** sum(epoch >= m for m in milestones)

    def _score_batches(self) -> list:
        """`score_per_class` training images of every class (Wang et al. 2020 use 10), drawn with the
        run's seed, in batches of batch_size: what SNIP and GraSP score on."""
        x, y = self.data.train_x, self.data.train_y
        g = torch.Generator().manual_seed(self.cfg.seed + 7)
        picks = []
        for c in torch.unique(y):
            members = torch.nonzero(y == c).flatten()
            picks.append(members[torch.randperm(len(members), generator=g)[:self.cfg.score_per_class]])
        idx = torch.cat(picks)
        idx = idx[torch.randperm(len(idx), generator=g)]  # mix the classes across batches
        n = len(idx)
        xs = normalize(x[idx].to(self.device), torch.tensor(self.data.mean), torch.tensor(self.data.std))
        ys = y[idx].to(self.device)
        b = self.cfg.batch_size
        return [(xs[i:i + b], ys[i:i + b]) for i in range(0, n, b)]

    def _initial_masks(self) -> dict:
        cfg = self.cfg
        if self.plan or cfg.channel:  # iterative / cubic: start dense from the teacher's weights; channel: pruned
            return {k: torch.ones_like(p, dtype=torch.bool) for k, p in maskable_parameters(self.student).items()}
        if cfg.nm is not None:  # the student's start weights (its own, or the teacher's copy), per group
            masks, _ = nm_masks(maskable_parameters(self.student), *cfg.nm)
            return masks
        kw = {"seed": cfg.seed, "scored_positions": cfg.scored_positions, "image_size": self.data.image_size}
        if cfg.sparse_init in ("SNIP", "GraSP"):
            kw["batches"] = self._score_batches()
        return init_masks(self.student, cfg.density, cfg.sparse_init, **kw)

    @property
    def masks(self) -> dict:
        return get_masks(self.student)

    @property
    def record(self) -> dict[str, str]:
        """What this run tapped and which masked layers it keeps dense, as text (MLflow params and tags,
        the checkpoint): the taps resolved to zoo indices or module names."""
        return {"student_taps": ",".join(map(str, self.student_taps)),
                "teacher_taps": ",".join(map(str, self.teacher_taps)),
                "dense_layers": "" if self.cfg.channel else  # every layer of a channel-pruned student is dense
                ",".join(k.removesuffix(".weight") for k, m in self.masks.items() if bool(m.all()))}

    @property
    def cost(self) -> dict[str, int]:
        """MACs per image: the student's dense count, its effective count under the masks now, and the
        teacher's (when the run has one)."""
        out = {"macs_dense": self.macs_dense,
               "macs_effective": effective_macs(self.macs_dense, self.macs_by_layer, self.masks)}
        if self.teacher_macs is not None:
            out["teacher_macs"] = self.teacher_macs
        return out

    def measured_density(self) -> float:
        """The fraction of maskable weights the masks keep now (what a run reports as `density`); of a
        channel-pruned student, the fraction of the unpruned network's."""
        masks = self.masks.values()
        return sum(int(m.sum()) for m in masks) / max(1, self.dense_weights or sum(m.numel() for m in masks))

    # -- training -----------------------------------------------------------------------------
    def _prune_if_planned(self) -> None:
        if self.epoch not in self.plan:
            return
        density = self.plan[self.epoch]
        masks = prune_by_magnitude(self.student, self.masks, density)
        apply_masks(self.student, masks)
        params = maskable_parameters(self.student)
        for name, p in params.items():  # momentum of a pruned weight would push it off zero
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(masks[name].to(buf.dtype))
        self.scheduled_density = density

    def _teacher_outputs(self, x: torch.Tensor, cached, idx) -> tuple[torch.Tensor | None, list | None]:
        """The frozen teacher's logits and distilled maps for batch x, from the shared cache when it holds
        this epoch, else computed here. Both paths round through fp16 (the cache's storage format), so the
        cache changes no number."""
        if self.teacher is None or not self.method.needs_teacher:
            return None, None
        if cached is not None:  # idx is the batch's rows on the host: no device sync to gather them
            return (to_device(cached["logits"][idx], self.device),
                    [to_device(cached[f"stage{i}"][idx], self.device)
                     for i in range(len(self._distilled(self.teacher_taps)))])
        with torch.inference_mode():
            t_logits, t_feats = forward_taps(self.teacher, x, self._distilled(self.teacher_taps), call=self.teacher_forward)
        # Inference tensors cannot be saved for backward; the fp16 round trip makes ordinary constants.
        return t_logits.float().half().float(), [f.float().half().float() for f in t_feats]

    def _losses(self, x: torch.Tensor, y: torch.Tensor, t_logits=None, t_feats=None) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """The weighted total, its named parts and the student logits: the method's own loss
        (trainables/methods) over the student's distilled maps, each through its connector."""
        distilled = self._distilled(self.student_taps) if t_feats is not None else []
        logits, s_feats = forward_taps(self.student, x, distilled, call=self.student_forward)
        pairs = []
        if t_feats is not None:
            if self.method.connectors:
                s_feats = [self.connectors[j](f_s) for j, f_s in enumerate(s_feats)]
            pairs = list(zip(s_feats, t_feats))
        total, parts = self.method.losses(self.cfg, logits, y, t_logits, pairs)
        return total, parts, logits

    def train_epoch(self, on_batch: Callable[[], None] | None = None) -> dict:
        """One epoch of training. Returns the mean loss parts, train accuracy, lr, density, img/s.

        `on_batch` is called after every optimizer step (a progress bar's tick)."""
        self._prune_if_planned()
        self.student.train()
        self.connectors.train()
        lr = self.learning_rate(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums = {k: torch.zeros((), device=self.device) for k in ("loss", "correct") + LOSS_PARTS}
        seen, start = 0, time.perf_counter()
        view = self.view_of(self.epoch)
        cached = self._cached_teacher_view(view)
        first_step = self.epoch * len(self.train_loader)  # optimizer steps before this epoch
        for i, (x, y, idx) in enumerate(self.train_loader.batches(view, self.cfg.seed)):
            with autocast(self.device, self.precision):
                t_logits, t_feats = self._teacher_outputs(x, cached, idx)
                loss, parts, logits = self._losses(x, y, t_logits, t_feats)
            self.optimizer.zero_grad(set_to_none=True)
            if self.mask_updater is not None:
                self.mask_updater.before_backward(first_step + i + 1)
            loss.backward()
            self.optimizer.step()
            if self.mask_updater is not None:
                self.mask_updater.after_step(first_step + i + 1)
            with torch.no_grad():
                sums["loss"] += loss.detach() * len(y)
                sums["correct"] += (logits.argmax(1) == y).sum()
                for k, v in parts.items():
                    sums[k] += v.detach() * len(y)
            seen += len(y)
            if on_batch is not None:
                on_batch()
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        self.epoch += 1
        values = {k: v.item() / max(seen, 1) for k, v in sums.items()}
        metrics = {"epoch": self.epoch, "loss": values["loss"], "train_acc": 100.0 * values["correct"], "lr": lr,
                   "density": self.measured_density(), "img_per_s": seen / max(elapsed, 1e-9), "epoch_s": elapsed}
        metrics.update({f"loss_{k}": values[k] for k in LOSS_PARTS})
        metrics.update(self.cost)  # after this epoch's pruning step: what the student costs now
        if self.mask_updater is not None:
            metrics.update(self.mask_updater.epoch_metrics())
        metrics["precision"] = self.precision  # what this run really used (auto resolves per machine)
        if self.cache is not None:
            metrics["teacher_cache_hit"] = float(cached is not None)
        if self.first_loss is None and math.isfinite(values["loss"]):
            self.first_loss = values["loss"]
        reason = divergence(values["loss"], self.first_loss)
        metrics["diverged"] = reason is not None
        if reason:
            metrics["diverged_reason"] = f"{reason} at epoch {self.epoch}"
        return metrics

    RECALIBRATION_IMAGES = 1000

    def recalibration_rows(self) -> torch.Tensor:
        """Which training images recalibration averages over: the same for every epoch and every run of
        this training set, drawn uniformly (so every class in its share), in a fixed order."""
        g = torch.Generator().manual_seed(0)
        return torch.randperm(len(self.data.train_x), generator=g)[:self.RECALIBRATION_IMAGES]

    @torch.no_grad()
    def recalibrate_batchnorm(self) -> None:
        """The student's BatchNorm running statistics recomputed as the plain average over
        RECALIBRATION_IMAGES training images (un-augmented; a fixed seeded sample, since the training split
        is stored class by class and its first images would be a few classes only), in training mode. A BatchNorm whose momentum
        is 0.01 trails weights that change every step, and evaluation with those statistics collapses:
        measured on mobilenet_v3_small at density 0.1, validation 10.0% (chance) after 8 epochs whose
        training accuracy rose, 21% for the same weights after 3 epochs once recomputed. The random
        stream (dropout) is left as it was, so training continues exactly as without it."""
        norms = [m for m in self.student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        was_training = self.student.training
        self.student.train()
        x = self.data.train_x[self.recalibration_rows()]
        mean, std = torch.tensor(self.data.mean), torch.tensor(self.data.std)
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
            for i in range(0, len(x), self.cfg.batch_size):
                xb = normalize(x[i:i + self.cfg.batch_size].to(self.device), mean, std)
                if self.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, self.precision):
                    self.student(xb)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.student.train(was_training)

    def evaluate(self, split: str = "val", model: nn.Module | None = None) -> dict:
        """Top-1 and top-5 accuracy (percent) and mean CE of the student (or `model`) on a split."""
        x, y = {"val": (self.data.val_x, self.data.val_y), "test": (self.data.test_x, self.data.test_y),
                "train": (self.data.train_x, self.data.train_y)}[split]
        if len(x) == 0:
            raise ValueError(f"the {split} split is empty")
        return evaluate_model(model or self.student, x, y, self.data.mean, self.data.std, self.device, self.precision,
                              self.channels_last)

    def step(self, split: str = "val", on_batch: Callable[[], None] | None = None) -> dict:
        """train_epoch + evaluate(split), with the best epoch so far tracked."""
        metrics = self.train_epoch(on_batch)
        if not metrics["diverged"]:
            if self.bn_recalibrate:
                self.recalibrate_batchnorm()
            metrics["bn_recalibrated"] = int(self.bn_recalibrate)
            ev = self.evaluate(split)
            metrics.update({f"{split}_acc": ev["acc"], f"{split}_acc5": ev["acc5"], f"{split}_loss": ev["loss"]})
            if ev["acc"] > self.best.get(f"best_{split}_acc", -1.0):
                self.best["best_epoch"] = self.epoch  # the epoch of the best top-1
            for name, pick in BEST_OF.items():  # each metric's own best so far: what a search ranks by
                key = f"best_{split}_{name}"
                self.best[key] = pick(self.best.get(key, ev[name]), ev[name])
            if split == "val":  # a best epoch on test is selection on test: never a per-epoch metric
                metrics.update(self.best)
            self.density_history.append((self.epoch, metrics["density"]))
            self.last_probe = self.probe(split)
            for key in ("student_fg_share", "student_fg_enrichment", "teacher_fg_share", "teacher_fg_enrichment",
                        "student_own_fg_share", "teacher_own_fg_share"):
                if key in self.last_probe:
                    metrics[key] = self.last_probe[key]
            if self.cfg.test_at_end and split == "val" and self.epoch >= self.cfg.epochs:
                test = self.evaluate("test")  # once, after training ended: a study selects nothing on it
                metrics.update({"test_acc": test["acc"], "test_acc5": test["acc5"]})
        return metrics

    def probe(self, split: str = "val") -> dict:
        """What the figures need: attention maps and foreground shares of the distilled stage on fixed
        images of `split`, per-layer densities and the density by epoch."""
        x = self.data.val_x if split == "val" else self.data.test_x
        cfg = self.cfg
        taps = (self.student_taps[-1], self.teacher_taps[-1] if self.teacher_taps else None)
        out, self._teacher_maps = attention_probe(self.student, self.teacher, x, self.data.mean, self.data.std,
                                                  cfg.fg_cells, taps, self.device, self._teacher_maps,
                                                  cfg.fg_source if self.method.name == "sfkd" else "center")
        out.update(epoch=self.epoch, split=split, student_arch=cfg.student,
                   teacher_arch=cfg.teacher_arch if self.teacher is not None else "", method=cfg.method,
                   target_density=float(cfg.density), prune_schedule=cfg.prune_schedule,
                   layer_density=measured_layer_densities(self.masks),
                   density_history=torch.tensor(self.density_history, dtype=torch.float64).reshape(-1, 2))
        return out

    # -- state --------------------------------------------------------------------------------
    def check_sparsity(self) -> float:
        measured = check_density(self.student, self.masks, self.scheduled_density, self.dense_weights)
        if self.cfg.nm is not None:
            check_nm(self.masks, *self.cfg.nm, {k: p.detach() for k, p in maskable_parameters(self.student).items()})
        return measured

    @property
    def preprocessing(self) -> dict:
        """What a user of the trained student needs without the training data: the class names in label
        order, the per-channel mean/std its inputs were normalised with (computed from the training
        images for an ImageFolder dataset) and the image size."""
        return {"classes": list(self.data.classes), "mean": [float(v) for v in self.data.mean],
                "std": [float(v) for v in self.data.std], "image_size": self.data.image_size}

    def state_dict(self) -> dict:
        self.check_sparsity()
        return {
            "student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "masks": {k: v.cpu() for k, v in self.masks.items()},
            "connectors": self.connectors.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "scheduled_density": self.scheduled_density,
            "dense_weights": self.dense_weights,
            "best": dict(self.best),
            "density_history": list(self.density_history),
            "precision": self.precision,
            "first_loss": self.first_loss,
            "preprocessing": self.preprocessing,
            "record": self.record,
            "cost": self.cost,
            "rng": {"data": self.generator.get_state(), "torch": torch.get_rng_state()},
            **({"mask_update": self.mask_updater.state_dict()} if self.mask_updater is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        apply_masks(self.student, {k: v.to(self.device) for k, v in state["masks"].items()})
        self.connectors.load_state_dict(state["connectors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.scheduled_density = float(state.get("scheduled_density", state.get("current_density")))
        self.best = dict(state["best"])
        self.density_history = [tuple(e) for e in state.get("density_history", [])]
        self.first_loss = state.get("first_loss")
        self.generator.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.mask_updater is not None:
            self.mask_updater.load_state_dict(state["mask_update"])
        self.check_sparsity()
