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


class Strategy(abc.ABC):
    """A configured strategy. Subclasses declare `defaults` and validate in `_check`."""

    name: str = "?"
    kind: str = "token"  # "token" or "structured"
    defaults: dict[str, Any] = {}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.params = {**self.defaults, **params}
        if "seed" in self.defaults:  # torch generators take seeds below 2**63; larger ones fail at the first forward
            self.params["seed"] = check_int("seed", self.params["seed"], 0, MAX_SEED, self.name)
        if "calibration" in self.defaults and self.params["calibration"] is not None:
            self.params["calibration"] = CalibrationBatches(check_calibration(self.params["calibration"], self.name))
        self._check()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("attach", "plan"):  # the methods that run the model on calibration batches
            if name in cls.__dict__:
                setattr(cls, name, _naming_calibration_failures(cls.__dict__[name]))

    def _check(self) -> None:  # pragma: no cover - overridden
        pass

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


# ---------------------------------------------------------------- parameter checks

MAX_SEED = 2**63 - 1


def check_calibration(value, owner: str = ""):
    """`calibration` must be an iterable of image batches; an int, a string or a single image is not."""
    where = f"{owner}: " if owner else ""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__") or (
            isinstance(value, torch.Tensor) and value.ndim != 5):
        shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
        raise ValueError(f"{where}calibration must be an iterable of image batches (tensors (B, C, H, W)), "
                         f"got {type(value).__name__}{shape} {str(value)[:40] if not shape else ''}".rstrip())
    return value


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

def check_int(name: str, value, low: int | None = 0, high: int | None = None, owner: str = "") -> int:
    where = f"{owner}: " if owner else ""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{where}{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{where}{name}={value} is out of range {_range(low, high)}")
    return value


def check_int_or_list(name: str, value, low: int | None = 0, owner: str = ""):
    """An integer, or one integer per block (a list), each checked like `check_int`."""
    if isinstance(value, (list, tuple)):
        return [check_int(f"{name}[{i}]", v, low, None, owner) for i, v in enumerate(value)]
    return check_int(name, value, low, None, owner)


def check_float(name: str, value, low: float, high: float, *, low_open=False, high_open=False, owner="") -> float:
    where = f"{owner}: " if owner else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}{name} must be a number, got {value!r}")
    value = float(value)
    bad = (
        math.isnan(value)
        or (value <= low if low_open else value < low)
        or (value >= high if high_open else value > high)
    )
    if bad:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{where}{name}={value} is out of range {lo}{low}, {high}{hi}")
    return value


def check_choice(name: str, value, choices, owner="") -> str:
    if value not in choices:
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}{name}={value!r} is not one of {', '.join(map(str, choices))}")
    return value


def check_bool(name: str, value, owner="") -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.lower() in {"true", "1", "yes"}
    where = f"{owner}: " if owner else ""
    raise ValueError(f"{where}{name} must be a boolean, got {value!r}")


def _range(low, high) -> str:
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


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

    def attention_rows(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """Head-averaged softmax attention of the queries `rows` over every key: (B, R, N).

        `rows` is a slice, or a (B, R) index tensor for per-image queries."""
        if isinstance(rows, slice):
            q = self.q[:, :, rows]
        else:
            B, H, N, D = self.q.shape
            index = rows[:, None, :, None].expand(B, H, rows.shape[1], D)
            q = self.q.gather(2, index)
        logits = self.logit_fn(q, self.k)
        return logits.float().softmax(dim=-1).mean(dim=1)


class TokenStrategy(Strategy):
    """A strategy that reduces the tokens of a block between its attention and its MLP.

    Subclasses implement `plan_block` (how many tokens leave a block given how many enter, and a
    note when the budget had to be clamped) and `reduce` (which tokens, for that count).
    """

    kind = "token"
    needs_class_token = False  # True when tokens are ranked by the class token's attention

    @abc.abstractmethod
    def plan_block(self, layer: int, n_tokens: int, n_prefix: int, n_layers: int) -> tuple[int, str | None]:
        """(tokens leaving block `layer`, clamp note or None). Equal to `n_tokens` when the block does nothing."""

    @abc.abstractmethod
    def reduce(self, layer: int, x: torch.Tensor, probe: AttentionProbe, n_prefix: int, n_out: int):
        """A `Selection` or `Merge` taking the block's `x` (B, N, C) to `n_out` tokens."""

    def check_model(self, n_layers: int, n_prefix: int) -> None:
        """Refuse parameters that cannot fit this model (e.g. a start block past the last one)."""

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
