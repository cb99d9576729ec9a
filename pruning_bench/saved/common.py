"""What every family's saved file shares: the format tag, the metadata record, block shrinking, file reading.

A saved file is safetensors: the weights of the compact model as it runs, plus one metadata entry
(`pruning_bench`, JSON) recording the architecture. Which heads or neurons were kept is not stored:
once weights are sliced only the sizes matter, so each block of a freshly built model is cut down to
the recorded widths with the very slicing functions structured pruning uses, and the weights load
strictly.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

FORMAT = "pruning_bench.saved/1"
METADATA_KEY = "pruning_bench"


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer, as separate contiguous CPU tensors (safetensors refuses shared ones)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def dtype_name(module: nn.Module) -> str:
    first_float = next((p for p in module.parameters() if p.is_floating_point()), None)
    return str(first_float.dtype).removeprefix("torch.") if first_float is not None else "float32"


def jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def token_strategy(core: nn.Module) -> dict | None:
    """The token strategy patched into `core` right now (it holds no weights, so it is only recorded)."""
    run = getattr(core, "_pb_run", None)
    if run is None:
        return None
    params = {k: v for k, v in run.strategy.resolved_params().items() if k != "calibration"}
    return {"strategy": run.strategy.name, "params": json.loads(json.dumps(params, default=str))}


def block_record(family) -> dict[str, Any]:
    """Heads and MLP width per block, and which blocks of the unpruned model they are."""
    heads, hidden = family.block_widths()
    kept = getattr(family.blocks_container, "pb_kept_indices", None)
    return {"heads_per_block": heads, "mlp_hidden_per_block": hidden,
            "blocks_kept": list(kept) if kept is not None else list(range(len(heads)))}


def shrink_blocks(family, heads: list[int], hidden: list[int]) -> None:
    """Cut each block of a freshly built model (located as `family`) down to the recorded widths (the
    first units: only sizes matter), with the family's attention and MLP views."""
    blocks = family.blocks
    if len(blocks) != len(heads) or len(blocks) != len(hidden):
        raise ValueError(f"the record gives widths for {len(heads)} blocks but the rebuilt model has {len(blocks)}")
    for i, block in enumerate(blocks):
        attn, mlp = family.attention_view(block), family.mlp_view(block)
        full_heads, full_hidden = attn.num_heads, mlp.hidden
        if not (1 <= heads[i] <= full_heads and 1 <= hidden[i] <= full_hidden):
            raise ValueError(f"block {i}: saved widths ({heads[i]} heads, {hidden[i]} MLP) do not fit the rebuilt "
                             f"model's ({full_heads} heads, {full_hidden} MLP)")
        if heads[i] < full_heads:
            family.replace_part(block, "attn", attn.sliced(torch.arange(heads[i], device="cpu")))
        if hidden[i] < full_hidden:
            family.replace_part(block, "mlp", mlp.sliced(torch.arange(hidden[i], device="cpu")))


def probe_images(channels: int, size, dtype: torch.dtype) -> torch.Tensor:
    h, w = size if isinstance(size, (list, tuple)) else (size, size)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, int(channels), int(h), int(w), generator=generator).to(dtype)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_architecture(path) -> dict[str, Any]:
    """The architecture record of a saved file (no weights read); a file that is not one is a one-line ValueError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors' own error type for a file that is not safetensors
        raise ValueError(f"{path} is not a pruning-bench saved model (not a safetensors file: {first_line(exc)})") from None
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not a pruning-bench saved model (no {METADATA_KEY!r} metadata)")
    try:
        architecture = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the {METADATA_KEY!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(architecture, dict) or architecture.get("format") != FORMAT:
        found = architecture.get("format") if isinstance(architecture, dict) else type(architecture).__name__
        raise ValueError(f"{path} is not a pruning-bench saved model (format {found!r}, expected {FORMAT})")
    return architecture


def is_saved_model(path) -> bool:
    try:
        read_architecture(path)
        return True
    except Exception:
        return False
