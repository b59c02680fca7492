#!/usr/bin/env bash
# The guideline campaign on the embedded datasets: three studies, then the report.
#   bash scripts/campaign.sh WORKSPACE [SAMPLER_SEED]
# A second run with another sampler seed (another search order) measures the guidelines'
# stability: dm-tune stability A/report/guidelines.json B/report/guidelines.json
set -euo pipefail
ws=${1:?usage: campaign.sh WORKSPACE [SAMPLER_SEED]}
seed=${2:-0}
for study in guidelines-embedded guidelines-embedded-pair guidelines-embedded-imbalance; do
  dm-tune search --config "$(dirname "$0")/../studies/$study.yaml" --workspace "$ws" --sampler-seed "$seed" --quiet
done
dm-tune report --workspace "$ws" --experiment guidelines-embedded --experiment guidelines-embedded-pair \
  --experiment guidelines-embedded-imbalance --out "$ws/report"
