"""End to end: the loop and the execution service as separate processes, trading on the local exchange.

Broker up (the fixture), the local exchange up (``qbtc venue up``, following
the ticks topic), ticks published, ``qbtc execute --venue ccxt:binance
--sandbox --venue-url ...`` and ``qbtc stream --trade --execution external``
running as processes: the loop's orders reach the exchange through ccxt, the
fills come back over the topics into the loop's portfolio, and at the end the
exchange's balances equal that portfolio.
"""

from __future__ import annotations

import math
import signal
from collections import Counter

import ccxt
import pytest
from kafka_helpers import column, dump, publish_sim, qbtc, read_topic, set_args, start_cli, unique

from flows.execute import KEY_ENV, SECRET_ENV
from infra.exchange.api_keys import KEY_ENV as VENUE_KEY_ENV
from infra.exchange.api_keys import SECRET_ENV as VENUE_SECRET_ENV
from infra.exchange.api_keys import ApiKeys
from infra.exchange.binance_api import ccxt_urls
from schemas.codec import decode
from schemas.records import Fill, Order, OrderEvent

pytestmark = pytest.mark.kafka

CASH = 100_000.0
MARKETS = (
    "BTC/USDT:tick=0.01,step=0.00001,min_notional=5",
    "ETH/USDT:tick=0.01,step=0.0001,min_qty=0.0001,min_notional=5",
    "SOL/USDT:tick=0.001,step=0.001,min_qty=0.001,min_notional=5",
)


def test_the_loop_trades_on_the_local_exchange_through_the_service_and_balances_equal_its_portfolio(
    kafka_bootstrap, tmp_path
):
    prefix = unique("e2e")
    keys = ApiKeys.generate()
    env = {
        VENUE_KEY_ENV: keys.key.reveal(),
        VENUE_SECRET_ENV: keys.secret.reveal(),
        KEY_ENV: keys.key.reveal(),
        SECRET_ENV: keys.secret.reveal(),
    }
    publish_sim(kafka_bootstrap, prefix, tmp_path, seconds=600, rate=100, symbols=3)
    venue_dir = str(tmp_path / "venue")
    markets = [a for m in MARKETS for a in ("--market", m)]
    up = qbtc(
        "venue", "up", "--data-dir", venue_dir, "--port", "0", *markets, "--balance", f"USDT={CASH}",
        "--ticks", f"kafka://{kafka_bootstrap}/{prefix}ticks", "--from-beginning",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    url = up.stdout.split(" at ", 1)[1].split()[0]
    service = None
    try:
        service, lines = start_cli(
            ["execute", "--venue", "ccxt:binance", "--sandbox", "--venue-url", url,
             "--kafka", kafka_bootstrap, "--idle-exit", "8", *set_args(prefix)],
            tmp_path,
            env=env,
        )  # fmt: skip
        loop = qbtc(
            "stream", "--trade", "--execution", "external", "--until-end", "--kafka", kafka_bootstrap,
            "--topic", f"{prefix}ticks", "--store", "chdb://loop.chdb", "--quiet", *set_args(prefix),
            cwd=tmp_path, check=False,
        )  # fmt: skip
        service.wait(timeout=120)
        out = "".join(lines)
        assert loop.returncode == 0, f"{loop.stderr[-3000:]}\nservice:\n{out}"
        assert service.returncode == 0, out
        for secret in (keys.key.reveal(), keys.secret.reveal()):
            assert secret not in out + loop.stdout + loop.stderr

        ex = ccxt.binance({"apiKey": keys.key.reveal(), "secret": keys.secret.reveal()})
        ex.urls["api"] = ccxt_urls(ex.urls["api"], url)
        trades = [t for m in MARKETS for t in ex.fetch_my_trades(m.split(":")[0], limit=1000)]
        venue_orders = [o for m in MARKETS for o in ex.fetch_orders(m.split(":")[0], limit=1000)]
        balances = ex.fetch_balance()["total"]
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
        qbtc("venue", "down", "--data-dir", venue_dir, cwd=tmp_path, check=False)

    sent = [decode(v) for _, v in read_topic(kafka_bootstrap, f"{prefix}orders")]
    loop_orders = {r.order_id for r in sent if isinstance(r, Order)}
    assert trades, f"no trade reached the exchange; service:\n{out}"
    # every order at the exchange is one of the loop's, or a protective exit or child the service made
    # for them, sent once under its client id
    client_ids = Counter(o["clientOrderId"] for o in venue_orders)
    made = {c for c in client_ids if c.startswith(("stop:", "target:")) or c.split("/")[0] in loop_orders}
    assert set(client_ids) - made <= loop_orders and max(client_ids.values()) == 1

    # every exchange trade is one fill on the topic and one fill in the loop's books
    topic_fills = [
        r for _, v in read_topic(kafka_bootstrap, f"{prefix}fills") if isinstance(r := decode(v), Fill)
    ]
    assert len(topic_fills) == len(trades)
    booked = dump("chdb://loop.chdb", tmp_path, ("fills",))["fills"]
    assert len(booked["rows"]) == len(trades)

    # the loop's portfolio, from the fills it booked, equals the exchange's balances
    cash = CASH
    positions: dict[str, float] = {}
    for side, symbol, qty, price, fee in zip(
        *(column(booked, c) for c in ("side", "symbol", "qty", "price", "fee")), strict=True
    ):
        sign = 1.0 if side == "buy" else -1.0
        cash -= sign * qty * price + fee
        positions[symbol] = positions.get(symbol, 0.0) + sign * qty
    assert balances["USDT"] == pytest.approx(cash, abs=1e-6)
    for symbol, qty in positions.items():
        assert balances.get(symbol.split("/")[0], 0.0) == pytest.approx(qty, abs=1e-9)
    events = [
        r
        for _, v in read_topic(kafka_bootstrap, f"{prefix}order-events")
        if isinstance(r := decode(v), OrderEvent)
    ]
    kinds = Counter(e.kind for e in events)
    assert kinds["accepted"] == kinds["filled"] == len(trades)  # market orders: whole at once
    held = {s: q for s, q in positions.items() if not math.isclose(q, 0.0, abs_tol=1e-12)}
    print(f"\n{len(trades)} trades of {len(loop_orders)} loop orders ({dict(kinds)}), positions {held}")
