"""One `pruning-bench eval` run: load, measure the unpruned model, prune, measure again, write the JSON.

Tasks:
- `probe`: a linear probe fitted on the unpruned model's features of `train_samples` training images
  reads the unpruned and the pruned features of `test_samples` test images: accuracy of both, top-1
  agreement, raw and centred feature cosine;
- `fidelity`: the label-free part of that on any image set (agreement by the model's own head when it
  has one, else by nearest neighbours);
- `finetune`: train with the strategy active, report test accuracy, GMACs and the training timing;
  with `--rounds N` (a structured strategy) prune and fine-tune N times, each round from the last
  one's weights (`rounds.py`).
`--save_model PATH` writes the model as evaluated (sliced, fine-tuned) with `pb.save_pruned`; a saved
model given as `--pretrained` gets the token strategy it records re-applied (`--prune_no_reapply`: not).
Every result records the run's identity (seed, model arguments, the test images: `record.identity`)
and, for the tasks with labels, per-image correctness of the evaluated model (`per_image`).
`auto` picks `probe` when the data set has labelled train and test splits, else `fidelity`.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .. import run_config
from ..families import locate
from ..measure import fidelity
from ..record import identity
from ..record.notes import noting_warnings
from . import data, finetune, results, rounds
from .features import FeatureCache, Features, extract
from .models import load_model, preflight
from .probe import fit_probe

TASKS = ("auto", "probe", "fidelity", "finetune")


class EvalError(ValueError):
    """A problem with the arguments or the data, reported as one line."""


# ---------------------------------------------------------------- configuration


def resolve_pruning(args) -> tuple[run_config.PruningConfig, bool]:
    """The pruning flags, checked as clip_benchmark's are; the second value says whether the strategy
    needs calibration images (this command then takes them from the data)."""
    config = run_config.resolve(args)
    return config, config.calibration_images > 0


def resolve_task(task: str, dataset: str, root: str | None) -> str:
    if task != "auto":
        return task
    splits = data.available_splits(dataset, root)
    return "probe" if {"train", "test"} <= set(splits) else "fidelity"


# ---------------------------------------------------------------- pieces


@dataclass
class Pruned:
    handle: object | None
    notes: list[str]


def attach(model, config: run_config.PruningConfig, calibration, seed: int | None = None, family=None) -> Pruned:
    """Patch the strategy in (with calibration batches when it needs them); its warnings become notes.

    A strategy with its own `seed` parameter takes `seed` (the run's `--seed`) unless one was given.
    `family`: the model's located family, when the caller has it."""
    if not config.enabled:
        return Pruned(None, [])
    import pruning_bench as pb
    from ..api import make_strategy, prune_located

    params = dict(config.params)
    if seed is not None and "seed" not in params and "seed" in pb.get_strategy(config.strategy).defaults:
        params["seed"] = seed
    if calibration is not None:
        params["calibration"] = calibration
    notes: list[str] = []
    with noting_warnings(notes, "pruning-bench eval"):
        handle = prune_located(model, [make_strategy(config.strategy, params)], family)
    return Pruned(handle, notes)


@contextmanager
def active(pruned: Pruned):
    """The pruned phase: warnings noted, the model restored on the way out (normally or not)."""
    try:
        with noting_warnings(pruned.notes, "pruning-bench eval"):
            yield
    finally:
        if pruned.handle is not None:
            pruned.handle.restore()


def calibration_batches(images: data.ImageSet, transform, n: int, batch_size: int) -> list[torch.Tensor]:
    subset = images.head(n)
    return [x for x, _ in data.loader(subset, transform, batch_size)]


def first_images(images: data.ImageSet, transform, n: int) -> torch.Tensor:
    return next(iter(data.loader(images.head(n), transform, n)))[0]


def _features(model, images: data.ImageSet, transform, args, desc: str, family=None) -> Features:
    return extract(model, data.loader(images, transform, args.batch_size, workers=args.num_workers),
                   total=len(images), desc=desc, progress=args.progress, family=family)


def _load_split(args, split: str, n: int | None) -> data.ImageSet:
    try:
        return data.load(args.dataset, args.dataset_root, split, n)
    except FileNotFoundError as exc:
        raise EvalError(str(exc)) from None


def _calibration_split(args, n: int) -> data.ImageSet | None:
    """Training images for calibration when the task itself reads none (fidelity), if the data set has them."""
    try:
        return data.load(args.dataset, args.dataset_root, "train", n)
    except (FileNotFoundError, ValueError):
        return None


# ---------------------------------------------------------------- the run


def run(args) -> int:
    try:
        return _run(args)
    except EvalError as exc:
        print(f"pruning-bench eval: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    try:
        config, needs_calibration = resolve_pruning(args)
        task = resolve_task(args.task, args.dataset, args.dataset_root)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    if config.max_samples is not None:
        raise EvalError("--max_samples is clip_benchmark eval's; here --test_samples N evaluates the first N test images")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, args.pretrained, image_size=args.img_size,
                        model_args=run_config.parse_prune_params(args.model_arg or []))
    config = saved_token_strategy(loaded.model, config, args.pretrained)
    preflight(loaded.model, config, loaded.family)  # a strategy that cannot fit the model fails now, not after the features
    output = results.output_path(args.output, config=config, model=args.model, pretrained=loaded.pretrained,
                                 dataset=args.dataset, task=task)
    if args.skip_existing and os.path.exists(output):
        from ..record.check import file_problem

        problem = file_problem(output, pruned=config.enabled)
        if problem is None:
            print(f"pruning-bench eval: {output} exists, skipped", file=sys.stderr)
            return 0
        print(f"pruning-bench eval: {output} {problem}: not a finished run, running it again", file=sys.stderr)
    args.resolved_output, args.resolved_task = output, task
    from ..record.writable import problem as unwritable

    if unwritable("--output", output):  # the template's filled-in name: a directory, a folder under a file
        raise EvalError(unwritable("--output", output))
    test = _load_split(args, "test", args.test_samples)
    train = None
    if task in ("probe", "finetune"):
        if not test.labelled:
            raise EvalError(f"--task {task} needs labels; {args.dataset} has none (use --task fidelity)")
        train = _load_split(args, "train", args.train_samples)
    calibration = None
    if needs_calibration:
        source = train or _calibration_split(args, config.calibration_images) or test
        calibration = calibration_batches(source, loaded.transform, config.calibration_images, args.batch_size)
    if config.enabled:
        print(f"pruning-bench eval: applying {results.slug(config)} to the image encoder of {args.model} "
              f"(pretrained {loaded.pretrained}); clamps follow as notes", file=sys.stderr)
    runner = _finetune if task == "finetune" else _compare
    metrics, pruned, efficiency_record, extra = runner(args, config, loaded, test, train, calibration)
    if calibration is not None:
        note = f"calibration: the first {sum(len(b) for b in calibration)} images of the {source.split} split"
        if source is test:
            note += " (the data set has no training split; these images are also evaluated)"
        pruned.notes.append(note)
    if config.saved_token_strategy is not None:  # --prune_no_reapply: the report must not take this for a baseline
        extra["token_strategy_not_applied"] = {**config.saved_token_strategy, "saved_model": args.pretrained}
    dump = results.result(
        dataset=args.dataset, model=args.model, pretrained=loaded.pretrained, task=task, metrics=metrics,
        pruning=results.pruning_block(args, config, pruned.handle, pruned.notes, loaded.model),
        efficiency_record=efficiency_record,
        data={"test": {**test.describe(), **identity.test_block(split=test.split, images=len(test),
                                                                dataset_root=_root(args),
                                                                max_samples=args.test_samples
                                                                if len(test) >= args.test_samples else None)},
              **({"train": train.describe()} if train is not None else {})},
        checkpoint_check=loaded.checkpoint, image_size=list(loaded.image_size), seed=args.seed,
        model_args=run_config.parse_prune_params(args.model_arg or []) or None, result_file=os.path.basename(output),
        command=["pruning-bench", *sys.argv[1:]] if sys.argv and "pruning-bench" in sys.argv[0] else None,
        **extra,
    )
    try:
        print(results.write(output, dump))
    except OSError as exc:  # full disk, size limit: the atomic writer left any earlier file as it was
        kept = "the earlier file is kept" if os.path.exists(output) else "nothing was written"
        raise EvalError(f"--output {output}: cannot write the result ({exc.strerror or exc}); {kept}") from None
    return 0


def _root(args) -> str | None:
    return data.dataset_root(args.dataset_root, args.dataset) if args.dataset_root else None


def saved_token_strategy(model, config: run_config.PruningConfig, pretrained) -> run_config.PruningConfig:
    """The configuration that re-applies the token strategy a saved `--pretrained` records (one line says so), or
    `config` itself; `--prune_no_reapply` keeps the file's strategy out and records that it did."""

    token = (getattr(model, "pb_saved_architecture", None) or {}).get("token_strategy")
    try:
        return run_config.reapplying(config, token, pretrained, "pruning-bench eval")
    except ValueError as exc:
        raise EvalError(str(exc)) from None


def _efficiency(model, test, loaded, args, handle, family=None):
    images = first_images(test, loaded.transform, min(args.efficiency_batch_size, len(test)))
    return results.efficiency_block(model, images, handle=handle, repeats=args.throughput_repeats,
                                    progress=None if getattr(args, "progress", True) else False,
                                    source=f"first {len(images)} test images", family=family)


def _attention(args, model, test, loaded, handle, config, family=None) -> dict:
    if not config.extract_attention:
        return {}
    from ..measure.extract_attention import record_attention
    from ..record import attention

    images = first_images(test, loaded.transform, min(args.attention_images, len(test)))
    record = record_attention(model, images, handle, family=family)
    path = config.attention_output or os.path.splitext(args.resolved_output)[0] + ".attention.pt"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    attention.save(path, record, {"model": args.model, "pretrained": loaded.pretrained, "dataset": args.dataset,
                                  "task": args.resolved_task, "strategy": config.strategy, "params": config.resolved})
    return {"attention_output": path}


def _compare(args, config, loaded, test, train, calibration):
    """probe and fidelity: unpruned features (cached), then the same images through the pruned model."""
    model, family = loaded.model, loaded.family
    cache = FeatureCache(args.feature_cache)
    fingerprint = loaded.fingerprint()

    def cached(images: data.ImageSet) -> Features:
        key = FeatureCache.key(model=args.model, weights=fingerprint, dataset=args.dataset, source=images.source,
                               split=images.split, n=len(images), keys=[images.keys[0], images.keys[-1]],
                               image_size=list(loaded.image_size), transform=repr(loaded.transform))
        return cache.get(key, lambda: _features(model, images, loaded.transform, args, f"unpruned {images.split}",
                                                family))

    reference = cached(test)
    probe = None
    if train is not None:
        reference_train = cached(train)
        probe = fit_probe(reference_train.features, reference_train.labels, C=args.C, seed=args.seed)
    pruned = attach(model, config, calibration, args.seed, family)
    with active(pruned):
        output = _features(model, test, loaded.transform, args, "pruned test", family) if config.enabled else reference
        efficiency_record = _efficiency(model, test, loaded, args, pruned.handle, family)
        extra = _attention(args, model, test, loaded, pruned.handle, config, family)
        extra.update(save_model(args, model))
    if probe is not None:
        metrics = probe_metrics(probe, reference, output)
        extra["per_image"] = metrics.pop("per_image")
    else:
        metrics = fidelity.fidelity_metrics(reference, output, reference_logits=reference.logits,
                                            pruned_logits=output.logits)
    metrics["seconds_unpruned_features"] = reference.seconds
    metrics["seconds_evaluated_features"] = output.seconds
    extra["feature_cache"] = {"directory": args.feature_cache, "reused": list(cache.hits),
                              **({"notes": cache.notes} if cache.notes else {})}
    return metrics, pruned, efficiency_record, extra


def probe_metrics(probe, reference: Features, output: Features) -> dict:
    """Accuracy of the unpruned-fitted probe on pruned features, beside its accuracy unpruned and fidelity."""
    import numpy as np

    reference_logits = torch.from_numpy(np.asarray(probe.logits(reference.features)))
    output_logits = torch.from_numpy(np.asarray(probe.logits(output.features)))
    classes = torch.from_numpy(probe.classifier.classes_)
    labels = reference.labels
    correct = classes[output_logits.argmax(1)] == labels
    acc = float(correct.double().mean())
    acc_unpruned = float((classes[reference_logits.argmax(1)] == labels).double().mean())
    metrics = {"acc1": acc, "acc1_unpruned": acc_unpruned, "acc1_delta_same_probe": acc - acc_unpruned}
    metrics.update(fidelity.fidelity_metrics(reference, output, reference_logits=reference_logits,
                                             pruned_logits=output_logits))
    metrics["probe"] = probe.describe()
    metrics["per_image"] = identity.packed(correct.numpy())  # taken out into the result's `per_image`
    return metrics


def save_model(args, model) -> dict:
    """Write the model as it runs now to --save_model (nothing without the flag)."""
    path = getattr(args, "save_model", None)
    if not path:
        return {}
    from .. import saved

    try:
        architecture = saved.save_pruned(model, path,
                                         model_args=run_config.parse_prune_params(getattr(args, "model_arg", None) or []))
    except Exception as exc:  # noqa: BLE001 - keep the evaluation; record and say why the model was not saved
        error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        print(f"pruning-bench eval: --save_model {path}: not saved ({error})", file=sys.stderr)
        return {"saved_model": {"path": path, "error": error}}
    return {"saved_model": {"path": path, "heads_per_block": architecture["heads_per_block"],
                            "mlp_hidden_per_block": architecture["mlp_hidden_per_block"],
                            "blocks_kept": architecture["blocks_kept"],
                            "token_strategy": architecture["token_strategy"]}}


def _finetune(args, config, loaded, test, train, calibration):
    model, family = loaded.model, loaded.family
    num_classes = len(test.classnames) if test.classnames else int(max(train.labels.max(), test.labels.max())) + 1
    n_rounds = getattr(args, "rounds", 1) or 1
    if n_rounds > 1 and (not config.enabled or not rounds.iterable(config.strategy)):
        raise EvalError(f"--rounds={n_rounds} prunes again from each round's weights; it needs a structured "
                        f"--prune_strategy ({' or '.join(rounds.structured_names())}), "
                        f"got {config.strategy if config.enabled else 'no pruning'}")
    finetune.new_head(model, num_classes, args.seed, family)
    original = rounds.widths(model) if n_rounds > 1 else None
    rows = []
    for number in range(1, n_rounds + 1):
        finetune.seed_everything(args.seed)
        pruned = attach(model, config, calibration, args.seed, family)
        with active(pruned):
            outcome = finetune.train(model, train, test, loaded.transform, finetune.FinetuneConfig(
                epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                seed=args.seed + number - 1, progress=args.progress, warmup_steps=args.warmup_steps), family)
            efficiency_record = _efficiency(model, test, loaded, args, pruned.handle, family)
            if n_rounds > 1:
                rows.append(rounds.round_row(number, model, outcome, efficiency_record, pruned.handle.stats(), original))
                if number < n_rounds:
                    model = _next_round_model(model, args)
                    family = locate(model)  # a new (compact) model: located once for the next round
                    continue
            saved = save_model(args, model)
        loaded.model, loaded.family = model, family
    metrics = outcome.metrics()
    if isinstance(efficiency_record, dict) and "gmacs" in efficiency_record:
        metrics["gmacs"] = efficiency_record["gmacs"]
    extra = {"training": {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay,
                          "batch_size": args.batch_size, "optimizer": "AdamW", "schedule": "one-cycle cosine, 10% warm-up",
                          "augmentation": "none", "head": f"new linear head, {num_classes} classes",
                          "deterministic": "torch.use_deterministic_algorithms(True, warn_only=True)",
                          "timing": outcome.timing()}, **saved}
    if outcome.test_correct is not None:
        extra["per_image"] = identity.packed(outcome.test_correct)
    if rows:
        extra["rounds"] = rows
        extra["training"]["rounds"] = {"count": n_rounds, "ratios": "compound: each round removes its ratio of "
                                       "what the previous round left", "seed": "run seed + round - 1 for shuffling"}
    return metrics, pruned, efficiency_record, extra


def _next_round_model(model, args):
    """The fine-tuned, sliced model as a plain compact model (the live handle is restored on the old one)."""
    from ..saved import compact_copy

    return compact_copy(model, run_config.parse_prune_params(getattr(args, "model_arg", None) or []))
