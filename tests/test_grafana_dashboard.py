"""infra/grafana/qbtc-dashboard.json queries only metrics that exist: every name in every panel's PromQL
(and the instance variable's query) is a sample FlowMetrics exposes once its hooks ran, a recording rule
of infra/prometheus, or Prometheus' own ``up``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from flows.metrics import FlowMetrics
from infra.prometheus import RULE_FILES
from schemas.records import DeadLetter, Fill, Order, PortfolioState, RiskEvent, VarBacktestRow

DASHBOARD = Path(__file__).resolve().parents[1] / "infra" / "grafana" / "qbtc-dashboard.json"

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and durations left out).

    >>> sorted(metric_names('histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="y z"}[5m]))) / b:c'))
    ['a_bucket', 'b:c']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def _exercised() -> FlowMetrics:
    """A FlowMetrics whose every hook ran once."""
    m = FlowMetrics()
    batch = type("B", (), {"ts": np.array([1_000]), "__len__": lambda self: 1})()
    m.read(
        SimpleNamespace(
            records=2, dead=[DeadLetter(1, "t[0]@1", "parse", "x", b"x")], batches=[batch], bars=()
        )
    )
    m.accepted(1)
    m.straggled(1)
    m.batch_seconds(0.001)
    m.partition("ticks", 0, 5, 10)
    m.add("ticks", 1, 0.01)
    m.write_failed("ticks")
    row = VarBacktestRow(*([0] * len(VarBacktestRow.__slots__)))
    m.var_backtests(
        [row.__class__(**{**{k: getattr(row, k) for k in row.__slots__}, "symbol": "", "zone": "green"})]
    )
    m.trading("portfolio", [PortfolioState(1, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0, 0, 0, 0, 0, 0, "normal")])
    m.trading("orders", [Order(1, "o", "", "X", "buy", 1.0, "market", 0.0, "entry", "s")])
    m.trading("fills", [Fill(1, "o", "X", "buy", 1.0, 1.0, 0.0, 2.0)])
    m.trading("risk_events", [RiskEvent(1, "kill_switch", 3, "", 0.0, 0.0, "flatten", "")])
    return m


def _recorded() -> set[str]:
    return {
        line.split(":", 1)[1].strip()
        for path in RULE_FILES
        for line in path.read_text().splitlines()
        if line.strip().startswith("- record:")
    }


def test_every_panel_queries_metrics_that_exist():
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = {s.name for family in _exercised().registry.collect() for s in family.samples}
    known = exposed | _recorded() | {"up"}
    assert {"qbtc_orders_total", "qbtc_fill_slippage_bps_bucket", "qbtc_batch_seconds_bucket"} <= exposed
    exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:  # label_values(SELECTOR, LABEL): the selector's metric
        exprs.append(("variable " + v["name"], re.fullmatch(r"label_values\((.*),\s*\w+\)", v["query"])[1]))
    assert len(exprs) > 20
    used = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: {sorted(names - known)} exist neither in FlowMetrics nor as rules"
        used |= names
    risk = {"qbtc_equity", "qbtc_drawdown_ratio", "qbtc_breaker_level", "qbtc_kill_switch", "qbtc_mode"}
    assert risk <= used


def test_the_dashboard_imports_with_a_prometheus_datasource_input():
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_every_panel_query_is_valid_promql(tmp_path):
    """promtool parses each query (as a recording rule's expression; ``$instance`` as ``.*``)."""
    import subprocess

    from tests.monitoring_helpers import require_tool

    promtool = require_tool("promtool")
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"].replace("$instance", ".*") for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = [{"record": f"qbtc:panel_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))
    got = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"{len(exprs)} rules found" in got.stdout
