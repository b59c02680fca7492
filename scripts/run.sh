#!/usr/bin/env bash
# Set everything up and run the main job: the embedded default study (digits, 40% symmetric noise),
# then the guideline report of its results.
set -euo pipefail
cd "$(dirname "$0")/.."
DMTUNE_SKIP_BROWSER=1 bash scripts/setup.sh
.venv/bin/dm-tune search
.venv/bin/dm-tune report --workspace ./dmtune-runs --experiment default
