"""The local exchange's API key and secret: from the environment or a secret file, held as secrets.

The environment names are ``QBTC_VENUE_API_KEY`` and ``QBTC_VENUE_API_SECRET``;
a secret file holds the same two ``NAME=VALUE`` lines (blank lines and ``#``
comments allowed), so one file serves the venue and, as an env file, its
clients. Neither value is ever printed or logged: reprs and messages show
``***``.

>>> keys = keys_from({"QBTC_VENUE_API_KEY": "k", "QBTC_VENUE_API_SECRET": "s"})
>>> keys, keys.secret.reveal()
(ApiKeys(key=Secret('***'), secret=Secret('***')), 's')
>>> keys_from({"QBTC_VENUE_API_KEY": "k"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
infra.exchange.api_keys.ApiKeyProblem: QBTC_VENUE_API_SECRET is missing (give both ...)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flows.config_values import Secret
from schemas.errors import UsageProblem

KEY_ENV = "QBTC_VENUE_API_KEY"
SECRET_ENV = "QBTC_VENUE_API_SECRET"


class ApiKeyProblem(UsageProblem):
    """Keys that are missing or unreadable."""


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """The one API key the venue accepts and the secret its requests are signed with."""

    key: Secret
    secret: Secret

    @classmethod
    def generate(cls) -> ApiKeys:
        """A fresh random pair (64 characters each, as Binance's)."""
        return cls(Secret(secrets.token_hex(32)), Secret(secrets.token_hex(32)))

    def env_text(self) -> str:
        """The pair as a secret file's two lines."""
        return f"{KEY_ENV}={self.key.reveal()}\n{SECRET_ENV}={self.secret.reveal()}\n"


def keys_from(values: Mapping[str, str]) -> ApiKeys | None:
    """The pair in ``values`` (an environment or a parsed secret file); None when neither is set."""
    key, secret = values.get(KEY_ENV, "").strip(), values.get(SECRET_ENV, "").strip()
    if not key and not secret:
        return None
    for name, value in ((KEY_ENV, key), (SECRET_ENV, secret)):
        if not value:
            msg = f"{name} is missing (give both {KEY_ENV} and {SECRET_ENV})"
            raise ApiKeyProblem(msg)
    return ApiKeys(Secret(key), Secret(secret))


def read_secret_file(path: str) -> ApiKeys:
    """The pair in a secret file (``NAME=VALUE`` lines)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        msg = f"secret file {path}: {exc.strerror or exc}"
        raise ApiKeyProblem(msg) from None
    values = {}
    for line in text.splitlines():
        name, eq, value = line.strip().partition("=")
        if eq and not name.startswith("#"):
            values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    keys = keys_from(values)
    if keys is None:
        msg = f"secret file {path} holds neither {KEY_ENV} nor {SECRET_ENV}"
        raise ApiKeyProblem(msg)
    return keys


def write_secret_file(path: str, keys: ApiKeys) -> None:
    """Write the pair to ``path``, readable by its owner only."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keys.env_text())
    os.chmod(path, 0o600)


def resolve_keys(env: Mapping[str, str], secret_file: str | None, generated_file: str | None) -> ApiKeys:
    """The venue's keys: the secret file if given, else the environment, else ``generated_file``
    (made with a fresh pair on first use) if given; :class:`ApiKeyProblem` when there are none."""
    if secret_file:
        return read_secret_file(secret_file)
    keys = keys_from(env)
    if keys is not None:
        return keys
    if generated_file:
        if not Path(generated_file).is_file():
            write_secret_file(generated_file, ApiKeys.generate())
        return read_secret_file(generated_file)
    msg = f"no API keys: set {KEY_ENV} and {SECRET_ENV}, or give --secret-file"
    raise ApiKeyProblem(msg)
