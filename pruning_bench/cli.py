"""`pruning-bench`: one console script, one module per subcommand.

A subcommand is a module `pruning_bench.commands.<name>` with `add_parser(subparsers)` (which
registers and returns its parser) and `run(args)` (which returns an exit status). Adding one means
writing that module and appending its name to `COMMANDS`; nothing else here changes.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["report", "eval", "visualize", "sweep", "leaderboard", "strategies"]


def available_commands() -> dict[str, object]:
    """The subcommand modules that exist; a listed name whose module is not written yet is skipped."""
    modules = {}
    for name in COMMANDS:
        module_name = f"pruning_bench.commands.{name}"
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return modules


def build_parser(commands: dict[str, object] | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pruning-bench",
        description="Measure what token pruning, token merging and structured pruning cost and buy on ViT/CLIP image encoders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in (commands if commands is not None else available_commands()).items():
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
