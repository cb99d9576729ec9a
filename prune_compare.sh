#!/usr/bin/env bash
# Run a clip_benchmark baseline and pruned configurations, then the comparison report.
set -uo pipefail
set -f  # no pathname expansion: parameters like r=[4,8] must reach clip_benchmark as written

usage() {
    cat <<'USAGE'
Usage: prune_compare.sh [--out DIR] [--config "STRATEGY key=value ..."]... -- CLIP_BENCHMARK_EVAL_ARGS...

Runs `clip_benchmark eval CLIP_BENCHMARK_EVAL_ARGS` once without pruning (with --measure_efficiency,
so speedups are measured) and once per --config with that strategy patched in, then
`pruning-bench report` over every result in DIR/results.

Options:
  --out DIR        where results, logs and the report go (default: results/prune_compare)
  --config SPEC    a pruning configuration, repeatable: the strategy name then key=value parameters,
                   values without spaces, e.g. "anchor_diversity k_anchors=10 top_m=50 alpha=0.5",
                   "tome r=8", "tome r=[4,4,8]". Default: "anchor_diversity k_anchors=10 prune_layers=[1]
                   keep_rate=0.5 alpha=0.5" (half the patch tokens, whatever the model's token count: a
                   fixed 10 + 50 keeps all 49 patches of ViT-B-32) and "tome r=8".
  -h, --help       this help

Everything after -- goes to `clip_benchmark eval` unchanged (model, dataset, task, batch size...),
except --output, which this script sets to DIR/results/<run>_<pruning>.json, and the pruning
flags, which come from --config. --skip_existing keeps working: finished runs are not redone; a
result file that does not parse or lacks the keys a complete run writes is moved to NAME.incomplete
(and said so) first, so its run is redone.

Writes:
  DIR/results/*.json            one result per run (clip_benchmark keys + pruning + efficiency)
  DIR/logs/NN_<name>.log        each run's output
  DIR/report.csv, DIR/report.md  the comparison (pruning-bench report), with DIR/report_accuracy_vs_*.png

Exit status: 0 when every run and the report succeeded, 1 when any failed (the others still run),
2 for a usage error. Commands can be overridden with $CLIP_BENCHMARK and $PRUNING_BENCH.

Example (offline, CIFAR-10 test split as a webdataset; --pretrained '' means random weights,
give a checkpoint name or path that is available locally for meaningful accuracy):
  ./prune_compare.sh --out results/cifar10 -- --dataset wds/cifar10 \
      --dataset_root ../shared/data/wds_cifar10 --model ViT-B-32 --pretrained '' \
      --task zeroshot_classification --batch_size 64
USAGE
}

die() { echo "prune_compare.sh: $*" >&2; exit 2; }

out="results/prune_compare"
configs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --config) [[ $# -ge 2 ]] || die "--config needs a specification"; configs+=("$2"); shift 2 ;;
        --config=*) configs+=("${1#--config=}"); shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) die "unknown option '$1' (clip_benchmark arguments go after --; see --help)" ;;
    esac
done
eval_args=("$@")
[[ ${#eval_args[@]} -gt 0 ]] || die "no clip_benchmark arguments after -- (see --help)"
for arg in "${eval_args[@]}"; do
    case "$arg" in
        --output|--output=*) die "--output is set by this script; use --out DIR" ;;
        --enable_pruning|--prune_strategy*|--prune_param*|--k_anchors*|--top_m*|--alpha*)
            die "$arg: pruning flags come from --config" ;;
    esac
done
if [[ ${#configs[@]} -eq 0 ]]; then
    # budgets as a share of the patches, so the default prunes on every model (ViT-B-32 has 49 patches, B-16 196)
    configs=("anchor_diversity k_anchors=10 prune_layers=[1] keep_rate=0.5 alpha=0.5" "tome r=8")
fi

# Turn each configuration into clip_benchmark flags now, so a malformed one stops before any run.
config_flags=()
config_names=()
for spec in "${configs[@]}"; do
    read -r -a words <<< "$spec"
    [[ ${#words[@]} -gt 0 ]] || die "empty --config"
    strategy="${words[0]}"
    [[ "$strategy" != *=* ]] || die "--config '$spec' must start with a strategy name"
    flags="--enable_pruning --prune_strategy $strategy"
    for param in "${words[@]:1}"; do
        [[ "$param" == ?*=* ]] || die "--config '$spec': '$param' is not key=value"
        flags+=" --prune_param $param"
    done
    config_flags+=("$flags")
    config_names+=("$(echo "$spec" | tr -c 'A-Za-z0-9_.=-' '_' | sed 's/_*$//')")
done

clip_benchmark="${CLIP_BENCHMARK:-clip_benchmark}"
pruning_bench="${PRUNING_BENCH:-pruning-bench}"
for command in "$clip_benchmark" "$pruning_bench"; do
    command -v "$command" >/dev/null 2>&1 ||
        die "'$command' not found: activate the environment where pruning-bench is installed (or set \$CLIP_BENCHMARK / \$PRUNING_BENCH)"
done
mkdir -p "$out/results" "$out/logs" || exit 1

# A result that does not parse or lacks the keys of a complete run (an interrupted or foreign file) must never
# count as done: move it aside, say so, and let its run write it again.
python_of_pruning_bench="$(dirname "$(command -v "$pruning_bench")")/python"
[[ -x "$python_of_pruning_bench" ]] || python_of_pruning_bench=python3
"$python_of_pruning_bench" - "$out/results" <<'PY' || die "cannot check the existing results in $out/results"
import os
import sys
from pathlib import Path

try:
    from pruning_bench.record.check import file_problem
except ImportError:  # the same rule, for an interpreter without the package
    import json

    def file_problem(path):
        try:
            data = json.loads(path.read_text() or "null")
        except ValueError:
            return "is not valid JSON (truncated?)"
        if not isinstance(data, dict) or not all(k in data for k in ("dataset", "model", "task", "metrics")):
            return "lacks the keys a complete run writes"
        return None

for path in sorted(Path(sys.argv[1]).glob("*.json")):
    problem = file_problem(path)
    if problem:
        os.replace(path, path.with_name(path.name + ".incomplete"))
        print(f"prune_compare.sh: {path} {problem}: moved to {path.name}.incomplete, its run is redone")
PY
template="$out/results/{dataset}_{pretrained}_{model}_{language}_{task}_{pruning}.json"

failed=()
run_eval() {  # run_eval NAME FLAG...
    local name="$1"; shift
    local log="$out/logs/$(printf '%02d' "$run_index")_$name.log"
    run_index=$((run_index + 1))
    echo "==> $name: $clip_benchmark eval$(printf ' %q' "${eval_args[@]}") $*"
    if "$clip_benchmark" eval "${eval_args[@]}" --output "$template" "$@" 2>&1 | tee "$log"; then
        echo "<== $name: ok"
    else
        echo "<== $name: FAILED (log: $log)" >&2
        failed+=("$name")
    fi
}

run_index=0
run_eval baseline --measure_efficiency
for i in "${!config_flags[@]}"; do
    # shellcheck disable=SC2086  # the flags were built word by word above
    run_eval "${config_names[$i]}" ${config_flags[$i]}
done

echo "==> report: $pruning_bench report $out/results -o $out/report"
if ! "$pruning_bench" report "$out/results" -o "$out/report"; then
    failed+=("report")
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "prune_compare.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "prune_compare.sh: report in $out/report.md"
