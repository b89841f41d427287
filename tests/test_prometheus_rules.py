"""infra/prometheus: the scrape config and rules pass promtool (and their unit test), the rendered
Alertmanager configs pass amtool, and secrets stay out of the repository, the output and other users'
reach. promtool and amtool missing: a failure under CI=true, a skip elsewhere."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flows.config import OTHER_ENV, load_settings
from infra.prometheus import PROMETHEUS_CONFIG, RULE_FILES, RULES_TEST
from infra.prometheus.monitor import MonitorSettings, prometheus_config
from infra.prometheus.render import ENV, ReceiverSettings, RenderError
from tests.monitoring_helpers import require_tool

ROOT = Path(__file__).resolve().parents[1]

SECRET_VALUES = {
    "QBTC_ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/sekret-slack",
    "QBTC_ALERT_TELEGRAM_BOT_TOKEN": "123456:sekret-telegram",
    "QBTC_ALERT_SMTP_PASSWORD": "sekret-smtp",
    "QBTC_ALERT_WEBHOOK_URL": "http://127.0.0.1:5001/sekret-hook",
}
EVERYTHING = {
    **SECRET_VALUES,
    "QBTC_ALERT_SLACK_CHANNEL": "#qbtc",
    "QBTC_ALERT_TELEGRAM_CHAT_ID": "-1001234",
    "QBTC_ALERT_SMTP_SMARTHOST": "smtp.example.com:587",
    "QBTC_ALERT_SMTP_FROM": "qbtc@example.com",
    "QBTC_ALERT_SMTP_USERNAME": "qbtc",
    "QBTC_ALERT_EMAIL_TO": "ops@example.com",
}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_the_shipped_config_and_rules_pass_promtool_check():
    promtool = require_tool("promtool")
    got = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "2 rule files found" in got.stdout
    got = _run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert got.returncode == 0, got.stdout + got.stderr


def test_the_alert_rules_unit_test_passes():
    """rules_test.yml: each alert fires (labels and annotations exact) when it should and not before,
    and the recording rules compute the sums and ratios from series made up for them."""
    promtool = require_tool("promtool")
    got = _run(promtool, "test", "rules", str(RULES_TEST))
    assert got.returncode == 0, got.stdout + got.stderr
    alerts = set()
    for path in RULE_FILES:
        alerts |= {
            line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if "- alert:" in line
        }
    tested = RULES_TEST.read_text()
    assert {"QbtcBreakerEmergency", "QbtcKillSwitchEngaged", "QbtcStaleData", "QbtcDown"} <= alerts
    for alert in alerts:
        assert f"alertname: {alert}" in tested, f"{alert} has no case in rules_test.yml"


def test_the_launchers_prometheus_config_passes_promtool(tmp_path):
    promtool = require_tool("promtool")
    s = MonitorSettings(data_dir=str(tmp_path), targets=("127.0.0.1:9464", "127.0.0.1:9465"))
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(prometheus_config(s)))
    got = _run(promtool, "check", "config", str(path))
    assert got.returncode == 0, got.stdout + got.stderr
    shipped = PROMETHEUS_CONFIG.read_text()
    assert "job_name: qbtc" in shipped and "127.0.0.1:9464" in shipped


def _render_cli(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QBTC_ALERT_")}
    return subprocess.run(
        [sys.executable, "-m", "infra.prometheus.render", "--out", str(out)],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_receiver_renders_into_a_private_config_amtool_accepts(tmp_path):
    amtool = require_tool("amtool")
    out = tmp_path / "am"
    got = _render_cli(out, EVERYTHING)
    assert got.returncode == 0, got.stderr
    assert "receivers: slack, telegram, email, webhook" in got.stdout
    for secret in SECRET_VALUES.values():
        assert secret not in got.stdout + got.stderr
    config = out / "alertmanager.yml"
    check = _run(amtool, "check-config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    for path in (config, out / "secrets" / "slack_webhook_url", out / "secrets" / "smtp_password"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for d in (out, out / "secrets"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    text = config.read_text()
    # what Alertmanager 0.25 reads from files is not in the config; the others only in the 0600 file
    assert SECRET_VALUES["QBTC_ALERT_SLACK_WEBHOOK_URL"] not in text
    assert SECRET_VALUES["QBTC_ALERT_SMTP_PASSWORD"] not in text
    assert (out / "secrets" / "smtp_password").read_text() == SECRET_VALUES["QBTC_ALERT_SMTP_PASSWORD"]
    body = json.loads(text.split("\n", 1)[1])
    receivers = {r["name"]: r for r in body["receivers"]}
    assert set(receivers["qbtc-critical"]) == {
        "name", "slack_configs", "telegram_configs", "email_configs", "webhook_configs"
    }  # fmt: skip
    assert set(receivers["qbtc-warning"]) == {"name", "slack_configs", "webhook_configs"}
    assert receivers["qbtc-critical"]["telegram_configs"][0]["chat_id"] == -1001234


def test_absent_secrets_leave_their_receivers_out(tmp_path):
    amtool = require_tool("amtool")
    out = tmp_path / "am"
    assert _render_cli(out, EVERYTHING).returncode == 0
    partial = {
        "QBTC_ALERT_TELEGRAM_BOT_TOKEN": "123:abc",  # no chat id: no Telegram
        "QBTC_ALERT_SMTP_SMARTHOST": "smtp.example.com:587",  # no from/to: no email
        "QBTC_ALERT_WEBHOOK_URL": "http://127.0.0.1:5001/hook",
    }
    got = _render_cli(out, partial)  # over the previous render: its secret files go too
    assert got.returncode == 0, got.stderr
    assert "receivers: webhook" in got.stdout
    assert not (out / "secrets" / "slack_webhook_url").exists()
    assert not (out / "secrets" / "smtp_password").exists()
    body = json.loads((out / "alertmanager.yml").read_text().split("\n", 1)[1])
    critical = next(r for r in body["receivers"] if r["name"] == "qbtc-critical")
    assert set(critical) == {"name", "webhook_configs"}
    check = _run(amtool, "check-config", str(out / "alertmanager.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    got = _render_cli(tmp_path / "none", {})
    assert "receivers: none" in got.stdout
    check = _run(amtool, "check-config", str(tmp_path / "none" / "alertmanager.yml"))
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_bad_chat_id_is_an_error_that_names_the_variable_not_the_token(tmp_path):
    got = _render_cli(tmp_path / "am", {**SECRET_VALUES, "QBTC_ALERT_TELEGRAM_CHAT_ID": "ops"})
    assert got.returncode == 2
    assert "QBTC_ALERT_TELEGRAM_CHAT_ID" in got.stderr
    assert SECRET_VALUES["QBTC_ALERT_TELEGRAM_BOT_TOKEN"] not in got.stderr
    with pytest.raises(RenderError):
        ReceiverSettings(telegram_chat_id="12a")
    assert not (tmp_path / "am" / "alertmanager.yml").exists()
    assert "sekret" not in repr(ReceiverSettings.from_env(SECRET_VALUES))


def test_qbtc_commands_accept_the_alert_variables():
    """Every ``QBTC_*`` variable must be a config key or known: the renderer's are known."""
    assert set(ENV.values()) <= OTHER_ENV
    assert load_settings(None, [], env=EVERYTHING).kafka.brokers  # no "unknown environment variable"


def test_the_rule_files_are_packaged():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"infra.prometheus" = ["*.yml"]' in text
    assert {p.suffix for p in RULE_FILES} == {".yml"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_qbtc_monitor_up_status_down(tmp_path):
    """The launcher for real: both services ready with the shipped rules, a second ``up`` refused,
    ``down`` stops both, ``status`` then exits 1. No secret in its output."""
    from infra.processes import process_alive

    require_tool("prometheus")
    require_tool("prometheus-alertmanager", "alertmanager")
    data = tmp_path / "monitor"
    prom, am = _free_port(), _free_port()
    opts = ["--data-dir", str(data)]
    up_args = [
        *opts,
        "--targets",
        "127.0.0.1:1",
        "--prometheus-port",
        str(prom),
        "--alertmanager-port",
        str(am),
    ]
    env = {"QBTC_ALERT_WEBHOOK_URL": SECRET_VALUES["QBTC_ALERT_WEBHOOK_URL"]}

    def qbtc(*args: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("QBTC_ALERT_")}
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", "monitor", *args],
            cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    got = qbtc("up", *up_args)
    try:
        if got.returncode != 0:
            from tests.kafka_fixture import unavailable

            unavailable(f"qbtc monitor up failed: {got.stderr}")
        assert f"prometheus at http://127.0.0.1:{prom}" in got.stdout and "receivers: webhook" in got.stdout
        assert SECRET_VALUES["QBTC_ALERT_WEBHOOK_URL"] not in got.stdout + got.stderr
        state = json.loads((data / "monitor.json").read_text())
        assert all(process_alive(pid) for pid in state["pids"].values())
        st = qbtc("status", *opts)
        assert st.returncode == 0 and st.stdout.count(" ready at ") == 2, st.stdout
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{prom}/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert {g["name"] for g in groups} == {"qbtc-recording", "qbtc-risk", "qbtc-pipeline"}
        again = qbtc("up", *up_args)
        assert again.returncode == 1 and "already runs" in again.stderr
        assert stat.S_IMODE((data / "alertmanager" / "alertmanager.yml").stat().st_mode) == 0o600
    finally:
        stopped = qbtc("down", *opts)
    assert stopped.returncode == 0 and "stopped alertmanager, prometheus" in stopped.stdout
    assert not any(process_alive(pid) for pid in state["pids"].values())
    after = qbtc("status", *opts)
    assert after.returncode == 1 and after.stdout.count("not running") == 2
    bad = qbtc("up", *opts, "--targets", "nohostport")
    assert bad.returncode == 2 and "targets must be host:port" in bad.stderr
