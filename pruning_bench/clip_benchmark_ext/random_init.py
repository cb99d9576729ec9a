"""`--pretrained none` (or `random`) means random weights in `clip_benchmark eval`, as in `pruning-bench eval`.

open_clip reads any non-empty `pretrained` as a tag or a file to download and fails on `none`; its own
spelling of "no weights" is an empty string. For the duration of a run, clip_benchmark's `load_clip`
passes these words to open_clip as that empty string; the result keeps the word the user gave.
"""
from __future__ import annotations

import contextlib
import functools

RANDOM_INIT = ("none", "random")  # besides '', which open_clip already reads as random weights


def weights_for_open_clip(pretrained):
    """What open_clip is given for `pretrained`: '' for the random-init words, else the value as it is."""
    return "" if isinstance(pretrained, str) and pretrained.strip().lower() in RANDOM_INIT else pretrained


@contextlib.contextmanager
def random_init_words(cli):
    """While active, `cli.load_clip` hands open_clip '' for `--pretrained none` / `random`."""
    original = cli.load_clip

    @functools.wraps(original)
    def load_clip(*args, **kwargs):
        if kwargs.get("model_type", args[0] if args else None) == "open_clip":
            if "pretrained" in kwargs:
                kwargs["pretrained"] = weights_for_open_clip(kwargs["pretrained"])
            elif len(args) > 2:
                args = (*args[:2], weights_for_open_clip(args[2]), *args[3:])
        return original(*args, **kwargs)

    cli.load_clip = load_clip
    try:
        yield
    finally:
        cli.load_clip = original
