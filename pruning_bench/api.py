"""`prune()`: patch a model with one or more strategies and hand back a handle that undoes it."""
from __future__ import annotations

from typing import Any, Iterable

from .registry import get_strategy
from .strategies.base import Strategy


class PruneHandle:
    """Undo handle for a patched model. A context manager; `restore()` may be called more than once."""

    def __init__(self, model, strategies: list[Strategy], attachments: list):
        self.model = model
        self.strategies = strategies
        self._attachments = attachments
        self._restored = False

    @property
    def active(self) -> bool:
        return not self._restored

    def restore(self) -> None:
        """Undo every patch, newest first. Harmless when already restored."""
        if self._restored:
            return
        errors = []
        while self._attachments:
            attachment = self._attachments.pop()
            try:
                attachment.restore()
            except Exception as exc:  # keep undoing the rest, report afterwards
                errors.append(exc)
        self._restored = True
        if errors:
            raise errors[0]

    def stats(self) -> dict[str, Any]:
        """Facts about the last forward pass (tokens per block, heads and layers kept...)."""
        merged: dict[str, Any] = {}
        for attachment in self._attachments_for_stats():
            merged.update(attachment.stats())
        return merged

    @property
    def effective(self) -> bool:
        """Whether anything was removed: a token in the last forward, or a head, neuron or block."""
        return any(getattr(a, "removed", True) for a in self._attachments_for_stats())

    @property
    def token_run(self):
        """The active token strategy's `TokenRun`, or None.

        Its switches `record_attention` (keep each block's CLS attention and kept indices in
        `records`) and `trace_source` (keep in `source` which input tokens each token holds) take
        effect from the next forward; `size` holds the merged tokens' patch counts."""
        for attachment in self._attachments:
            run = getattr(attachment, "run", None)
            if run is not None:
                return run
        return None

    def describe(self) -> list[dict[str, Any]]:
        """Strategy names with every parameter resolved, in application order."""
        return [{"strategy": s.name, "params": s.resolved_params()} for s in self.strategies]

    def _attachments_for_stats(self):
        return self._attachments if not self._restored else self._last_attachments

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False


def make_strategy(strategy, params: dict[str, Any] | None = None) -> Strategy:
    """Build a configured strategy from a name (or pass an instance through)."""
    if isinstance(strategy, Strategy):
        if params:
            raise ValueError("give parameters either to the strategy instance or to prune(), not both")
        return strategy
    if not isinstance(strategy, str):
        raise ValueError(f"strategy must be a registered name or a Strategy, got {strategy!r}")
    return get_strategy(strategy)(**(params or {}))


def _parse_spec(strategy, params) -> list[Strategy]:
    if isinstance(strategy, (list, tuple)) and not isinstance(strategy, str):
        if params:
            raise ValueError("with a list of strategies, give each its own parameters: [(name, {...}), ...]")
        built = []
        for item in strategy:
            if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict):
                built.append(make_strategy(item[0], item[1]))
            else:
                built.append(make_strategy(item))
        if not built:
            raise ValueError("an empty list of strategies prunes nothing")
        return built
    return [make_strategy(strategy, params)]


def attach(strategy: Strategy, model, family=None):
    """Wire a configured strategy to the model family's patch: a token strategy to the token hook, a
    structured one's plan to the slicing patch. A strategy that overrides `attach` wires itself.
    `family`: the model's located family (located here when not given)."""
    if type(strategy).attach is not Strategy.attach:
        return strategy.attach(model)
    if family is None:
        from .families import locate

        family = locate(model)
    if strategy.kind == "token":
        from .patches.tokens import attach_token_strategy

        strategy.check_pooling(family.pools_patch_tokens())
        return attach_token_strategy(model, strategy, family)
    from .patches.structured import attach_structured, parameter_count

    before = parameter_count(family.vit)
    attachment = attach_structured(model, strategy.plan(model, family), family)
    attachment.add_stats(vit_parameters={"before": before, "after": parameter_count(family.vit)})
    return attachment


def prune(model, strategy: str | Strategy | Iterable, **params) -> PruneHandle:
    """Patch `model` in place with `strategy` (or a list of `(name, params)` applied in order).

    Parameters are checked before the model is touched; if attaching a later strategy fails, the
    earlier ones are undone, so the model is never left half patched.
    """
    return prune_located(model, _parse_spec(strategy, params))


def prune_located(model, strategies: list[Strategy], family=None) -> PruneHandle:
    """`prune` with configured strategies, on a model whose family was located already (or is located
    here once): what drivers that prune the same model many times call."""
    if sum(s.kind == "token" for s in strategies) > 1:
        raise ValueError("at most one token strategy can be active on a model at a time")
    if family is None and any(type(s).attach is Strategy.attach for s in strategies):
        from .families import locate

        family = locate(model)
    attachments = []
    try:
        for s in strategies:
            attachments.append(attach(s, model, family))
    except BaseException:
        for attachment in reversed(attachments):
            attachment.restore()
        raise
    handle = PruneHandle(model, strategies, attachments)
    handle._last_attachments = list(attachments)
    return handle
