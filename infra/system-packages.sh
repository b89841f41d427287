#!/usr/bin/env bash
# Debian packages the test suite drives for real, installed when missing:
#   chromium                 the report's browser test (headless)
#   prometheus               promtool test rules; the scrape/alert integration test
#   prometheus-alertmanager  delivers the integration test's alert to a local webhook
# Needs root (or sudo) and Debian's package mirror; does nothing when every command is there.
set -euo pipefail
declare -A wanted=([chromium]=chromium [prometheus]=prometheus [promtool]=prometheus
                   [prometheus-alertmanager]=prometheus-alertmanager)
missing=()
for cmd in "${!wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/bin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing Debian packages: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the daemons as services where it can; the tests start their own.
for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
    $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || $sudo service "$svc" stop >/dev/null 2>&1 || true
done
