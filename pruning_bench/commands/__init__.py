"""Subcommands of the `pruning-bench` console script; see `pruning_bench.cli.COMMANDS`."""
