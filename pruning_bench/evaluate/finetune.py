"""Fine-tune a timm ViT with a pruning strategy active during training, then test it (seed 000's runs).

The strategy is patched in before the optimiser is built (structured pruning slices weights, so the
optimiser must see the sliced parameters) and stays in for training and testing. A refill / rsst state
open on the model (`patches/unit_state.py`) learns the epoch length here (rsst's lambda schedule),
and ends after the last epoch's training: its units are sliced out before the last test, so the
accuracy reported is the smaller model's. A fresh linear head
for the data set's classes replaces the model's own. Everything random (head init, shuffling, a
strategy's own draws: the runner passes `--seed` to a strategy with a `seed` parameter unless one is
given) follows `seed`, the data is read in one process (no loader workers), and torch's deterministic
algorithms are on while training (warn-only where an op has none), so two runs with the same arguments
on the same machine give the same numbers.

Timing: each step is timed from the batch in hand to the optimiser step done; reading and decoding the
batch is timed apart. The first `warmup_steps` steps are left out of the summary (named in the result)
but every step is kept. Peak training memory (weights, gradients, optimiser state, activations) is
counted with torch's tensor tracker on the first step, which is a warm-up step anyway.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..patches.unit_state import state_of
from .data import ImageSet, loader
from .features import extract


@dataclass
class FinetuneConfig:
    epochs: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.05
    batch_size: int = 64
    seed: int = 0
    progress: bool = True
    warmup_steps: int = 2
    measure_memory: bool = True


@dataclass
class FinetuneResult:
    acc1: float
    train_loss: list[float] = field(default_factory=list)
    train_acc1: list[float] = field(default_factory=list)
    test_acc1: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    data_seconds: list[float] = field(default_factory=list)
    step_images: list[int] = field(default_factory=list)
    warmup_steps: int = 2
    peak_memory: dict | None = None
    test_correct: np.ndarray | None = None  # per test image, after the last epoch (the result's `per_image`)

    def timing(self) -> dict:
        """Per-step compute time after warm-up (min / median / max), data loading apart, images/s."""
        n = len(self.step_seconds)
        skip = self.warmup_steps if n > self.warmup_steps else 0
        steps, images = self.step_seconds[skip:], self.step_images[skip:]
        data = self.data_seconds[skip:]
        summary = lambda v: {"min": float(np.min(v)), "median": float(np.median(v)), "max": float(np.max(v))} if v else None
        return {
            "steps": n, "warmup_steps_excluded": list(range(skip)),
            "note": None if skip or not n else f"only {n} steps: none excluded as warm-up",
            "step_seconds": summary(steps), "data_seconds": summary(data),
            "train_images_per_second": float(sum(images) / sum(steps)) if steps and sum(steps) > 0 else None,
            "train_images_per_second_with_data": float(sum(images) / (sum(steps) + sum(data))) if steps else None,
            "step_seconds_all": list(self.step_seconds), "data_seconds_all": list(self.data_seconds),
            "peak_memory": self.peak_memory,
        }

    def metrics(self) -> dict:
        return {"acc1": self.acc1, "train_loss": self.train_loss, "train_acc1": self.train_acc1,
                "test_acc1_per_epoch": self.test_acc1, "seconds_per_epoch": self.seconds_per_epoch,
                "seconds_per_epoch_mean": float(np.mean(self.seconds_per_epoch)) if self.seconds_per_epoch else None}


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_head(model: torch.nn.Module, num_classes: int, seed: int, family=None) -> None:
    """Replace the classifier with a fresh one for `num_classes` (initialised from `seed`), as the model's
    family does it (`family`: the located family, located here when not given)."""
    from ..errors import UnsupportedModelError
    from ..families import locate

    try:
        family = family or locate(model)
        torch.manual_seed(seed)
        family.reset_classifier(num_classes)
    except UnsupportedModelError as exc:
        raise ValueError(f"--task finetune needs a classifier whose head can be replaced: {exc}") from None


def test_correct(model, images: ImageSet, transform, batch_size: int, progress: bool, family=None) -> np.ndarray:
    """Per test image: is the model's top-1 prediction its label (`family`: the model's, when located already)."""
    model.eval()
    out = extract(model, loader(images, transform, batch_size), total=len(images), desc="test", progress=progress,
                  family=family)
    return (out.logits.argmax(1) == out.labels).numpy()


def test_accuracy(model, images: ImageSet, transform, batch_size: int, progress: bool) -> float:
    return float(test_correct(model, images, transform, batch_size, progress).mean())


@contextmanager
def deterministic():
    """torch's deterministic algorithms (warn-only) for the duration; the previous setting comes back."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _memory_tracker(model, optimiser):
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, optimiser)
    return tracker


def _peak(tracker, batch_size: int) -> dict:
    peak = tracker.get_tracker_snapshot("peak")
    (device, kinds), = peak.items()
    counts = {getattr(k, "name", str(k)).lower(): int(v) for k, v in kinds.items()}
    return {"bytes_" + k: v for k, v in counts.items()} | {"batch_size": batch_size, "device": str(device),
                                                          "step": 0, "counter": "torch MemTracker (live tensors)"}


def train(model: torch.nn.Module, train_set: ImageSet, test_set: ImageSet, transform, config: FinetuneConfig,
          family=None) -> FinetuneResult:
    """Train `model` (already pruned, with a fresh head) for `config.epochs`; test after each epoch.
    `family`: the model's located family, when the caller has it."""
    with deterministic():
        return _train(model, train_set, test_set, transform, config, family)


def one_cycle(optimiser, lr: float, steps: int):
    """One-cycle learning rate: 10% warm-up then a cosine anneal over `steps` optimiser steps.

    torch's OneCycleLR ends the warm-up at step `pct_start * steps - 1`: at exactly 10 steps that is 0, a
    phase of length zero (a ZeroDivisionError), and below it the phase ends before it starts. Short runs
    warm up for one step instead; runs of 20 steps and more keep the 10%. Under 3 steps there is no room
    for both phases and the rate stays at `lr`.
    """
    if steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2 / steps),
                                               anneal_strategy="cos")


def _train(model, train_set, test_set, transform, config, family=None) -> FinetuneResult:
    seed_everything(config.seed)
    state = state_of(model, family)  # an open refill / rsst state: masks or penalty while training, sliced at the end
    if state is not None:  # before the optimiser: the state's units are back in the model while it trains
        state.begin(steps_per_epoch=-(-len(train_set) // config.batch_size), epochs=config.epochs)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train_set) // config.batch_size)
    schedule = one_cycle(optimiser, config.lr, steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    result = FinetuneResult(acc1=float("nan"), warmup_steps=config.warmup_steps)
    for epoch in range(config.epochs):
        model.train()
        batches = loader(train_set, transform, config.batch_size, shuffle=True, seed=config.seed + epoch)
        losses, correct, seen = [], 0, 0
        start = time.perf_counter()
        with tqdm(total=len(train_set), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                  disable=not config.progress, dynamic_ncols=True) as bar:
            iterator = iter(batches)
            while True:
                fetched = time.perf_counter()
                try:
                    images, labels = next(iterator)
                except StopIteration:
                    break
                began = time.perf_counter()
                tracker = None
                if config.measure_memory and not result.step_seconds:
                    try:
                        tracker = _memory_tracker(model, optimiser)
                    except Exception as exc:  # no tracker in this torch build: say so, never fail the run
                        result.peak_memory = {"error": f"{type(exc).__name__}: {exc}"}
                with tracker if tracker is not None else nullcontext():
                    logits = model(images)
                    loss = loss_fn(logits, labels)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                schedule.step()
                ended = time.perf_counter()
                if tracker is not None:
                    result.peak_memory = _peak(tracker, len(labels))
                result.data_seconds.append(began - fetched)
                result.step_seconds.append(ended - began)
                result.step_images.append(len(labels))
                losses.append(loss.item() * len(labels))
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
                bar.update(len(labels))
                bar.set_postfix(loss=f"{loss.item():.3f}")
        result.seconds_per_epoch.append(time.perf_counter() - start)
        result.train_loss.append(float(sum(losses) / seen))
        result.train_acc1.append(correct / seen)
        if state is not None:
            state.epoch_end(epoch + 1)
            if epoch == config.epochs - 1:
                state.end()  # the state's units leave the model before its last test
        result.test_correct = test_correct(model, test_set, transform, config.batch_size, config.progress, family)
        result.test_acc1.append(float(result.test_correct.mean()))
    model.eval()
    result.acc1 = result.test_acc1[-1] if result.test_acc1 else float("nan")
    return result
