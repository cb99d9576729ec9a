"""Hooking a token strategy into a vision transformer's blocks, and undoing it.

Each block's class is swapped for a subclass whose `forward` asks the strategy how many tokens
leave the block. A block that keeps every token (and needs no size bias) runs its own, unmodified
`forward`, so budgets that keep everything are exact no-ops. A reducing block runs attention with
its q/k exposed, adds the attention residual, lets the strategy select or merge tokens, then runs
its MLP on the survivors. A strategy whose `placement` is "exit" reduces at the block's exit instead:
the MLP runs on every token and the reduction takes the block's output (what enters the next block),
with the decision still made from the block's own attention. With "ahead" (MCTF's one-step-ahead
attention) the block's input is reduced from its attention map before the attention output is formed,
and the reduced tokens attend with the reduction's merged map. A strategy that reshapes attention weights
(GTP's sparsification) has every block attend with its reshaped softmax weights. Swapping classes (not storing bound methods on instances) keeps
`nn.DataParallel` replicas and `state_dict` intact.
"""
from __future__ import annotations

import warnings

import torch

from ..families import Family, locate
from ..strategies.base import Selection, TokenStrategy
from ..strategies.per_image import PaddedSelection, key_mask_bias
from .attention import attention_probe, attention_with_probe, reshaped_attention_with_probe
from .pooling import patched_vit_class

_BLOCK_CLASSES: dict[type, type] = {}
_ATTRS = ("_pb_run", "_pb_layer", "_pb_layout")


class TokenRun:
    """A token strategy on one model: what it was told and what the last forward did."""

    def __init__(self, strategy: TokenStrategy, n_prefix: int, n_layers: int, family: Family | None = None):
        self.strategy = strategy
        self.family = family
        self.n_prefix = n_prefix
        self.n_layers = n_layers
        self.trace_source = False  # keep a (B, tokens, patches) map of which patches each token holds
        self.record_attention = False  # keep each block's CLS attention and kept indices
        self._warned: set[str] = set()
        self._last_layer = float("inf")
        self.begin(None)

    def begin(self, x: torch.Tensor | None) -> None:
        self.size = None  # (B, N, 1) patches per token, once tokens have been merged
        self.rope = None  # (B, N, R) rotary table per token (prefix rows unused), once tokens were reduced
        self.source = None
        self.tokens_in: list[int] = []
        self.tokens_mlp: list[int] = []
        self.tokens_out: list[int] = []
        self.records: list[dict] = []
        self.mask = None  # (B, N) bool once images keep different numbers of tokens: False marks padding
        self.counts_in: list[torch.Tensor | None] = []  # per block: valid tokens per image (None: all N)
        self.counts_mlp: list[torch.Tensor | None] = []
        # what a strategy derives once from the first block's input and carries through its reductions
        self.carry = None
        if x is not None and self.strategy.carries_state:
            self.carry = self.strategy.start(x, self.n_prefix, self.family.patch_grid())
        if x is not None and self.trace_source:
            B, N, _ = x.shape
            self.source = torch.eye(N, device=x.device, dtype=x.dtype).expand(B, N, N)

    def block_forward(self, block, x: torch.Tensor, original, args: tuple, kwargs: dict) -> torch.Tensor:
        layer = block._pb_layer
        # a new forward pass started (whatever the entry point); block 0 decides without reading the last
        # layer, so a compiled forward guards on no state left by the previous batch (no recompilation)
        if layer == 0 or layer <= self._last_layer:
            self.begin(x)
        self._last_layer = layer
        rope, extra_args = self.family.split_block_args(args, kwargs)
        if self.rope is not None:  # tokens were reduced earlier: the block's own table no longer fits
            rope = self.rope[:, None, self.n_prefix:]
        N = int(x.shape[1])  # a 0-d tensor while tracing (fvcore): keep schedules plain ints
        n_out, message = self.strategy.plan_block(layer, N, self.n_prefix, self.n_layers)
        # a clamp note depends on the schedule alone; the eager forward warns (warnings.warn would break a compiled graph)
        if message and message not in self._warned and not torch.compiler.is_compiling():
            self._warned.add(message)
            warnings.warn(f"{self.strategy.name}: {message}", UserWarning, stacklevel=4)
        self.tokens_in.append(N)
        self.counts_in.append(None if self.mask is None else self.mask.sum(dim=1))
        bias_needed = self.size is not None and self.strategy.uses_size_bias()
        # a per-image strategy's static width may exceed a padded batch's: it still decides in its blocks
        reducing = n_out < N or (getattr(self.strategy, "per_image", False) and self.strategy.reduces_at(layer))
        reshaping = self.strategy.reshapes_attention
        if not reducing and not bias_needed and not reshaping and not self.record_attention and self.mask is None:
            self.tokens_mlp.append(N)
            self.tokens_out.append(N)
            self.counts_mlp.append(None)
            return original() if self.rope is None else original(**self.family.block_call(rope))
        if any(a is not None and a is not False for a in extra_args):
            raise ValueError("token reduction cannot be combined with an attention mask")

        layout = block._pb_layout
        norm1, _, norm2, mlp = layout.parts(block)
        bias = self.size.log()[:, None, None, :, 0] if bias_needed else None
        if self.mask is not None:  # padding: no real token attends to it
            padding = key_mask_bias(self.mask, x.dtype)
            bias = padding if bias is None else bias + padding
        rotate = None if rope is None else (lambda t: self.family.rotate(t, rope))
        if self.strategy.placement == "ahead":
            return self._reduce_ahead(block, layout, x, bias, rotate, rope, n_out, reducing)
        view = self.family.attention_view(block)
        if reshaping:
            out, probe = reshaped_attention_with_probe(view, norm1(x), bias, self.strategy.reshape_attention, rotate,
                                                       self.n_prefix)
        else:
            out, probe = attention_with_probe(view, norm1(x), bias, rotate, self.n_prefix)
        x = x + layout.attn_residual(block, out)
        del out
        if self.strategy.placement == "exit":  # the MLP sees every token; the block's output is reduced
            self._entering_mlp(x)
            x = x + layout.mlp_residual(block, mlp(norm2(x)))
            x, _ = self._reduce(layer, x, probe, rope, n_out, reducing)
            self.tokens_out.append(int(x.shape[1]))
            return x
        x, _ = self._reduce(layer, x, probe, rope, n_out, reducing)
        del probe  # q and k must not stay alive through the MLP: they would raise peak memory
        self._entering_mlp(x)
        self.tokens_out.append(int(x.shape[1]))
        return x + layout.mlp_residual(block, mlp(norm2(x)))

    def _entering_mlp(self, x: torch.Tensor) -> None:
        self.tokens_mlp.append(int(x.shape[1]))
        self.counts_mlp.append(None if self.mask is None else self.mask.sum(dim=1))

    def _reduce_ahead(self, block, layout, x, bias, rotate, rope, n_out: int, reducing: bool) -> torch.Tensor:
        """Reduce the block's input from its attention map before the attention output is formed; the block then
        runs on the reduced tokens with the reduction's attention map (`merge_attention`) in place of its own."""
        norm1, _, norm2, mlp = layout.parts(block)
        view = self.family.attention_view(block)
        probe = attention_probe(view, norm1(x), bias, rotate, self.n_prefix)
        x, reduction = self._reduce(block._pb_layer, x, probe, rope, n_out, reducing)
        weights = reduction.merge_attention() if reduction is not None else probe.attention_map()
        del probe
        x = x + layout.attn_residual(block, view.from_weights(norm1(x), weights))
        self._entering_mlp(x)
        self.tokens_out.append(int(x.shape[1]))
        return x + layout.mlp_residual(block, mlp(norm2(x)))

    def _reduce(self, layer: int, x: torch.Tensor, probe, rope, n_out: int, reducing: bool):
        """(`x` (B, N, C) taken to `n_out` tokens by the strategy, with sizes, rotary rows and sources following;
        the reduction, or None). The reduction is returned, never stored: a compiled graph would have to rebuild it."""
        kept = reduction = None
        if reducing:
            extra = {"mask": self.mask} if getattr(self.strategy, "per_image", False) else {}
            if self.carry is not None:
                extra["carry"] = self.carry
            reduction = self.strategy.reduce(layer, x, probe, self.n_prefix, n_out, **extra)
            if self.carry is not None:
                self.carry = reduction.carry  # the carried state, for the tokens the reduction leaves
            if isinstance(reduction, PaddedSelection):
                reduction = self._padded(reduction)
            size = self.size
            rows = None if rope is None else self._rope_rows(rope, x)
            x, self.size = reduction.reduce_features(x, size)  # first: some strategies settle their plan here
            if rows is not None:
                self.rope = reduced_rope(reduction, rows, size)
            if self.source is not None:
                self.source = reduction.apply(self.source, "sum")
            if isinstance(reduction, Selection):
                kept = reduction.index
        if self.record_attention:
            cls_attention = probe.attention_rows(slice(0, 1))[:, 0] if self.n_prefix else None
            self.records.append({"layer": layer, "cls_attention": cls_attention, "kept_index": kept,
                                 "owner": None if self.source is None else owner_of_inputs(self.source)})
        return x, reduction

    def _padded(self, reduction: PaddedSelection) -> PaddedSelection:
        """Carry a per-image selection's mask on. An eager forward cuts the padding to the batch's longest
        row (an image run alone has none); a compiled one keeps the strategy's static width."""
        if not torch.compiler.is_compiling():
            reduction = reduction.trimmed()
        valid = reduction.valid
        if self.mask is not None:  # a padded token never comes back
            valid = valid & self.mask.gather(1, reduction.index)
        self.mask = valid
        return reduction

    def token_weights(self) -> torch.Tensor | None:
        """(B, N, 1) weight of each token in an average pool: the patches it holds, 0 for padding; None when
        every token counts once."""
        if self.size is None and self.mask is None:
            return None
        weight = torch.ones_like(self.mask[..., None], dtype=torch.float32) if self.size is None else self.size
        return weight if self.mask is None else weight * self.mask[..., None].to(weight.dtype)

    def _rope_rows(self, rope: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The rotary table as one row per token (B, N, R), prefix rows zero, to reduce with the tokens."""
        if self.rope is not None:
            return self.rope
        B, N, _ = x.shape
        table = rope.reshape(-1, rope.shape[-2], rope.shape[-1])  # (1 or B, patches, R)
        table = table.expand(B, -1, -1).to(x.dtype)
        prefix = table.new_zeros(B, self.n_prefix, table.shape[-1])
        return torch.cat([prefix, table], dim=1)

    def stats(self) -> dict:
        stats = {"tokens_per_layer": list(self.tokens_in), "mlp_tokens_per_layer": list(self.tokens_mlp),
                 "out_tokens_per_layer": list(self.tokens_out)}
        if all(c is None for c in self.counts_in + self.counts_mlp):
            return stats
        # per-image budgets: each image's own counts, and per block the most any image kept (the padded
        # width of an eager forward; a compiled one pads to the strategy's static width)
        batch = next(c for c in self.counts_in + self.counts_mlp if c is not None).shape[0]
        for key, counts, widths in (("tokens", self.counts_in, self.tokens_in),
                                    ("mlp_tokens", self.counts_mlp, self.tokens_mlp)):
            table = torch.stack([torch.full((batch,), n) if c is None else c.cpu() for c, n in zip(counts, widths)], 1)
            stats[f"{key}_per_image"] = table.tolist()
            stats[f"{key}_per_layer"] = table.max(dim=0).values.tolist()
        return stats


def reduced_rope(reduction, rows: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    """The rotary rows after a reduction: each output token's size-weighted mean of the (cos, sin) rows
    it absorbed, with the decision the reduction already made (a kept token keeps its own row). A reduction
    that places its tokens itself (`rotary_rows`, e.g. a resampling whose tokens are not sums of patches)
    gives their rows directly."""
    if hasattr(reduction, "rotary_rows"):
        return reduction.rotary_rows(rows)
    weight = torch.ones_like(rows[..., :1]) if size is None else size.to(rows.dtype)
    return reduction.apply(rows * weight, "sum") / reduction.apply(weight, "sum").clamp_min(1e-12)


def owner_of_inputs(source: torch.Tensor) -> torch.Tensor:
    """(B, tokens_at_input) int32: which current token holds each input token, -1 where it was dropped.

    `source` is the (B, tokens_now, tokens_at_input) 0/1 map kept while `trace_source` is on; each
    input token is held by at most one current token, whether selection or merging put it there."""
    held = source > 0
    owner = held.to(torch.uint8).argmax(dim=1).to(torch.int32)
    return torch.where(held.any(dim=1), owner, torch.full_like(owner, -1))


def _patched_block_class(cls: type) -> type:
    if cls not in _BLOCK_CLASSES:

        def forward(self, x, *args, **kwargs):
            def original(**replace):
                return cls.forward(self, x, *args, **{**kwargs, **replace})

            return self._pb_run.block_forward(self, x, original, args, kwargs)

        _BLOCK_CLASSES[cls] = type(f"TokenReduced{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _BLOCK_CLASSES[cls]


class TokenAttachment:
    """Undo record for a token strategy: which modules had their class swapped."""

    def __init__(self, run: TokenRun, swapped: list[tuple[torch.nn.Module, type]]):
        self.run = run
        self._swapped = swapped

    def stats(self) -> dict:
        return self.run.strategy.extend_stats(self.run.stats())

    @property
    def removed(self) -> bool:
        """Whether a block of the last forward removed tokens."""
        return any(m < n for n, m in zip(self.run.tokens_in, self.run.tokens_out))

    def restore(self) -> None:
        while self._swapped:
            module, cls = self._swapped.pop()
            module.__class__ = cls
            for name in _ATTRS:
                module.__dict__.pop(name, None)


def attach_token_strategy(model: torch.nn.Module, strategy: TokenStrategy, family: Family | None = None) -> TokenAttachment:
    target = family or locate(model)
    if strategy.needs_class_token and target.n_prefix == 0:
        raise ValueError(f"{strategy.name} ranks tokens by the class token's attention; this model has no class token")
    strategy.check_model(len(target.blocks), target.n_prefix)
    target.check_tokens()
    modules = [target.vit, *target.blocks]
    if any(hasattr(m, "_pb_run") for m in modules):
        raise ValueError("this model already carries a token strategy; restore it before adding another")
    layouts = [target.block_layout(b) for b in target.blocks]  # refuse unknown blocks before touching anything
    run = TokenRun(strategy, target.n_prefix, len(target.blocks), target)
    swapped = []
    try:
        for layer, (block, layout) in enumerate(zip(target.blocks, layouts)):
            swapped.append((block, type(block)))
            block.__class__ = _patched_block_class(type(block))
            block._pb_run, block._pb_layer, block._pb_layout = run, layer, layout
        swapped.append((target.vit, type(target.vit)))
        target.vit.__class__ = patched_vit_class(type(target.vit), target)
        target.vit._pb_run = run
    except BaseException:
        TokenAttachment(run, swapped).restore()
        raise
    return TokenAttachment(run, swapped)
