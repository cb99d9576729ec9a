"""Built-in strategies; importing this package registers them."""
from importlib import import_module

_BUILTIN = ("anchor_diversity", "tome", "cls_topk", "random_drop", "head_prune", "layer_drop")
_BUILTIN += ("evit", "dpc_knn", "kmedoids")  # EViT and the clustering reductions of Haurum et al.
_BUILTIN += ("pitome", "tofu", "mctf", "visionzip")  # published training-free token reductions
_BUILTIN += ("ats", "ppt")  # per-image token counts, per-image prune-or-pool
_BUILTIN += ("zero_tprune",)  # attention-graph PageRank importance and similarity pruning

for _name in _BUILTIN:
    try:
        import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # a strategy module not written yet must not break the others
        if exc.name != f"{__name__}.{_name}":
            raise
