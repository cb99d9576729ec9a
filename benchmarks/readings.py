"""What the benchmark tables say, computed from their records, so that no reading outlives its table.

Every sentence the accuracy and fine-tuning reports (and the README blocks copied from them) say about their
numbers is produced here from the records (`reports/*.jsonl`). The rules:
- a difference between two configurations is significant only when its 95% interval excludes zero: the paired
  bootstrap over the test images when both records keep per-image correctness, else the bound from top-1
  agreement (`accuracy_intervals.difference_interval`, conservative);
- an ordering writes `a > b` only where the gap between neighbours (best first) is significant and `a ~ b` where
  it is not: a `~` chain is a group within noise, whatever its ends look like;
- fine-tuning runs (several seeds, no per-image correctness) compare means with Welch's t interval over seeds.

    python benchmarks/readings.py    # rebuild reports/accuracy.{md,csv}, reports/finetune_tome.md and the README blocks
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_intervals import delta_interval, difference_interval  # noqa: E402

from pruning_bench.report.uncertainty import paired_bootstrap, unpack_correct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python benchmarks/readings.py"


# ---------------------------------------------------------------- rules


@dataclass
class Gap:
    """a - b in accuracy points with its 95% interval (NaN bounds: no interval could be formed)."""

    diff: float
    low: float
    high: float
    method: str

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0  # False when the bounds are NaN

    def text(self) -> str:
        if math.isnan(self.low):
            return f"{100 * self.diff:+.1f} (no interval)"
        return f"{100 * self.diff:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"

    def verdict(self) -> str:
        return "significant" if self.significant else "within noise"


def images(record: dict) -> int | None:
    return record["cifar10"].get("images") or (record.get("per_image") or {}).get("n")


def delta(record: dict) -> float:
    """acc1 against the unpruned model of the record's own sitting (rows of different sittings compare through it)."""
    return record["cifar10"]["acc1"] - record["cifar10"]["acc1_unpruned"]


def gap(a: dict, b: dict) -> Gap:
    """delta(a) - delta(b) with its 95% interval: paired bootstrap when both keep per-image correctness."""
    diff = delta(a) - delta(b)
    n = images(a)
    if not n or n != images(b):
        return Gap(diff, math.nan, math.nan, "none")
    if a.get("per_image") and b.get("per_image"):
        low, high = paired_bootstrap([(unpack_correct(a["per_image"]["correct"], n),
                                       unpack_correct(b["per_image"]["correct"], n))])
        return Gap(diff, low, high, "bootstrap")
    half = difference_interval(a, b, n)
    return Gap(diff, diff - half, diff + half, "agreement bound")


def tiers(rows: list[tuple[str, dict]]) -> list[tuple[str, dict, Gap | None]]:
    """Rows best first, each with its gap to the row before it (None for the first)."""
    ranked = sorted(rows, key=lambda row: -delta(row[1]))
    return [(label, record, None if i == 0 else gap(ranked[i - 1][1], record))
            for i, (label, record) in enumerate(ranked)]


def ordering(rows: list[tuple[str, dict]]) -> str:
    """`a (-1.6) > b (-2.7) ~ c (-2.9)`: `>` where the neighbours' gap is significant, `~` where it is not."""
    parts = []
    for label, record, step in tiers(rows):
        if step is not None:
            parts.append(">" if step.significant else "~")
        parts.append(f"{label} ({100 * delta(record):+.1f})")
    return " ".join(parts)


def groups_within_noise(rows: list[tuple[str, dict]]) -> list[list[str]]:
    """The ordering cut where neighbours are significantly apart: each inner list is a group within noise."""
    out: list[list[str]] = []
    for label, _, step in tiers(rows):
        if step is None or step.significant:
            out.append([label])
        else:
            out[-1].append(label)
    return out


# ---------------------------------------------------------------- accuracy table


def label(record: dict) -> str:
    """A record's row name: strategy, the setting its group varies, and its start block."""
    p, group = record["params"], record["group"]
    varied = {"alpha": "alpha", "direction": "importance_direction", "match_fraction": "match_fraction"}.get(group)
    extra = f"{varied}={p.get(varied)}" if varied else p.get("importance") or record.get("variant") or ""
    name = record["strategy"] + (f" [{extra}]" if extra else "")
    return name + (f" from block {record['start_layer']}" if record.get("start_layer") is not None else "")


def budget_text(budget) -> str:
    return "the EViT protocol" if budget is None else f"{budget:.0%} MACs"


def pick(records, strategy=None, groups=None, budget=..., start_layer=..., **params) -> list[dict]:
    return [r for r in records if r["id"] != "baseline"
            and (strategy is None or r["strategy"] == strategy)
            and (groups is None or r["group"] in groups)
            and (budget is ... or r["budget"] == budget)
            and (start_layer is ... or r.get("start_layer") == start_layer)
            and all(r["params"].get(k) == v for k, v in params.items())]


def budgets(records) -> list[float]:
    return sorted({r["budget"] for r in records if r["budget"] is not None}, reverse=True)


def points(record: dict) -> str:
    return f"{100 * delta(record):+.1f}"


def accuracy_readings(records: list[dict]) -> list[str]:
    """The readings of the accuracy table, one markdown bullet each (an empty list when nothing applies)."""
    lines = [_against_unpruned(records)]
    for reading in (_tome_vs_random, _match_fraction, _attention_vs_random, _anchor_variants, _start_blocks,
                    _structured, _field, _proportional_attention, _protocol):
        lines += reading(records)
    return [f"- {line}" for line in lines if line]


def _against_unpruned(records) -> str:
    base = next((r for r in records if r["id"] == "baseline"), None)
    if base is None:
        return ""
    quiet = []
    for r in records:
        n = images(r)
        if r["id"] == "baseline" or not n:
            continue
        half, _ = delta_interval(r, base, n)
        if not abs(delta(r)) > half:
            quiet.append(f"{label(r)} at {budget_text(r['budget'])} ({points(r)} ±{100 * half:.1f})")
    if not quiet:
        return "Every change against the unpruned model is significant."
    return "Every change against the unpruned model is significant except " + "; ".join(quiet) + "."


def _tome_vs_random(records) -> list[str]:
    out = []
    for b in budgets(records):
        tome = pick(records, "tome", {"main"}, b)
        randoms = pick(records, "random_drop", {"main", "start_layer"}, b)
        if not tome or not randoms:
            continue
        best = max(randoms, key=delta)
        text = (f"At {budget_text(b)} tome ({points(tome[0])}) against random_drop's best start block "
                f"(block {best['start_layer']}, {points(best)}): {gap(tome[0], best).text()}, "
                f"{gap(tome[0], best).verdict()}")
        first = [r for r in randoms if r.get("start_layer") == 1 and r is not best]
        if first:
            g = gap(tome[0], first[0])
            text += f"; against random_drop from block 1 ({points(first[0])}): {g.text()}, {g.verdict()}"
        out.append(text + ".")
    return out


def _match_fraction(records) -> list[str]:
    out = []
    for b in budgets(records):
        chain = pick(records, "tome", {"main", "match_fraction"}, b)
        chain = sorted(chain, key=lambda r: -r["params"].get("match_fraction", 1.0))
        if len(chain) < 2:
            continue
        steps = [f"{a['params'].get('match_fraction', 1.0)} -> {c['params'].get('match_fraction', 1.0)}: "
                 f"{gap(a, c).text()} ({gap(a, c).verdict()})" for a, c in zip(chain, chain[1:])]
        text = f"tome at {budget_text(b)}, each step down in match_fraction (the larger share's lead): "
        text += "; ".join(steps)
        full = chain[0]["gmacs"]
        capped = [f"match_fraction {r['params']['match_fraction']} ran at {r['gmacs'] / full:.1%} of the MACs of "
                  f"match_fraction {chain[0]['params'].get('match_fraction', 1.0)}" for r in chain[1:]
                  if r["gmacs"] > 1.005 * full]
        out.append(text + ("" if not capped else " (the matching share capped r: " + "; ".join(capped) + ")") + ".")
    return out


def _attention_vs_random(records) -> list[str]:
    pairs = []
    for r in pick(records, groups={"main", "start_layer"}):
        if r["strategy"] not in ("cls_topk", "anchor_diversity"):
            continue
        random = pick(records, "random_drop", {"main", "start_layer"}, r["budget"], r.get("start_layer"))
        if random:
            pairs.append((r, gap(r, random[0])))
    if not pairs:
        return []
    worse = [(r, g) for r, g in pairs if g.diff < 0]
    below = [f"{label(r)} at {budget_text(r['budget'])} ({g.text()})" for r, g in worse if g.significant]
    above = [f"{label(r)} at {budget_text(r['budget'])} ({g.text()})" for r, g in pairs if g.diff > 0 and g.significant]
    text = (f"Keeping tokens by attention (cls_topk, anchor_diversity) against random_drop at the same budget and "
            f"start block: below it in {len(worse)} of {len(pairs)} pairs, significantly in {len(below)}"
            + (": " + "; ".join(below) if below else ""))
    return [text + (f"; significantly above it in {len(above)}: " + "; ".join(above) if above else "") + "."]


def _anchor_variants(records) -> list[str]:
    out = []
    for b in budgets(records):
        base = pick(records, "anchor_diversity", {"main"}, b, 1)
        variants = pick(records, "anchor_diversity", {"alpha", "direction"}, b)
        if not base or not variants:
            continue
        parts = [f"{label(v).split(' from block')[0].split('[')[1].rstrip(']')} {gap(v, base[0]).text()} "
                 f"({gap(v, base[0]).verdict()})" for v in variants]
        out.append(f"anchor_diversity from block 1 at {budget_text(b)}, each variant against alpha 0.5 with "
                   f"importance_direction anchor_to_token ({points(base[0])}): " + "; ".join(parts) + ".")
    return out


def _start_blocks(records) -> list[str]:
    out = []
    for strategy in ("random_drop", "cls_topk", "anchor_diversity"):
        for b in budgets(records):
            rows = pick(records, strategy, {"main", "start_layer"}, b)
            if len(rows) > 1:
                named = [(f"block {r['start_layer']}", r) for r in rows]
                out.append(f"{strategy} at {budget_text(b)} by start block: {ordering(named)}.")
    return out


def _structured(records) -> list[str]:
    out = []
    for b in budgets(records):
        fisher = pick(records, "head_prune", {"structured"}, b, importance="fisher")
        magnitude = pick(records, "head_prune", {"structured"}, b, importance="magnitude")
        if fisher and magnitude:
            g = gap(fisher[0], magnitude[0])
            out.append(f"head_prune at {budget_text(b)}, Fisher against magnitude importance: {g.text()}, "
                       f"{g.verdict()}.")
    return out


def off_budget(record: dict, records: list[dict]) -> str:
    """` at 65% MACs` when the row's counted MACs miss its budget by more than 0.01 of the unpruned MACs (a knob
    that cannot land closer, or per-image counts that differ from the images matched on), else ``."""
    base = next((r for r in records if r["id"] == "baseline"), None)
    if base is None or record.get("budget") is None:
        return ""
    ratio = record["gmacs"] / base["gmacs"]
    return f" at {100 * ratio:.0f}% MACs" if abs(ratio - record["budget"]) > 0.01 else ""


def _field(records) -> list[str]:
    out = []
    for b in budgets(records):
        rows = [(label(r) + off_budget(r, records), r) for r in pick(records, groups={"field"}, budget=b)]
        if len(rows) > 1:
            out.append(f"The field at {budget_text(b)}, best first: {ordering(rows)}.")
    return out


def _proportional_attention(records) -> list[str]:
    """ToMe with its proportional attention (the default) against without it, which ToFu and PiToMe run without:
    the effect itself and ToMe's lead over ToFu either way."""
    out = []
    for b in budgets(records):
        with_it = pick(records, "tome", {"main"}, b)
        without = pick(records, "tome", {"field"}, b, prop_attn=False)
        if not with_it or not without:
            continue
        text = (f"ToMe at {budget_text(b)} with proportional attention (its default) against without: "
                f"{gap(with_it[0], without[0]).text()}")
        tofu = pick(records, "tofu", {"field"}, b)
        if tofu:
            text += (f"; its lead over ToFu (which runs without it) with it {gap(with_it[0], tofu[0]).text()}, "
                     f"without it {gap(without[0], tofu[0]).text()}")
        out.append(text + ".")
    return out


def _protocol(records) -> list[str]:
    rows = [(r["strategy"], r) for r in pick(records, groups={"evit_protocol"})]
    if len(rows) < 2:
        return []
    ranked = tiers(rows)
    steps = [f"{ranked[i - 1][0]} - {name}: {step.text()}" for i, (name, _, step) in enumerate(ranked) if step]
    return [f"At the EViT protocol, best first: {ordering(rows)} (neighbours' gaps: " + "; ".join(steps) + ")."]


ACCURACY_LEGEND = ("Readings, computed from the records by `benchmarks/readings.py`: differences in points with "
                   "their 95% interval in brackets (paired bootstrap over the test images when both rows keep "
                   "per-image correctness, else the conservative bound from top-1 agreement); in an ordering "
                   "(best first) `>` marks a significant gap between neighbours and `~` a gap within noise.")


def accuracy_section(records: list[dict]) -> str:
    """The report's readings section (markdown, ending in a newline)."""
    return "## Readings\n\n" + ACCURACY_LEGEND + "\n\n" + "\n".join(accuracy_readings(records)) + "\n"


# ---------------------------------------------------------------- fine-tuning through ToMe


def welch(a, b) -> Gap:
    """mean(a) - mean(b) with Welch's 95% t interval over seeds."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Gap(diff, math.nan, math.nan, "none")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Gap(diff, diff, diff, "welch")
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, dof)) * se
    return Gap(diff, diff - half, diff + half, "welch")


def finetune_readings(rows: list[dict]) -> list[str]:
    """The readings of the fine-tuning table (r x match_fraction, several seeds), one markdown bullet each."""
    lines = []
    rs = sorted({x["r"] for x in rows})
    at = lambda r, p: [x for x in rows if x["r"] == r and (r == 0 or x["p"] == p)]  # noqa: E731
    for r in [r for r in rs if r]:
        ps = sorted({x["p"] for x in rows if x["r"] == r}, reverse=True)
        merged = []
        for p in ps:
            runs = at(r, p)
            done = sum(sum(x["merges_per_layer"] or []) for x in runs)
            asked = sum(r * len(x["merges_per_layer"] or []) for x in runs)
            counts = [(x["key"], sum(x["merges_per_layer"] or []), r * len(x["merges_per_layer"] or [])) for x in runs]
            short = [f"{name} merged {got} of {want}" for name, got, want in counts if got < want]
            merged.append((p, done, asked, short))
        text = f"r={r}: merges done of those asked, over {len(at(r, ps[0]))} seeds: " + "; ".join(
            f"match_fraction {p}: {done} of {asked}" for p, done, asked, _ in merged)
        shorts = [s for *_, short in merged for s in short]
        if not shorts:
            text += " (every merge asked was done)"
        elif len(shorts) <= 3:  # a few runs short: name them
            text += " (" + "; ".join(shorts) + ")"
        if len(ps) > 1:
            full = float(np.mean([x["gmacs"] for x in at(r, ps[0])]))
            low = float(np.mean([x["gmacs"] for x in at(r, ps[-1])]))
            text += (f". GMACs {full:.3f} at match_fraction {ps[0]} and {low:.3f} at {ps[-1]} "
                     f"({100 * (low / full - 1):+.0f}%)")
            if merged[-1][1] < merged[0][1]:
                text += ": with fewer tokens taking part in matching, fewer merges were possible and more tokens stayed"
        lines.append(text + ".")
    base = [x["acc1"] for x in at(0, None)]
    if len(base) > 1:
        apart, near = [], 0
        for r in [r for r in rs if r]:
            for p in sorted({x["p"] for x in rows if x["r"] == r}, reverse=True):
                g = welch([x["acc1"] for x in at(r, p)], base)
                if g.significant:
                    apart.append(f"r={r}, match_fraction {p} ({g.text()})")
                else:
                    near += 1
        lines.append(f"acc1 at r=0 is {100 * np.mean(base):.1f}% (seed standard deviation "
                     f"{100 * np.std(base, ddof=1):.1f} points). Against it, with Welch's 95% interval over seeds "
                     f"({len(apart) + near} comparisons, not corrected for their number): "
                     + (f"significantly different: {'; '.join(apart)}; " if apart else "")
                     + f"{near} configuration{'s' if near != 1 else ''} within noise. One short epoch leaves the "
                     "new head far from converged (the notes trained 10 epochs), so these rank configurations early in "
                     "training, not where the runs would end.")
    ratios = [max(v) / min(v) for r in rs for p in sorted({x["p"] for x in rows})
              for v in [[x["train_images_per_second"] for x in at(r, p)]] if len(v) > 1 and min(v) > 0]
    if ratios:
        lines.append(f"Training images/s of one configuration varies up to {max(ratios):.1f}x between its seeds: the "
                     "cores were shared with other jobs while this ran, so read the GMACs column for compute, and "
                     "images/s only as a rough order.")
    return [f"- {line}" for line in lines]


# ---------------------------------------------------------------- README blocks


def marked(name: str, body: str) -> str:
    return f"<!-- readings:{name}:start -->\n{body.rstrip()}\n<!-- readings:{name}:end -->"


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block between the `readings:<name>` markers replaced by `body`."""
    pattern = re.compile(rf"<!-- readings:{name}:start -->\n.*?<!-- readings:{name}:end -->", re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"README needs exactly one readings:{name} block (start and end markers)")
    return pattern.sub(lambda _: marked(name, body), text)


def block(text: str, name: str) -> str:
    """The body between the `readings:<name>` markers."""
    match = re.search(rf"<!-- readings:{name}:start -->\n(.*?)\n<!-- readings:{name}:end -->", text, re.S)
    if match is None:
        raise ValueError(f"README has no readings:{name} block")
    return match.group(1)


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def readme_accuracy(records: list[dict], compact_table: str) -> str:
    return (f"acc1 change in points against the unpruned model (± its 95% interval; (ns): not significant), "
            f"generated from `reports/accuracy.jsonl` by `{COMMAND}`:\n\n{compact_table}\n\n"
            + ACCURACY_LEGEND + "\n\n" + "\n".join(accuracy_readings(records)))


def readme_finetune(rows: list[dict]) -> str:
    return (f"Fine-tuning through ToMe (`reports/finetune_tome.md`), generated from `reports/finetune_tome.jsonl` by "
            f"`{COMMAND}`:\n\n" + "\n".join(finetune_readings(rows)))


def accuracy_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("accuracy_benchmark", Path(__file__).resolve().parent / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_blocks(root: Path = ROOT) -> dict[str, str]:
    """What the README's readings blocks should hold, from the committed records."""
    accuracy = accuracy_module()
    records = accuracy.ordered_records(root / "reports" / "accuracy")
    compact = accuracy.summary(accuracy.table(records), with_interval=True).to_markdown(index=False,
                                                                                         disable_numparse=True)
    return {"accuracy": readme_accuracy(records, compact),
            "finetune_tome": readme_finetune(load_jsonl(root / "reports" / "finetune_tome.jsonl"))}


def main(root: Path = ROOT) -> None:
    from pruning_bench.record.atomic import write_text

    accuracy_module().rebuild_table(root / "reports" / "accuracy")
    import finetune_tome

    finetune_tome.rebuild(root / "reports" / "finetune_tome")
    readme = root / "README.md"
    text = readme.read_text()
    for name, body in readme_blocks(root).items():
        text = replace_block(text, name, body)
    write_text(readme, text)


if __name__ == "__main__":
    main()
