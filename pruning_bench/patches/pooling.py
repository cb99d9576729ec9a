"""Pooling that respects merged tokens: an `avg` pool weights each token by the patches it holds.

Without this, a merged token would count as one patch in the average although it stands for
several; ToMe's reference leaves this out, here the average equals the unmerged model's average
whenever merged tokens are exact copies.
"""
from __future__ import annotations

import torch

_VIT_CLASSES: dict[tuple[type, str], type] = {}


def weighted_mean(tokens: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    size = size.to(tokens.dtype)
    return (tokens * size).sum(dim=1) / size.sum(dim=1)


def _timm_methods(cls):
    def pool(self, x, pool_type=None):
        size = self._pb_run.size
        kind = self.global_pool if pool_type is None else pool_type
        if size is None or kind != "avg" or self.attn_pool is not None or self.pool_include_prefix:
            return cls.pool(self, x, pool_type)
        p = self.num_prefix_tokens
        return weighted_mean(x[:, p:], size[:, p:])

    return {"pool": pool}


def _open_clip_methods(cls):
    def _global_pool(self, x):
        size = self._pb_run.size
        if size is None or self.pool_type != "avg":
            return cls._global_pool(self, x)
        return weighted_mean(x[:, 1:], size[:, 1:]), x[:, 1:]

    return {"_global_pool": _global_pool}


def patched_vit_class(cls: type, family: str) -> type:
    key = (cls, family)
    if key not in _VIT_CLASSES:
        methods = _timm_methods(cls) if family == "timm" else _open_clip_methods(cls)
        _VIT_CLASSES[key] = type(f"TokenReduced{cls.__name__}", (cls,), {**methods, "__module__": __name__})
    return _VIT_CLASSES[key]
