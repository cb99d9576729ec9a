"""Strategy registry: a name maps to a strategy class, so third parties can add their own."""
from __future__ import annotations

_STRATEGIES: dict[str, type] = {}


def register_strategy(name: str):
    """Class decorator that makes a strategy available to `prune` under `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"strategy name must be a non-empty string, got {name!r}")

    def decorator(cls):
        existing = _STRATEGIES.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"strategy {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    return decorator


def list_strategies() -> list[str]:
    """Sorted names of every registered strategy."""
    _load_builtin()
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> type:
    _load_builtin()
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; registered: {', '.join(sorted(_STRATEGIES))}") from None


def _load_builtin() -> None:
    from . import strategies  # noqa: F401  (importing registers the built-in strategies)
