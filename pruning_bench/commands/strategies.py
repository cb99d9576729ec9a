"""`pruning-bench strategies`: every registered strategy, its parameters, defaults, ranges and what it does.

Everything is read from the strategy classes in the registry, so a strategy registered by another
package (imported through `--import MODULE`, or already imported by a plugin) is listed like the
built-in ones: the one-line summary is the first line of the class docstring (else of its module's),
and each parameter's default, range and meaning come from the class's `param_spec` (see
`strategies/base.py`); a strategy that only gives `defaults` and `param_help` is listed from those.
"""
from __future__ import annotations

import importlib
import json
import sys


def summary(cls) -> str:
    """First line of the class docstring, else of its module's, without a leading `name: `."""
    doc = cls.__dict__.get("__doc__") or (sys.modules.get(cls.__module__).__doc__ if cls.__module__ in sys.modules else "")
    line = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
    prefix = f"{getattr(cls, 'name', '')}: "
    return line[len(prefix):] if line.startswith(prefix) else line


def describe(name: str) -> dict:
    """{name, kind, summary, parameters: [{name, default, range}]} of one registered strategy."""
    from ..registry import get_strategy

    cls = get_strategy(name)
    spec = getattr(cls, "param_spec", {}) or {}
    return {
        "name": name, "kind": getattr(cls, "kind", "?"), "summary": summary(cls),
        "parameters": [{"name": k, "default": v, "range": spec[k].describe() if k in spec else "(range not declared)"}
                       for k, v in (getattr(cls, "defaults", {}) or {}).items()],
    }


def as_text(described: list[dict]) -> str:
    lines = []
    for item in described:
        lines += [f"{item['name']} ({item['kind']}): {item['summary']}"]
        width = max((len(p["name"]) for p in item["parameters"]), default=0)
        for param in item["parameters"]:
            lines.append(f"    {param['name']:<{width}}  default {param['default']!r}; {param['range']}")
        lines.append("")
    return "\n".join(lines)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "strategies",
        help="list every registered strategy with its parameters, defaults and ranges",
        description="List every registered strategy (built-in or registered by another package) with its "
                    "parameters, defaults, ranges and a line on what it does. Use the names with "
                    "`--prune_strategy NAME --prune_param KEY=VALUE` in `clip_benchmark eval` and `pruning-bench eval`.",
        epilog="examples:\n  pruning-bench strategies\n  pruning-bench strategies tome evit\n"
               "  pruning-bench strategies --import my_package.strategies --json",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these strategies (default: all)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (a package that registers its own strategies); repeatable")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def run(args) -> int:
    from ..registry import list_strategies

    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(f"pruning-bench strategies: error: --import {module}: {exc}", file=sys.stderr)
            return 2
    known = list_strategies()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"pruning-bench strategies: error: unknown strategy {', '.join(unknown)}; registered: {', '.join(known)}",
              file=sys.stderr)
        return 2
    described = [describe(n) for n in (args.names or known)]
    print(json.dumps(described, indent=1, default=repr) if args.json else as_text(described).rstrip())
    return 0
