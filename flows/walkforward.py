"""Walk-forward analysis: consecutive train/test spans of a recording, nothing fitted on test data.

Everything in the trading loop learns online (strategy weights, VaR models,
sizing moments), so the state at a test span's start comes from the data
before it: each split replays its train span and its test span in one run,
and the test figures are computed over the test part only, from the run's
rows in the store (:mod:`flows.walkforward_figures`). With a grid of
settings, every candidate is replayed over the train span alone, the best
by the train figures is chosen, and only the chosen one is replayed on into
the test span. ``--pbo`` replays the other candidates over the test span
too, for the overfitting estimate only, after the choice is made.

Planning (:func:`plan_splits`) is pure: boundaries on the bar grid, in
epoch ms; the runner (:func:`run_walkforward`) receives the replay as a
function, so it runs in-process the way ``qbtc replay`` does.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from schemas.errors import UsageProblem

UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_CANDIDATES = 16
"""The grid's cartesian product may hold at most this many candidates."""
METRICS = ("sharpe", "return", "sortino", "profit_factor")


class WalkForwardProblem(UsageProblem):
    """A walk-forward that cannot be planned (a bad duration, too short a recording, a bad grid)."""


def parse_duration(text: str, option: str) -> int:
    """A duration like ``3600s``, ``90m``, ``4h`` or ``7d`` in ms (> 0).

    >>> parse_duration("90m", "--test"), parse_duration("1.5h", "--train")
    (5400000, 5400000)
    >>> parse_duration("7", "--test")
    Traceback (most recent call last):
    ...
    flows.walkforward.WalkForwardProblem: --test '7': expected a duration like 3600s, 90m, 4h or 7d
    """
    text = text.strip()
    unit = UNITS_MS.get(text[-1:].lower()) if text else None
    try:
        value = float(text[:-1]) if unit else math.nan
    except ValueError:
        value = math.nan
    if unit is None or not math.isfinite(value) or value <= 0:
        msg = f"{option} {text!r}: expected a duration like 3600s, 90m, 4h or 7d"
        raise WalkForwardProblem(msg)
    return round(value * unit)


def duration_text(ms: int) -> str:
    """A span's length for people.

    >>> duration_text(90_000), duration_text(5_400_000), duration_text(2 * 86_400_000 + 3_600_000)
    ('1.5m', '1.5h', '2.04d')
    """
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms >= size:
            return f"{ms / size:.3g}{unit}"
    return f"{ms / 1000:.3g}s"


@dataclass(frozen=True, slots=True)
class Split:
    """One split: train ``[train_start, test_start)``, test ``[test_start, test_end)`` (epoch ms)."""

    index: int
    train_start: int
    test_start: int
    test_end: int


@dataclass(frozen=True, slots=True)
class Recording:
    """The event-time span of the recording on the bar grid, ``[first, end)``, and the grid steps
    that hold data (sorted, unique, each a step's start)."""

    first: int
    end: int
    step_ms: int
    steps_with_data: np.ndarray

    def has_data(self, start: int, end: int) -> bool:
        """Whether any record falls in ``[start, end)``."""
        i = int(np.searchsorted(self.steps_with_data, start, side="left"))
        return i < len(self.steps_with_data) and int(self.steps_with_data[i]) < end


def plan_splits(
    first: int,
    end: int,
    step_ms: int,
    splits: int,
    test_ms: int | None = None,
    train_ms: int | None = None,
    rolling: bool = False,
) -> list[Split]:
    """``splits`` consecutive test spans, each after a train span, on the ``step_ms`` grid.

    Test spans are ``test_ms`` long (default: the recording / (splits + 1)); the first
    starts after the first train span, ``train_ms`` long (default: what is left before the
    tests, which then end with the recording). Anchored (default): every train span starts
    with the recording and grows; ``rolling``: each is the first train span's length, right
    before its test span. Lengths are floored to whole steps.

    >>> [(s.train_start, s.test_start, s.test_end) for s in plan_splits(0, 100, 10, 3)]
    [(0, 40, 60), (0, 60, 80), (0, 80, 100)]
    >>> [(s.train_start, s.test_start, s.test_end) for s in plan_splits(0, 100, 10, 2, 20, 40, True)]
    [(0, 40, 60), (20, 60, 80)]
    """
    if splits < 1:
        msg = f"--splits {splits}: expected 1 or more"
        raise WalkForwardProblem(msg)
    first_step = -(-first // step_ms) * step_ms
    total = (end - first_step) // step_ms
    if test_ms is not None:
        test = test_ms // step_ms
        if test < 1:
            msg = f"--test {duration_text(test_ms)} is shorter than a bar ({duration_text(step_ms)})"
            raise WalkForwardProblem(msg)
    elif train_ms is not None:
        test = (total - train_ms // step_ms) // splits
    else:
        test = total // (splits + 1)
    if train_ms is not None:
        train = train_ms // step_ms
        if train < 1:
            msg = f"--train {duration_text(train_ms)} is shorter than a bar ({duration_text(step_ms)})"
            raise WalkForwardProblem(msg)
    else:
        train = total - splits * test
    if test < 1 or train < 1 or train + splits * test > total:
        have = duration_text(max(total, 0) * step_ms)
        train_text = f"a train span of {duration_text(max(train, 1) * step_ms)}"
        if test < 1:
            want = f"{train_text} and {splits} test span(s) after it"
        elif train < 1:
            want = f"{splits} test span(s) of {duration_text(test * step_ms)} and a train span before them"
        else:
            want = f"{splits} test span(s) of {duration_text(test * step_ms)} after {train_text}"
        msg = f"the recording ({have} of {duration_text(step_ms)} bars) is too short for {want}"
        raise WalkForwardProblem(msg)
    out = []
    for i in range(splits):
        test_start = first_step + (train + i * test) * step_ms
        train_start = test_start - train * step_ms if rolling else first_step
        out.append(Split(i + 1, train_start, test_start, test_start + test * step_ms))
    return out


def check_data(recording: Recording, plan: list[Split]) -> None:
    """A :class:`WalkForwardProblem` naming the first train or test span without any record."""
    from flows.report import _utc

    for s in plan:
        for what, a, b in (("train", s.train_start, s.test_start), ("test", s.test_start, s.test_end)):
            if not recording.has_data(a, b):
                msg = f"split {s.index}'s {what} span {_utc(a)} .. {_utc(b)} UTC holds no data (a gap?)"
                raise WalkForwardProblem(msg)


# -- the grid ---------------------------------------------------------------------------------


def parse_grid(items: list[str]) -> list[tuple[str, ...]]:
    """``section.key=v1,v2,...`` items as candidates: the cartesian product, each a tuple of
    ``section.key=value`` overrides (one candidate without overrides when there is no grid).

    >>> parse_grid(["risk.enabled=true,false", "features.window=30,60"])[:2]
    [('risk.enabled=true', 'features.window=30'), ('risk.enabled=true', 'features.window=60')]
    >>> parse_grid([])
    [()]
    """
    axes, keys = [], set()
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        options = [v.strip() for v in values.split(",")]
        if not sep or "." not in key or not all(options):
            msg = f"--grid {item!r}: expected section.key=value1,value2,..."
            raise WalkForwardProblem(msg)
        if key in keys:
            msg = f"--grid {key} given twice"
            raise WalkForwardProblem(msg)
        keys.add(key)
        axes.append([f"{key}={v}" for v in dict.fromkeys(options)])
    candidates = list(itertools.product(*axes))
    if len(candidates) > MAX_CANDIDATES:
        msg = f"--grid makes {len(candidates)} candidates; at most {MAX_CANDIDATES} (each costs a replay)"
        raise WalkForwardProblem(msg)
    return candidates


def label(candidate: tuple[str, ...]) -> str:
    """How tables name a candidate: its overrides, or ``(settings)`` without a grid."""
    return " ".join(candidate) or "(settings)"


def prefix_for(source: str, plan: list[Split], candidates: list, settings_text: str, metric: str) -> str:
    """The run ids' prefix: ``wf-`` and 8 hex digits of what decides the walk-forward's runs."""
    text = "|".join((source, repr(plan), repr(candidates), settings_text, metric))
    return "wf-" + hashlib.sha256(text.encode()).hexdigest()[:8]


# -- the runner -------------------------------------------------------------------------------


@dataclass(slots=True)
class SplitResult:
    """What one split gave: the candidates' train figures, the choice, the chosen one's train and
    test figures and, with ``--pbo``, every candidate's test figures (after the choice)."""

    split: Split
    chosen: int
    train: dict
    test: dict
    run_id: str
    candidates_train: list[dict] = field(default_factory=list)
    candidates_test: list[dict] | None = None
    test_rank: float | None = None


def score(figures: dict, metric: str) -> float:
    """The figure a choice compares; a missing one (no variation, no loss) ranks last."""
    value = figures.get(metric)
    return -math.inf if value is None or not math.isfinite(value) else float(value)


def choose(train: list[dict], metric: str) -> int:
    """The index of the best candidate by ``metric`` on its train figures (the first of equals).

    >>> choose([{"sharpe": 1.0}, {"sharpe": 2.0}, {"sharpe": None}], "sharpe")
    1
    """
    scores = [score(f, metric) for f in train]
    return scores.index(max(scores))


def relative_rank(values: list[float], chosen: int) -> float:
    """The chosen candidate's rank among ``values`` (1 = worst, ties share their mean rank) over
    (count + 1): below 0.5 means below the median (the overfitting estimate's event).

    >>> relative_rank([0.1, 0.3, 0.2], 0), relative_rank([0.1, 0.3], 1), relative_rank([1.0, 1.0], 0)
    (0.25, 0.6666666666666666, 0.5)
    """
    v = values[chosen]
    below = sum(1 for x in values if x < v)
    equal = sum(1 for x in values if x == v)
    return (below + (equal + 1) / 2) / (len(values) + 1)


Replay = Callable[[int, int, int, str], None]
"""``replay(candidate, from_ts, to_ts, run_id)``: one trading replay of ``[from_ts, to_ts)``."""
Figures = Callable[[str, int, int], dict]
"""``figures(run_id, start, end)``: a run's figures over ``[start, end)`` (see walkforward_figures)."""


def run_walkforward(
    plan: list[Split],
    candidates: list[tuple[str, ...]],
    replay: Replay,
    figures: Figures,
    prefix: str,
    metric: str = "sharpe",
    pbo: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> list[SplitResult]:
    """Each split: with a grid, every candidate over the train span alone and the choice by
    ``metric``; the chosen one over train and test; with ``pbo`` (and a grid) the others over
    train and test too, only to rank the choice on the test span."""
    grid = len(candidates) > 1
    results = []
    n = len(plan)
    for s in plan:
        trains: list[dict] = []
        if grid:
            for j in range(len(candidates)):
                run_id = f"{prefix}-s{s.index}-c{j + 1}-train"
                say(f"split {s.index}/{n}: candidate {j + 1}/{len(candidates)} on the train span")
                replay(j, s.train_start, s.test_start, run_id)
                trains.append(figures(run_id, s.train_start, s.test_start))
        chosen = choose(trains, metric) if grid else 0
        run_id = f"{prefix}-s{s.index}-c{chosen + 1}"
        say(f"split {s.index}/{n}: candidate {chosen + 1} (chosen) on the train and test spans")
        replay(chosen, s.train_start, s.test_end, run_id)
        test = figures(run_id, s.test_start, s.test_end)
        train = trains[chosen] if grid else figures(run_id, s.train_start, s.test_start)
        result = SplitResult(s, chosen, train, test, run_id, trains)
        if pbo and grid:
            tests = []
            for j in range(len(candidates)):
                if j == chosen:
                    tests.append(test)
                    continue
                other = f"{prefix}-s{s.index}-c{j + 1}"
                say(f"split {s.index}/{n}: candidate {j + 1}/{len(candidates)} on the test span (for --pbo)")
                replay(j, s.train_start, s.test_end, other)
                tests.append(figures(other, s.test_start, s.test_end))
            result.candidates_test = tests
            result.test_rank = relative_rank([score(f, metric) for f in tests], chosen)
        results.append(result)
    return results


def run_ids(plan: list[Split], candidates: list, prefix: str) -> list[str]:
    """Every run id a walk-forward may write, ``--pbo``'s included (to refuse a store that holds one)."""
    ids = []
    for s in plan:
        for j in range(len(candidates)):
            if len(candidates) > 1:
                ids.append(f"{prefix}-s{s.index}-c{j + 1}-train")
            ids.append(f"{prefix}-s{s.index}-c{j + 1}")
    return ids


# -- the summary ------------------------------------------------------------------------------


def _finite(values) -> np.ndarray:
    a = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return a[np.isfinite(a)]


def spread(values) -> dict:
    """Mean, sample std (ddof 1), min and max of the finite values (None where there are too few).

    >>> {k: round(v, 6) for k, v in spread([0.01, 0.03, None]).items()}
    {'mean': 0.02, 'std': 0.014142, 'min': 0.01, 'max': 0.03, 'n': 2}
    """
    a = _finite(values)
    if not len(a):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = float(np.std(a, ddof=1)) if len(a) > 1 else None
    return {"mean": float(a.mean()), "std": std, "min": float(a.min()), "max": float(a.max()), "n": len(a)}


def summarize(results: list[SplitResult], pbo: bool) -> dict:
    """The spread of the test figures over splits and the overfitting figures."""
    test = {k: spread([r.test.get(k) for r in results]) for k in ("return", "sharpe", "max_drawdown")}
    gaps = [
        r.train["sharpe"] - r.test["sharpe"]
        for r in results
        if r.train.get("sharpe") is not None and r.test.get("sharpe") is not None
    ]
    flipped = sum(
        1 for r in results if (r.train.get("sharpe") or 0.0) > 0 and (r.test.get("sharpe") or 0.0) < 0
    )
    over = {
        "sharpe_gap_mean": float(np.mean(gaps)) if gaps else None,
        "sharpe_gap_splits": len(gaps),
        "sign_flip_share": flipped / len(results) if results else None,
    }
    ranks = [r.test_rank for r in results if r.test_rank is not None]
    if pbo and ranks:
        over["pbo"] = sum(1 for w in ranks if w < 0.5) / len(ranks)
        over["pbo_splits"] = len(ranks)
    return {"test": test, "overfitting": over}
