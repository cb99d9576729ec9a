"""`clip_benchmark eval --pretrained PATH` with a model written by `pb.save_pruned` / `--save_model`.

open_clip cannot load such a file itself: its blocks have their own head counts and MLP widths, and
dropped blocks are gone. For the one `run` call whose `--pretrained` is a saved open_clip model,
clip_benchmark's `load_clip` is swapped for one that rebuilds it with `pb.load_pruned` and returns
the model's own preprocessing and tokenizer; everything else about the run is clip_benchmark's. A
saved timm model has no text tower, so it is refused with a pointer to `pruning-bench eval`.

A file saved while a token strategy was live records it (`token_strategy`); the run re-applies it, as a
pruned run of that strategy (recorded in `pruning`, named in the result file), and says so in one line.
`--prune_no_reapply` evaluates the file without it; the result then records the strategy left out
(`token_strategy_not_applied`), so the report never takes the run for a baseline.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager


def saved_model_path(args) -> str | None:
    """`args.pretrained` when it names a pruning-bench saved model, else None."""
    from ..saved.validate import claims_saved_model

    path = getattr(args, "pretrained", None)
    if isinstance(path, str) and os.path.exists(path) and claims_saved_model(path):  # by content, not by name
        return path
    return None


def problem(args, path: str) -> str | None:
    """Why this run cannot evaluate the saved model at `path` (one line), or None."""
    from ..saved.validate import check_file

    try:
        architecture = check_file(path)  # truncated, foreign, or a record that does not fit its tensors: one line
    except ValueError as exc:
        return f"--pretrained {exc}"
    if architecture.get("family") != "open_clip":
        return (f"--pretrained {path} is a saved {architecture.get('family', 'timm')} image model without a text "
                f"tower; evaluate it with `pruning-bench eval --pretrained {path}`")
    if getattr(args, "model_type", "open_clip") != "open_clip":
        return f"--pretrained {path} is a saved open_clip model; it needs --model_type open_clip, not {args.model_type}"
    name = architecture["open_clip_model"]
    if args.model != name:
        return f"--model {args.model} does not match the saved model's open_clip config {name!r} (give --model {name})"
    return None


def load_saved(path: str, device="cpu"):
    """(model, preprocessing, tokenizer) of a saved open_clip model, as clip_benchmark's loaders return them."""
    from ..saved import load_pruned
    from ..saved.open_clip_model import tokenizer, transform

    model = load_pruned(path, reapply=False).to(device)  # the run applies the strategy itself, and records it
    return model, transform(model), tokenizer(model)


def with_saved_token_strategy(args, fail):
    """`args` whose pruning configuration re-applies the token strategy the saved `--pretrained` records
    (see `run_config.reapplying`); `args` itself when there is none."""
    import argparse

    from .. import run_config
    from ..saved import read_architecture

    path = saved_model_path(args)
    token = read_architecture(path).get("token_strategy") if path else None
    if not token:
        return args
    config = getattr(args, "pruning_config", None)
    try:
        config = run_config.reapplying(config or run_config.resolve(args), token, path, "pruning-bench")
    except ValueError as exc:
        fail(str(exc))
    args = argparse.Namespace(**vars(args))
    args.pruning_config = config
    return args


def _loader(original, path: str):
    @functools.wraps(original)
    def load_clip(*a, **kw):
        names = ("model_type", "model_name", "pretrained", "cache_dir", "device")
        given = {**dict(zip(names, a)), **kw}
        if given.get("pretrained") != path:
            return original(*a, **kw)
        return load_saved(path, given.get("device", "cpu"))

    return load_clip


@contextmanager
def loading_saved_models(cli, args, fail):
    """For the duration: `cli.load_clip` rebuilds the saved model `--pretrained` names (nothing when it names none)."""
    path = saved_model_path(args)
    if path is None:
        yield
        return
    reason = problem(args, path)
    if reason:
        fail(reason)
    original = cli.load_clip
    cli.load_clip = _loader(original, path)
    try:
        yield
    finally:
        cli.load_clip = original
