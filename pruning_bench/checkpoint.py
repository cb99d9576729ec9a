"""Does a checkpoint hold trained weights or a fresh random initialisation?

A "pretrained" file that is really random init silently ruins every pruning comparison built on
it (a 74% CIFAR-10 "baseline" that was never trained). The signs are cheap to read off the
tensors: weight matrices whose mean, spread and shape are exactly those of a standard init for
their fan (trunc-normal std 0.02, Xavier/Kaiming uniform, 1/sqrt(width) normal), norm layers
still at weight 1 / bias 0, classifier rows as unrelated as random vectors, and a first-batch
loss at chance level, ln(num_classes).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .errors import UnsupportedModelError
from .families import locate


def _cut_normal(bound: float = 2.0) -> tuple[float, float, float]:
    """(kurtosis, largest |value| in its own stds, variance) of a standard normal cut at +-bound."""
    density = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    variance = 1 - 2 * bound * density / mass
    fourth = 3 - 2 * density * (bound ** 3 + 3 * bound) / mass
    return fourth / variance ** 2, bound / math.sqrt(variance), variance


_CUT_KURTOSIS, _CUT_MAX, _CUT_VARIANCE = _cut_normal(2.0)
# Distribution shapes as (kurtosis, largest |value| in stds or None when unbounded). Trained weights
# are heavier tailed than all of them.
SHAPES = {"normal": (3.0, None), "uniform": (1.8, math.sqrt(3)), "cut_normal": (_CUT_KURTOSIS, _CUT_MAX)}
MIN_ELEMENTS = 256  # below this the moments are too noisy to judge a tensor
INIT_LIKE_SHARE = 0.5  # share of weight tensors at init that makes the whole checkpoint random
TRAINED_SHARE = 0.25  # below this share (with enough tensors) the weights are clearly trained
LOSS_TOLERANCE = 0.1  # relative distance to ln(num_classes) counted as "chance level"
OUTLIER_SIGMAS, MAX_OUTLIER_SHARE = 10.0, 1e-5  # never reached by a normal draw of any realistic size
COSINE_RATIO = 1.5  # mean |cos| between classifier rows, relative to independent random vectors
MAX_CLASS_ROWS = 2048  # rows compared pairwise (keeps a 21k-class head cheap)

_NORM_NAME = re.compile(r"(norm[^.]*|(^|\.)ln[^.]*)\.(weight|bias)$", re.IGNORECASE)
_CLASSIFIER_NAME = re.compile(r"(^|\.)(head|fc|classifier|heads?\.head|head\.fc|last_linear)\.weight$")
_SKIPPED_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class TensorStats:
    name: str
    shape: tuple
    numel: int
    mean: float
    std: float
    max_abs: float
    kurtosis: float
    kind: str  # "norm", "bias", "weight" (>= 2 dims) or "vector"
    constant: float | None = None  # the value when every element is equal
    outliers: int = 0  # elements beyond OUTLIER_SIGMAS robust standard deviations from the mean
    init_match: str | None = None  # which standard initialisation it is indistinguishable from


@dataclass
class CheckpointReport:
    looks_random: bool
    evidence: list[str]
    tensors: list[TensorStats] = field(repr=False)
    init_like_share: float | None = None
    norms_at_init: bool | None = None
    classifier_cosine_ratio: float | None = None
    loss_over_chance: float | None = None

    def __getitem__(self, key):
        return getattr(self, key)

    def __str__(self):
        verdict = "looks randomly initialised" if self.looks_random else "looks trained"
        return "\n".join([f"checkpoint {verdict}:"] + [f"  - {line}" for line in self.evidence])

    def to_dict(self) -> dict:
        return asdict(self)

    def to_frame(self):
        """Per-tensor statistics as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([asdict(stats) for stats in self.tensors])


def _init_candidates(shape: tuple) -> list[tuple[str, float, str]]:
    """(name, std, distribution) of the standard initialisations for a tensor of this shape."""
    candidates = [("normal(std=0.02)", 0.02, "normal"), ("normal(std=0.01)", 0.01, "normal"),
                  ("normal(std=1e-6)", 1e-6, "normal")]
    if len(shape) >= 2:
        receptive = math.prod(shape[2:])
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        xavier = math.sqrt(2.0 / (fan_in + fan_out))
        candidates += [
            ("xavier_uniform", xavier, "uniform"),
            ("xavier_normal", xavier, "normal"),
            ("torch default (kaiming_uniform a=sqrt(5))", 1.0 / math.sqrt(3 * fan_in), "uniform"),
            ("kaiming_uniform", math.sqrt(2.0 / fan_in), "uniform"),
            ("kaiming_normal", math.sqrt(2.0 / fan_in), "normal"),
            ("kaiming_normal(fan_out)", math.sqrt(2.0 / fan_out), "normal"),
        ]
    widths = {shape[0], shape[-1], math.prod(shape[1:]) if len(shape) > 1 else shape[0]}
    candidates += [(f"normal(std=1/sqrt({w}))", 1.0 / math.sqrt(w), "normal") for w in sorted(widths) if w > 1]
    # Normals cut at +-2 std, rescaled to keep the std (jax, timm lecun_normal_) or not (tf-style).
    normals = [(name, std) for name, std, distribution in candidates if distribution == "normal"]
    return (candidates
            + [(f"{name} cut at 2 std", std, "cut_normal") for name, std in normals]
            + [(f"{name} cut at 2 std, tf-style", std * math.sqrt(_CUT_VARIANCE), "cut_normal") for name, std in normals])


def _match_init(shape: tuple, n: int, mean: float, std: float, kurtosis: float, max_abs: float) -> str | None:
    """Name of the standard init whose mean, std and distribution shape these moments reproduce."""
    if n < MIN_ELEMENTS or std == 0 or not math.isfinite(kurtosis) or abs(mean) > 6 * std / math.sqrt(n):
        return None
    kurtosis_tolerance = max(0.05, 5 * math.sqrt(24.0 / n))
    std_tolerance = max(0.03, 5 / math.sqrt(2 * n))
    fits = []
    for name, expected_std, distribution in _init_candidates(shape):
        expected_kurtosis, bound = SHAPES[distribution]
        std_error = abs(std / expected_std - 1) / std_tolerance
        kurtosis_error = abs(kurtosis - expected_kurtosis) / kurtosis_tolerance
        bounded = bound is None or max_abs <= bound * expected_std * (1 + std_tolerance)
        if std_error <= 1 and kurtosis_error <= 1 and bounded:
            fits.append((std_error + kurtosis_error, name))
    return min(fits)[1] if fits else None


def _moments(values: torch.Tensor) -> tuple[float, float, float, float]:
    """mean, std, kurtosis, max |value| of a flat float tensor."""
    n = values.numel()
    mean = values.mean()
    squared = (values - mean).square_()
    variance = squared.mean()
    kurtosis = (squared.square_().mean() / variance.square()).item() if variance > 0 else float("nan")
    std = math.sqrt(variance.item() * n / (n - 1)) if n > 1 else 0.0
    return mean.item(), std, kurtosis, values.abs().max().item()


def _tensor_stats(name: str, tensor: torch.Tensor, is_norm: bool) -> TensorStats:
    values = tensor.detach().to("cpu", torch.float32).flatten()
    n = values.numel()
    mean, std, kurtosis, max_abs = _moments(values) if n else (float("nan"), 0.0, float("nan"), 0.0)
    if is_norm:
        kind = "norm"
    elif tensor.ndim >= 2:
        kind = "weight"
    else:
        kind = "bias" if name.endswith("bias") else "vector"
    stats = TensorStats(name=name, shape=tuple(tensor.shape), numel=n, mean=mean, std=std, max_abs=max_abs,
                        kurtosis=kurtosis, kind=kind)
    if n and max_abs == abs(values[0].item()) and bool((values == values[0]).all()):
        stats.constant = values[0].item()
    if is_norm or n < MIN_ELEMENTS:
        return stats
    if stats.constant is not None:  # zeros or a fill value: an init, never what training leaves behind
        stats.init_match = f"constant({stats.constant:g})"
        return stats
    # A few extreme values must not hide an init draw (timm's trunc_normal_ now and then returns
    # its clamp bound, +-2), so the init test looks past values beyond 10 robust sigmas, if rare.
    robust_sigma = (values - mean).abs().mean().item() * math.sqrt(math.pi / 2)
    far = (values - mean).abs() > OUTLIER_SIGMAS * robust_sigma
    stats.outliers = int(far.sum())
    if stats.outliers == 0:
        stats.init_match = _match_init(stats.shape, n, mean, std, kurtosis, max_abs)
    elif stats.outliers <= MAX_OUTLIER_SHARE * n:
        core = values[~far]
        stats.init_match = _match_init(stats.shape, core.numel(), *_moments(core))
    return stats


def _named_tensors(model_or_state_dict) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Floating tensors by name, and the names that belong to normalisation layers."""
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
        norms = {
            f"{module_name}.{param}" if module_name else param
            for module_name, module in model_or_state_dict.named_modules()
            if "norm" in type(module).__name__.lower()
            for param, _ in module.named_parameters(recurse=False)
        }
    elif isinstance(model_or_state_dict, Mapping):
        state = model_or_state_dict
        for wrapper in ("state_dict", "model", "model_state_dict"):  # common checkpoint file layouts
            if not any(torch.is_tensor(v) for v in state.values()) and isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
        norms = {n for n, t in state.items() if _NORM_NAME.search(n) and torch.is_tensor(t) and t.ndim == 1}
    else:
        kind = type(model_or_state_dict).__name__
        raise TypeError(f"expected an nn.Module or a state_dict mapping, got {kind}")
    tensors = {
        name: tensor for name, tensor in state.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not name.endswith(_SKIPPED_BUFFERS)
    }
    if not tensors:
        raise ValueError("no floating-point tensors found to check")
    return tensors, norms & set(tensors)


def _declared_classifier(model: nn.Module, family=None) -> nn.Linear | None:
    """The classifier the model's family declares; None for a model of no supported family (its state_dict
    names are searched instead)."""
    try:
        return (family or locate(model)).classifier()
    except UnsupportedModelError:
        return None


def _find_classifier(model_or_state_dict, tensors: dict, num_classes: int | None, family=None) -> str | None:
    if isinstance(model_or_state_dict, nn.Module):
        head = _declared_classifier(model_or_state_dict, family)
        if head is not None:
            for name, param in model_or_state_dict.named_parameters():
                if param is head.weight:
                    return name
    names = [n for n, t in tensors.items() if t.ndim == 2 and _CLASSIFIER_NAME.search(n)]
    if num_classes is not None:
        names = [n for n in names if tensors[n].shape[0] == num_classes]
    return names[-1] if names else None


def _classifier_evidence(name: str, weight: torch.Tensor) -> tuple[float | None, bool, str]:
    """(mean |cos| between class rows over its random expectation, looks untrained, evidence line)."""
    rows = weight.detach().to("cpu", torch.float64)[:MAX_CLASS_ROWS]
    label = f"classifier {name} {tuple(weight.shape)}"
    norms = rows.norm(dim=1)
    if bool((norms == 0).all()):
        return None, True, f"{label} is all zeros (zero-initialised head)"
    unit = rows[norms > 0] / norms[norms > 0, None]
    if len(unit) < 2:
        return None, False, f"{label} has a single non-zero class row"
    cosine = unit @ unit.T
    off_diagonal = cosine[~torch.eye(len(unit), dtype=torch.bool)].abs()
    expected = math.sqrt(2 / (math.pi * rows.shape[1]))  # E|cos| of independent random vectors
    ratio = off_diagonal.mean().item() / expected
    return ratio, ratio <= COSINE_RATIO, (
        f"{label}: mean |cos| between class rows {off_diagonal.mean():.4f} (max {off_diagonal.max():.3f}), "
        f"{ratio:.2f}x the {expected:.4f} of independent random rows"
    )


def check_checkpoint(model_or_state_dict, *, num_classes: int | None = None,
                     first_batch_loss: float | None = None, family=None) -> CheckpointReport:
    """Judge whether weights look randomly initialised; every number behind the verdict is in
    ``report.evidence`` and per tensor in ``report.tensors`` (``report.to_frame()``).

    ``num_classes`` helps find the classifier and sets the chance-level loss ln(num_classes) that a
    given ``first_batch_loss`` is compared with. ``family``: the model's located family, when the caller has it.

    Verdict: random when at least half the weight tensors match a standard init, or when every
    norm layer is still exactly 1/0. Otherwise two weaker signs (all biases zero, classifier rows
    as unrelated as random vectors, loss at chance) decide, unless the weights show training.
    """
    tensors, norm_names = _named_tensors(model_or_state_dict)
    stats = [_tensor_stats(name, tensor, name in norm_names) for name, tensor in tensors.items()]
    evidence: list[str] = []
    strong, supporting, trained = False, 0, False

    weights = [s for s in stats if s.kind == "weight" and s.numel >= MIN_ELEMENTS]
    share = None
    if weights:
        at_init = [s for s in weights if s.init_match]
        share = len(at_init) / len(weights)
        kinds = sorted({s.init_match for s in at_init})
        evidence.append(
            f"{len(at_init)}/{len(weights)} weight tensors ({share:.0%}) match a standard init in mean, std "
            f"and distribution shape" + (f" ({', '.join(kinds)})" if kinds else "")
        )
        examples = sorted(at_init, key=lambda s: -s.numel)[:2] or sorted(weights, key=lambda s: -s.kurtosis)[:2]
        evidence += [
            f"  {s.name}: mean {s.mean:+.2e}, std {s.std:.4f}, kurtosis {s.kurtosis:.2f}"
            + (f" = {s.init_match}" if s.init_match else " (heavy tails: trained)")
            for s in examples
        ]
        strong |= share >= INIT_LIKE_SHARE
        trained |= share < TRAINED_SHARE and len(weights) >= 4
        fresh = [s.name for s in weights if s.init_match]
        if fresh and share < INIT_LIKE_SHARE:
            evidence.append(f"freshly initialised among trained weights: {', '.join(fresh[:5])}")

    norms = [s for s in stats if s.kind == "norm"]
    norms_at_init = None
    if norms:
        untouched = [s for s in norms if s.constant == (0.0 if s.name.endswith("bias") else 1.0)]
        norms_at_init = len(untouched) == len(norms)
        evidence.append(f"{len(untouched)}/{len(norms)} normalisation weights/biases are exactly 1/0 (their init)")
        strong |= norms_at_init
        trained |= not untouched

    biases = [s for s in stats if s.kind == "bias"]
    if biases:
        zero = sum(s.constant == 0.0 for s in biases)
        evidence.append(f"{zero}/{len(biases)} bias vectors are exactly zero")
        if zero == len(biases):
            supporting += 1

    cosine_ratio = None
    classifier = _find_classifier(model_or_state_dict, tensors, num_classes, family)
    if classifier is not None:
        cosine_ratio, untrained_head, line = _classifier_evidence(classifier, tensors[classifier])
        evidence.append(line)
        supporting += untrained_head
        if num_classes is None:
            num_classes = tensors[classifier].shape[0]

    loss_ratio = None
    if first_batch_loss is not None:
        if num_classes and num_classes > 1:
            chance = math.log(num_classes)
            loss_ratio = first_batch_loss / chance
            near = abs(loss_ratio - 1) <= LOSS_TOLERANCE
            evidence.append(
                f"first-batch loss {first_batch_loss:.4f} vs chance ln({num_classes}) = {chance:.4f} "
                f"({loss_ratio:.2f}x): " + ("at chance level" if near else "away from chance level")
            )
            supporting += near
        else:
            evidence.append(f"first-batch loss {first_batch_loss:.4f} given but the number of classes is unknown")

    looks_random = strong or (supporting >= 2 and not trained)
    if supporting >= 2 and trained and not strong:
        evidence.append("head, biases or loss look untrained but the backbone is trained (fresh head for fine-tuning?)")
    return CheckpointReport(
        looks_random=bool(looks_random),
        evidence=evidence,
        tensors=stats,
        init_like_share=share,
        norms_at_init=norms_at_init,
        classifier_cosine_ratio=cosine_ratio,
        loss_over_chance=loss_ratio,
    )
