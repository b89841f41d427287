"""Two switches that stop the execution service from sending: no heartbeats, no venue.

:class:`DeadMansSwitch` trips when the trading loop's heartbeats stop: the
service then cancels every open order and sends nothing until a heartbeat
arrives again. :class:`VenueHealth` is the broker breaker of the seed
architecture: a venue unreachable for 2 minutes raises an alert, for 30
minutes stops sending, and both report each change of state once.

Every time here is the service's own clock in epoch ms, passed in.

>>> switch = DeadMansSwitch(DeadMansSwitchSettings(timeout_ms=30_000))
>>> switch.beat(1_000)
False
>>> switch.expired(31_000), switch.expired(31_001)
(False, True)
>>> switch.tripped, switch.beat(40_000), switch.tripped
(True, True, False)
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import RiskEvent
from schemas.settings import SettingsError, check_settings, setting

FINE = "fine"
ALERT = "alert"
STOP = "stop"
VENUE_STATES = (FINE, ALERT, STOP)
"""States of :class:`VenueHealth`, from best to worst."""


@dataclass(frozen=True, slots=True)
class DeadMansSwitchSettings:
    """Parameters of :class:`DeadMansSwitch`.

    Parameters
    ----------
    timeout_ms
        A gap between heartbeats longer than this trips the switch
        (``execution.deadman_s`` x 1000; 30 s by default).
    """

    timeout_ms: int = setting(30_000, gt=0)

    def __post_init__(self) -> None:
        check_settings(self)


class DeadMansSwitch:
    """Trips when no heartbeat arrived for longer than ``timeout_ms``; clears at the next heartbeat.

    Parameters
    ----------
    settings
        The timeout.

    The switch is unarmed until the first heartbeat (``expired`` is False: a
    loop that never started has no orders to cancel). ``beat(ts)`` takes the
    time the heartbeat *arrived* on the service's clock, the clock of
    ``now_ms``, not the heartbeat's own ``ts`` (event time in a replay).

    The service's loop::

        if switch.trip(now):           # True once, at the first expired check
            cancel every open order; guard.halt("deadman", ...)
        ...
        if switch.beat(arrived):       # True when this heartbeat clears a trip
            guard.release("deadman")
    """

    __slots__ = ("_last", "_tripped", "settings")

    def __init__(self, settings: DeadMansSwitchSettings | None = None) -> None:
        self.settings = settings or DeadMansSwitchSettings()
        self._last: int | None = None
        self._tripped = False

    @property
    def tripped(self) -> bool:
        """True from the first expired check until the next heartbeat."""
        return self._tripped

    @property
    def last_beat(self) -> int | None:
        """When the latest heartbeat arrived, None before the first."""
        return self._last

    def beat(self, ts: int) -> bool:
        """A heartbeat arrived at ``ts``; True when it clears a trip.

        A ``ts`` older than the latest beat does not move the clock back.
        """
        self._last = ts if self._last is None else max(self._last, ts)
        cleared = self._tripped
        self._tripped = False
        return cleared

    def expired(self, now_ms: int) -> bool:
        """True when the last heartbeat is more than ``timeout_ms`` before ``now_ms`` (trips the switch)."""
        if self._last is None or now_ms - self._last <= self.settings.timeout_ms:
            return False
        self._tripped = True
        return True

    def trip(self, now_ms: int) -> bool:
        """True only at the check that trips the switch: cancel every open order then."""
        was = self._tripped
        return self.expired(now_ms) and not was

    def silence_ms(self, now_ms: int) -> int | None:
        """How long since the last heartbeat, None before the first."""
        return None if self._last is None else now_ms - self._last


@dataclass(frozen=True, slots=True)
class VenueHealthSettings:
    """Parameters of :class:`VenueHealth`.

    Parameters
    ----------
    alert_after_ms
        Disconnected this long: alert (2 minutes).
    stop_after_ms
        Disconnected this long: stop sending (30 minutes; > ``alert_after_ms``).
    """

    alert_after_ms: int = setting(120_000, gt=0)
    stop_after_ms: int = setting(1_800_000, gt=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.stop_after_ms <= self.alert_after_ms:
            raise SettingsError.of(self, "stop_after_ms", f"> alert_after_ms ({self.alert_after_ms})")


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A change of :class:`VenueHealth`'s state.

    Parameters
    ----------
    ts
        When it was seen (the ``now`` of the call).
    previous, state
        The states before and after (:data:`VENUE_STATES`).
    down_ms
        How long the venue had been unreachable (0 when it came back).
    """

    ts: int
    previous: str
    state: str
    down_ms: int

    def risk_event(self, venue: str) -> RiskEvent:
        """The ``venue`` risk event of this change (level 0 back, 2 alert, 3 stop)."""
        level = {FINE: 0, ALERT: 2, STOP: 3}[self.state]
        action = {FINE: "resume", ALERT: "alert", STOP: "stop_sending"}[self.state]
        if self.state == FINE:
            message = f"venue {venue} reachable again ({self.previous} cleared)"
        else:
            message = f"venue {venue} unreachable for {self.down_ms / 1000:.0f} s: {action.replace('_', ' ')}"
        return RiskEvent(self.ts, "venue", level, "", self.down_ms / 1000, 0.0, action, message)


class VenueHealth:
    """Fine, alert after ``alert_after_ms`` unreachable, stop after ``stop_after_ms``.

    Parameters
    ----------
    settings
        The two delays.

    Report every call to the venue: ``ok(now)`` after an answer,
    ``failed(now)`` after a connection error (a venue's *refusal* of an order
    is an answer); ``check(now)`` between calls. Each returns a
    :class:`HealthChange` when the state changed, else None. Send only while
    :attr:`may_send`.

    >>> health = VenueHealth()
    >>> health.failed(0) is None, health.failed(119_999) is None
    (True, True)
    >>> health.check(120_000)
    HealthChange(ts=120000, previous='fine', state='alert', down_ms=120000)
    >>> health.failed(1_800_000).state, health.may_send
    ('stop', False)
    >>> health.ok(1_900_000)
    HealthChange(ts=1900000, previous='stop', state='fine', down_ms=0)
    """

    __slots__ = ("_since", "_state", "settings")

    def __init__(self, settings: VenueHealthSettings | None = None) -> None:
        self.settings = settings or VenueHealthSettings()
        self._since: int | None = None
        self._state = FINE

    @property
    def state(self) -> str:
        """One of :data:`VENUE_STATES`."""
        return self._state

    @property
    def may_send(self) -> bool:
        """False in state ``stop``."""
        return self._state != STOP

    @property
    def down_since(self) -> int | None:
        """The first failure of the current outage, None while connected."""
        return self._since

    def ok(self, now_ms: int) -> HealthChange | None:
        """The venue answered at ``now_ms``."""
        self._since = None
        return self._move(now_ms, FINE, 0)

    def failed(self, now_ms: int) -> HealthChange | None:
        """A call to the venue failed at ``now_ms`` (the outage starts at the first failure)."""
        if self._since is None:
            self._since = now_ms
        return self.check(now_ms)

    def check(self, now_ms: int) -> HealthChange | None:
        """Re-evaluate the state at ``now_ms`` without news from the venue."""
        if self._since is None:
            return None
        down = now_ms - self._since
        s = self.settings
        state = STOP if down >= s.stop_after_ms else ALERT if down >= s.alert_after_ms else FINE
        if VENUE_STATES.index(state) <= VENUE_STATES.index(self._state):
            return None  # an outage only escalates; only an answer from the venue clears it
        return self._move(now_ms, state, down)

    def _move(self, now_ms: int, state: str, down: int) -> HealthChange | None:
        if state == self._state:
            return None
        change = HealthChange(now_ms, self._state, state, down)
        self._state = state
        return change
