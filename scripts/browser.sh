#!/usr/bin/env bash
# Chromium and chromedriver, both needed by the HTML report's browser test
# (tests/test_reports_html.py). As root, install what is missing with Debian's packages;
# otherwise say which binaries are missing.
set -euo pipefail
missing=()
for bin in chromium chromedriver; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null
else
    echo "setup: ${missing[*]} not found (the report's browser test will be skipped); install chromium and chromium-driver" >&2
fi
