"""Docs and help agree with behaviour: every command shown in the README, the docs and the commands'
own examples parses with today's flags (the cheap ones run), one spelling of the strategy-parameter
flag across commands, and `--pretrained none` is random weights for every model source."""
import argparse
import json
import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch

from pruning_bench.sweep import matched_grids as sweep_match
from pruning_bench.cli import available_commands, build_parser, main
import tiny_clip as tiny
from pruning_bench.sweep.outputs import parse_eval_args

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_FULLY = ("strategies",)  # subcommands cheap enough to run as documented


def _commands_in(text: str) -> list[str]:
    """Shell commands (continuation lines joined) that start with pruning-bench or clip_benchmark eval."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith(("pruning-bench ", "clip_benchmark eval ")):
            found.append(line.split(" #")[0])
    return found


def _shell_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks that are shell (```bash, ```sh or no language)."""
    blocks, current, language = [], None, None
    for line in text.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if current is None:
                current, language = [], fence[3:].strip()
            else:
                if language in ("", "bash", "sh", "shell"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def documented() -> list[tuple[str, str]]:
    commands = []
    for path in DOCS:
        for block in _shell_blocks(path.read_text()):
            commands += [(path.name, c) for c in _commands_in(block)]
    for name, module in available_commands().items():  # each command's own --help examples
        sub = argparse.ArgumentParser(add_help=False).add_subparsers()
        epilog = module.add_parser(sub).epilog or ""
        commands += [(f"pruning-bench {name} --help", c) for c in _commands_in(epilog)]
    return commands


def test_the_docs_show_commands():
    sources = {source for source, _ in documented()}
    assert "README.md" in sources and "clip_benchmark_integration.md" in sources
    assert "pruning-bench visualize --help" in sources


@pytest.mark.parametrize("source, command", documented())
def test_every_documented_command_parses_and_the_cheap_ones_run(source, command, capsys):
    words = [w for w in shlex.split(command) if "..." not in w]  # `...same flags...` stands for the line above
    if words[0] == "clip_benchmark":
        parse_eval_args(words[2:], "clip_benchmark")  # argparse exits on a flag it does not know
        return
    args = build_parser().parse_args(words[1:])
    if args.command in RUN_FULLY and "--import" not in words:  # --import names an example package
        assert main(words[1:]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(available_commands()))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out


def test_one_spelling_of_the_strategy_flags_across_commands():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    spelled = {}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("--param", "--params", "--strategy"):  # old spellings: aliases only
                    assert {"--prune_param", "--prune_strategy"} & set(action.option_strings), (name, option)
                if option in ("--prune_param", "--prune_strategy"):
                    spelled.setdefault(option, []).append(name)
    assert "visualize" in spelled["--prune_param"] and "eval" in spelled["--prune_param"]
    args = parser.parse_args(["visualize", "-o", "x.png", "--model", "reference", "--prune_strategy", "evit",
                              "--prune_param", "keep_rate=0.5", "--param", "fuse=false"])
    assert args.strategy == "evit" and args.param == ["keep_rate=0.5", "fuse=false"]


# ---------------------------------------------------------------- --pretrained none


@pytest.fixture
def tiny_clip_dir(tmp_path):
    model_dir = tmp_path / "tinyclip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CONFIG}))
    return model_dir


@pytest.mark.parametrize("word", ["none", "None", "random"])
def test_pretrained_none_is_random_weights_through_clip_benchmark(tiny_clip_dir, word):
    from clip_benchmark import cli

    from pruning_bench.clip_benchmark_ext.random_init import random_init_words

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        expected, _, _ = cli.load_clip(model_type="open_clip", model_name=f"local-dir:{tiny_clip_dir}",
                                       pretrained="", cache_dir=None, device="cpu")
        original = cli.load_clip
        with random_init_words(cli):
            torch.manual_seed(0)
            model, _, _ = cli.load_clip(model_type="open_clip", model_name=f"local-dir:{tiny_clip_dir}",
                                        pretrained=word, cache_dir=None, device="cpu")
        assert cli.load_clip is original
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))


def test_pretrained_none_builds_the_sweep_model_and_the_eval_model(tmp_path):
    """A named open_clip model (open_clip itself refuses `pretrained='none'`), through every loader."""
    args = ["--dataset", "wds/tiny", "--dataset_root", str(tmp_path / "wds"), "--model", "ViT-S-32",
            "--pretrained", "none", "--task", "zeroshot_classification", "--output", str(tmp_path / "r_{pruning}.json")]
    assert not sweep_match.build_model(args, "clip_benchmark").training
    from pruning_bench.commands.visualize import _load_live_model
    from pruning_bench.evaluate.models import load_model

    model, _ = _load_live_model(argparse.Namespace(model="open_clip:ViT-S-32", pretrained="none", img_size=None))
    assert not model.training
    for name in ("open_clip:ViT-S-32", "vit_tiny_patch16_224"):
        loaded = load_model(name, "none", image_size=None if name.startswith("open") else 32, check=False)
        assert loaded.pretrained == "none"
