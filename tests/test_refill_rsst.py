"""refill / rsst: real masks while a state trains, rsst's penalty on the marked weights only, slicing when
the state ends, unit scores and lambda as the reference writes them, global vs layer-wise counts."""
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import timm
import torch

import pruning_bench as pb
from pruning_bench.cli import main
from colour_webdataset import write_colour_webdataset
from pruning_bench.patches.unit_state import state_of
from pruning_bench.saved import compact_copy
from pruning_bench.strategies.unit_choice import keep_units, penalty_strengths, unit_scores


def tiny(seed=0, depth=3, heads=4):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=depth,
                             embed_dim=64, num_heads=heads, num_classes=5).eval()


def images(n=4, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n, 3, 32, 32)


def removed_rows(model, handle):
    """(param, mask) of every entry the open state owns."""
    return [(p, m) for p, m, _ in state_of(model).masks]


@pytest.mark.parametrize("make_optimiser", [
    lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=0.1),
    lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.5),
], ids=["sgd_momentum", "adamw"])
def test_refill_masked_weights_stay_exactly_zero_through_optimizer_steps(make_optimiser):
    model = tiny()
    x = images()
    handle = pb.prune(model, "refill", head_ratio=0.5, mlp_ratio=0.5)
    state = state_of(model)
    state.begin(steps_per_epoch=4, epochs=1)
    owned = removed_rows(model, handle)
    assert owned and all(bool((p[m] == 0).all()) for p, m in owned)
    optimiser = make_optimiser(model.parameters())
    model.train()
    for _ in range(4):
        loss = model(x).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        assert all(bool((p.grad[m] == 0).all()) for p, m in owned)  # the gradient is masked too
        optimiser.step()
    assert all(bool((p[m] == 0).all()) for p, m in owned)
    assert all(bool((p[~m] != 0).any()) for p, m in owned)  # the rest trained
    handle.restore()


def test_rsst_penalty_is_added_to_the_marked_weights_only_and_shrinks_them():
    model, x = tiny(), images()
    reference = tiny()
    handle = pb.prune(model, "rsst", head_ratio=0.5, mlp_ratio=0.5, schedule="x", reg_scale=0.5)
    state = state_of(model)
    state.begin(steps_per_epoch=10, epochs=1)
    marked = [(p, m) for p, m, is_weight in state.masks if is_weight]
    assert all(bool((p[m] != 0).all()) for p, m in marked)  # rsst zeroes nothing
    # one step with lr 0: the gradient the optimiser sees, against the plain loss gradient
    for net in (model, reference):
        net.train()
        net.zero_grad()
        net(x).pow(2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.0).step()
    lam = 0.5  # schedule x, reg_scale 0.5: batch 0 adds 0.5
    plain = dict(reference.named_parameters())
    marked_ids = {id(p): m for p, m in marked}
    for name, p in model.named_parameters():
        g0 = plain[name].grad
        m = marked_ids.get(id(p))
        if m is None:
            assert torch.equal(p.grad, g0), name  # untouched
        else:
            assert torch.equal(p.grad[~m], g0[~m]), name
            assert torch.allclose(p.grad[m], g0[m] + lam * p.detach()[m], rtol=0, atol=1e-7), name
    # with the loss gradient switched off, SGD shrinks exactly the marked weights
    before = {id(p): p.detach().clone() for p in model.parameters()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        optimiser.zero_grad()
        (model(x) * 0).sum().backward()
        optimiser.step()
    for p, m in marked:
        assert p[m].norm() < before[id(p)][m].norm()
        assert torch.equal(p[~m], before[id(p)][~m])
    handle.restore()


def reference_lambdas(schedule, g, k, j, epochs):
    """update_reg, written out: lambda is updated at the batches i with g * i < 1 of every epoch."""
    out, lam, base = [], 0.0, 0.0
    for _ in range(epochs):
        for i in range(j):
            if g * i < 1:
                if schedule == "x":
                    lam = lam + g
                elif schedule in ("x^2", "x^3", "exp"):
                    base = base + g
                    lam = {"x^2": base ** 2, "x^3": base ** 3, "exp": math.exp(base)}[schedule]
                elif schedule == "exp_custom":
                    lam = g / (math.e - 1) * (math.exp((i + 1) / j) - 1)
                else:
                    lam = g / (math.e - 1) * (math.exp((i + 1) ** k / j ** k) - 1)
            out.append(lam)
    return out


@pytest.mark.parametrize("schedule", ["x", "x^2", "x^3", "exp", "exp_custom", "exp_custom_exponents"])
@pytest.mark.parametrize("g", [1.0, 0.25, 0.05])
def test_rsst_lambda_follows_update_reg(schedule, g):
    got = penalty_strengths(schedule, g, 3, steps_per_epoch=7, epochs=2)
    want = reference_lambdas(schedule, g, 3, 7, 2)
    assert len(got) == 14
    assert np.allclose(got, want, rtol=2e-6, atol=0)
    assert got == [float(np.float32(v)) for v in got]  # held in float32, as the reference's reg tensor


def test_slicing_at_the_end_of_a_state_gives_the_masked_models_outputs():
    model, x = tiny(), images()
    handle = pb.prune(model, "refill", head_ratio=0.5, mlp_ratio=0.3, criterion="l2")
    state = state_of(model)
    state.begin(steps_per_epoch=2, epochs=1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        optimiser.zero_grad()
        model(x).logsumexp(1).mean().backward()
        optimiser.step()
    model.eval()
    params_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        masked = model(x)
    state.end()
    with torch.no_grad():
        sliced = model(x)
    assert handle.stats()["heads_per_layer"] == [2, 2, 2]
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert torch.allclose(sliced, masked, rtol=0, atol=1e-5)
    handle.restore()


def test_global_ranking_gives_uneven_counts_and_layerwise_even_ones():
    model = tiny(depth=4)
    with torch.no_grad():  # block 1's heads and neurons carry far larger weights than the others'
        model.blocks[1].attn.qkv.weight.mul_(5)
        model.blocks[1].mlp.fc1.weight.mul_(5)
    counts = {}
    for scope in ("global", "layerwise"):
        with warnings.catch_warnings(record=True) as caught, \
                pb.prune(model, "refill", head_ratio=0.5, mlp_ratio=0.5, scope=scope) as handle:
            warnings.simplefilter("always")
            with torch.no_grad():
                model(images(1))
            counts[scope] = handle.stats()["heads_per_layer"], handle.stats()["mlp_hidden_per_layer"]
    assert counts["layerwise"] == ([2, 2, 2, 2], [128] * 4)
    heads, hidden = counts["global"]
    assert sum(heads) == 8 and sum(hidden) == 512  # the same total, spread unevenly
    assert heads[1] == 4 and hidden[1] == 256 and len(set(heads)) > 1


def test_global_keeps_each_blocks_best_unit_and_ties_go_to_the_earlier_block():
    scores = [torch.tensor([1.0, 2.0]), torch.tensor([9.0, 8.0]), torch.tensor([2.0, 0.5])]
    kept, floored = keep_units(scores, 0.5, "global")
    assert floored and [k.tolist() for k in kept] == [[1], [0], [0]]
    kept, floored = keep_units([torch.tensor([1.0, 3.0, 3.0, 0.0])], 0.5, "layerwise", fillback_rate=0.5)
    assert not floored and kept[0].tolist() == [0, 1, 2]  # 2 kept, then int(2 + 2 x 0.5) = 3


def test_unit_scores_are_the_reference_formulas():
    model = tiny()
    qkv = [b.attn.qkv.weight.detach() for b in model.blocks]
    fc1 = [b.mlp.fc1.weight.detach() for b in model.blocks]
    per_head = lambda w: w.view(3, 4, 16, 64)
    heads, neurons = unit_scores(model, "l1", 0.3)
    for b in range(3):
        assert torch.allclose(heads[b], per_head(qkv[b]).abs().sum(dim=[0, 2, 3]))
        assert torch.allclose(neurons[b], fc1[b].abs().sum(dim=1))
    heads, neurons = unit_scores(model, "l2", 0.3)
    assert torch.allclose(heads[0], (per_head(qkv[0]) ** 2).sum(dim=[0, 2, 3]))
    assert torch.allclose(neurons[2], (fc1[2] ** 2).sum(dim=1))
    # remain: entries left by global magnitude pruning (torch's global_unstructured) of qkv, proj, fc1, fc2
    import torch.nn.utils.prune as prune

    copy = tiny()
    targets = [(m, "weight") for b in copy.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.3)
    heads, neurons = unit_scores(model, "remain", 0.3)
    for b, block in enumerate(copy.blocks):
        assert torch.equal(heads[b], per_head(block.attn.qkv.weight_mask).sum(dim=[0, 2, 3]))
        assert torch.equal(neurons[b], block.mlp.fc1.weight_mask.sum(dim=1))
    # saliency: mean over batches of sum |w x dCE/dw|
    batches = [(images(3, s), torch.tensor([0, 1, 2])) for s in (5, 6)]
    heads, neurons = unit_scores(model, "saliency", 0.3, batches)
    per_batch_h, per_batch_n = [], []
    for x, y in batches:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        per_batch_h.append(per_head(qkv[1] * model.blocks[1].attn.qkv.weight.grad).abs().sum(dim=[0, 2, 3]))
        per_batch_n.append((fc1[1] * model.blocks[1].mlp.fc1.weight.grad).abs().sum(dim=1))
    assert torch.allclose(heads[1], torch.stack(per_batch_h).mean(0), rtol=1e-5)
    assert torch.allclose(neurons[1], torch.stack(per_batch_n).mean(0), rtol=1e-5)


def test_rewind_sets_the_survivors_back_to_the_first_states_weights():
    model, x = tiny(), images()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    handle = pb.prune(model, "refill", head_ratio=0.25, mlp_ratio=0.25, rewind="1:0")
    state_of(model).begin(steps_per_epoch=1, epochs=1)
    kept = state_of(model).heads_kept[0]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(x).sum().backward()
    optimiser.step()
    state_of(model).end()
    compact = compact_copy(model)
    handle.restore()
    assert not torch.equal(compact.blocks[0].attn.proj.bias, original["blocks.0.attn.proj.bias"])  # trained
    second = pb.prune(compact, "refill", head_ratio=0.25, mlp_ratio=0.0, rewind="1:0")
    assert state_of(compact).number == 2
    state_of(compact).begin(steps_per_epoch=1, epochs=1)  # the units come back, the leaving ones masked
    rows = (kept[:, None] * 16 + torch.arange(16)).flatten()
    w0 = original["blocks.0.attn.qkv.weight"].view(3, 64, 64)[:, rows].reshape(-1, 64)
    now = compact.blocks[0].attn.qkv.weight.detach()
    alive = now.abs().sum(1) != 0  # the second state's own masked heads are zero
    assert torch.equal(now[alive], w0[alive])
    assert torch.equal(compact.blocks[0].attn.proj.bias, original["blocks.0.attn.proj.bias"])
    second.restore()


@pytest.mark.parametrize("params, word", [
    ({"criterion": "entropy"}, "criterion"), ({"scope": "all"}, "scope"), ({"head_ratio": 1.0}, "head_ratio"),
    ({"fillback_rate": -0.1}, "fillback_rate"), ({"rewind": "late"}, "rewind"), ({"criterion": "saliency"}, "calibration"),
])
def test_refill_bad_values_are_one_line_errors(params, word):
    with pytest.raises(ValueError, match=word) as info:
        pb.prune(tiny(), "refill", **params)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("params, word", [({"schedule": "x^4"}, "schedule"), ({"reg_scale": 0}, "reg_scale"),
                                          ({"exponents": 0}, "exponents"), ({"fillback_rate": 0.2}, "fillback_rate")])
def test_rsst_bad_values_are_one_line_errors(params, word):
    with pytest.raises(ValueError, match=word):
        pb.prune(tiny(), "rsst", **params)


SAVE_SCRIPT = """
import sys, torch, pruning_bench as pb
model = pb.load_pruned(sys.argv[1])
torch.manual_seed(1)
x = torch.randn(4, 3, 32, 32)
with torch.no_grad():
    torch.save(model(x), sys.argv[2])
"""


def test_a_state_sliced_model_saves_and_loads_in_a_new_process(tmp_path):
    model, x = tiny(), images()
    handle = pb.prune(model, "rsst", head_ratio=0.5, mlp_ratio=0.5, scope="global")
    state_of(model).begin(steps_per_epoch=1, epochs=1)
    model.train()
    model(x).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    state_of(model).end()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    pb.save_pruned(model, tmp_path / "m.safetensors")
    handle.restore()
    subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(tmp_path / "m.safetensors"), str(tmp_path / "out.pt")],
                   check=True, env={**__import__("os").environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def run_cli(tmp_path, *extra):
    root = write_colour_webdataset(tmp_path / "wds", n_train=8, n_test=4, classes=2)
    argv = ["eval", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32",
            "--model_arg", "patch_size=8", "--model_arg", "depth=2", "--model_arg", "embed_dim=48",
            "--model_arg", "num_heads=3", "--dataset", "wds/colours", "--dataset_root", str(root),
            "--task", "finetune", "--epochs", "1", "--batch_size", "4", "--seed", "3", "--no_progress",
            "--throughput_repeats", "1", "--efficiency_batch_size", "2",
            "--output", str(tmp_path / "out" / "{pruning}.json"), *extra]
    code = main(argv)
    files = list((tmp_path / "out").glob("*.json"))
    return code, (json.loads(files[0].read_text()) if files else None), files


def test_rsst_rounds_on_the_command_line_shrink_the_model_and_fill_the_table(tmp_path):
    code, result, files = run_cli(tmp_path, "--enable_pruning", "--prune_strategy", "rsst", "--prune_param",
                                  "head_ratio=0.34", "--prune_param", "mlp_ratio=0.3", "--prune_param", "schedule=x",
                                  "--prune_param", "reg_scale=0.5", "--rounds", "2",
                                  "--save_model", str(tmp_path / "saved.safetensors"))
    assert code == 0
    first, second = result["rounds"]
    assert first["heads_per_layer"] == [2, 2] and second["heads_per_layer"] == [1, 1]
    assert [first["state"], second["state"]] == [1, 2]
    assert 0 < first["overall_sparsity"] < second["overall_sparsity"] < 1
    assert first["rsst_lambda"] == {"first": 0.5, "last": 1.0, "steps": 2}
    assert second["gmacs"] < first["gmacs"] and 0 <= second["train_acc1"] <= 1
    loaded = pb.load_pruned(tmp_path / "saved.safetensors")
    assert [b.attn.num_heads for b in loaded.blocks] == [1, 1]
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "report" / "cmp"), "--no-plot"]) == 0
    report = (tmp_path / "report" / "cmp.md").read_text()
    assert "overall sparsity" in report and f"{second['overall_sparsity'] * 100:.2f}%" in report


def test_bad_rsst_parameter_on_the_command_line_exits_2(tmp_path, capsys):
    code, _, files = run_cli(tmp_path, "--enable_pruning", "--prune_strategy", "rsst", "--prune_param",
                             "schedule=cubic", "--rounds", "2")
    assert code == 2 and not files
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schedule" in err[0]


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "refill_rsst.py"
    spec = importlib.util.spec_from_file_location("refill_rsst_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reading_is_computed_from_the_records():
    bench = _benchmark()
    accs = {"refill": [0.50, 0.52, 0.51], "rsst": [0.30, 0.31, 0.29], "head_prune": [0.49, 0.53, 0.50]}
    records = [{"method": m, "scope": s, "seed": i, "rounds": [{"acc1": a[i] - (0.1 if s == "global" else 0)}]}
               for m, a in accs.items() for s in ("global", "layerwise") for i in range(3)]
    text = "\n".join(bench.reading(records, 1))
    assert "- layerwise, state 1: refill has the highest mean test accuracy (51.00% vs head_prune 50.67%, rsst 30.00%)" in text
    assert "its interval lies above rsst." in text and "lies above head_prune" not in text
    assert "- refill, state 1: global minus layer-wise = -10.00 points" in text
    records[0]["rounds"][0]["acc1"] = records[3]["rounds"][0]["acc1"] = 0.0  # refill's seed 0 collapses
    assert "layerwise, state 1: head_prune has the highest" in "\n".join(bench.reading(records, 1))
    low, high = bench.interval([1.0, 2.0, 3.0])
    assert high - 2.0 == pytest.approx(2.0 - low) and high - 2.0 == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)
