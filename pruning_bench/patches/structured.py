"""Applying a structured plan (heads, MLP neurons, blocks to keep) to a model, and undoing it.

Pruned attention and MLP modules are swapped in, built by the family's attention and MLP views from the kept rows and
columns; dropped blocks leave the blocks container (a new Sequential / ModuleList holds the kept block
objects). The original modules and containers are only referenced, never modified, and go back on
restore, so `state_dict` and outputs are bit-identical afterwards.
"""
from __future__ import annotations

import torch
from torch import nn

from ..families import Family, locate
from ..strategies.base import StructuredPlan

# ---------------------------------------------------------------- plans and attachment


class _TokenCounter:
    """Counts the tokens entering each block that runs (forward pre-hooks), for `tokens_per_layer`."""

    def __init__(self, blocks):
        self.tokens: list[int] = []
        self._first = blocks[0] if blocks else None
        self.handles = [b.register_forward_pre_hook(self._hook) for b in blocks]

    def _hook(self, block, args):
        if block is self._first:
            self.tokens = []
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 3:
            self.tokens.append(int(args[0].shape[1]))

    def remove(self):
        while self.handles:
            self.handles.pop().remove()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class StructuredAttachment:
    """Undo record of a structured strategy: every (owner, attribute, original) replaced, in order."""

    def __init__(self, target: Family, swaps: list, stats: dict, counter: _TokenCounter):
        self.target = target
        self._swaps = swaps
        self._stats = stats
        self._counter = counter
        self.removed = bool(swaps)  # whether any head, neuron or block left the model

    def stats(self) -> dict:
        return {**self._stats, "tokens_per_layer": list(self._counter.tokens)}

    def add_stats(self, **values) -> None:
        """Facts known only once the pruning is in place (e.g. parameters left)."""
        self._stats.update(values)

    def restore(self) -> None:
        self._counter.remove()
        while self._swaps:
            owner, name, original, installed = self._swaps[-1]
            if getattr(owner, name) is not installed:
                raise RuntimeError(
                    f"{type(owner).__name__}.{name} was replaced again after this pruning; restore the later pruning first"
                )
            setattr(owner, name, original)
            self._swaps.pop()


def original_block_indices(target: Family) -> list[int]:
    """Indices of the current blocks in the unpruned model (blocks left by an earlier layer drop)."""
    kept = getattr(target.blocks_container, "pb_kept_indices", None)
    return list(kept) if kept is not None else list(range(len(target.blocks)))


def attach_structured(model: nn.Module, plan: StructuredPlan, target: Family | None = None) -> StructuredAttachment:
    """Apply `plan` to `model` in place and return the undo record."""
    target = target or locate(model)
    blocks = target.blocks
    n = len(blocks)
    for name, values in (("heads", plan.heads), ("neurons", plan.neurons)):
        if values is not None and len(values) != n:
            raise ValueError(f"plan gives {name} for {len(values)} blocks but the model has {n}")
    swaps = []
    try:
        for i, block in enumerate(blocks):
            heads = plan.heads[i] if plan.heads is not None else None
            layout = target.block_layout(block)
            if heads is not None:
                attn = target.attention_view(block)
                if len(heads) < attn.num_heads:
                    if len(heads) == 0:
                        raise ValueError(f"block {i}: every head would be removed; keep at least one")
                    new = attn.sliced(heads.sort().values)
                    swaps.append((block, layout.attn, attn.module, new))
                    setattr(block, layout.attn, new)
            neurons = plan.neurons[i] if plan.neurons is not None else None
            if neurons is not None:
                mlp = target.mlp_view(block)
                if len(neurons) < mlp.hidden:
                    if len(neurons) == 0:
                        raise ValueError(f"block {i}: every MLP neuron would be removed; keep at least one")
                    new = mlp.sliced(neurons.sort().values)
                    swaps.append((block, layout.mlp, mlp.module, new))
                    setattr(block, layout.mlp, new)
        running = blocks
        layers = original_block_indices(target)
        if plan.kept_blocks is not None and len(plan.kept_blocks) < n:
            kept = sorted(set(plan.kept_blocks))
            if not kept:
                raise ValueError("every block would be dropped; keep at least one")
            owner, name = target.blocks_owner
            original = getattr(owner, name)
            running = [blocks[i] for i in kept]
            container = type(original)(running) if isinstance(original, nn.ModuleList) else nn.Sequential(*running)
            layers = [layers[i] for i in kept]
            container.pb_kept_indices = layers
            swaps.append((owner, name, original, container))
            setattr(owner, name, container)
    except BaseException:
        StructuredAttachment(target, swaps, {}, _TokenCounter([])).restore()
        raise
    heads, hidden = target.block_widths(running)
    stats = {"heads_per_layer": heads, "mlp_hidden_per_layer": hidden, "layers_kept": layers, **plan.extra_stats}
    return StructuredAttachment(target, swaps, stats, _TokenCounter(running))
