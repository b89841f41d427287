"""Issue 14 point 6: the LICENSE, ``qbtc --version``, docs/metrics.md kept equal to the README,
and ``qbtc kafka status``/``down`` finding the broker ``up`` started without its ports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from kafka_fixture import free_settings, unavailable

ROOT = Path(__file__).resolve().parent.parent


def qbtc(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_license_is_apache_2_with_the_authors_copyright():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert re.search(r"^\s+Copyright \d{4} the qbtc authors$", text, re.MULTILINE)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in pyproject
    assert "Apache License 2.0 (`LICENSE`)" in (ROOT / "README.md").read_text()


def test_version_comes_from_the_package_metadata():
    out = qbtc("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"qbtc {version('qbtc')}\n"
    assert out.stderr == ""
    assert "`qbtc --version` prints the installed version" in (ROOT / "README.md").read_text()


# --- the metric definitions ------------------------------------------------------------------------


def _normal(text: str) -> str:
    """The README's typography in the spec's ASCII notation, whitespace collapsed."""
    for fancy, plain in (("·", "*"), ("−", "-"), ("≤", "<="), ("∈", "in"), ("Σ", "sum"), ("…", "...")):
        text = text.replace(fancy, plain)
    return " ".join(text.split())


def _readme_metrics() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Metric definitions\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end > 0 else len(readme)]


# Lines both files state: each fragment must read the same in both (after _normal).
SHARED = [
    "1e-9 relative",
    "1e-12 absolute near zero",
    "`trade_id`, `exchange`",
    "(`buy`/`sell`, the taker side), `trade_id`",
    "covers [k*D, (k+1)*D)",
    "`allowed_lateness_ms`",
    "r_k = ln(C_k / C_(k-1))",
    "Gaps",
    "`window`",
    "- `ret` = r_k",
    "- `volatility` = sample standard deviation of X (ddof = 1)",
    "order 3, delay 1",
    "/ ln 6",
    "- `var95` = -Q(X, 0.05), Q the linear-interpolation quantile",
    "- `es95` = -mean",
    "x <= Q(X, 0.05)",
    "- `qvar95` = 1.6448536269514722 * volatility * (1 - c * entropy)",
    "`qvar_entropy_coef`",
    "drift.ADWIN()",
    "since its first return",
    "k mod `corr_every`",
    "Wc = `corr_window`",
    "both have non-zero variance there",
    "`corr` = Pearson correlation of the two",
    "forward-filled zeros up to the",
    "truncated at 64 KiB",
    "records read = rows in `ticks` + rows in `dead_letters`",
]


def test_readme_links_the_metric_definitions_in_the_repository():
    section = _readme_metrics()
    assert "[`docs/metrics.md`](docs/metrics.md)" in section
    assert "spec/metrics.md" not in (ROOT / "README.md").read_text().replace("docs/metrics.md", "")
    assert (ROOT / "docs" / "metrics.md").read_text().startswith("# Metric definitions (normative)")


@pytest.mark.parametrize("fragment", SHARED)
def test_readme_and_docs_metrics_agree(fragment):
    spec = _normal((ROOT / "docs" / "metrics.md").read_text())
    readme = _normal(_readme_metrics())
    assert fragment in spec, f"docs/metrics.md no longer says {fragment!r}"
    assert fragment in readme, f"the README's Metric definitions no longer say {fragment!r}"


def test_readme_and_docs_metrics_agree_on_the_drift_scale_and_the_reasons():
    spec = _normal((ROOT / "docs" / "metrics.md").read_text())
    readme = _normal(_readme_metrics())
    assert "|r| * 10000" in spec
    assert "|r|*10000 (basis points)" in readme
    spec_reasons = set(re.search(r"one of ([^)]*)\)", spec)[1].replace("`", "").split(", "))
    readme_reasons = set(re.findall(r"^\| `(\w+)` \|", _readme_metrics(), re.MULTILINE))
    assert spec_reasons == {"parse", "schema", "value", "late", "duplicate"}
    assert spec_reasons <= readme_reasons  # the README adds time and capacity


# --- kafka status/down without the ports -----------------------------------------------------------


@pytest.mark.kafka
def test_kafka_status_and_down_find_the_broker_up_started(tmp_path):
    s = free_settings(tmp_path / "kafka")
    d = ["--data-dir", s.data_dir]
    up = qbtc("kafka", "up", *d, "--port", str(s.port), "--controller-port", str(s.controller_port))
    if up.returncode != 0:
        qbtc("kafka", "down", *d, "--port", str(s.port), "--controller-port", str(s.controller_port))
        unavailable(f"Kafka could not start: {up.stderr.strip()[-500:]}")
    try:
        state = json.loads((Path(s.data_dir) / "broker.json").read_text())
        assert state["port"] == s.port
        assert state["controller_port"] == s.controller_port
        status = qbtc("kafka", "status", *d)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"kafka: node 1 up at 127.0.0.1:{s.port}" in status.stdout
    finally:
        down = qbtc("kafka", "down", *d)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("kafka: stopped")
    after = qbtc("kafka", "status", *d)
    assert after.returncode == 1
    assert f"not running (127.0.0.1:{s.port}" in after.stdout


def test_kafka_options_given_override_the_recorded_ones(tmp_path):
    from flows.cli import build_parser
    from infra.kafka.broker import _settings

    (tmp_path / "broker.json").write_text('{"port": 19092, "controller_port": 19093, "nodes": 3}\n')
    args = build_parser().parse_args(["kafka", "status", "--data-dir", str(tmp_path)])
    assert (_settings(args).port, _settings(args).controller_port, _settings(args).nodes) == (19092, 19093, 3)
    args = build_parser().parse_args(["kafka", "status", "--data-dir", str(tmp_path), "--port", "29092"])
    assert (_settings(args).port, _settings(args).nodes) == (29092, 3)
    args = build_parser().parse_args(["kafka", "status", "--data-dir", str(tmp_path / "none")])
    assert (_settings(args).port, _settings(args).controller_port, _settings(args).nodes) == (9092, 9093, 1)
