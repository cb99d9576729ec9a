"""rsst: refill's unit choice, but the leaving units are not zeroed: while the state trains, an L2
penalty lambda x w is added to the gradient of their weights only, lambda growing on `schedule`
(x, x^2, x^3, exp, exp_custom, exp_custom_exponents with `exponents`) in steps of `reg_scale`,
exactly as the reference `update_reg` sets it (`unit_choice.penalty_strengths`: lambda is updated at
the batches i of each epoch with reg_scale x i < 1 and held in between). The units are sliced out
when the state ends, so they leave small rather than abruptly. Parameters, scores and counts as
refill (`refill.py`); the defaults of schedule, reg_scale and exponents are the reference's.
"""
from __future__ import annotations

from ..registry import register_strategy
from .base import check_choice, check_float, check_int
from .params import Choice, Float, Int
from .refill import IteratedUnitStrategy
from .unit_choice import SCHEDULES


@register_strategy("rsst")
class Rsst(IteratedUnitStrategy):
    param_spec = {**IteratedUnitStrategy.param_spec,
                  "schedule": Choice("exp_custom_exponents", "how lambda grows during the state", choices=SCHEDULES),
                  "reg_scale": Float(1.0, "lambda's step (and updates only at batches i < 1/reg_scale of an epoch)",
                                     low=0.0, high=1e6, low_open=True),
                  "exponents": Int(4, "curvature of exp_custom_exponents", low=1, high=64)}

    def _check(self):
        super()._check()
        p = self.params
        check_choice("schedule", p["schedule"], SCHEDULES, self.name)
        p["reg_scale"] = check_float("reg_scale", p["reg_scale"], 0.0, 1e6, low_open=True, owner=self.name)
        p["exponents"] = check_int("exponents", p["exponents"], 1, 64, self.name)
