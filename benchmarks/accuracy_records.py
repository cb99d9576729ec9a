"""Which records of the accuracy benchmark's log stand for which planned configuration, for a resume and for
`--table_only` alike: a configuration is known by its id with every number kept to 4 significant digits, so ids
written with other digits (`@0.80` or `@0.8`, a label rounded later) still name it, and of two records naming one
configuration the later one is used."""
from __future__ import annotations

import json
import re
from pathlib import Path

NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def id_key(config_id: str) -> str:
    """A configuration id with every number kept to 4 significant digits: `tome[match_fraction=0.80]@0.8` and
    `tome[match_fraction=0.8]@0.80` are one configuration (labels have been written with other digits)."""
    return NUMBER.sub(lambda m: f"{float(m.group()):.4g}", config_id)


def in_plan_order(done: dict[str, dict], configs: list[dict]) -> list[dict]:
    """Records in the order of the plan (records from earlier plans last), whatever order they finished in."""
    order = {id_key(c["id"]): i for i, c in enumerate(configs)}
    return sorted(done.values(), key=lambda r: order.get(id_key(r["id"]), len(order)))


def done_ids(path: Path) -> dict[str, dict]:
    """The records of `path` by `id_key`; of two records naming one configuration, the later."""
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {id_key(r["id"]): r for r in records}


def to_run(configs: list[dict], done: dict[str, dict], only: list[str] | None = None) -> list[dict]:
    """The planned configurations without a record (and among `only`, when given: the baseline always)."""
    wanted = None if only is None else {id_key(i) for i in only} | {"baseline"}
    return [c for c in configs if id_key(c["id"]) not in done and (wanted is None or id_key(c["id"]) in wanted)]
