"""Render Alertmanager's configuration for qbtc's alerts from the environment.

Alertmanager does not expand environment variables, and the receivers' secrets (the Slack webhook
URL, the Telegram bot token, the SMTP password, the webhook URL) must never sit in the repository.
:func:`render` reads them from the environment and writes the final configuration into a directory
only its owner can read (0700, files 0600): Alertmanager 0.25 reads the Slack URL and the SMTP password
from files (``api_url_file``, ``auth_password_file``); the Telegram token and the webhook URL, which it
takes only inline, are in the 0600 config itself. A receiver whose settings are absent is left out.
Nothing here prints or logs a secret.

Routing: ``severity="critical"`` goes to every configured integration (Slack, Telegram, email,
webhook), ``severity="warning"`` to Slack and the webhook; anything else to ``qbtc-null`` (dropped).

The file written is JSON, which is YAML too (one syntax, no YAML dependency)::

    python -m infra.prometheus.render --out var/monitor/alertmanager
    prometheus-alertmanager --config.file=var/monitor/alertmanager/alertmanager.yml

>>> s = ReceiverSettings.from_env({"QBTC_ALERT_WEBHOOK_URL": "http://127.0.0.1:1/hook"})
>>> s.configured(), "hook" in repr(s)
(('webhook',), False)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV = {
    "slack_webhook_url": "QBTC_ALERT_SLACK_WEBHOOK_URL",
    "slack_channel": "QBTC_ALERT_SLACK_CHANNEL",
    "telegram_bot_token": "QBTC_ALERT_TELEGRAM_BOT_TOKEN",
    "telegram_chat_id": "QBTC_ALERT_TELEGRAM_CHAT_ID",
    "smtp_smarthost": "QBTC_ALERT_SMTP_SMARTHOST",
    "smtp_from": "QBTC_ALERT_SMTP_FROM",
    "smtp_username": "QBTC_ALERT_SMTP_USERNAME",
    "smtp_password": "QBTC_ALERT_SMTP_PASSWORD",
    "email_to": "QBTC_ALERT_EMAIL_TO",
    "webhook_url": "QBTC_ALERT_WEBHOOK_URL",
}
"""The environment variable of each :class:`ReceiverSettings` field."""

SECRETS = ("slack_webhook_url", "telegram_bot_token", "smtp_password", "webhook_url")
"""Fields that are secrets: never shown by ``repr`` nor printed."""

CONFIG_FILE = "alertmanager.yml"


class RenderError(ValueError):
    """Settings that make no usable receiver (e.g. a Telegram chat id that is not a number)."""


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """Where alerts go; empty strings leave a receiver out. Secrets are hidden from ``repr``."""

    slack_webhook_url: str = field(default="", repr=False)
    slack_channel: str = ""
    telegram_bot_token: str = field(default="", repr=False)
    telegram_chat_id: str = ""
    smtp_smarthost: str = ""
    smtp_from: str = ""
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    email_to: str = ""
    webhook_url: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        chat = self.telegram_chat_id.strip()
        if chat and not chat.lstrip("-").isdigit():
            msg = f"{ENV['telegram_chat_id']} must be an integer chat id, got {chat!r}"
            raise RenderError(msg)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReceiverSettings:
        env = os.environ if env is None else env
        return cls(**{f.name: env.get(ENV[f.name], "").strip() for f in fields(cls)})

    def configured(self) -> tuple[str, ...]:
        """The integrations that will be rendered, by name."""
        on = {
            "slack": bool(self.slack_webhook_url),
            "telegram": bool(self.telegram_bot_token and self.telegram_chat_id),
            "email": bool(self.smtp_smarthost and self.smtp_from and self.email_to),
            "webhook": bool(self.webhook_url),
        }
        return tuple(name for name, ok in on.items() if ok)


@dataclass(frozen=True, slots=True)
class Routing:
    """Alertmanager's grouping timers (Go durations); tests shorten them."""

    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    resolve_timeout: str = "5m"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600, also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def config(s: ReceiverSettings, secrets_dir: Path, routing: Routing = Routing()) -> dict:
    """The configuration as a dict; secrets Alertmanager can read from files are referred to in
    ``secrets_dir`` (written by :func:`render`)."""
    on = s.configured()
    integrations: dict[str, dict] = {}
    if "slack" in on:
        slack = {"api_url_file": str(secrets_dir / "slack_webhook_url"), "send_resolved": True}
        if s.slack_channel:
            slack["channel"] = s.slack_channel
        slack["title"] = "{{ .Status | toUpper }}: {{ .CommonLabels.alertname }}"
        slack["text"] = "{{ range .Alerts }}{{ .Annotations.summary }}\n{{ end }}"
        integrations["slack_configs"] = slack
    if "telegram" in on:
        integrations["telegram_configs"] = {
            "bot_token": s.telegram_bot_token,
            "chat_id": int(s.telegram_chat_id),
            "send_resolved": True,
        }
    if "email" in on:
        email = {
            "to": s.email_to,
            "from": s.smtp_from,
            "smarthost": s.smtp_smarthost,
            "send_resolved": True,
        }
        if s.smtp_username:
            email["auth_username"] = s.smtp_username
        if s.smtp_password:
            email["auth_password_file"] = str(secrets_dir / "smtp_password")
        integrations["email_configs"] = email
    if "webhook" in on:
        integrations["webhook_configs"] = {"url": s.webhook_url, "send_resolved": True}

    def receiver(name: str, kinds: tuple[str, ...]) -> dict:
        out: dict = {"name": name}
        out.update({kind: [integrations[kind]] for kind in kinds if kind in integrations})
        return out

    everything = ("slack_configs", "telegram_configs", "email_configs", "webhook_configs")
    return {
        "global": {"resolve_timeout": routing.resolve_timeout},
        "route": {
            "receiver": "qbtc-null",
            "group_by": ["alertname", "job", "instance"],
            "group_wait": routing.group_wait,
            "group_interval": routing.group_interval,
            "repeat_interval": routing.repeat_interval,
            "routes": [
                {"receiver": "qbtc-critical", "matchers": ['severity="critical"']},
                {"receiver": "qbtc-warning", "matchers": ['severity="warning"']},
            ],
        },
        "inhibit_rules": [  # a stream that is down or in emergency need not also say it is stale
            {
                "source_matchers": ['alertname=~"QbtcDown|QbtcBreakerEmergency"'],
                "target_matchers": ['alertname="QbtcStaleData"'],
                "equal": ["job", "instance"],
            }
        ],
        "receivers": [
            receiver("qbtc-null", ()),
            receiver("qbtc-critical", everything),
            receiver("qbtc-warning", ("slack_configs", "webhook_configs")),
        ],
    }


def render(
    out_dir: str | Path, settings: ReceiverSettings | None = None, routing: Routing = Routing()
) -> Path:
    """Write ``out_dir/alertmanager.yml`` and the secret files (0600, in a 0700 directory) from
    ``settings`` (default: the environment); returns the config's path."""
    s = ReceiverSettings.from_env() if settings is None else settings
    out = Path(out_dir).resolve()
    secrets_dir = out / "secrets"
    for d in (out, secrets_dir):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)
    for name in ("slack_webhook_url", "smtp_password"):
        path, value = secrets_dir / name, getattr(s, name)
        if value:
            _write_private(path, value)
        else:
            path.unlink(missing_ok=True)  # a receiver removed since the last render
    path = out / CONFIG_FILE
    text = "# rendered by python -m infra.prometheus.render from QBTC_ALERT_* variables: do not edit\n"
    _write_private(path, text + json.dumps(config(s, secrets_dir, routing), indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.prometheus.render",
        description="Write Alertmanager's config for qbtc from the QBTC_ALERT_* environment variables "
        f"({', '.join(ENV.values())}) into a private directory.",
    )
    parser.add_argument("--out", default="var/monitor/alertmanager", help="directory to write (0700)")
    args = parser.parse_args(argv)
    try:
        settings = ReceiverSettings.from_env()
        path = render(args.out, settings)
    except (RenderError, OSError) as e:
        print(f"render: error: {e}", file=sys.stderr)
        return 2
    on = settings.configured()
    print(f"render: wrote {path} (receivers: {', '.join(on) if on else 'none: alerts are dropped'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
