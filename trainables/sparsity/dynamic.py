"""Masks that move during training (`mask_update`; docs/sparsity.md, "Dynamic sparsity").

Every `mask_update_interval` optimizer steps until `mask_update_end` of training, each masked layer drops
its `n` active weights of smallest magnitude and grows `n` inactive positions: at random (SET, Mocanu et
al. 2018) or where the dense gradient of the training loss on that step's batch is largest (RigL, Evci et
al. 2020), with `n = round(drop_fraction_t * active)` and `drop_fraction_t` annealed by a cosine to 0.
Each layer keeps its count, so the initial allocation (ERK or any other) and the density stay exact.

Written here rather than taken from rigl (TensorFlow) or sparselearning (whose masks are its own
optimizer wrapper): the update has to act on this project's masks, optimizer state and checkpoints.
"""
import math

import torch
import torch.nn as nn

from trainables.sparsity.enforce import apply_masks, capture_dense_grads, get_masks
from trainables.sparsity.layers import maskable_parameters

MASK_UPDATES = ("none", "set", "rigl")


def drop_fraction_at(step: int, end_step: int, initial: float) -> float:
    """RigL's cosine annealing: initial / 2 * (1 + cos(pi * step / end_step)), and 0 from end_step on."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return initial / 2 * (1 + math.cos(math.pi * step / end_step))


def _first(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n largest scores, ties to the lower index (a stable sort of -score)."""
    return torch.argsort(-scores, stable=True)[:n]


def update_layer(weight: torch.Tensor, mask: torch.Tensor, fraction: float, grow: str,
                 dense_grad: torch.Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's new mask and the positions grown (flat indices).

    Drops the n = round(fraction * active) active weights of smallest |weight| (ties: lower index), then
    grows n of the positions inactive after the drop: `rigl` those of largest |dense_grad| (ties: lower
    index), `set` a uniform draw from `generator`. A weight dropped and grown in one update comes back at
    zero, as in RigL's code."""
    flat = mask.flatten().bool()
    active = int(flat.sum())
    n = min(int(math.floor(fraction * active + 0.5)), active)
    if n == 0:
        return mask.clone(), torch.empty(0, dtype=torch.long, device=mask.device)
    magnitude = weight.detach().flatten().abs().float()
    drop = _first(torch.where(flat, -magnitude, torch.full_like(magnitude, -math.inf)), n)
    after = flat.clone()
    after[drop] = False
    candidates = (~after).nonzero().flatten()
    if grow == "rigl":
        score = dense_grad.detach().flatten().abs().float()[candidates]
        grown = candidates[_first(score, n)]
    else:
        grown = candidates[torch.randperm(len(candidates), generator=generator)[:n].to(candidates.device)]
    after[grown] = True
    return after.view_as(mask).to(mask.dtype), grown


class MaskUpdater:
    """Moves a model's masks on the schedule of the config's mask_update keys, keeps the optimizer's
    momentum of grown weights at zero, and counts what moved. Its state goes into the run's checkpoint."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, kind: str, interval: int,
                 drop_fraction: float, end: float, total_steps: int, seed: int):
        self.model, self.optimizer, self.kind = model, optimizer, kind
        self.interval, self.drop_fraction = int(interval), float(drop_fraction)
        self.end_step = int(end * total_steps)
        self.generator = torch.Generator().manual_seed(seed + 1013)  # SET's draws: the run's own stream
        self.initial = {k: m.clone() for k, m in get_masks(model).items()}
        self.moved = 0  # positions that changed in this epoch's updates
        self.updates = 0

    def due(self, step: int) -> bool:
        """Whether optimizer step `step` (counted from 1 over the whole run) ends with an update."""
        return step % self.interval == 0 and step < self.end_step

    def before_backward(self, step: int) -> None:
        """On a RigL update step, the masked weights' gradients are kept dense once, before the mask
        hooks zero them: the training step itself is unchanged."""
        capture_dense_grads(self.model, self.kind == "rigl" and self.due(step))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if not self.due(step):
            return
        fraction = drop_fraction_at(step, self.end_step, self.drop_fraction)
        params = maskable_parameters(self.model)
        grads = capture_dense_grads(self.model, False) if self.kind == "rigl" else {}
        old = get_masks(self.model)
        new, grown = {}, {}
        for name, mask in old.items():
            new[name], grown[name] = update_layer(params[name], mask, fraction, self.kind, grads.get(name),
                                                  self.generator)
        apply_masks(self.model, new)  # zeroes the dropped weights
        for name, idx in grown.items():
            if len(idx) == 0:
                continue
            p = params[name]
            # By a boolean mask, not a flat view: a channels-last weight has no flat view.
            born = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
            born[idx.to(p.device)] = True
            born = born.view(p.shape)
            p.masked_fill_(born, 0.0)  # a grown weight starts at zero (one dropped now and grown again too)
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(new[name].to(buf.dtype))  # nothing carries over for a dropped weight
                buf.masked_fill_(born, 0.0)  # fresh momentum for a grown one
            self.moved += int((new[name] & ~old[name]).sum())
        self.updates += 1

    def epoch_metrics(self) -> dict:
        """What moved since the last call, and the share of the initial mask still active."""
        masks = get_masks(self.model)
        kept = sum(int((masks[k] & self.initial[k]).sum()) for k in masks)
        out = {"mask_moved": self.moved, "mask_updates": self.updates,
               "mask_overlap_initial": kept / max(1, sum(int(m.sum()) for m in self.initial.values()))}
        self.moved = self.updates = 0
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "initial": {k: v.cpu() for k, v in self.initial.items()},
                "moved": self.moved, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        device = next(iter(get_masks(self.model).values())).device
        self.initial = {k: v.to(device) for k, v in state["initial"].items()}
        self.moved, self.updates = int(state["moved"]), int(state["updates"])
