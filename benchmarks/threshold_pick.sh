#!/usr/bin/env bash
# The pick of docs/thresholds.md on the hard world: one comparison per rule, the final chunk exempt,
# in one home (so Standard KD's, post-hoc's and answer likelihood's arms are shared), then the
# picked rule with the final chunk pruned. Usage: benchmarks/threshold_pick.sh HOME [SEEDS] [RULES] [FINAL_RULE]
#   e.g. benchmarks/threshold_pick.sh .gen_ssd_home_hard 0,1,2 mode_split,median_multiple,teacher_quantile
#   (an empty RULES runs only FINAL_RULE with the final chunk pruned)
# Results: `gen-ssd --home HOME report --json` after each run (experiment_differences).
set -euo pipefail
home=$1 seeds=${2:-0,1,2} rules=${3-mode_split,median_multiple,teacher_quantile} final_rule=${4:-}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
exempt=$(mktemp --suffix=.yaml) pruned=$(mktemp --suffix=.yaml)
trap 'rm -f "$exempt" "$pruned"' EXIT
"$py" - "$here/configs/hard_teacher.yaml" "$exempt" "$pruned" <<'PY'
import sys, yaml
for path, prune in ((sys.argv[2], False), (sys.argv[3], True)):  # said, whatever the default
    raw = yaml.safe_load(open(sys.argv[1]))
    raw["ops"]["method_comparison"]["config"]["gen_ssd"]["prune_final_chunk"] = prune
    yaml.safe_dump(raw, open(path, "w"))
PY
for rule in ${rules//,/ }; do
  echo "== $rule, final chunk exempt ($(date -u +%H:%M:%S))"
  "$py" -m gen_ssd_dagster.cli --home "$home" compare --config "$exempt" --seeds "$seeds" --threshold-rule "$rule"
  "$py" -m gen_ssd_dagster.cli --home "$home" report --json > "$home/report_${rule}_exempt.json"
done
if [ -n "$final_rule" ]; then
  echo "== $final_rule, final chunk pruned ($(date -u +%H:%M:%S))"
  "$py" -m gen_ssd_dagster.cli --home "$home" compare --config "$pruned" --seeds "$seeds" \
    --threshold-rule "$final_rule"
  "$py" -m gen_ssd_dagster.cli --home "$home" report --json > "$home/report_${final_rule}_pruned.json"
fi
