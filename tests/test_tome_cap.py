"""ToMe's match_fraction cap: `cap` merges what the matching share allows and says so per block, `raise` refuses."""
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm


def possible_merges(n_tokens, participants):
    """The paper's bipartite step: A = even positions, B = odd; only participating tokens match."""
    a = sum(1 for i in range(1, n_tokens) if i % 2 == 0 and participants[i])
    b = sum(1 for i in range(1, n_tokens) if i % 2 == 1 and participants[i])
    return min((n_tokens - 1) // 2, a) if b else 0


def test_cap_records_merges_per_block_and_warns_done_vs_asked():
    from pruning_bench.strategies.tome import _participants

    model = tiny_timm()
    images = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pb.prune(model, "tome", r=16, match_fraction=0.4, seed=3) as h, torch.no_grad():
            model(images)
    n, expected = 65, []
    for layer in range(4):
        merges = min(16, possible_merges(n, _participants(n, 1, 0.4, 3, layer).tolist()))
        expected.append(merges)
        n -= merges
    stats = h.stats()
    assert stats["merges_per_layer"] == expected and min(expected) < 16
    assert [a - b for a, b in zip(stats["tokens_per_layer"], stats["mlp_tokens_per_layer"])] == expected
    (note,) = [str(w.message) for w in caught if "merges clamped" in str(w.message)]
    assert f"done {expected} vs asked [16, 16, 16, 16]" in note and "MACs rise" in note


def test_raise_refuses_before_any_token_merges():
    model = tiny_timm()
    with pb.prune(model, "tome", r=16, match_fraction=0.4, on_short_match="raise") as h:
        with pytest.raises(ValueError, match="on_short_match='raise'.*possible"):
            model(torch.randn(1, 3, 32, 32))
        assert h.stats()["tokens_per_layer"] == []  # block 0 refused before merging anything
    with pb.prune(model, "tome", r=4, match_fraction=0.8, on_short_match="raise") as h:
        model(torch.randn(1, 3, 32, 32))
        assert h.stats()["merges_per_layer"] == [4, 4, 4, 4]


def test_bad_on_short_match_is_refused():
    with pytest.raises(ValueError, match="on_short_match"):
        pb.prune(tiny_timm(), "tome", r=2, on_short_match="grow")


def test_a_cap_in_the_last_block_only_leaves_the_macs_as_asked(monkeypatch):
    import pruning_bench.strategies.tome_cap as cap

    class Asked:  # last block short by one merge: the tokens entering every block are those asked
        name, params = "tome", {"r": 4, "match_fraction": 0.4, "on_short_match": "cap"}

    monkeypatch.setattr(cap, "merge_schedule", lambda *a: ([4, 4, 4], [4, 4, 3]))
    note = cap.short_match_note(Asked(), 65, 1, 3)
    assert "(+0.0%)" in note and "MACs are those of the schedule asked" in note and "rise" not in note
