"""Pooling that respects merged tokens: an `avg` pool weights each token by the patches it holds.

Without this, a merged token would count as one patch in the average although it stands for
several; ToMe's reference leaves this out, here the average equals the unmerged model's average
whenever merged tokens are exact copies. What "pooling" means is the family adapter's answer
(`Family.pooling_methods`); this module only builds and caches the patched classes.
"""
from __future__ import annotations

_VIT_CLASSES: dict[tuple[type, str], type] = {}


def patched_vit_class(cls: type, family) -> type:
    """A subclass of the tower core's class whose pooling weights tokens by size."""
    key = (cls, family.name)
    if key not in _VIT_CLASSES:
        methods = family.pooling_methods(cls)
        _VIT_CLASSES[key] = type(f"TokenReduced{cls.__name__}", (cls,), {**methods, "__module__": __name__})
    return _VIT_CLASSES[key]
