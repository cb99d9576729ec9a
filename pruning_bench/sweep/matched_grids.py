"""`pruning-bench sweep --match_macs 0.8,0.6`: every grid entry swept at matched MACs instead of by hand.

For each grid entry and each target ratio, the entry's compute knob (`r` for tome, `keep` for cls_topk,
`keep_rate` with `prune_layers`, ...) is resolved with `pb.match_macs` on the very model the points
evaluate, built from the evaluation arguments by the driver's own loader (`pruning-bench eval`:
`evaluate.models.load_model`; `clip_benchmark eval`: `clip_benchmark.models.load_clip`). The entry's
other keys are the fixed parameters (a key with several values gives one search per combination).
The search is deterministic, so a resumed sweep resolves to the same points and finds its finished
results. Each point carries `{target_ratio, achieved_ratio, knob, value, ...}` to its run, whose
result file records it as `pruning.match` (see `record.result.MATCH_ENV`).

Everything that can be refused without a model (a ratio outside (0, 1], a strategy without a knob,
the knob given in the grid, parameters the strategy rejects) is refused before the model is built.

Matching takes seconds per point, so it says what it does on stderr (one line per search stage) and
keeps what it found in the sweep's log folder (`match_macs.json`, keyed by model, strategy, fixed
parameters and target): a resumed sweep, or a dry run after another, reads the values back instead of
searching again. A target the knob cannot reach within 1% of the baseline MACs is said, with its gap.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from typing import Any

from . import outputs
from . import BASELINE, SweepPoint, parse_grid, split_top_level, strategy_seed_axis

FLAG = "--match_macs"
CACHE_NAME = "match_macs.json"  # in the sweep's log folder


def parse_ratios(text: str) -> list[float]:
    """`"0.8,0.6"` -> [0.8, 0.6]; each in (0, 1], none twice."""
    ratios: list[float] = []
    for word in split_top_level(text):
        try:
            ratio = float(word)
        except ValueError:
            raise ValueError(f"{FLAG} {text!r}: {word!r} is not a number (target MAC ratios in (0, 1])") from None
        if not 0.0 < ratio <= 1.0:  # also refuses nan
            raise ValueError(f"{FLAG}: target ratio {word} is out of range (0, 1]")
        if ratio in ratios:
            raise ValueError(f"{FLAG}: target ratio {word} is given twice")
        ratios.append(ratio)
    return ratios


class ModelBuildError(ValueError):
    """The evaluated model cannot be built to match on (said as it is, not as a grid entry's error)."""


def _fixed_combinations(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


class Matcher:
    """Expands grid entries into matched points; `model` must be set (`build_model`) before `expand`."""

    CACHE_VERSION = 2  # bump when the search changes what it returns

    def __init__(self, ratios: list[float], model=None, tolerance: float = 1e-4, cache_path: str | None = None,
                 model_key: Any = None, progress: bool = True):
        self.ratios = list(ratios)
        self.model, self.tolerance = model, tolerance  # tolerance: of a float knob, as in match_macs
        self.cache_path, self.model_key, self.progress = cache_path, model_key, progress
        self._found: dict[tuple, Any] = {}  # (strategy, fixed, ratio) -> MatchedParams: one search each
        self.build = None  # builds `model` the first time a search needs it (a fully cached sweep never does)

    def _cache_key(self, strategy: str, fixed: dict[str, Any], ratio: float) -> str:
        return json.dumps([self.CACHE_VERSION, self.model_key, strategy, sorted(fixed.items()), ratio, self.tolerance],
                          sort_keys=True, default=repr)

    def _read_cache(self) -> dict:
        if not self.cache_path or not os.path.isfile(self.cache_path):
            return {}
        try:
            with open(self.cache_path, encoding="utf-8") as handle:
                cached = json.load(handle)
            return cached if isinstance(cached, dict) else {}
        except (OSError, ValueError):  # an unreadable cache is searched again, then rewritten
            return {}

    def _write_cache(self, key: str, found) -> None:
        if not self.cache_path:
            return
        from ..record import atomic

        cached = self._read_cache()
        cached[key] = {"params": dict(found), "knob": found.knob, "ratio": found.ratio, "target": found.target,
                       "gap": found.gap, "gmacs": found.gmacs, "baseline_gmacs": found.baseline_gmacs}
        os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
        atomic.write_json(self.cache_path, cached, indent=1, sort_keys=True)

    def check(self, grids: list[str], strategy_seeds: list[int] | None = None) -> None:
        """Every refusal that needs no model: one ValueError naming the grid entry."""
        from ..api import make_strategy
        from ..match import compute_knob
        from ..registry import get_strategy

        if not any(parse_grid(g)[0] != BASELINE for g in grids):
            raise ValueError(f"{FLAG} needs at least one --grid with a strategy to match")
        for text in grids:
            strategy, axes = parse_grid(text)
            if strategy == BASELINE:
                if axes:
                    raise ValueError("the baseline takes no parameters")
                continue
            try:
                cls = get_strategy(strategy)
            except ValueError as exc:
                raise ValueError(f"--grid {text!r}: {exc}") from None
            strategy_seed_axis(text, strategy, axes, strategy_seeds)
            for fixed in _fixed_combinations(axes):
                try:
                    knob = compute_knob(strategy, fixed)
                except ValueError:
                    raise ValueError(f"--grid {text!r}: {strategy} declares no compute knob, so {FLAG} cannot match "
                                     "it (sweep it without --match_macs)") from None
                if knob in fixed:
                    raise ValueError(f"--grid {text!r}: {knob} is the compute knob {FLAG} sets for {strategy}; "
                                     f"leave {knob}= out of the grid")
                default = cls.defaults.get(knob)
                try:
                    make_strategy(strategy, {**fixed, knob: 1 if default is None else default})
                except (KeyError, ValueError, TypeError) as exc:
                    raise ValueError(f"--grid {text!r}: point {fixed}: {exc}") from None

    def resolve(self, strategy: str, fixed: dict[str, Any], ratio: float):
        """`pb.match_macs` on the sweep's model, once per (strategy, fixed parameters, ratio)."""
        from ..match import match_macs

        from ..match import MATCH_WITHIN, MatchedParams, MatchGapWarning

        key = (strategy, repr(sorted(fixed.items())), ratio)
        if key in self._found:
            return self._found[key]
        cache_key = self._cache_key(strategy, fixed, ratio)
        cached = self._read_cache().get(cache_key)
        if cached is not None:
            found = MatchedParams(cached["params"])
            for name in ("knob", "ratio", "target", "gap", "gmacs", "baseline_gmacs"):
                setattr(found, name, cached[name])
            found.evaluated, found.schedules = {}, {}
            self._say(f"{strategy} {fixed or ''} at {ratio:g}: {found.knob}={found[found.knob]} gives "
                      f"{found.ratio:.4f} (matched before, read from {self.cache_path})")
            if abs(found.gap) > MATCH_WITHIN:
                self._say(f"warning: {strategy} cannot reach MAC ratio {ratio:g} within {MATCH_WITHIN:g}: "
                          f"{found.knob}={found[found.knob]} gives {found.ratio:.4f} (gap {found.gap:+.4f})")
        else:
            if self.model is None and self.build is not None:
                try:
                    self.model = self.build()
                except ValueError as exc:
                    raise ModelBuildError(str(exc)) from None
            if self.model is None:
                raise RuntimeError("Matcher.model is not set: build it with build_model first")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("always", MatchGapWarning)
                found = match_macs(self.model, strategy, ratio, tolerance=self.tolerance, progress=self.progress,
                                   **fixed)
            for warning in caught:
                if issubclass(warning.category, MatchGapWarning):
                    self._say(f"warning: {warning.message}")
            self._write_cache(cache_key, found)
        self._found[key] = found
        return found

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"pruning-bench sweep: {text}", file=sys.stderr, flush=True)

    def expand(self, text: str, strategy_seeds: list[int] | None = None) -> list[SweepPoint]:
        """One point per (fixed combination, target ratio, strategy seed), the knob set to its matched value."""
        from ..api import make_strategy

        strategy, axes = parse_grid(text)
        if strategy == BASELINE:
            return [SweepPoint(BASELINE)]
        seeds = strategy_seed_axis(text, strategy, axes, strategy_seeds) or [None]
        points = []
        for fixed in _fixed_combinations(axes):
            for ratio in self.ratios:
                try:
                    found = self.resolve(strategy, fixed, ratio)
                except ModelBuildError:
                    raise
                except (KeyError, ValueError, TypeError) as exc:
                    raise ValueError(f"--grid {text!r}: {FLAG} {ratio:g} with {fixed}: {exc}") from None
                match = {"strategy": strategy, "knob": found.knob, "value": found[found.knob], "target_ratio": ratio,
                         "achieved_ratio": found.ratio, "gmacs": found.gmacs, "baseline_gmacs": found.baseline_gmacs}
                for seed in seeds:
                    params = {**fixed, found.knob: found[found.knob], **({"seed": seed} if seed is not None else {})}
                    resolved = make_strategy(strategy, dict(params)).resolved_params()
                    points.append(SweepPoint(strategy, tuple(params.items()), resolved, match=match))
        return points


def build_model(eval_args: list[str], driver: str = outputs.CLIP_BENCHMARK):
    """The image model the points evaluate, built from EVAL_ARGS by the driver's own loader (no pruning)."""
    import torch

    args = outputs.parse_eval_args(eval_args, driver)
    print(f"pruning-bench sweep: building the evaluated model to match MACs on", file=sys.stderr, flush=True)
    if driver == outputs.PRUNING_BENCH:
        from ..run_config import parse_prune_params
        from ..evaluate.models import load_model

        name, pretrained = args.model, args.pretrained
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)  # as the run seeds before loading (MACs do not depend on the weights)
            try:
                return load_model(name, pretrained, image_size=args.img_size,
                                  model_args=parse_prune_params(args.model_arg or []), check=False).model
            except ValueError as exc:
                raise ValueError(f"{FLAG}: {str(exc).splitlines()[0]}") from None
            except ImportError:
                raise
            except Exception as exc:  # a checkpoint that does not load, hub weights without a network
                raise _load_error(name, pretrained, exc) from None
    from clip_benchmark.models import load_clip

    models = sorted({(model, pretrained) for model, pretrained, _, _ in outputs.clip_benchmark_runs(args)})
    if len(models) != 1:
        named = ", ".join(f"{m} ({p or 'random init'})" for m, p in models) or "none"
        raise ValueError(f"{FLAG} matches the knob on one model; the evaluation arguments name {len(models)}: {named}")
    [(name, pretrained)] = models
    saved = _saved_or_loaded(args, name, pretrained)
    if saved is not None:
        return saved[0].eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ..clip_benchmark_ext.random_init import weights_for_open_clip

            weights = weights_for_open_clip(pretrained) if args.model_type == "open_clip" else pretrained
            model, _, _ = load_clip(model_type=args.model_type, model_name=name, pretrained=weights,
                                    cache_dir=args.model_cache_dir, device="cpu")
    except ImportError:
        raise
    except Exception as exc:  # open_clip fails in many ways (unknown name, missing weights, no network)
        raise _load_error(name, pretrained, exc) from None
    return model.eval()


def model_key(eval_args: list[str], driver: str = outputs.CLIP_BENCHMARK) -> list:
    """What the model matched on depends on: the driver's model arguments (its weights are part of it,
    since a saved pruned model has fewer heads or blocks)."""
    args = outputs.parse_eval_args(eval_args, driver)
    if driver == outputs.PRUNING_BENCH:
        return [driver, args.model, args.pretrained, args.img_size, sorted(args.model_arg or [])]
    models = sorted({(model, pretrained) for model, pretrained, _, _ in outputs.clip_benchmark_runs(args)})
    return [driver, args.model_type, [list(m) for m in models]]


def _saved_or_loaded(args, name: str, pretrained):
    """A `--pretrained` file written by `pb.save_pruned` is rebuilt as each point's clip_benchmark run rebuilds it."""
    import argparse

    from ..clip_benchmark_ext import saved_models

    one = argparse.Namespace(**{**vars(args), "model": name, "pretrained": pretrained})
    path = saved_models.saved_model_path(one)
    if path is None:
        return None
    reason = saved_models.problem(one, path)
    if reason:
        raise ValueError(f"{FLAG}: {reason}")
    return saved_models.load_saved(path)


def _load_error(name: str, pretrained, exc: Exception) -> ValueError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return ValueError(f"{FLAG}: cannot build --model {name} --pretrained {pretrained!r} to match on "
                      f"({type(exc).__name__}: {first})")
