"""The local exchange's state on disk: balances, orders, trades and tapes as one JSON file.

Written atomically (a temporary file renamed over the old one), so a venue
killed while saving keeps the previous state. A restarted venue with the same
``--state`` file goes on with the same order ids, balances and trades; its
settings (markets, fees, starting balances) come from its command line, and
starting balances apply only to a new file.

>>> from infra.exchange.matching_engine import Balance, EngineState, Tape
>>> state = EngineState(balances={"USDT": Balance(5.0, 1.0)}, tapes={"BTCUSDT": Tape(last_price=3.0)})
>>> back = state_from_json(state_to_json(state))
>>> back.balances["USDT"], back.tapes["BTCUSDT"].last_price, back.next_order_id
(Balance(free=5.0, locked=1.0), 3.0, 1)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections import deque
from pathlib import Path

import orjson

from infra.exchange.matching_engine import Balance, EngineState, Tape, VenueOrder, VenueTrade

FORMAT = 1
"""Version of the file's layout."""


class StateFileError(ValueError):
    """A state file that cannot be read as this version's layout."""


def state_to_json(state: EngineState) -> dict:
    """The state as plain JSON values."""
    return {
        "format": FORMAT,
        "balances": {a: dataclasses.asdict(b) for a, b in state.balances.items()},
        "orders": [dataclasses.asdict(o) for o in state.orders.values()],
        "trades": [dataclasses.asdict(t) for t in state.trades],
        "tapes": {m: {**dataclasses.asdict(t), "volumes": list(t.volumes)} for m, t in state.tapes.items()},
        "client_ids": state.client_ids,
        "next_order_id": state.next_order_id,
        "next_trade_id": state.next_trade_id,
        "ignored_ticks": state.ignored_ticks,
    }


def state_from_json(data: dict) -> EngineState:
    """The state :func:`state_to_json` wrote; :class:`StateFileError` for another layout."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        msg = f"not a local exchange state of format {FORMAT} (format {found!r})"
        raise StateFileError(msg)
    try:
        orders = [VenueOrder(**o) for o in data["orders"]]
        tapes = {m: Tape(**{**t, "volumes": deque(t["volumes"])}) for m, t in data["tapes"].items()}
        return EngineState(
            balances={a: Balance(**b) for a, b in data["balances"].items()},
            orders={o.order_id: o for o in orders},
            trades=[VenueTrade(**t) for t in data["trades"]],
            tapes=tapes,
            client_ids={str(k): int(v) for k, v in data["client_ids"].items()},
            next_order_id=int(data["next_order_id"]),
            next_trade_id=int(data["next_trade_id"]),
            ignored_ticks=int(data["ignored_ticks"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"a local exchange state with a bad entry: {exc!r}"
        raise StateFileError(msg) from None


def load_state(path: str) -> EngineState | None:
    """The state saved in ``path``; None when there is no such file."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return state_from_json(orjson.loads(raw))
    except (orjson.JSONDecodeError, StateFileError) as exc:
        msg = f"{path}: {exc}"
        raise StateFileError(msg) from None


def encode_state(state: EngineState) -> bytes:
    """The state as the file's bytes."""
    return orjson.dumps(state_to_json(state), option=orjson.OPT_INDENT_2)


def save_state(path: str, data: bytes) -> None:
    """Write :func:`encode_state`'s bytes to ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
