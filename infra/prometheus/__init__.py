"""Prometheus and Alertmanager for qbtc: the scrape config, recording and alert rules (and their promtool
test) beside this file, the Alertmanager config renderer (:mod:`infra.prometheus.render`) and a local
launcher (:mod:`infra.prometheus.monitor`, ``qbtc monitor up|down|status``)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMETHEUS_CONFIG = HERE / "prometheus.yml"
RULE_FILES = (HERE / "recording_rules.yml", HERE / "alert_rules.yml")
RULES_TEST = HERE / "rules_test.yml"
