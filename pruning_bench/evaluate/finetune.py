"""Fine-tune a timm ViT with a pruning strategy active during training, then test it (seed 000's runs).

The strategy is patched in before the optimiser is built (structured pruning slices weights, so the
optimiser must see the sliced parameters) and stays in for training and testing. A fresh linear head
for the data set's classes replaces the model's own. Everything random (head init, shuffling, a
strategy's own draws) follows `seed`, the data is read in one process (no loader workers), so two
runs with the same arguments on the same machine give the same numbers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

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


@dataclass
class FinetuneResult:
    acc1: float
    train_loss: list[float] = field(default_factory=list)
    train_acc1: list[float] = field(default_factory=list)
    test_acc1: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)

    def metrics(self) -> dict:
        return {"acc1": self.acc1, "train_loss": self.train_loss, "train_acc1": self.train_acc1,
                "test_acc1_per_epoch": self.test_acc1, "seconds_per_epoch": self.seconds_per_epoch,
                "seconds_per_epoch_mean": float(np.mean(self.seconds_per_epoch)) if self.seconds_per_epoch else None}


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_head(model: torch.nn.Module, num_classes: int, seed: int) -> None:
    """Replace the classifier with a fresh one for `num_classes` (initialised from `seed`)."""
    if not hasattr(model, "reset_classifier"):
        raise ValueError(f"--task finetune needs a timm model with reset_classifier, got {type(model).__name__}")
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)


def test_accuracy(model, images: ImageSet, transform, batch_size: int, progress: bool) -> float:
    model.eval()
    out = extract(model, loader(images, transform, batch_size), total=len(images), desc="test", progress=progress)
    return float((out.logits.argmax(1) == out.labels).double().mean())


def train(model: torch.nn.Module, train_set: ImageSet, test_set: ImageSet, transform, config: FinetuneConfig,
          ) -> FinetuneResult:
    """Train `model` (already pruned, with a fresh head) for `config.epochs`; test after each epoch."""
    seed_everything(config.seed)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train_set) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=max(steps, 1),
                                                   pct_start=0.1, anneal_strategy="cos")
    loss_fn = torch.nn.CrossEntropyLoss()
    result = FinetuneResult(acc1=float("nan"))
    for epoch in range(config.epochs):
        model.train()
        batches = loader(train_set, transform, config.batch_size, shuffle=True, seed=config.seed + epoch)
        losses, correct, seen = [], 0, 0
        start = time.perf_counter()
        with tqdm(total=len(train_set), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                  disable=not config.progress, dynamic_ncols=True) as bar:
            for images, labels in batches:
                logits = model(images)
                loss = loss_fn(logits, labels)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(loss.item() * len(labels))
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
                bar.update(len(labels))
                bar.set_postfix(loss=f"{loss.item():.3f}")
        result.seconds_per_epoch.append(time.perf_counter() - start)
        result.train_loss.append(float(sum(losses) / seen))
        result.train_acc1.append(correct / seen)
        result.test_acc1.append(test_accuracy(model, test_set, transform, config.batch_size, config.progress))
    model.eval()
    result.acc1 = result.test_acc1[-1] if result.test_acc1 else float("nan")
    return result
