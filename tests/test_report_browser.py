"""``qbtc report`` opened in a real headless Chromium (Debian's, driven by Playwright).

Two trading replays of 1-minute candles into one store (the risk engine on with the River online
model beside the default strategies, its report written by ``qbtc replay --trade --report``, then
off), then ``qbtc report`` compares both. Each page is
loaded from a file:// URL with every other request refused and recorded: the page must draw every
chart with nothing from outside, no console error and no page error. A full-page screenshot is
saved and checked.

Outside CI a missing Chromium or Playwright skips the test with the reason; under CI=true it fails.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from tests.kafka_helpers import qbtc

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHARTS = 10
"""Equity, exposure, VaR, breakers, strategies, monthly, distribution, rolling Sharpe, online model, price."""
DEFAULT_FOUR = ("entropy_scalping", "trend_following", "mean_reversion", "breakout")

DRAWN = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(div => ({
    id: div.id,
    traces: (div._fullData || []).map(t => ({
        type: t.type,
        points: Math.max((t.x || []).length, (t.y || []).length, (t.z || []).length),
    })),
    drawn: div.querySelectorAll(
        '.scatterlayer .trace path.js-line, .scatterlayer .trace path.point, .barlayer path, '
        + '.heatmaplayer image, .hm image'
    ).length,
    svg: div.querySelectorAll('svg.main-svg').length,
}))"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"report browser test cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium():
    """A launched headless Chromium (Playwright's browser object)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed ({exc}); pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (infra/system-packages.sh installs Debian's)")
    manager = sync_playwright().start()
    try:
        browser = manager.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
    except Error as exc:
        manager.stop()
        _unavailable(f"Chromium at {CHROMIUM} does not start: {str(exc).splitlines()[0]}")
    yield browser
    browser.close()
    manager.stop()


def _candles(path: Path, days: int = 2, symbols: int = 4, seed: int = 7) -> None:
    """1-minute candles (the Binance recordings' CSV columns) of a few symbols that crash on the
    second day: what the acceptance runs on the crash month, in small."""
    rng = np.random.default_rng(seed)
    t0 = 1_620_000_000_000 // 60_000 * 60_000
    n = days * 1440
    crash = np.zeros(n)
    crash[1440 + 600 : 1440 + 960] = -0.12 / 360  # -12% over six hours on day 2
    lines = ["symbol,open_time_ms,open,high,low,close,volume"]
    for k in range(symbols):
        steps = rng.normal(0.0, 0.0012, n) + crash * (1 + 0.3 * k)
        close = 100.0 * (k + 1) * np.exp(np.cumsum(steps))
        open_ = np.concatenate(([close[0]], close[:-1]))
        spread = np.abs(rng.normal(0.0, 0.0006, n)) * close
        for i in range(n):
            o, c = open_[i], close[i]
            high, low = max(o, c) + spread[i], min(o, c) - spread[i]
            lines.append(f"S{k}USDT,{t0 + i * 60_000},{o:.4f},{high:.4f},{low:.4f},{c:.4f},{10 + i % 7}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """Two trading replays of the same candles into one store (engine on, writing its report with
    ``--report``, then off) and the report comparing them from ``qbtc report``."""
    where = tmp_path_factory.mktemp("report_browser")
    start = time.perf_counter()
    _candles(where / "candles.csv")
    store = ["--store", "chdb://s.chdb"]
    common = ["replay", "candles.csv", "--trade", "--quiet", *store, "--set", "features.bar_interval=60"]
    common += ["--set", "trading.cost_gate=false"]  # it trades (the gate would block every entry here)
    model = [a for name in (*DEFAULT_FOUR, "online_model") for a in ("--strategy", f"builtin:{name}")]
    model += ["--set", "strategies.online_model.report_every=50"]  # its metrics every 50 tactical bars
    one = qbtc(*common, *model, "--run-id", "engine-on", "--report", "one.html", cwd=where)
    qbtc(*common, "--run-id", "engine-off", "--set", "risk.enabled=false", cwd=where)
    both = ["--run", "engine-on", "--compare", "engine-off"]
    two = qbtc("report", *store, *both, "--out", "two.html", cwd=where)
    assert f"report: {where / 'one.html'}" in one.stdout.splitlines()
    assert "run engine-on vs engine-off" in two.stdout
    print(f"store and reports made in {time.perf_counter() - start:.1f} s")
    return {"one": where / "one.html", "two": where / "two.html"}


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("which", ["one", "two"])
def test_the_report_draws_every_chart_offline_without_errors(chromium, reports, which, tmp_path):
    path = reports[which]
    start = time.perf_counter()
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))

    def refuse_outside(route) -> None:
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", refuse_outside)
    page.goto(path.as_uri(), wait_until="load", timeout=60_000)
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot').length === {CHARTS}"
        " && Array.from(document.querySelectorAll('.js-plotly-plot')).every(d => d._fullLayout)",
        timeout=30_000,
    )
    charts = page.evaluate(DRAWN)
    shot = tmp_path / f"report-{which}.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    print(f"screenshot: {shot} ({which}: loaded, checked and shot in {time.perf_counter() - start:.1f} s)")

    assert outside == [], f"the page asked for something outside itself: {outside}"
    assert problems == []
    assert len(charts) == CHARTS
    runs = 2 if which == "two" else 1
    for chart in charts:
        assert chart["svg"] >= 1, chart["id"]
        assert chart["drawn"] > 0, f"{chart['id']} drew nothing: {chart}"
        points = [t["points"] for t in chart["traces"]]
        assert len(points) >= runs and sum(points) > 0, f"{chart['id']} has no data: {chart}"
    equity, monthly, model, price = charts[0], charts[5], charts[8], charts[9]
    assert len(equity["traces"]) == 2 * runs and all(t["points"] > 100 for t in equity["traces"])
    assert [t["type"] for t in monthly["traces"]] == ["heatmap"] * runs
    assert len(model["traces"]) == 3 and all(t["points"] > 5 for t in model["traces"])  # engine-on's model
    assert price["traces"][0]["points"] > 100  # the bar closes; fills follow as markers
    assert sum(t["points"] for t in price["traces"][1:]) > 0
    width, height = _png_size(shot)
    assert width == 1280 and height > 3000
    assert shot.stat().st_size > 100_000


def test_report_errors_are_one_line_with_exit_code_2(reports):
    where = reports["one"].parent
    store = ["--store", "chdb://s.chdb"]
    bad = qbtc("report", *store, "--run", "nope", cwd=where, check=False)
    assert bad.returncode == 2
    newest = "newest runs: engine-off, engine-on; qbtc runs lists them"
    assert bad.stderr == f"qbtc report: error: no run 'nope' in the store ({newest})\n"
    bad = qbtc("report", *store, "--symbol", "NOPE/USDT", cwd=where, check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("qbtc report: error: no bars of 'NOPE/USDT' in the span of run 'engine-off'")
    bad = qbtc("report", "--store", "chdb://none.chdb", cwd=where, check=False)
    assert bad.returncode == 2 and "none.chdb does not exist" in bad.stderr and bad.stderr.count("\n") == 1
    assert not (where / "report.html").exists()


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run under CI: no browser"):
        _unavailable("no browser")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no browser"):
        _unavailable("no browser")
