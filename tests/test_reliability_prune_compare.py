"""prune_compare.sh: defaults that prune on every model, and incomplete result files redone (and said so)."""
import json
import re
import shlex

import pytest

from pruning_bench.api import make_strategy
from pruning_bench.run_config import parse_prune_params
from tests.test_prune_compare import SCRIPT, calls, compare, stand_in  # noqa: F401  (fixture)


def default_configs() -> list[str]:
    line = next(l for l in SCRIPT.read_text().splitlines() if l.strip().startswith("configs=("))
    return shlex.split(re.search(r"configs=\((.*)\)", line).group(1))


@pytest.mark.parametrize("tokens", [50, 197, 257, 577], ids=["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"])
def test_every_default_configuration_prunes_whatever_the_token_count(tokens):
    for spec in default_configs():
        name, *items = spec.split()
        strategy = make_strategy(name, parse_prune_params(items))
        left = tokens
        for layer in range(12):
            left, _ = strategy.plan_block(layer, left, 1, 12)
        assert left < tokens, f"{spec} prunes nothing on a model with {tokens} tokens"


def test_incomplete_result_is_moved_aside_and_rerun(tmp_path, stand_in):  # noqa: F811
    results = tmp_path / "cmp" / "results"
    results.mkdir(parents=True)
    truncated = results / "d_p_m_en_zeroshot_classification_baseline.json"
    truncated.write_text('{"dataset": "d", "metrics": {"acc')
    foreign = results / "notes.json"
    foreign.write_text('{"todo": 1}')
    done = compare("--out", str(tmp_path / "cmp"), "--config", "cls_topk keep=5", "--", "--dataset", "x",
                   "--skip_existing", env={"CLIP_BENCHMARK": str(stand_in)})
    assert done.returncode == 0, done.stderr
    assert f"{truncated} is not valid JSON" in done.stdout and "its run is redone" in done.stdout
    assert f"{foreign} lacks the key(s)" in done.stdout
    assert json.loads(truncated.read_text())["metrics"] == {"acc1": 0.5}  # the baseline ran again
    assert (results / (truncated.name + ".incomplete")).exists() and not foreign.exists()
