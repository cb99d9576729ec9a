"""Declared parameters: each strategy parameter's default, range and one-line meaning, written once.

A strategy lists its parameters in `param_spec` (name -> `Param`). The same declaration checks a value
(`Strategy.__init__` runs every `Param.check` before the strategy's own `_check`, which is left with the
rules that tie parameters together), is printed by `pruning-bench strategies` and read by the docs, so a
range is never written twice. The error messages name the parameter, the value and the range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

MAX_SEED = 2**63 - 1  # torch generators take seeds below 2**63; larger ones fail at the first forward


# ---------------------------------------------------------------- the checks (also used on their own)

def _where(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _range(low, high) -> str:
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


def check_int(name: str, value, low: int | None = 0, high: int | None = None, owner: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{_where(owner)}{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{_where(owner)}{name}={value} is out of range {_range(low, high)}")
    return value


def check_int_or_list(name: str, value, low: int | None = 0, owner: str = ""):
    """An integer, or one integer per block (a list), each checked like `check_int`."""
    if isinstance(value, (list, tuple)):
        return [check_int(f"{name}[{i}]", v, low, None, owner) for i, v in enumerate(value)]
    return check_int(name, value, low, None, owner)


def check_float(name: str, value, low: float, high: float, *, low_open=False, high_open=False, owner="") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{_where(owner)}{name} must be a number, got {value!r}")
    value = float(value)
    bad = (
        math.isnan(value)
        or (value <= low if low_open else value < low)
        or (value >= high if high_open else value > high)
    )
    if bad:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{_where(owner)}{name}={value} is out of range {lo}{low}, {high}{hi}")
    return value


def check_choice(name: str, value, choices, owner="") -> str:
    if value not in choices:
        raise ValueError(f"{_where(owner)}{name}={value!r} is not one of {', '.join(map(str, choices))}")
    return value


def check_bool(name: str, value, owner="") -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.lower() in {"true", "1", "yes"}
    raise ValueError(f"{_where(owner)}{name} must be a boolean, got {value!r}")


def check_calibration(value, owner: str = ""):
    """`calibration` must be an iterable of image batches; an int, a string or a single image is not."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__") or (
            isinstance(value, torch.Tensor) and value.ndim != 5):
        shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
        raise ValueError(f"{_where(owner)}calibration must be an iterable of image batches (tensors (B, C, H, W)), "
                         f"got {type(value).__name__}{shape} {str(value)[:40] if not shape else ''}".rstrip())
    return value


def check_layers(name: str, value, owner: str) -> list[int]:
    """A non-empty, strictly increasing list of block indices >= 0 (a single index is a list of one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{owner}: {name} must be a non-empty list of block indices, got {value!r}")
    layers = [check_int(f"{name}[{i}]", v, 0, None, owner) for i, v in enumerate(value)]
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{owner}: {name}={layers} must be sorted and without repeats")
    return layers


def check_layers_fit(name: str, layers: list[int] | None, n_layers: int, owner: str) -> None:
    """Checked against the model: every listed block exists (a `check_layers` list; None lists none)."""
    if layers is not None and layers[-1] >= n_layers:
        raise ValueError(f"{owner}: {name}={layers} has block {layers[-1]}, out of range "
                         f"[0, {n_layers - 1}] for a {n_layers}-block model")


def check_r_entries(r, n_layers: int, owner: str) -> None:
    """Checked against the model: a per-block `r` list has no more entries than the model has blocks."""
    if isinstance(r, list) and len(r) > n_layers:
        raise ValueError(f"{owner}: r has {len(r)} entries but the model has {n_layers} blocks")


def r_range(knob: str, patches: int) -> tuple[int, int] | None:
    """Where `match_macs` searches `r` of a step that moves at most half the patch tokens (bipartite matching,
    the DCT's kept frequencies); None for another knob."""
    return (0, patches // 2) if knob == "r" else None


def keep_rate_range(patches: int) -> tuple[float, float]:
    """Where `match_macs` searches a staged `keep_rate`: below 1 / patches every stage keeps one token."""
    return 0.5 / patches, 1.0


def check_block_set(name: str, value, owner: str) -> list[int]:
    """A list of distinct block indices >= 0, in any order (returned sorted); may be empty."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{owner}: {name} must be a list of block indices, got {value!r}")
    blocks = [check_int(f"{name}[{i}]", v, 0, None, owner) for i, v in enumerate(value)]
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"{owner}: {name}={blocks} lists a block more than once")
    return sorted(blocks)


# ---------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Param:
    """One parameter: its default, what it means (one line) and, in subclasses, its range and check.

    `optional=True` also accepts None (the meaning says what None does)."""

    default: Any
    help: str
    optional: bool = field(default=False, kw_only=True)

    declared = True  # False for a parameter known only from a legacy `defaults` dict

    def range_text(self) -> str:
        return "any value"

    def describe(self) -> str:
        """`range: meaning`, as `pruning-bench strategies` prints it."""
        return f"{self.range_text()}{', or None' if self.optional else ''}: {self.help}"

    def check(self, name: str, value, owner: str = ""):
        if value is None and self.optional:
            return None
        return self._check(name, value, owner)

    def _check(self, name, value, owner):
        return value

    def with_default(self, default) -> "Param":
        return replace(self, default=default)


@dataclass(frozen=True)
class Int(Param):
    low: int | None = 0
    high: int | None = None
    per_block: bool = False  # also one value per block (a list), the form `match_macs` refines to

    def range_text(self):
        if self.high == MAX_SEED:
            text = f"int in [{self.low}, 2**63 - 1]"
        elif self.high is None:
            text = f"int >= {self.low}" if self.low is not None else "int"
        else:
            text = f"int in {_range(self.low, self.high)}"
        return text + (", or a per-block list" if self.per_block else "")

    def _check(self, name, value, owner):
        if self.per_block and isinstance(value, (list, tuple)):
            return [check_int(f"{name}[{i}]", v, self.low, self.high, owner) for i, v in enumerate(value)]
        return check_int(name, value, self.low, self.high, owner)


@dataclass(frozen=True)
class Float(Param):
    low: float = 0.0
    high: float = 1.0
    low_open: bool = False
    high_open: bool = False

    def range_text(self):
        lo, hi = ("(" if self.low_open else "["), (")" if self.high_open else "]")
        return f"float in {lo}{self.low:g}, {self.high:g}{hi}"

    def _check(self, name, value, owner):
        return check_float(name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open,
                           owner=owner)


@dataclass(frozen=True)
class Bool(Param):
    def range_text(self):
        return "bool"

    def _check(self, name, value, owner):
        return check_bool(name, value, owner)


@dataclass(frozen=True)
class Choice(Param):
    choices: tuple = ()

    def range_text(self):
        return " | ".join(map(str, self.choices))

    def _check(self, name, value, owner):
        return check_choice(name, value, self.choices, owner)


@dataclass(frozen=True)
class Blocks(Param):
    """Block indices: `increasing` (a non-empty increasing list; one index is a list of one) or a set
    (distinct indices in any order, stored sorted, possibly empty)."""

    increasing: bool = True

    def range_text(self):
        return ("increasing list of block indices >= 0" if self.increasing
                else "list of distinct block indices >= 0")

    def _check(self, name, value, owner):
        return (check_layers if self.increasing else check_block_set)(name, value, owner)


@dataclass(frozen=True)
class Calibration(Param):
    """An iterable of image batches (the strategy wraps it so a failing batch is named)."""

    def range_text(self):
        return "iterable of image batches"

    def _check(self, name, value, owner):
        return check_calibration(value, owner)


@dataclass(frozen=True)
class Custom(Param):
    """A range that none of the above expresses: its text and its check, written side by side."""

    text: str = ""
    checker: Callable | None = None

    def range_text(self):
        return self.text

    def _check(self, name, value, owner):
        return value if self.checker is None else self.checker(name, value, owner)


@dataclass(frozen=True)
class Undeclared(Param):
    """A parameter a strategy lists only in a legacy `defaults` dict; `text` is its legacy `param_help`."""

    text: str = ""
    declared = False

    def describe(self):
        return self.text or "(range not declared)"


def seed_param(help: str = "int >= 0: seeds the random draws") -> Int:
    return Int(0, help, low=0, high=MAX_SEED)


def spec_from_legacy(cls, defaults: dict, inherited: dict[str, Param]) -> dict[str, Param]:
    """The declaration of a class that gives only `defaults` (and perhaps `param_help`): an inherited
    declaration keeps its range with the new default; anything else is undeclared (nothing checked)."""
    help_: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        help_.update(klass.__dict__.get("param_help") or {})
    meaning = {k: v.split(": ", 1)[-1] for k, v in help_.items()}
    spec = {}
    for name, default in defaults.items():
        if name in inherited and inherited[name].declared:
            spec[name] = inherited[name].with_default(default)
        elif name == "seed":
            spec[name] = seed_param(meaning.get(name, "seeds the random draws")).with_default(default)
        elif name == "calibration":
            spec[name] = Calibration(default, meaning.get(name, "needed by data-driven importances"), optional=True)
        else:
            spec[name] = Undeclared(default, "", text=help_.get(name, ""))
    return spec
