"""Base classes and parameter checks shared by every strategy.

A strategy only decides (which tokens to keep or merge, which heads to cut). How the decision is
wired into a model family lives in `pruning_bench.patches`.
"""
from __future__ import annotations

import abc
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .params import (MAX_SEED, Bool, Blocks, Calibration, Choice, Custom, Float, Int, Param,  # noqa: F401
                     check_bool, check_calibration, check_choice, check_float, check_int, check_int_or_list,
                     check_layers, seed_param, spec_from_legacy)
from ..finite_images import refuse_non_finite


class Strategy(abc.ABC):
    """A configured strategy: `Strategy(**params)` checks the parameters; `self.params` holds them, resolved.

    The contract every strategy declares, on its class:

    - `param_spec`: name -> `Param` (`strategies/params.py`), in the order they are listed, for EVERY
      parameter: its default, its range and a one-line meaning, e.g.
      `Int(8, "tokens merged in each block", low=0, per_block=True)`,
      `Float(0.7, "share of patch tokens kept", low=0.0, high=1.0, low_open=True)`, `Bool`,
      `Choice(..., choices=(...))`, `Blocks` (block index lists), `Calibration`, `seed_param()`, and
      `Custom(text=..., checker=...)` for anything else; `optional=True` also accepts None. Shared
      declarations are reused with `spec.with_default(value)`. `__init__` checks every value against
      its declaration (the error names the parameter, the value and the range), then calls `_check`
      for the rules that tie parameters together. `pruning-bench strategies` and the docs print the
      same declaration, so a range is written once. `defaults` ({name: default}) is derived from it.
      A class that still writes `defaults` (and `param_help`) by hand keeps working: its parameters
      are then undeclared (listed as "range not declared" and checked only by its `_check`), which
      the tests refuse for built-in strategies.
    - `kind`: "token" (reduces tokens inside blocks) or "structured" (removes heads, neurons or blocks;
      these can be iterated with `--rounds`).
    - `compute_knob`: the parameter `pb.match_macs` searches to reach a MAC budget (None: none).
      `knob_for(fixed)` may pick another one given the fixed parameters; `knob_range(knob, params,
      patches, depth)` gives the values worth searching on a model (by default the knob's declared
      range, which must then be finite). An `Int(..., per_block=True)` knob is refined block by block.
    - `example_params`: parameters that visibly reduce on the tiny 4-block test models (the contract
      tests run every registered strategy with them).
    - `keep_all_params`: parameters that keep everything (an exact no-op with a warning), or None when
      the strategy has no such budget.

    A new built-in strategy is one module in `pruning_bench/strategies/` with a class decorated by
    `@register_strategy("name")`; importing the package finds it (there is no list to edit).
    """

    name: str = "?"
    kind: str = "token"  # "token" or "structured"
    param_spec: dict[str, Param] = {}
    defaults: dict[str, Any] = {}
    compute_knob: str | None = None
    example_params: dict[str, Any]  # declared by every concrete strategy (see above)
    keep_all_params: dict[str, Any] | None

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.params = {**self.defaults, **params}
        for key, spec in self.param_spec.items():
            self.params[key] = spec.check(key, self.params[key], self.name)
            if isinstance(spec, Calibration) and self.params[key] is not None:
                self.params[key] = CalibrationBatches(self.params[key])
        self._check()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("attach", "plan"):  # the methods that run the model on calibration batches
            if name in cls.__dict__:
                setattr(cls, name, _naming_calibration_failures(cls.__dict__[name]))
        own = cls.__dict__
        if "param_spec" in own:
            cls.defaults = {name: spec.default for name, spec in cls.param_spec.items()}
        elif "defaults" in own:  # a strategy written before `param_spec`: keep it working
            cls.param_spec = spec_from_legacy(cls, cls.defaults, cls.param_spec)

    def _check(self) -> None:
        """Rules between parameters (each value alone is already checked against `param_spec`)."""

    @classmethod
    def undeclared_params(cls) -> list[str]:
        """Parameters without a declared range and meaning (a built-in strategy must have none)."""
        return [name for name, spec in cls.param_spec.items() if not spec.declared]

    @classmethod
    def knob_for(cls, fixed: dict[str, Any]) -> str | None:
        """The parameter `match_macs` searches when the parameters `fixed` are given."""
        return cls.compute_knob

    @classmethod
    def knob_range(cls, knob: str, params: dict[str, Any], patches: int, depth: int) -> tuple[float, float]:
        """(lowest, highest) value of `knob` worth searching on a model with `patches` patch tokens and
        `depth` blocks, the other parameters being `params`. Default: the knob's declared range (an open
        float end moved inside by 1e-6)."""
        spec = cls.param_spec.get(knob)
        low, high = getattr(spec, "low", None), getattr(spec, "high", None)
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"match_macs: {cls.name} declares no finite search range for its compute knob "
                             f"{knob!r} (it should override knob_range)")
        if isinstance(spec, Float):
            return low + 1e-6 * spec.low_open, high - 1e-6 * spec.high_open
        return low, high

    @classmethod
    def per_block_knob(cls, knob: str) -> bool:
        """Whether `knob` also takes one value per block (then `match_macs` refines it block by block)."""
        return bool(getattr(cls.param_spec.get(knob), "per_block", False))

    def resolved_params(self) -> dict[str, Any]:
        """Every parameter with its value, defaults included (what a result file records)."""
        return dict(self.params)

    def attach(self, model):
        """Override only to wire a strategy by hand; `pb.prune` wires token and structured strategies
        to the model family's patches itself. Return an object with `restore()` and `stats()`."""
        raise TypeError(f"strategy {self.name!r} cannot be attached")  # pragma: no cover

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------- calibration


class CalibrationBatches:
    """Passes calibration batches through, remembering which one is being used, so that a model that
    fails on them (wrong image size...) is reported as failing on the calibration batches."""

    def __init__(self, batches):
        self.batches = batches
        self.current: tuple[int, tuple] | None = None

    def __iter__(self):
        try:
            for i, batch in enumerate(self.batches):
                images = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
                self.current = (i, tuple(getattr(images, "shape", ())))
                refuse_non_finite(images, f"calibration batch {i}")  # before it shapes a decision
                yield batch
        finally:
            self.current = None

    def __len__(self):
        return len(self.batches)

    def __repr__(self):
        return f"CalibrationBatches({self.batches!r})"


def _naming_calibration_failures(attach):
    """Wrap a strategy's `attach`: an error raised by the model while it runs a calibration batch names that batch."""
    import functools

    @functools.wraps(attach)
    def wrapper(self, *args, **kwargs):
        try:
            return attach(self, *args, **kwargs)
        except (RuntimeError, AssertionError) as exc:
            calibration = self.params.get("calibration") if isinstance(getattr(self, "params", None), dict) else None
            current = getattr(calibration, "current", None)
            if current is None:
                raise
            index, shape = current
            raise ValueError(f"{self.name}: the model failed on calibration batch {index} (shape {shape}); "
                             f"calibration images must be preprocessed like the evaluated ones: "
                             f"{type(exc).__name__}: {exc}") from exc

    return wrapper

# ---------------------------------------------------------------- token strategies

@dataclass(frozen=True)
class DecisionDims:
    """Widths a strategy's own decision work depends on: tokens (width), keys averaged over heads
    (head_dim), full attention (attn_dim)."""

    width: int
    head_dim: int
    attn_dim: int


def bipartite_macs(n_tokens: int, n_prefix: int, dim: int) -> float:
    """Cosine similarity of the A half against the B half (ToMe's split, prefix included)."""
    return ((n_tokens + 1) // 2) * (n_tokens // 2) * dim


@dataclass
class AttentionProbe:
    """What a block's attention exposes to a token strategy, already computed by the block.

    q, k: (B, heads, N, head_dim) after any q/k normalisation, before scaling.
    logit_fn: maps (q_rows, k) to attention logits (scale, cosine attention and the size bias included),
    so a strategy can compute softmax rows for a few queries without the full N x N map.
    """

    q: torch.Tensor
    k: torch.Tensor
    logit_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    v: torch.Tensor | None = None  # (B, heads, N, head_dim), for strategies that weigh attention by value norms
    weights: torch.Tensor | None = None  # the weights the block attended with, when a strategy reshaped them

    def attention_rows(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """Head-averaged softmax attention of the queries `rows` over every key: (B, R, N).

        `rows` is a slice, or a (B, R) index tensor for per-image queries."""
        if self.weights is not None and isinstance(rows, slice):
            return self.weights[:, :, rows].float().mean(dim=1)
        if isinstance(rows, slice):
            q = self.q[:, :, rows]
        else:
            B, H, N, D = self.q.shape
            index = rows[:, None, :, None].expand(B, H, rows.shape[1], D)
            q = self.q.gather(2, index)
        logits = self.logit_fn(q, self.k)
        return logits.float().softmax(dim=-1).mean(dim=1)

    def attention_map(self) -> torch.Tensor:
        """The full softmax attention (B, heads, N, N), in the dtype of q (softmax in at least float32); the
        reshaped weights when a strategy reshaped them (`TokenStrategy.reshape_attention`)."""
        if self.weights is not None:
            return self.weights
        logits = self.logit_fn(self.q, self.k)
        return logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(self.q.dtype)


class TokenStrategy(Strategy):
    """A strategy that reduces the tokens of a block after its attention (before its MLP, or at its exit).

    Subclasses implement `plan_block` (how many tokens leave a block given how many enter, and a
    note when the budget had to be clamped) and `reduce` (which tokens, for that count).
    """

    kind = "token"
    needs_class_token = False  # True when tokens are ranked by the class token's attention
    # where a reducing block reduces: "attention" (after its attention, before its MLP, as ToMe), "exit"
    # (after its MLP: what enters the next block, as methods that reduce between blocks) or "ahead" (the
    # block's input, from its attention map before the output is formed; the reduction's `merge_attention()`
    # gives the map the reduced tokens attend with); the decision reads the block's own attention each time
    placement = "attention"

    @abc.abstractmethod
    def plan_block(self, layer: int, n_tokens: int, n_prefix: int, n_layers: int) -> tuple[int, str | None]:
        """(tokens leaving block `layer`, clamp note or None). Equal to `n_tokens` when the block does nothing."""

    @abc.abstractmethod
    def reduce(self, layer: int, x: torch.Tensor, probe: AttentionProbe, n_prefix: int, n_out: int):
        """A `Selection` or `Merge` taking the block's `x` (B, N, C) to `n_out` tokens."""

    def check_model(self, n_layers: int, n_prefix: int) -> None:
        """Refuse parameters that cannot fit this model (e.g. a start block past the last one)."""

    carries_state = False  # True: `start` runs on the first block's input of every forward

    def start(self, x: torch.Tensor, n_prefix: int, grid: tuple[int, int]):
        """State derived once per forward from the first block's input `x` (B, N, C), the patch grid being
        `grid` (rows, columns), and carried through the reductions (GTP's token graph), or None. `reduce`
        then receives it as `carry=` and its reduction's `carry` attribute is what later blocks receive."""
        return None

    reshapes_attention = False  # True: every block attends with `reshape_attention` of its softmax weights

    def reshape_attention(self, weights: torch.Tensor) -> torch.Tensor:
        """The weights (B, heads, N, N) a block attends with in place of its softmax `weights` (GTP's sparsification)."""
        return weights

    def uses_size_bias(self) -> bool:
        """Whether attention adds log(token size) to its logits once tokens have merged (ToMe)."""
        return False

    def decision_macs(self, layer: int, n_tokens: int, n_out: int, n_prefix: int, dims: "DecisionDims") -> float:
        """MACs the decision itself costs in a reducing block, beyond the block's own attention and MLP
        (similarity or distance matrices): what an honest MAC count adds to the analytic formula."""
        return 0.0

    def check_pooling(self, reads_patch_tokens: bool) -> None:
        """Refuse a budget that leaves no patch token when the output pools over patch tokens (avg pooling,
        or no class token): the pooled output would be NaN."""
        budget = getattr(self, "budget", None)
        if reads_patch_tokens and callable(budget) and budget() == 0:
            raise ValueError(f"{self.name}: keep=0 leaves no patch token, but this model pools its output over "
                             "patch tokens (average pooling or no class token), which would be NaN; "
                             "keep is out of range [1, inf] for this model")

    def extend_stats(self, stats: dict) -> dict:
        """Add strategy-specific facts to `h.stats()` (e.g. ToMe's merges per block)."""
        return stats


class Selection:
    """Keep a subset of tokens: `index` (B, M) holds, per image, the kept positions in order."""

    def __init__(self, index: torch.Tensor):
        self.index = index

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        return t.gather(1, self.index[..., None].expand(-1, -1, t.shape[-1]))

    def reduce_features(self, x, size):
        return self.apply(x), (None if size is None else self.apply(size))


class Merge:
    """Merge tokens: `apply(t, mode)` maps (B, N, C) to (B, N - r, C), combining merged rows by `mode`."""

    def __init__(self, apply: Callable[[torch.Tensor, str], torch.Tensor]):
        self.apply = apply

    def reduce_features(self, x, size):
        """Size-weighted average, so a merged token stands for all the patches it absorbed."""
        if size is None:
            size = torch.ones_like(x[..., :1])
        x = self.apply(x * size, "sum")
        size = self.apply(size, "sum")
        return x / size, size


# ---------------------------------------------------------------- structured strategies


@dataclass
class StructuredPlan:
    """What to keep: per block (indexed like `the family's blocks`) the kept heads and neurons
    (None = all, module left untouched) and, optionally, the kept blocks."""

    heads: list[torch.Tensor | None] | None = None
    neurons: list[torch.Tensor | None] | None = None
    kept_blocks: list[int] | None = None
    extra_stats: dict = field(default_factory=dict)


def warn_noop(name: str, message: str) -> None:
    """Say that a structured strategy leaves the model unchanged (a note in the result)."""
    warnings.warn(f"{name}: {message}", UserWarning, stacklevel=3)


class StructuredStrategy(Strategy):
    """A strategy that removes heads, MLP neurons or blocks. It only decides (`plan`); `pb.prune` has the
    model family's structured patch apply the plan and undo it."""

    kind = "structured"

    @abc.abstractmethod
    def plan(self, model, family) -> StructuredPlan:
        """What to keep in `model`, located as `family` (a `pruning_bench.families.Family`)."""
