"""Is the reference model's modest CIFAR-10 probe the weights or the pooling? Class token vs mean of the
patch tokens vs both, same images, same logistic regression (standardised features, C on a small grid).

    python benchmarks/probe_pooling.py [--train 1000 --test 500]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import pruning_bench as pb
from pruning_bench.evaluate import data
from pruning_bench.reference import reference_transform


def pooled_features(model, images, transform, batch=50) -> dict[str, np.ndarray]:
    parts = {"class token": [], "mean of patches": [], "labels": []}
    with torch.inference_mode():
        for x, y in data.loader(images, transform, batch):
            tokens = model.forward_features(x)
            parts["class token"].append(tokens[:, 0])
            parts["mean of patches"].append(tokens[:, model.num_prefix_tokens:].mean(dim=1))
            parts["labels"].append(torch.as_tensor(y))
    out = {k: torch.cat(v).numpy() for k, v in parts.items()}
    out["both"] = np.concatenate([out["class token"], out["mean of patches"]], axis=1)
    return out


def probe_accuracy(train_x, train_y, test_x, test_y, c: float) -> float:
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(train_x), train_y)
    return float((clf.predict(scaler.transform(test_x)) == test_y).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PRUNING_BENCH_DATA", "../shared/data"),
                        help="folder holding wds_cifar10")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args(argv)
    model, transform = pb.reference_model(), reference_transform()
    root = str(Path(args.data) / "wds_cifar10")
    train = pooled_features(model, data.load("wds/cifar10", root, "train", args.train), transform)
    test = pooled_features(model, data.load("wds/cifar10", root, "test", args.test), transform)
    rows = [{"features": name, "C": c, "acc1": probe_accuracy(train[name], train["labels"], test[name], test["labels"], c)}
            for name in ("class token", "mean of patches", "both") for c in (0.01, 0.1, 1.0)]
    table = pd.DataFrame(rows).pivot(index="features", columns="C", values="acc1")
    print(f"CIFAR-10 probe, {args.train} train / {args.test} test images, reference model at 224 px")
    print(table.map(lambda v: f"{100 * v:.1f}%").to_markdown())


if __name__ == "__main__":
    main()
