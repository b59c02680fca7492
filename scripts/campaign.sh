#!/usr/bin/env bash
# The guideline campaign on the embedded datasets: three studies, then the report.
#   bash scripts/campaign.sh WORKSPACE [SAMPLER_SEED]
# A second run with another sampler seed (another search order) measures the guidelines'
# stability: dm-tune stability A/report/guidelines.json B/report/guidelines.json
set -euo pipefail
ws=${1:?usage: campaign.sh WORKSPACE [SAMPLER_SEED]}
seed=${2:-0}
here="$(cd "$(dirname "$0")/.." && pwd)"
dmtune="$here/.venv/bin/dm-tune"  # the environment scripts/setup.sh (or scripts/run.sh) made
[ -x "$dmtune" ] || dmtune=dm-tune
for study in guidelines-embedded guidelines-embedded-pair guidelines-embedded-imbalance; do
  "$dmtune" search --config "$(dirname "$0")/../studies/$study.yaml" --workspace "$ws" --sampler-seed "$seed" --quiet
done
"$dmtune" report --workspace "$ws" --experiment guidelines-embedded --experiment guidelines-embedded-pair \
  --experiment guidelines-embedded-imbalance --out "$ws/report"
