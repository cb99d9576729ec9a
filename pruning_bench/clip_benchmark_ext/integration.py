"""Wiring into `clip_benchmark.cli`: extra `eval` flags, and a `run` that prunes around the evaluation.

`extend_cli` replaces two module attributes, `get_parser_args` and `run`, with wrappers; `main` and
`main_eval` look both up at call time, so every path through the command goes through them.
Without `--enable_pruning`, `--measure_efficiency`, `--extract_attention` and `--max_samples` the
wrapped `run` calls clip_benchmark's own `run` with the very same arguments: a plain run stays a plain
run (except that a `--pretrained` file written by `pb.save_pruned` is loaded by `saved_models`, which
open_clip cannot do, and a token strategy that file records is re-applied unless `--prune_no_reapply`).

With any of them, the result also gets the run's identity (seed, the images evaluated and how they
were chosen; `record.identity`) and per-image outcomes (`outcomes`), and these names of the cli
module are swapped for the duration of that one `run` call and put back afterwards:
- `load_clip`: the strategy is patched in right after the model loads (bad parameters stop here,
  before any data is read), and one line says what was applied to which model;
- `build_dataset`: with `--max_samples N`, the evaluated split is cut to its first N images;
- `zeroshot_classification`, `zeroshot_retrieval`, `linear_probe`: their `evaluate` measures
  efficiency, extracts attention and restores the model right after the evaluation; the linear
  probe gets a feature-cache id that names the pruning configuration;
- `json`: `dump` adds `pruning` and `efficiency` to clip_benchmark's result dict.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import types
from typing import Any

from . import build, outcomes, random_init, saved_models, webdataset_checks
from .. import run_config
from ..record import atomic, naming, notes as noting, result as record
from ..record.atomic_file import AtomicFile, ResultWriteError, opener_for
from ..record.check import file_problem

# Per-unit importances (12 x 3072 floats on ViT-B): kept in `handle.stats()`, left out of result files.
_TASK_MODULES = {"zeroshot_classification": "zeroshot_classification",
                 "zeroshot_retrieval": "zeroshot_retrieval",
                 "linear_probe": "linear_probe"}


def fail(message: str) -> None:
    """Stop the command with one line on stderr (exit status 2, like argparse's own errors)."""
    print(f"clip_benchmark eval: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------- argument parsing


def _parser_class(base: type) -> type:
    class ArgumentParser(base):
        """clip_benchmark's parser, with the pruning flags added to `eval` before anything is parsed."""

        def parse_known_args(self, args=None, namespace=None):
            eval_parser = _eval_subparser(self)
            if eval_parser is not None and not getattr(eval_parser, "_pruning_bench_flags", False):
                run_config.add_arguments(eval_parser)
                eval_parser._pruning_bench_flags = True
            return super().parse_known_args(args, namespace)

    return ArgumentParser


def _eval_subparser(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get("eval")
    return None


class _ArgparseWithPruningFlags(types.ModuleType):
    """Stands in for `argparse` inside clip_benchmark.cli while its parser is built."""

    def __init__(self, real):
        super().__init__(real.__name__, real.__doc__)
        self.__dict__.update(real.__dict__)
        self.ArgumentParser = _parser_class(real.ArgumentParser)


def wrap_get_parser_args(cli, original):
    @functools.wraps(original)
    def get_parser_args():
        real = cli.argparse
        cli.argparse = _ArgparseWithPruningFlags(real)
        try:
            parser, args = original()
        finally:
            cli.argparse = real
        if getattr(args, "which", None) == "eval":
            try:
                args.pruning_config = run_config.resolve(args)
            except ValueError as exc:
                fail(str(exc))
            _check_tasks(args)
        return parser, args

    return get_parser_args


def _check_tasks(args) -> None:
    config = args.pruning_config
    if config.records and args.task not in (*run_config.PRUNABLE_TASKS, "auto"):
        fail(f"--enable_pruning/--measure_efficiency/--extract_attention/--max_samples support the tasks "
             f"{', '.join(run_config.PRUNABLE_TASKS)}, not {args.task}")


# ---------------------------------------------------------------- the run


def _located(model):
    """The model's family, or None for a model of no supported family (a plain or efficiency-only run)."""
    from ..errors import UnsupportedModelError
    from ..families import locate

    try:
        return locate(model)
    except UnsupportedModelError:
        return None


class PruningSession:
    """One clip_benchmark `run` with pruning: owns the handle, the captured images and the extra fields."""

    def __init__(self, args, config: run_config.PruningConfig, slug: str):
        self.args, self.config, self.slug = args, config, slug
        self.model = None
        self.family = None  # the model's located family: located once when clip_benchmark loads the model
        self.handle = None
        self.notes: list[str] = []
        self.images: list = []
        self.n_images = 0
        self._capture = None
        self.efficiency: dict[str, Any] | None = None
        self.attention: dict[str, Any] | None = None
        self.feature_cache: str | None = None
        self.saved_model: dict[str, Any] | None = None
        self.outcomes: outcomes.Outcomes | None = None
        self.limited = False

    # -- model loading
    def load_clip(self, original):
        @functools.wraps(original)
        def load_clip(*a, **kw):
            model, transform, tokenizer = original(*a, **kw)
            self.model, self.family = model, _located(model)
            if self.config.enabled:
                calibration = self._calibration(transform) if self.config.calibration_images else None
                self._prune(model, calibration)
            self._start_capture(model)
            return model, transform, tokenizer

        return load_clip

    def _calibration(self, transform) -> list:
        """The first `--prune_calibration` images of the training split, in batches, labels dropped.

        Scoring importances on the evaluated split would let the test images choose the pruned units,
        so that split is refused."""
        import itertools

        import torch
        from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn

        args, n = self.args, self.config.calibration_images
        split = getattr(args, "train_split", None) or "train"
        if split == getattr(args, "split", "test"):
            fail(f"--prune_calibration reads the training split, but --train_split {split} is the evaluated split")
        name = args.dataset
        root = dataset_root(args)
        try:
            dataset = build_dataset(dataset_name=name, root=root, transform=transform, split=split, download=True,
                                    annotation_file=getattr(args, "annotation_file", ""), language=args.language,
                                    task=resolved_task(args), wds_cache_dir=getattr(args, "wds_cache_dir", None))
            batch_size = min(args.batch_size, n)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0,
                                                 collate_fn=get_dataset_collate_fn(name))
            batches, seen = [], 0
            for images, *_ in itertools.islice(loader, -(-n // batch_size)):
                batches.append(images[: n - seen])
                seen += len(batches[-1])
        except Exception as exc:  # a missing split surfaces in many forms (FileNotFoundError, wds errors, ...)
            fail(f"--prune_calibration: cannot read {n} images of the {split!r} split of {name} ({exc}); "
                 f"use a calibration-free importance (e.g. importance=magnitude, or layer_drop drop=[...])")
        if seen == 0:
            fail(f"--prune_calibration: the {split!r} split of {name} has no images")
        device = next(self.model.parameters()).device
        self.notes.append(f"calibration: the first {seen} images of the {split} split")
        return [b.to(device) for b in batches]

    def _prune(self, model, calibration=None) -> None:
        import pruning_bench as pb
        from ..api import make_strategy, prune_located

        params = dict(self.config.params)
        if calibration is not None:
            params["calibration"] = calibration
        for note in self.notes:  # the calibration note, said once
            print(f"pruning-bench: {note}", file=sys.stderr)
        with noting.noting_warnings(self.notes):
            try:
                self.handle = prune_located(model, [make_strategy(self.config.strategy, params)], self.family)
            except (ValueError, pb.UnsupportedModelError) as exc:
                fail(str(exc))
        print(f"pruning-bench: applied {self.slug} to the image encoder of {self.args.model} "
              f"(pretrained {self.args.pretrained or 'none: random init'})", file=sys.stderr)

    # -- the evaluated images
    def build_dataset(self, original):
        """`--max_samples N`: the first data set clip_benchmark's `run` builds (the evaluated split) cut to N images."""
        @functools.wraps(original)
        def build_dataset(*a, **kw):
            dataset = original(*a, **kw)
            if self.config.max_samples is None or self.limited:
                return dataset
            self.limited = True
            try:
                return outcomes.first_n(dataset, self.config.max_samples)
            except ValueError as exc:
                fail(str(exc))

        return build_dataset

    def _start_capture(self, model) -> None:
        """Keep the first evaluation batches seen by the image encoder (for efficiency and attention)."""
        from ..families import unlocated_tower

        wanted = self.config.attention_images if self.config.extract_attention else 1
        tower = self.family.encoder if self.family is not None else unlocated_tower(model)

        def keep(_module, args):
            if self.n_images < wanted or not self.images:
                self.images.append(args[0].detach().cpu())
                self.n_images += len(args[0])

        self._capture = tower.register_forward_pre_hook(keep)

    def _stop_capture(self) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    # -- evaluation
    def evaluate(self, original, task: str, module):
        @functools.wraps(original)
        def evaluate(*a, **kw):
            if task == "linear_probe":
                a, kw = self._key_feature_cache(original, a, kw)
            self.outcomes = outcomes.Outcomes(task, getattr(self.args, "recall_k", None))
            try:
                with noting.noting_warnings(self.notes), self.outcomes.observing(module):
                    metrics = original(*a, **kw)
                    self._stop_capture()
                    if self.model is not None:
                        self._after_evaluation()
                return metrics
            finally:
                self._stop_capture()
                if self.handle is not None:
                    self.handle.restore()

        return evaluate

    def _key_feature_cache(self, original, a, kw):
        import inspect

        bound = inspect.signature(original).bind(*a, **kw)
        model_id = naming.feature_cache_id(bound.arguments["model_id"], self.slug)
        if self.config.max_samples is not None:  # the cached test features are those of the first N images
            model_id += f"__first{self.config.max_samples}"
        if str(self.args.pretrained).lower() in ("", "none"):  # random-init weights: the seed draws them
            model_id += f"__seed{self.args.seed}"
        bound.arguments["model_id"] = model_id
        self.feature_cache = bound.arguments["model_id"]
        return bound.args, bound.kwargs

    def _evaluation_images(self):
        import torch

        if self.images:
            return torch.cat(self.images), "evaluation batch"
        # a tower of no supported family (measured without pruning): 224 px
        size = tuple(self.family.image_size()) if self.family is not None else (224, 224)
        generator = torch.Generator().manual_seed(self.args.seed)
        batch = torch.rand(self.args.batch_size, 3, *size, generator=generator)
        self.notes.append("no image reached the encoder during evaluation; efficiency measured on random images")
        return batch, "random images"

    def _after_evaluation(self) -> None:
        from ..measure import extract_attention, run_efficiency

        images, source = self._evaluation_images()
        device, amp = self.args.device, self.args.amp
        if self.config.measure_efficiency:
            try:
                self.efficiency = run_efficiency.measure(
                    self.model, images[: self.args.batch_size], device=device, amp=amp,
                    repeats=self.config.throughput_repeats, handle=self.handle, source=source,
                    progress=False if getattr(self.args, "quiet", False) else None, family=self.family)
            except Exception as exc:  # keep the evaluation's metrics; say why efficiency is missing
                self.efficiency = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"pruning-bench: efficiency not measured ({type(exc).__name__}: {exc})", file=sys.stderr)
        if self.config.extract_attention:
            self.attention = extract_attention.record_attention(
                self.model, images[: self.config.attention_images].to(device), self.handle, family=self.family)
        if self.config.save_model:
            self._save_model()

    def _save_model(self) -> None:
        """The pruned model as it was evaluated (`pb.save_pruned`, checked to rebuild bit-identical)."""
        from ..saved import save_pruned

        try:
            architecture = save_pruned(self.model, self.config.save_model, model_name=self.args.model)
        except Exception as exc:  # keep the evaluation's metrics; say why the model was not saved
            self.saved_model = {"path": self.config.save_model, "error": f"{type(exc).__name__}: {exc}"}
            print(f"pruning-bench: --prune_save_model {self.config.save_model}: not saved ({type(exc).__name__}: "
                  f"{exc})", file=sys.stderr)
            return
        self.saved_model = {"path": self.config.save_model, "heads_per_block": architecture["heads_per_block"],
                            "mlp_hidden_per_block": architecture["mlp_hidden_per_block"],
                            "blocks_kept": architecture["blocks_kept"],
                            "token_strategy": architecture["token_strategy"]}

    # -- result file
    def pruning_record(self) -> dict[str, Any] | None:
        return record.pruning_block(self.config, self.handle, self.notes, self.slug,
                                    feature_cache=self.feature_cache, model_loaded=self.model is not None)

    def json_module(self, real):
        session = self

        class _Json(types.ModuleType):
            def dump(self, obj, fp, *a, **kw):
                name = getattr(fp, "name", None)
                if not (isinstance(obj, dict) and "metrics" in obj and isinstance(name, str)):
                    return real.dump(obj, fp, *a, **kw)
                if isinstance(fp, AtomicFile):  # replaces the file only once the whole result is written
                    obj = session.complete(obj, name)
                    fp.write(real.dumps(obj, *a, **kw))
                    return record.warn_if_ineffective(obj)
                try:  # the caller's open() already left an empty file: it must not survive a failure
                    obj = session.complete(obj, name)
                    atomic.write_text(name, real.dumps(obj, *a, **kw))
                except BaseException:
                    if os.path.exists(name) and os.path.getsize(name) == 0:
                        os.remove(name)
                    raise
                record.warn_if_ineffective(obj)

        proxy = _Json(real.__name__, real.__doc__)
        for name, value in real.__dict__.items():
            if name != "dump":
                proxy.__dict__[name] = value
        return proxy

    def complete(self, dump: dict, output: str | None) -> dict:
        """clip_benchmark's result dict plus `pruning`, `efficiency` (and where the attention went)."""
        dump = dict(dump)
        dump["pruning"] = self.pruning_record()
        if self.config.measure_efficiency:
            dump["efficiency"] = self.efficiency
        if self.config.extract_attention and self.attention is not None:
            path = self.config.attention_output or (os.path.splitext(output or "result.json")[0] + ".attention.pt")
            from ..record import attention

            try:
                attention.save(path, self.attention, {
                    "model": self.args.model, "pretrained": self.args.pretrained, "dataset": self.args.dataset,
                    "task": dump.get("task"), "strategy": self.config.strategy, "params": self.config.resolved})
                dump["attention_output"] = path
            except Exception as exc:  # keep the evaluation's metrics; say why the attention file is missing
                dump["attention_output"] = None
                dump["attention_error"] = f"{path}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                print(f"pruning-bench: --attention_output {path}: not written ({dump['attention_error']})",
                      file=sys.stderr)
        if self.saved_model is not None:
            dump["saved_model"] = self.saved_model
        if self.config.saved_token_strategy is not None:  # --prune_no_reapply: never to be taken for a baseline
            dump["token_strategy_not_applied"] = {**self.config.saved_token_strategy, "saved_model": self.args.pretrained}
        return record.complete({**dump, **self.identity(output)})

    def identity(self, output: str | None) -> dict[str, Any]:
        """The run's seed, the images it evaluated and their outcomes, and its own file name (`record.identity`)."""
        seen = self.outcomes.fields() if self.outcomes is not None else {}
        return outcomes.run_identity(self.args, self.config, seen, dataset_root(self.args), output,
                                     model=self.model, first_batch=self.images[0] if self.images else None)

def _patched(module, **replacements):
    """A stand-in for a module with some attributes replaced (the real module is left untouched)."""
    proxy = types.ModuleType(module.__name__, module.__doc__)
    proxy.__dict__.update(module.__dict__)
    proxy.__dict__.update(replacements)
    return proxy


def dataset_name(args) -> str:
    return args.dataset[len("wds/"):] if args.dataset.startswith("wds/") else args.dataset


def dataset_root(args) -> str:
    """`--dataset_root` with its template filled in, as clip_benchmark's `run` fills it."""
    name = dataset_name(args)
    return args.dataset_root.format(dataset=name, dataset_cleaned=name.replace("/", "-"))


def output_path(args, task: str) -> str:
    """The result file clip_benchmark's `run` will write, formatted as it formats it."""
    pretrained = args.pretrained
    is_file = os.path.isfile(pretrained)
    return args.output.format(model=args.model, pretrained=os.path.basename(pretrained) if is_file else pretrained,
                              pretrained_full_path=pretrained.replace("/", "_") if is_file else pretrained,
                              task=task, dataset=dataset_name(args).replace("/", "_"), language=args.language)


def prepare_outputs(args, config, task: str) -> None:
    """Before any model loads: the result and attention folders exist (created where named), and an
    incomplete result never counts as done for `--skip_existing` (moved aside and re-run, said once)."""
    try:
        output = output_path(args, task)
    except (KeyError, IndexError, ValueError) as exc:
        fail(f"--output {args.output!r} cannot be formatted ({exc})")
    targets = [("--output", output)]
    if config.extract_attention and config.attention_output:
        targets.append(("--attention_output", config.attention_output))
    if config.save_model:
        targets.append(("--prune_save_model", config.save_model))
    for flag, path in targets:
        if os.path.isdir(path):  # found now, not after the whole evaluation
            fail(f"{flag} {path} is a directory, not a file")
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            fail(f"{flag} {path!r}: cannot create the folder {folder!r} ({exc.strerror or exc})")
        if not os.access(folder, os.W_OK):
            fail(f"{flag} {path!r}: the folder {folder!r} is not writable")
    if getattr(args, "skip_existing", False) and os.path.exists(output):
        problem = file_problem(output)
        if problem is not None:
            aside = output + ".incomplete"
            os.replace(output, aside)
            print(f"pruning-bench: {output} {problem}; moved to {aside} and run again", file=sys.stderr)


def resolved_task(args) -> str:
    """The task clip_benchmark's `run` will pick (`auto` resolved from the dataset name, as it does)."""
    if args.task != "auto":
        return args.task
    from clip_benchmark.datasets.builder import get_dataset_default_task

    name = args.dataset[len("wds/"):] if args.dataset.startswith("wds/") else args.dataset
    return get_dataset_default_task(name)


def wrap_run(cli, original):
    @functools.wraps(original)
    def run(args):
        with saved_models.loading_saved_models(cli, args, fail):  # --pretrained naming a pb.save_pruned file
            with random_init.random_init_words(cli):  # --pretrained none: random weights, as everywhere
                return run_one(saved_models.with_saved_token_strategy(args, fail))

    def run_one(args):
        config = getattr(args, "pruning_config", None)
        if config is None:  # run() called directly, not through main(): resolve the flags here
            try:
                config = run_config.resolve(args)
            except ValueError as exc:
                fail(str(exc))
        if not config.records:
            if naming.PLACEHOLDER in args.output:  # upstream would fail on the unknown key
                args = argparse.Namespace(**vars(args))
                args.output = naming.output_template(args.output, naming.BASELINE_SLUG, False)
            # where upstream would lose the result after the whole evaluation (a missing output folder) or
            # skip a point that never finished (an incomplete file): the only departures of a plain run
            prepare_outputs(args, config, resolved_task(args))
            webdataset_checks.check(args, dataset_root(args), fail)
            with atomic_result(cli, output_path(args, resolved_task(args))):
                return original(args)
        task = resolved_task(args)
        if task not in run_config.PRUNABLE_TASKS:
            fail(f"--enable_pruning/--measure_efficiency/--extract_attention/--max_samples support the tasks "
                 f"{', '.join(run_config.PRUNABLE_TASKS)}, not {task} ({args.dataset})")
        slug = naming.config_slug(config)
        args = argparse.Namespace(**vars(args))
        args.output = naming.output_template(args.output, slug, config.enabled)
        prepare_outputs(args, config, task)
        webdataset_checks.check(args, dataset_root(args), fail)
        session = PruningSession(args, config, slug)
        saved = {name: getattr(cli, name) for name in ("load_clip", "build_dataset", "json", *_TASK_MODULES.values())}
        cli.load_clip = session.load_clip(saved["load_clip"])
        cli.build_dataset = session.build_dataset(saved["build_dataset"])
        cli.json = session.json_module(saved["json"])
        for task, name in _TASK_MODULES.items():
            cli.__dict__[name] = _patched(saved[name], evaluate=session.evaluate(saved[name].evaluate, task, saved[name]))
        try:
            with atomic_result(cli, output_path(args, task)):
                return original(args)
        finally:
            for name, value in saved.items():
                setattr(cli, name, value)
            if session.handle is not None:
                session.handle.restore()

    return run


@contextlib.contextmanager
def atomic_result(cli, output: str):
    """clip_benchmark's `open(output, "w")` writes a temporary file renamed into place: a failed write (full
    disk, size limit) keeps the earlier result, and is one line."""
    before = cli.__dict__.get("open")
    cli.open = opener_for({output})
    try:
        yield
    except ResultWriteError as exc:
        fail(f"--output: {exc}")
    finally:
        if before is None:
            del cli.open
        else:
            cli.open = before


def extend_cli(cli) -> None:
    """Adapter called by the start-up hook once clip_benchmark.cli has been imported."""
    if getattr(cli.run, "_pruning_bench", False):  # already extended (a reload re-creates the functions)
        return
    get_parser_args = wrap_get_parser_args(cli, cli.get_parser_args)
    run = wrap_run(cli, cli.run)
    get_parser_args._pruning_bench = run._pruning_bench = True
    cli.get_parser_args, cli.run = get_parser_args, run
    cli.main_build = build.wrap_main_build(cli, cli.main_build)

