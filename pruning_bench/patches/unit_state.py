"""One state of refill / rsst on a model: the chosen units stay in the model while it trains, then
leave it physically when the state ends.

- refill: the weights (and biases) of the units chosen to leave are zeroed when the state opens and
  kept exactly zero: their gradients are masked, and after every optimizer step (any optimizer:
  a global step post-hook) they are zeroed again, so momentum and weight decay cannot revive them.
- rsst: nothing is zeroed; before every optimizer step the gradient of the marked weights (q/k/v
  rows and output-projection columns of a head, fc1 rows and fc2 columns of a neuron) gets
  lambda x w added, lambda following the schedule (`strategies.unit_choice.penalty_strengths`);
  every other gradient is left as it is.
The units are sliced out with the structured patch (`patches/structured.py`) as soon as the strategy
is attached, so a model that is only evaluated runs without them at once. A training loop calls
`begin()` before building its optimiser: the units come back (the slicing is undone) with their
masks or penalty, and `end()` after its last epoch slices them out again, so MACs, throughput and
saving see the smaller model. `restore()` undoes the slicing and puts the zeroed values back.

Rewinding needs the weights of an earlier state: when a state ends, the model's weights are
fingerprinted and its lineage (state number, rewind snapshot, which snapshot units survive) is kept
under that fingerprint, so the next state, opened on this model or on a bit-identical compact copy of
it, continues the lineage. A model that continues none starts at state 1.
"""
from __future__ import annotations

import copy
import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..strategies.base import StructuredPlan
from .structured import attach_structured

_ACTIVE: "weakref.WeakKeyDictionary[nn.Module, UnitState]" = weakref.WeakKeyDictionary()
_LINEAGES: "OrderedDict[str, Lineage]" = OrderedDict()
_KEEP_LINEAGES = 4


@dataclass
class Lineage:
    state: int                      # the last state that ended
    snapshot: nn.Module | None      # the weights to rewind to (a copy of the model then), or None
    units: list | None              # per block (heads, neurons): indices of today's units in the snapshot


def fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha1()
    for name, t in list(module.state_dict().items()):
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_of(model: nn.Module, family=None) -> "UnitState | None":
    """The open state of `model` (its family's transformer; `family`: the model's, when located already), or None."""
    from ..families import locate

    try:
        return _ACTIVE.get((family or locate(model)).vit)
    except Exception:
        return None


# ---------------------------------------------------------------- which tensor entries a unit owns


def unit_entries(family, block: nn.Module, heads: torch.Tensor, neurons: torch.Tensor) -> list:
    """(tensor, 'rows'|'cols', indices, is_weight) of the given heads' and neurons' parameters, as the
    family's attention and MLP views of the block name them."""
    entries = []
    if len(heads):
        entries += family.attention_view(block).head_entries(heads)
    if len(neurons):
        entries += family.mlp_view(block).neuron_entries(neurons)
    return entries


def entry_masks(entries) -> list[tuple[nn.Parameter, torch.Tensor, bool]]:
    """(parameter, bool mask of its entries owned by the units, is_weight), one per parameter."""
    masks: dict[int, list] = {}
    for tensor, axis, index, is_weight in entries:
        if id(tensor) not in masks:
            masks[id(tensor)] = [tensor, torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device), is_weight]
        mask = masks[id(tensor)][1]
        index = index.to(tensor.device)
        if axis == "rows":
            mask[index] = True
        else:
            mask[:, index] = True
    return [tuple(v) for v in masks.values()]


# ---------------------------------------------------------------- the state


class UnitState:
    """Undo record and training hooks of one state (see the module docstring)."""

    def __init__(self, family, name: str, params: dict, heads_kept: list, neurons_kept: list, stats: dict):
        self.family, self.vit, self.name, self.params = family, family.vit, name, params
        self.heads_kept, self.neurons_kept = heads_kept, neurons_kept
        self._stats = dict(stats)
        self.mode = "mask" if name == "refill" else "penalty"
        self.begun = self.ended = False
        self.removed = False
        self.step = 0
        self.lambdas: list[float] | None = None
        self.lambda_used: list[float] = []
        self._sliced = None
        self._hooks: list = []
        self._saved: list = []
        heads0, hidden0 = family.block_widths()
        self.widths_before = (heads0, hidden0)
        lineage = _LINEAGES.pop(fingerprint(self.vit), None)
        self.number = lineage.state + 1 if lineage else 1
        self.lineage = lineage or Lineage(0, None, None)
        self._rewind_now()
        self._take_snapshot(epoch=0)
        entries = []
        for block, kept_h, kept_n, h, n in zip(family.blocks, heads_kept, neurons_kept, heads0, hidden0):
            entries += unit_entries(family, block, _removed(kept_h, h), _removed(kept_n, n))
        self.masks = entry_masks(entries)
        self._slice()  # used as it is, the model runs without the units at once
        _ACTIVE[self.vit] = self

    # ------------------------------------------------------------ training

    def begin(self, steps_per_epoch: int, epochs: int) -> None:
        """Training starts (before the optimiser is built): the units come back, masked (refill) or
        marked for the penalty (rsst); `steps_per_epoch` and `epochs` fix rsst's lambda schedule."""
        if self.ended:
            raise ValueError(f"{self.name}: this state has ended; attach the strategy again for the next state")
        if self.begun:
            return
        self.begun = True
        if self._sliced is not None:
            self._sliced.restore()
            self._sliced = None
        p = self.params
        if self.mode == "mask":
            with torch.no_grad():
                for param, mask, _ in self.masks:
                    self._saved.append((param, param.detach()[mask].clone(), mask))
                    param.masked_fill_(mask, 0)
                    self._hooks.append(param.register_hook(lambda g, m=mask: g.masked_fill(m, 0)))
            self._hooks.append(register_optimizer_step_post_hook(self._after_step))
        else:
            from ..strategies.unit_choice import penalty_strengths

            self.lambdas = penalty_strengths(p["schedule"], p["reg_scale"], p["exponents"], steps_per_epoch, epochs)
            self._hooks.append(register_optimizer_step_pre_hook(self._before_step))

    def epoch_end(self, epoch: int) -> None:
        """Epoch `epoch` (1-based) of this state is done: take the rewind snapshot if it is due now."""
        self._take_snapshot(epoch)

    def _ours(self, optimizer) -> bool:
        ids = {id(p) for p, _, _ in self.masks}
        return any(id(p) in ids for g in optimizer.param_groups for p in g["params"])

    def _before_step(self, optimizer, args, kwargs):
        if self.ended or not self._ours(optimizer):
            return
        if self.lambdas is None:
            raise RuntimeError(f"{self.name}: call begin(steps_per_epoch, epochs) on the state (pruning_bench.patches."
                               "unit_state.state_of(model)) before training, so lambda follows its schedule")
        lam = self.lambdas[min(self.step, len(self.lambdas) - 1)]
        self.lambda_used.append(lam)
        self.step += 1
        with torch.no_grad():
            for p, mask, is_weight in self.masks:
                if is_weight and p.grad is not None:
                    p.grad[mask] += lam * p.detach()[mask]

    def _after_step(self, optimizer, args, kwargs):
        if self.ended or not self._ours(optimizer):
            return
        self.step += 1
        with torch.no_grad():
            for p, mask, _ in self.masks:
                p.masked_fill_(mask, 0)

    # ------------------------------------------------------------ the end of the state

    def end(self) -> None:
        """Slice the chosen units out (the model shrinks); hooks come off; the lineage is kept."""
        if self.ended or not self.begun:
            return
        self.ended = True
        self._remove_hooks()
        self._slice()

    def _slice(self) -> None:
        plan = StructuredPlan(heads=self.heads_kept, neurons=self.neurons_kept)
        self._sliced = attach_structured(self.vit, plan, self.family)
        self.removed = self._sliced.removed
        units = None
        if self.lineage.snapshot is not None:
            previous = self.lineage.units
            units = [(ph[kh], pn[kn]) for (ph, pn), kh, kn in zip(previous, self.heads_kept, self.neurons_kept)]
        if not torch.jit.is_tracing():
            _LINEAGES[fingerprint(self.vit)] = Lineage(self.number, self.lineage.snapshot, units)
            while len(_LINEAGES) > _KEEP_LINEAGES:
                _LINEAGES.popitem(last=False)

    def stats(self) -> dict:
        heads, hidden = self.family.block_widths()
        out = {**self._stats, "heads_per_layer": heads, "mlp_hidden_per_layer": hidden,
               "layers_kept": list(range(len(heads))), "state": self.number, "state_trained": self.begun}
        if self._sliced is not None:
            out["tokens_per_layer"] = self._sliced.stats()["tokens_per_layer"]
        if self.lambda_used:
            out["rsst_lambda"] = {"first": self.lambda_used[0], "last": self.lambda_used[-1], "steps": len(self.lambda_used)}
        return out

    def restore(self) -> None:
        self._remove_hooks()
        if self._sliced is not None:
            self._sliced.restore()
            self._sliced = None
        with torch.no_grad():
            while self._saved:
                p, values, mask = self._saved.pop()
                p[mask] = values
        if _ACTIVE.get(self.vit) is self:
            del _ACTIVE[self.vit]

    def _remove_hooks(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()

    # ------------------------------------------------------------ rewinding

    def _rewind_point(self) -> tuple[int, int] | None:
        rewind = self.params.get("rewind")
        return None if rewind is None else tuple(int(v) for v in rewind.split(":"))

    def _take_snapshot(self, epoch: int) -> None:
        point = self._rewind_point()
        if point == (self.number, epoch):
            self.lineage = Lineage(self.lineage.state, copy.deepcopy(self.vit),
                                   [(torch.arange(h), torch.arange(n)) for h, n in zip(*self.family.block_widths())])

    def _rewind_now(self) -> None:
        """At the opening of a state after the rewind point: every weight goes back to the snapshot's, sliced
        to the units still here."""
        point = self._rewind_point()
        if point is None or self.lineage.snapshot is None or self.number <= point[0]:
            return
        snapshot = self.lineage.snapshot
        from ..families import locate

        target = locate(snapshot)
        sliced = attach_structured(snapshot, StructuredPlan(heads=[h for h, _ in self.lineage.units],
                                                            neurons=[n for _, n in self.lineage.units]), target)
        try:
            source, here = snapshot.state_dict(), self.vit.state_dict()
            bad = [k for k in here if k not in source or source[k].shape != here[k].shape]
            if bad:
                raise ValueError(f"{self.name}: rewind cannot map the snapshot onto this model ({bad[0]} differs)")
            self.vit.load_state_dict(source, strict=True)
        finally:
            sliced.restore()


def _removed(kept: torch.Tensor, n: int) -> torch.Tensor:
    keep = torch.zeros(n, dtype=torch.bool)
    keep[kept] = True
    return (~keep).nonzero().flatten()


def open_state(model: nn.Module, family, name: str, params: dict, heads_kept: list, neurons_kept: list,
               stats: dict) -> UnitState:
    if _ACTIVE.get(family.vit) is not None and not _ACTIVE[family.vit].ended:
        raise ValueError(f"{name}: a state is already open on this model; end or restore it first")
    return UnitState(family, name, params, heads_kept, neurons_kept, stats)
