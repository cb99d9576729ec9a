"""Linear probe: multinomial logistic regression fitted once, on the unpruned model's features.

The same classifier then reads the pruned model's features, so a drop in accuracy is the pruning's
doing and nothing else (no refit that could adapt to the pruned features).

Features are standardised with the unpruned training features' mean and spread (the same scaler is
applied to pruned features). The inverse regularisation C is chosen on a stratified held-out fifth
of the training features from `C_GRID`, then the probe is refitted on all of them; with too few
images per class for a split, C = 1 is used. scikit-learn's lbfgs solver fits the multinomial
(softmax) loss whenever there are more than two classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

C_GRID = (0.01, 0.1, 1.0, 10.0)
DEFAULT_C = 1.0
HOLDOUT = 0.2
MAX_ITER = 2000


@dataclass
class LinearProbe:
    scaler: object
    classifier: object
    C: float
    holdout_acc1: dict[float, float] | None

    def logits(self, features: torch.Tensor) -> np.ndarray:
        """(n, classes) scores. With two classes sklearn gives one score s for the second class; [0, s]
        has the same softmax (sigmoid(s)) and argmax, so every caller sees one column per class."""
        scores = self.classifier.decision_function(self.scaler.transform(_numpy(features)))
        return np.stack([np.zeros_like(scores), scores], axis=1) if scores.ndim == 1 else scores

    def predict(self, features: torch.Tensor) -> np.ndarray:
        return self.classifier.classes_[np.argmax(self.logits(features), axis=1)]

    def describe(self) -> dict:
        return {"classifier": "multinomial logistic regression (sklearn, lbfgs) on standardised features",
                "C": self.C, "C_grid": list(C_GRID), "holdout_share": HOLDOUT,
                "holdout_acc1": None if self.holdout_acc1 is None else {str(c): a for c, a in self.holdout_acc1.items()}}


def _numpy(features) -> np.ndarray:
    return features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, float)


def _fit(x: np.ndarray, y: np.ndarray, C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed).fit(x, y)


def fit_probe(features, labels, *, C: float | None = None, seed: int = 0) -> LinearProbe:
    """Fit on (N, D) features and N labels; `C=None` picks it on a held-out split."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = _numpy(features), np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if len(np.unique(y)) < 2:
        raise ValueError("a linear probe needs training images of at least two classes")
    scaler = StandardScaler().fit(x)
    x = scaler.transform(x)
    scores = None
    if C is None:
        counts = np.unique(y, return_counts=True)[1]
        n_holdout = int(round(HOLDOUT * len(y)))
        if counts.min() >= 2 and n_holdout >= len(counts):
            x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=n_holdout, stratify=y, random_state=seed)
            scores = {c: float((_fit(x_fit, y_fit, c, seed).predict(x_val) == y_val).mean()) for c in C_GRID}
            C = max(C_GRID, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: the milder regularisation change
        else:
            C = DEFAULT_C
    return LinearProbe(scaler, _fit(x, y, C, seed), float(C), scores)
