"""Built-in strategies; importing this package registers them.

Every module of the package is imported, so a new strategy module registers itself (through
`@register_strategy`) without a list to keep up to date; modules without a strategy (base, params,
shared pieces) import harmlessly.
"""
import pkgutil
from importlib import import_module

MODULES = tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")))

for _name in MODULES:
    import_module(f"{__name__}.{_name}")
