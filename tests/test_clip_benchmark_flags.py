"""The pruning flags of `clip_benchmark eval`: parsing, validation and result names."""
import argparse
import sys

import pytest

from pruning_bench import run_config as flags
from pruning_bench.record import naming


def eval_args(**overrides):
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize("text, value", [
    ("8", 8), ("0.5", 0.5), ("true", True), ("False", False), ("[4,8]", [4, 8]), ("[4, 8]", [4, 8]),
    ("None", None), ("fisher", "fisher"), ("-1", -1), ("1e-3", 1e-3),
])
def test_values_are_parsed_as_literals(text, value):
    assert flags.parse_value(text) == value
    assert type(flags.parse_value(text)) is type(value)


@pytest.mark.parametrize("items, message", [
    (["r"], "KEY=VALUE"), (["=3"], "KEY=VALUE"), (["9r=3"], "KEY=VALUE"), (["r=1", "r=2"], "given twice"),
])
def test_malformed_prune_params_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        flags.parse_prune_params(items)


def test_defaults_are_resolved_and_recorded():
    config = flags.resolve(eval_args(enable_pruning=True, top_m=20))
    assert config.strategy == "anchor_diversity"
    assert config.params == {"top_m": 20}
    assert config.resolved == {"k_anchors": 10, "top_m": 20, "alpha": 0.5, "start_layer": 1,
                               "importance_direction": "anchor_to_token", "prune_layers": None, "keep_rate": None}
    assert config.measure_efficiency and config.active


def test_prune_param_reaches_any_strategy():
    config = flags.resolve(eval_args(enable_pruning=True, prune_strategy="tome", prune_param=["r=[2,2]", "prop_attn=false"]))
    assert config.resolved["r"] == [2, 2] and config.resolved["prop_attn"] is False


def test_plain_run_is_inactive():
    config = flags.resolve(eval_args())
    assert not config.active and config.strategy is None


@pytest.mark.parametrize("overrides, message", [
    (dict(k_anchors=5), "without --enable_pruning"),
    (dict(prune_param=["r=8"]), "without --enable_pruning"),
    (dict(prune_strategy="tome"), "without --enable_pruning"),
    (dict(enable_pruning=True, top_m=-1), "top_m"),
    (dict(enable_pruning=True, alpha=1.5), "alpha"),
    (dict(enable_pruning=True, prune_strategy="tome", k_anchors=4), "k_anchors"),
    (dict(enable_pruning=True, prune_strategy="no_such_strategy"), "no_such_strategy"),
    (dict(enable_pruning=True, top_m=5, prune_param=["top_m=6"]), "both"),
    (dict(attention_output="a.pt"), "--extract_attention"),
    (dict(extract_attention=True, attention_images=0), "attention_images"),
])
def test_bad_flags_raise_value_error_naming_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        flags.resolve(eval_args(**overrides))


def test_slug_names_strategy_and_every_parameter():
    slug = naming.pruning_slug("anchor_diversity", {"k_anchors": 10, "top_m": 50, "alpha": 0.5, "start_layer": 1})
    assert slug == "anchor_diversity-alpha0.5-k_anchors10-start_layer1-top_m50"
    assert naming.pruning_slug("tome", {"r": [4, 8], "prop_attn": True}) == "tome-prop_attntrue-r4x8"
    assert naming.pruning_slug(None, {}) == "baseline"


def test_long_slugs_stay_distinct():
    a = naming.pruning_slug("tome", {"r": list(range(40)) + [1]})
    b = naming.pruning_slug("tome", {"r": list(range(40)) + [2]})
    assert a != b and len(a) <= 100 and "{" not in a


def test_output_template_keeps_baseline_name_and_separates_pruned_runs():
    default = "{dataset}_{pretrained}_{model}_{language}_{task}.json"
    assert naming.output_template(default, "baseline", pruned=False) == default
    pruned = naming.output_template(default, "tome-r8", pruned=True)
    assert pruned == "{dataset}_{pretrained}_{model}_{language}_{task}_tome-r8.json"
    assert naming.output_template("out/{task}_{pruning}.json", "tome-r8", True) == "out/{task}_tome-r8.json"
    assert naming.output_template("out/{task}_{pruning}.json", "baseline", False) == "out/{task}_baseline.json"
    assert naming.output_template("results", "tome-r8", True) == "results_tome-r8"


def test_feature_cache_of_pruned_runs_is_their_own():
    assert naming.feature_cache_id("m-p-d", "baseline") == "m-p-d"
    assert naming.feature_cache_id("m-p-d", "tome-r8") == "m-p-d__tome-r8"


def parse(monkeypatch, argv):
    from clip_benchmark import cli

    monkeypatch.setattr(sys, "argv", ["clip_benchmark", *argv])
    return cli.get_parser_args()


def test_clip_benchmark_parser_has_the_flags(monkeypatch):
    _, args = parse(monkeypatch, ["eval", "--enable_pruning", "--k_anchors", "4", "--top_m", "6", "--alpha", "0.25",
                                  "--prune_param", "start_layer=2", "--extract_attention", "--attention_output", "a.pt"])
    assert args.pruning_config.resolved == {"k_anchors": 4, "top_m": 6, "alpha": 0.25, "start_layer": 2,
                                            "importance_direction": "anchor_to_token", "prune_layers": None,
                                            "keep_rate": None}
    assert args.pruning_config.attention_output == "a.pt"
    _, build = parse(monkeypatch, ["build", "x.json"])  # the other subcommand is left alone
    assert build.which == "build" and not hasattr(build, "pruning_config")


def test_parameter_error_is_one_line_and_exit_status_2(monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(monkeypatch, ["eval", "--enable_pruning", "--top_m", "-3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "top_m=-3" in err and "Traceback" not in err


def test_pruning_refuses_tasks_it_does_not_cover(monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(monkeypatch, ["eval", "--enable_pruning", "--task", "captioning"])
    assert stop.value.code == 2 and "captioning" in capsys.readouterr().err
