"""The run configuration every driver shares: the pruning flags of `clip_benchmark eval` and
`pruning-bench eval` (which `pruning-bench sweep` passes on), and their resolution into one checked
`PruningConfig`.

Everything is validated here, right after argument parsing, so a bad value stops the command before
any model or data is loaded. Kept apart from the CLIP_benchmark glue, so each driver reads one
definition of what a run asks for.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from typing import Any

DEFAULT_STRATEGY = "anchor_diversity"
SHORTCUTS = ("k_anchors", "top_m", "alpha")  # anchor_diversity's parameters as their own flags
PRUNABLE_TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the pruning flags to a driver's `eval` parser (clip_benchmark's sub-parser, `pruning-bench eval`)."""
    group = parser.add_argument_group(
        "pruning (pruning-bench)",
        "Patch a token-reduction or structured-pruning strategy into the image encoder right after the "
        "model loads, undo it right after the evaluation, and record `pruning` and `efficiency` in the "
        "result JSON. Tasks: " + ", ".join(PRUNABLE_TASKS) + ".",
    )
    group.add_argument("--enable_pruning", action="store_true", help="apply --prune_strategy during the evaluation")
    group.add_argument("--prune_strategy", default=None, metavar="NAME",
                       help=f"registered strategy (default: {DEFAULT_STRATEGY}): {_strategy_names()}; "
                            "`pruning-bench strategies` lists each one's parameters, defaults and ranges")
    group.add_argument("--k_anchors", type=int, default=None, help="anchor_diversity: anchor tokens (default 10)")
    group.add_argument("--top_m", type=int, default=None, help="anchor_diversity: tokens kept besides the anchors (default 50)")
    group.add_argument("--alpha", type=float, default=None, help="anchor_diversity: importance vs diversity weight in [0, 1] (default 0.5)")
    group.add_argument("--prune_param", action="append", default=[], metavar="KEY=VALUE",
                       help="any strategy parameter, repeatable; VALUE is a Python literal (8, 0.5, true, [4,8]) or a word")
    group.add_argument("--prune_calibration", type=int, default=64, metavar="N",
                       help="images scoring data-driven importances (head_prune taylor/fisher/activation, layer_drop "
                            "keep_layers): the first N of the training split, never the evaluated one (default 64)")
    group.add_argument("--measure_efficiency", action="store_true",
                       help="record `efficiency` (GMACs, images/s, tokens per layer) for a run without pruning too")
    group.add_argument("--throughput_repeats", type=int, default=3, metavar="N",
                       help="timed forward passes of one evaluation batch for images_per_second (default 3)")
    group.add_argument("--extract_attention", action="store_true",
                       help="save each block's CLS attention and the kept token indices for the first images")
    group.add_argument("--attention_output", default=None, metavar="PATH",
                       help="where --extract_attention saves (torch.save); default: the result JSON's name with .attention.pt")
    group.add_argument("--attention_images", type=int, default=8, metavar="N",
                       help="how many of the first evaluation images --extract_attention keeps (default 8)")
    group.add_argument("--max_samples", type=int, default=None, metavar="N",
                       help="evaluate only the first N images of the evaluated split, in its stored order (the "
                            "webdatasets here interleave classes, so a prefix is class-balanced); recorded in the "
                            "result with the image count and the seed, for pruned and plain runs alike")
    group.add_argument("--prune_no_reapply", action="store_true",
                       help="--pretrained names a saved model that records a token strategy: evaluate it without "
                            "that strategy (by default it is re-applied, and said so)")
    group.add_argument("--prune_save_model", default=None, metavar="PATH",
                       help="after the evaluation, save the pruned open_clip model (pb.save_pruned, safetensors); "
                            "load it again with --pretrained PATH")


def _strategy_names() -> str:
    try:
        from .registry import list_strategies

        return ", ".join(list_strategies())
    except Exception as exc:  # help must print even if a strategy module is broken
        return f"(registry unavailable: {type(exc).__name__})"


def parse_value(text: str) -> Any:
    """A Python literal when `text` is one (ints, floats, lists, None), booleans in any case, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_prune_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ValueError(f"--prune_param expects KEY=VALUE, got {item!r}")
        if key in params:
            raise ValueError(f"--prune_param {key} is given twice")
        params[key] = parse_value(value)
    return params


@dataclass
class PruningConfig:
    """What the flags ask for, checked. `params` are the user's, `resolved` include every default."""

    enabled: bool = False
    strategy: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)
    measure_efficiency: bool = False
    throughput_repeats: int = 3
    extract_attention: bool = False
    attention_output: str | None = None
    attention_images: int = 8
    calibration_images: int = 0  # > 0: the strategy needs calibration images, which the runner supplies
    save_model: str | None = None  # --prune_save_model: where the pruned model is saved after the evaluation
    max_samples: int | None = None  # --max_samples: the first N images of the evaluated split
    reapply: bool = True  # False: --prune_no_reapply
    reapplied_from: str | None = None  # the saved model whose recorded token strategy this run re-applies
    saved_token_strategy: dict | None = None  # a saved model's token strategy left out (--prune_no_reapply)

    @property
    def active(self) -> bool:
        """Whether the run differs from a plain clip_benchmark run at all."""
        return self.enabled or self.measure_efficiency or self.extract_attention

    @property
    def records(self) -> bool:
        """Whether the plugin writes its own fields (identity, per-image outcomes) into the result."""
        return self.active or self.max_samples is not None or self.saved_token_strategy is not None


def resolve(args: argparse.Namespace) -> PruningConfig:
    """Check the pruning flags of `args`; raises ValueError with a one-line message."""
    shortcuts = {name: getattr(args, name, None) for name in SHORTCUTS}
    shortcuts = {name: value for name, value in shortcuts.items() if value is not None}
    extra = parse_prune_params(getattr(args, "prune_param", None) or [])
    enabled = bool(getattr(args, "enable_pruning", False))
    strategy = getattr(args, "prune_strategy", None)
    if not enabled:
        given = [f"--{n}" for n in shortcuts] + (["--prune_param"] if extra else []) + (["--prune_strategy"] if strategy else [])
        if given:
            raise ValueError(f"{', '.join(given)} given without --enable_pruning")
    clash = sorted(set(shortcuts) & set(extra))
    if clash:
        raise ValueError(f"{clash[0]} is given both as --{clash[0]} and as --prune_param")
    if getattr(args, "attention_output", None) and not getattr(args, "extract_attention", False):
        raise ValueError("--attention_output given without --extract_attention")
    if getattr(args, "attention_images", 8) < 1:
        raise ValueError(f"--attention_images={args.attention_images} must be at least 1")
    save_model = getattr(args, "prune_save_model", None)
    if save_model is not None and not enabled:
        raise ValueError("--prune_save_model given without --enable_pruning")
    if save_model is not None and getattr(args, "model_type", "open_clip") != "open_clip":
        raise ValueError(f"--prune_save_model saves open_clip models; got --model_type {args.model_type}")
    if save_model is not None and not str(save_model).endswith(".safetensors"):
        raise ValueError(f"--prune_save_model {save_model!r} must end in .safetensors (the format it writes)")
    if getattr(args, "throughput_repeats", 3) < 1:
        raise ValueError(f"--throughput_repeats={args.throughput_repeats} must be at least 1")
    max_samples = getattr(args, "max_samples", None)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max_samples={max_samples} must be at least 1")
    datasets = getattr(args, "dataset", None) or []  # a list when parsed (nargs="+"), one name inside `run`
    datasets = [datasets] if isinstance(datasets, str) else datasets
    if max_samples is not None and any(str(d).startswith("wds/") for d in datasets) and \
            (getattr(args, "num_workers", 0) or 0) > 1:
        raise ValueError(f"--max_samples takes the first N images of the stream in order, which parallel webdataset "
                         f"workers do not keep; use --num_workers 0 or 1 (got {args.num_workers})")
    config = PruningConfig(
        enabled=enabled,
        measure_efficiency=enabled or bool(getattr(args, "measure_efficiency", False)),
        throughput_repeats=getattr(args, "throughput_repeats", 3),
        extract_attention=bool(getattr(args, "extract_attention", False)),
        attention_output=getattr(args, "attention_output", None),
        attention_images=getattr(args, "attention_images", 8),
        save_model=save_model,
        max_samples=max_samples,
        reapply=not getattr(args, "prune_no_reapply", False),
    )
    if enabled:
        config.strategy = strategy or DEFAULT_STRATEGY
        config.params = {**shortcuts, **extra}
        config.resolved, needs_calibration = _resolved_params(config.strategy, config.params)
        if needs_calibration:
            n = getattr(args, "prune_calibration", 64)
            if n is None or n < 1:
                raise ValueError(f"--prune_calibration={n} must be at least 1: {config.strategy} with "
                                 f"{config.params} scores on calibration images")
            config.calibration_images = n
    return config


def _resolved_params(strategy: str, params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Every parameter of `strategy` with defaults filled in, and whether it needs calibration images.

    A data-driven importance is refused by the strategy without calibration images, which a command
    line cannot hold: the run supplies them (see `--prune_calibration`), so here the parameters are
    checked with a stand-in and the images are kept out of the record and the file name.
    """
    from .api import make_strategy
    from .registry import get_strategy

    try:
        return make_strategy(strategy, dict(params)).resolved_params(), False
    except ValueError as first:
        if "calibration" in params or "calibration" not in getattr(get_strategy(strategy), "defaults", {}):
            raise
        try:
            resolved = make_strategy(strategy, {**params, "calibration": []}).resolved_params()
        except ValueError:
            raise first from None
    resolved.pop("calibration", None)
    return resolved, True


def reapplying(config, token: dict | None, path: str, command: str):
    """`config` for a run of the saved model at `path`, whose file records the token strategy `token` (or None):
    re-applying it (the default) or, with `--prune_no_reapply`, recording that it is left out. One line on
    stderr says which. ValueError (one line) when the run asks for another strategy on top or it cannot be re-applied."""
    if not token:
        return config
    described = f"{token['strategy']} ({', '.join(f'{k}={v}' for k, v in token['params'].items() if v is not None)})"
    if not config.reapply:
        print(f"{command}: {path} was saved with the token strategy {described}; evaluated without it "
              "(--prune_no_reapply)", file=sys.stderr)
        return dataclasses.replace(config, saved_token_strategy=token)
    if config.enabled:
        raise ValueError(f"--pretrained {path} carries the token strategy {token['strategy']}, re-applied by default; "
                         f"give --prune_no_reapply to evaluate --prune_strategy {config.strategy} on it instead")
    try:
        resolved, _ = _resolved_params(token["strategy"], dict(token["params"]))
    except ValueError as exc:
        raise ValueError(f"--pretrained {path}: its recorded token strategy cannot be re-applied ({exc}); give "
                         "--prune_no_reapply to evaluate it without") from None
    print(f"{command}: {path} was saved with the token strategy {described}; re-applied "
          "(--prune_no_reapply to evaluate without it)", file=sys.stderr)
    return dataclasses.replace(config, enabled=True, measure_efficiency=True, strategy=token["strategy"],
                               params=dict(token["params"]), resolved=resolved, reapplied_from=path)
