"""refill: iterative structured pruning of heads and MLP neurons with real masks (Chen et al., ICML 2022,
"Coarsening the Granularity: Towards Structurally Sparse Lottery Tickets"; reference code zjgxwl/RSST).

A state opens when the strategy is attached: each block's heads and neurons are scored by `criterion`
on the weights at hand (the previous state's trained weights), the lowest `head_ratio` / `mlp_ratio`
share leaves (per block or ranked over all blocks, `scope`), `fillback_rate` puts back that share of
the leaving units, best first. The leaving units' weights are zeroed and kept zero while the state
trains; when it ends they are sliced out (`patches/unit_state.py`). Ratios apply to the units present
when the state opens, so over `--rounds N` they compound, as head_prune's rounds do. `rewind`
('STATE:EPOCH') sets the surviving weights back to those of an earlier state at the opening of every
later state, as lottery-ticket runs do ('1:0': the weights the first state started from).
Scores, counts and the reference's conventions are in `unit_choice.py`.

Where the reference differs (kept on purpose): its ratio is re-applied to the full width every state
(sparsity stays at the first state's), a global ranking may empty a block (here every block keeps its
best unit), counts are floored (here the nearest count, as head_prune, equal at the seed's widths).
"""
from __future__ import annotations


from ..families import locate
from ..patches import unit_state  # the module, not its names: unit_state imports strategies.base
from ..registry import register_strategy
from .base import StructuredPlan, StructuredStrategy, check_float, warn_noop
from .params import Calibration, Choice, Custom, Float
from .importance import CountingIterable
from .unit_choice import CRITERIA, SCOPES, check_common, check_rewind, keep_units, unit_scores


class IteratedUnitStrategy(StructuredStrategy):
    """What refill and rsst share: parameters, the unit choice, and opening a state on the model."""

    kind = "structured"
    compute_knob = "head_ratio"
    example_params = {"head_ratio": 0.5, "mlp_ratio": 0.5}
    keep_all_params = {"head_ratio": 0.0, "mlp_ratio": 0.0}
    param_spec = {
        "head_ratio": Float(0.3, "share of the attention heads present that leave in this state", high_open=True),
        "mlp_ratio": Float(0.3, "share of the MLP neurons present that leave in this state", high_open=True),
        "criterion": Choice("magnitude", "unit score (saliency needs calibration batches)", choices=CRITERIA),
        "scope": Choice("layerwise", "rank within each block, or all blocks together on raw scores", choices=SCOPES),
        "rewind": Custom(None, "surviving weights go back to those after EPOCH of STATE (1:0 = start)",
                         text="none or 'STATE:EPOCH'", checker=lambda name, value, owner: check_rewind(value, owner)),
        "calibration": Calibration(None, "image batches or (images, labels); needed by criterion=saliency",
                                   optional=True),
    }

    def _check(self):
        p = self.params
        check_common(p, self.name)
        if p["criterion"] == "saliency" and p["calibration"] is None and self._prunes():
            raise ValueError(f"{self.name}: criterion='saliency' needs calibration=<iterable of image batches or "
                             "(images, labels)>")
        self._calibration_summary = None

    def _prunes(self) -> bool:
        return self.params["head_ratio"] > 0 or self.params["mlp_ratio"] > 0

    def resolved_params(self):
        return {**self.params, "calibration": self._calibration_summary}

    def fillback(self) -> float:
        return 0.0

    def plan(self, model, family) -> StructuredPlan:
        """The decision alone: the units kept in each block (what `attach` opens a state with)."""
        p = self.params
        counted = CountingIterable(p["calibration"]) if p["calibration"] is not None else None
        heads, neurons = unit_scores(model, p["criterion"], p["head_ratio"], counted, self.name)
        if counted is not None:
            self._calibration_summary = counted.summary()
        kept_h, floored_h = keep_units(heads, p["head_ratio"], p["scope"], self.fillback())
        kept_n, floored_n = keep_units(neurons, p["mlp_ratio"], p["scope"], self.fillback())
        for name, floored in (("head_ratio", floored_h), ("mlp_ratio", floored_n)):
            if floored:
                warn_noop(self.name, f"{name}={p[name]} would empty a block; every block keeps its best unit")
        stats = {"head_scores": [s.tolist() for s in heads], "mlp_scores": [s.tolist() for s in neurons],
                 "heads_total_per_layer": [len(s) for s in heads],
                 "mlp_hidden_total_per_layer": [len(s) for s in neurons]}
        return StructuredPlan(heads=kept_h, neurons=kept_n, extra_stats=stats)

    def attach(self, model):
        family = locate(model)
        if not self._prunes():
            warn_noop(self.name, "head_ratio=0 and mlp_ratio=0 remove nothing; the model is left unchanged")
        plan = self.plan(model, family)
        kept_h, kept_n, stats = plan.heads, plan.neurons, plan.extra_stats
        if self._prunes() and all(len(k) == len(s) for k, s in zip(kept_h + kept_n, stats["head_scores"] + stats["mlp_scores"])):
            warn_noop(self.name, f"head_ratio={self.params['head_ratio']} and mlp_ratio={self.params['mlp_ratio']} "
                                 "round to no unit removed; the model is left unchanged")
        return unit_state.open_state(model, family, self.name, self.params, kept_h, kept_n, stats)


@register_strategy("refill")
class Refill(IteratedUnitStrategy):
    param_spec = {**IteratedUnitStrategy.param_spec,
                  "fillback_rate": Float(0.0, "share of the units chosen to leave that are put back, best first",
                                         high_open=True)}

    def _check(self):
        super()._check()
        self.params["fillback_rate"] = check_float("fillback_rate", self.params["fillback_rate"], 0.0, 1.0,
                                                   high_open=True, owner=self.name)

    def fillback(self) -> float:
        return self.params["fillback_rate"]
