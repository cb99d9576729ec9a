"""MLP views: how one block's MLP is laid out, as its family's adapter declares it.

Every supported MLP is input Linear(s) -> activation -> one output Linear; a neuron is one column of
the output Linear and its row in each input Linear. `MlpView` covers the three shapes by the
names its adapter gives:
- two-layer: one input Linear (timm `Mlp`, open_clip `c_fc`/`c_proj`, transformers `fc1`/`fc2`);
- GLU: one input Linear emitting the value and gate halves (timm `GluMlp`, `glu=True`);
- SwiGLU: two input Linears, gate and value (timm `SwiGLU` `fc1_g`/`fc1_x`, transformers DINOv2
  `gate_proj`/`up_proj`).
`norm` names a norm over the hidden width (timm `norm`, open_clip `ln`), sliced with the neurons.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import UnsupportedModelError
from . import slicing


class MlpView:
    """One MLP module seen through its family's declared layout."""

    def __init__(self, module: nn.Module, inputs: tuple[str, ...] = ("fc1",), out: str = "fc2", glu: bool = False,
                 norm: str | None = "norm"):
        self.module, self.inputs, self.out, self.glu, self.norm = module, tuple(inputs), out, glu, norm
        for name in self.inputs + (out,):
            if not isinstance(getattr(module, name, None), nn.Linear):
                raise UnsupportedModelError(f"no neuron pruning for MLP module {type(module).__name__}: "
                                            f"{name} is not an nn.Linear")
        if glu and (len(self.inputs) != 1 or getattr(module, "chunk_dim", -1) != -1
                    or self._in(0).out_features != 2 * self.hidden):
            raise UnsupportedModelError(f"{type(module).__name__}: a GLU MLP needs one input Linear emitting 2 x hidden")

    def _in(self, i: int) -> nn.Linear:
        return getattr(self.module, self.inputs[i])

    def out_linear(self) -> nn.Linear:
        """The projection whose input is the hidden activations (B, N, hidden)."""
        return getattr(self.module, self.out)

    @property
    def hidden(self) -> int:
        return int(self.out_linear().in_features)

    @property
    def fc1_out(self) -> int | None:
        """Outputs of the input Linear(s) when they differ from the hidden width (gated MLPs), else None."""
        total = sum(getattr(self.module, n).out_features for n in self.inputs)
        return None if total == self.hidden else int(total)

    def weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([(hidden, D) input weights...], (D, hidden) output weight)."""
        if self.glu:
            return list(self._in(0).weight.chunk(2, dim=0)), self.out_linear().weight
        return [getattr(self.module, n).weight for n in self.inputs], self.out_linear().weight

    def neuron_entries(self, neurons: torch.Tensor) -> list:
        """(tensor, 'rows'|'cols', indices, is_weight) of every parameter entry the hidden `neurons` own: their
        rows in the input Linear(s) (weights and biases; both halves of a GLU) and their output columns."""
        rows = torch.cat([neurons, neurons + self.hidden]) if self.glu else neurons
        entries = []
        for name in self.inputs:
            linear = getattr(self.module, name)
            entries.append((linear.weight, "rows", rows, True))
            if linear.bias is not None:
                entries.append((linear.bias, "rows", rows, False))
        return entries + [(self.out_linear().weight, "cols", neurons, True)]

    def sliced(self, neurons: torch.Tensor) -> nn.Module:
        """A new MLP keeping the hidden `neurons` (sorted indices)."""
        m = self.module
        if self.glu:
            rows = {self.inputs[0]: torch.cat([neurons, neurons + self.hidden])}
        else:
            rows = {n: neurons for n in self.inputs}
        if isinstance(m, nn.Sequential):  # open_clip: a new Sequential of the same children
            parts = OrderedDict(m.named_children())
            for name, r in rows.items():
                parts[name] = slicing.sliced_linear(parts[name], rows=r)
            parts[self.out] = slicing.sliced_linear(parts[self.out], cols=neurons)
            if self.norm in parts:
                parts[self.norm] = slicing.sliced_norm(parts[self.norm], neurons)
            new = nn.Sequential(parts)
            new.train(m.training)
            return new
        new = slicing.shell(m)
        for name, r in rows.items():
            setattr(new, name, slicing.sliced_linear(getattr(m, name), rows=r))
        setattr(new, self.out, slicing.sliced_linear(self.out_linear(), cols=neurons))
        if self.norm and hasattr(m, self.norm):
            setattr(new, self.norm, slicing.sliced_norm(getattr(m, self.norm), neurons))
        return new
