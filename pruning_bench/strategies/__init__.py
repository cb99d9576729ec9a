"""Built-in strategies; importing this package registers them."""
from importlib import import_module

_BUILTIN = ("anchor_diversity", "tome", "cls_topk", "random_drop", "head_prune", "layer_drop")
_BUILTIN += ("evit", "dpc_knn", "kmedoids")  # EViT and the clustering reductions of Haurum et al.
_BUILTIN += ("pitome", "tofu", "mctf", "visionzip")  # published training-free token reductions
_BUILTIN += ("refill", "rsst")  # iterated structured pruning with masks / a growing penalty (seed 003)

for _name in _BUILTIN:
    try:
        import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # a strategy module not written yet must not break the others
        if exc.name != f"{__name__}.{_name}":
            raise
