"""The throughput protocol: what is timed, what is recorded. No assertion depends on real timings."""
from importlib import metadata

import pytest
import torch

from conftest import tiny_open_clip, tiny_timm
from pruning_bench.measure import throughput
from pruning_bench.measure.env import library_versions


class FakeClock:
    """A clock that only moves when a fake model says it ran, so timings are exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeModel:
    """Costs `warm_cost` per call for the first `slow_calls` calls, then `cost`; records every call."""

    def __init__(self, clock, cost, slow_calls=0, warm_cost=100.0, log=None, name="m"):
        self.clock, self.cost, self.slow_calls, self.warm_cost = clock, cost, slow_calls, warm_cost
        self.calls, self.log, self.name = 0, log, name

    def __call__(self, images):
        self.calls += 1
        self.clock.now += self.warm_cost if self.calls <= self.slow_calls else self.cost
        if self.log is not None:
            self.log.append(self.name)
        return images


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(throughput, "_clock", fake)
    return fake


def test_warmup_runs_are_excluded_and_median_used(clock):
    model = FakeModel(clock, cost=0.5, slow_calls=3)
    result = throughput.measure_throughput(model, torch.zeros(4, 3, 8, 8), warmup=3, repeats=5)
    assert model.calls == 3 + 5
    assert result["times"] == [0.5] * 5  # the three slow warm-up calls never reach the record
    assert result["images_per_second"] == pytest.approx(4 / 0.5)
    assert result["seconds_per_batch_median"] == 0.5


def test_without_warmup_the_slow_first_run_is_timed(clock):
    model = FakeModel(clock, cost=1.0, slow_calls=1, warm_cost=9.0)
    result = throughput.measure_throughput(model, torch.zeros(2, 3, 8, 8), warmup=0, repeats=3)
    assert result["times"] == [9.0, 1.0, 1.0]
    assert result["seconds_per_batch_median"] == 1.0  # the median shrugs off one outlier


def test_record_has_every_field_a_reviewer_needs():
    model = tiny_timm()
    result = throughput.measure_throughput(model, torch.randn(3, 3, 32, 32), warmup=1, repeats=2, threads=1)
    for key in ("images_per_second", "times", "batch_size", "dtype", "threads", "device", "device_name",
                "versions", "warmup", "repeats", "protocol", "autocast"):
        assert key in result, key
    assert result["batch_size"] == 3 and result["repeats"] == 2 and len(result["times"]) == 2
    assert result["dtype"] == "float32" and result["device"] == "cpu" and result["threads"] == 1
    assert result["versions"]["torch"] == metadata.version("torch")
    assert result["versions"]["fvcore"] == metadata.version("fvcore")
    assert result["images_per_second"] > 0


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    throughput.measure_throughput(lambda x: x, torch.zeros(1, 3, 8, 8), warmup=0, repeats=1, threads=1)
    assert torch.get_num_threads() == before


def test_library_versions_names_the_stack():
    versions = library_versions()
    assert versions["timm"] == metadata.version("timm")
    assert versions["open_clip"] == metadata.version("open_clip_torch")
    assert versions["python"]


def test_runs_in_inference_mode():
    seen = []
    throughput.measure_throughput(lambda x: seen.append(torch.is_inference_mode_enabled()), torch.zeros(1, 1),
                                  warmup=1, repeats=2)
    assert seen == [True, True, True]


def test_clip_model_runs_only_the_image_tower():
    model = tiny_open_clip()
    calls = {"visual": 0, "text": 0}
    model.visual.register_forward_hook(lambda *a: calls.__setitem__("visual", calls["visual"] + 1))
    model.transformer.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    throughput.measure_throughput(model, torch.randn(2, 3, 32, 32), warmup=1, repeats=2)
    assert calls == {"visual": 3, "text": 0}


def test_no_cuda_synchronize_on_cpu(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: synced.append(a))
    throughput.measure_throughput(lambda x: x, torch.zeros(1, 3, 8, 8), warmup=1, repeats=3)
    assert synced == []


def test_cuda_synchronizes_around_every_timed_run(monkeypatch, clock):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "fake gpu")
    monkeypatch.setattr(throughput, "_place", lambda model, images, device, dtype: (model, images))

    def model(x):
        events.append("run")
        clock.now += 1.0

    result = throughput.measure_throughput(model, torch.zeros(2, 3, 8, 8), warmup=2, repeats=3, device="cuda")
    assert result["device"] == "cuda" and result["device_name"] == "fake gpu"
    # warm-up, one sync, then every timed run is fenced by a sync on both sides
    assert events == ["run", "run", "sync"] + ["sync", "run", "sync"] * 3


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="repeats=0"):
        throughput.measure_throughput(lambda x: x, torch.zeros(1), warmup=0, repeats=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        throughput.measure_throughput(lambda x: x, torch.zeros(1), warmup=-1, repeats=1)


def test_compare_interleaves_and_returns_ratio_of_medians(clock):
    log = []
    baseline = FakeModel(clock, cost=2.0, slow_calls=1, log=log, name="A")
    pruned = FakeModel(clock, cost=0.5, slow_calls=1, log=log, name="B")
    result = throughput.compare_throughput(baseline, pruned, torch.zeros(4, 3, 8, 8), warmup=1, repeats=4)
    assert log == ["A", "B"] + ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert result["baseline"]["times"] == [2.0] * 4 and result["pruned"]["times"] == [0.5] * 4
    assert result["speedup"] == pytest.approx(4.0)
    assert result["speedup_paired_median"] == pytest.approx(4.0)
    assert result["batch_size"] == 4 and "versions" in result
