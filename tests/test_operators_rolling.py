"""Oracle tests of the rolling statistics against plain numpy batch recomputation.

Each operator is fed a stream value by value; after every update its value is
compared with numpy on the full window (metric spec: "exactly" = within 1e-9
relative, 1e-12 absolute near zero). Streams cover ties, long runs of zeros,
extreme magnitudes and a long stream (float drift guard).
"""

from __future__ import annotations

import math
import pickle
from collections import Counter

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from operators.features.permutation_entropy import PermutationEntropy
from operators.features.rolling_tail import RollingTail
from operators.features.rolling_variance import RollingVariance

RTOL = 1e-9
ATOL = 1e-12
ALPHA = 0.05


# --------------------------------------------------------------------------- references


def ref_var(win: np.ndarray) -> float:
    return float(np.var(win, ddof=1))


def ref_entropy(win: np.ndarray) -> float:
    """The spec, literally: stable argsort of each triple, -sum p ln p / ln 6."""
    patterns = Counter(tuple(np.argsort(win[i : i + 3], kind="stable").tolist()) for i in range(len(win) - 2))
    m = len(win) - 2
    h = -sum((c / m) * math.log(c / m) for c in patterns.values())
    return h / math.log(6.0)


def ref_tail(win: np.ndarray) -> tuple[float, float]:
    q = np.quantile(win, ALPHA)
    return float(-q), float(-np.mean(win[win <= q]))


def windows(x: np.ndarray, w: int) -> np.ndarray:
    return sliding_window_view(x, w)


# --------------------------------------------------------------------------- streams


def gaussian(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0.0, 1e-3, n)


def ties(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([-2e-3, -1e-3, 0.0, 1e-3, 2e-3]), n)


def zero_runs(rng: np.random.Generator, n: int) -> np.ndarray:
    out: list[float] = []
    while len(out) < n:
        if rng.random() < 0.5:
            out.extend([0.0] * int(rng.integers(1, 400)))
        else:
            out.extend(rng.normal(0.0, 1e-3, int(rng.integers(1, 60))).tolist())
    return np.array(out[:n])


def extreme(rng: np.random.Generator, n: int) -> np.ndarray:
    levels = np.array([1e-12, 2e-12, 0.0, 1e3, -1e3, -5e2, -1e6, 3.0])
    return rng.choice(levels, n, p=[0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05])


STREAMS = {"gaussian": gaussian, "ties": ties, "zero_runs": zero_runs, "extreme": extreme}
WINDOWS = [3, 4, 5, 300]


def stream(name: str, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, w, list(STREAMS).index(name)])
    return STREAMS[name](rng, max(4 * w, 1500))


# --------------------------------------------------------------------------- RollingVariance


def _feed_variance(x: np.ndarray, w: int) -> tuple[list[float], list[float]]:
    rv = RollingVariance(w)
    var, std = [], []
    for i, v in enumerate(x.tolist()):
        rv.update(v)
        if i < w - 1:
            assert rv.get() is None
            assert rv.std() is None
        else:
            var.append(rv.get())
            std.append(rv.std())
    return var, std


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("w", WINDOWS)
def test_rolling_variance_matches_numpy_step_by_step(name: str, w: int) -> None:
    x = stream(name, w)
    var, _ = _feed_variance(x, w)
    assert min(var) >= 0.0
    np.testing.assert_allclose(var, np.var(windows(x, w), axis=1, ddof=1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("w", WINDOWS)
def test_rolling_std_matches_numpy_step_by_step(name: str, w: int) -> None:
    """std() is the feature `volatility`: the spec's tolerance applies to it too."""
    x = stream(name, w)
    _, std = _feed_variance(x, w)
    np.testing.assert_allclose(std, np.std(windows(x, w), axis=1, ddof=1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "x",
    [
        [1e3, -1e3, 0.0, 0.0, 0.0],  # var 5.8e-11 instead of 0
        [1e6, -1e6, 0.0, 0.0, 0.0],  # var 6.1e-5 instead of 0
        [0.01, 0.03, 0.0, 0.0, 0.0],  # return-sized: std 2.3e-10 instead of 0
        [0.1, 0.2, 0.0, 0.0, 0.0],  # std 1.9e-9 instead of 0
    ],
)
def test_rolling_variance_flat_window_after_large_values(x: list[float]) -> None:
    """Window 3: the values that leave the window must leave no residue in var or std.

    The refresh runs after updates 3 and 6, so after update 5 the state comes
    from Welford's remove steps alone.
    """
    rv = RollingVariance(3)
    for v in x:
        rv.update(v)
    win = np.array(x[-3:])
    np.testing.assert_allclose(rv.get(), np.var(win, ddof=1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(rv.std(), np.std(win, ddof=1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("ratio", [300, 1000, 3000, 1e4, 1e6])
def test_rolling_std_after_a_volatility_collapse(ratio: float) -> None:
    """Window 300: 450 values at 1% then 1/ratio as large, std checked at every step."""
    rng = np.random.default_rng(0)
    w = 300
    x = rng.normal(0.0, 1.0, 1050)
    x[:450] *= 1e-2
    x[450:] *= 1e-2 / ratio
    _, std = _feed_variance(x, w)
    np.testing.assert_allclose(std, np.std(windows(x, w), axis=1, ddof=1), rtol=RTOL, atol=ATOL)


def test_rolling_variance_long_stream_has_no_float_drift() -> None:
    rng = np.random.default_rng(7)
    n, w = 200_000, 300
    # regimes of very different scale, with a non-zero mean, to stress the add/remove steps
    scale = np.repeat(rng.choice([1e-5, 1e-3, 1e-1], n // 1000), 1000)
    x = 0.01 + rng.normal(0.0, 1.0, n) * scale
    rv = RollingVariance(w)
    got = np.empty(n)
    for i, v in enumerate(x.tolist()):
        rv.update(v)
        got[i] = np.nan if i < w - 1 else rv.get()
    check = np.r_[np.arange(n - 2000, n), rng.integers(w - 1, n - 2000, 2000)]
    expected = np.array([ref_var(x[i - w + 1 : i + 1]) for i in check.tolist()])
    np.testing.assert_allclose(got[check], expected, rtol=RTOL, atol=ATOL)


def test_rolling_variance_rejects_bad_window() -> None:
    with pytest.raises(ValueError, match="window"):
        RollingVariance(1)


# --------------------------------------------------------------------------- PermutationEntropy


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("w", WINDOWS)
def test_permutation_entropy_matches_reference_step_by_step(name: str, w: int) -> None:
    x = stream(name, w)[: 3 * w + 300]
    pe = PermutationEntropy(w)
    got = []
    for i, v in enumerate(x.tolist()):
        pe.update(v)
        if i < w - 1:
            assert pe.get() is None
        else:
            h = pe.get()
            assert h is not None
            assert -ATOL <= h <= 1.0 + 1e-12
            got.append(h)
    expected = [ref_entropy(win) for win in windows(x, w)]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_permutation_entropy_ties_keep_time_order() -> None:
    """Every tie pattern maps to its stable argsort: a hand-checked case per pattern."""
    for triple, pattern in [
        ((1.0, 1.0, 1.0), (0, 1, 2)),
        ((1.0, 1.0, 0.0), (2, 0, 1)),
        ((1.0, 0.0, 1.0), (1, 0, 2)),
        ((0.0, 1.0, 0.0), (0, 2, 1)),
        ((1.0, 0.0, 0.0), (1, 2, 0)),
        ((0.0, 0.0, 1.0), (0, 1, 2)),
    ]:
        assert tuple(np.argsort(triple, kind="stable").tolist()) == pattern
        # a window of two triples: the tie triple then a strictly falling one, pattern (2, 1, 0)
        pe = PermutationEntropy(4)
        for v in (*triple, triple[2] - 5.0):
            pe.update(v)
        win = np.array([*triple, triple[2] - 5.0])
        np.testing.assert_allclose(pe.get(), ref_entropy(win), rtol=RTOL, atol=ATOL)


def test_permutation_entropy_long_stream() -> None:
    rng = np.random.default_rng(11)
    n, w = 200_000, 300
    x = rng.choice(np.array([-1.0, 0.0, 0.0, 1.0, 2.0]), n) * 1e-3
    pe = PermutationEntropy(w)
    for v in x.tolist():
        pe.update(v)
    # the counts carried over 200k slides still give the entropy of the last window
    np.testing.assert_allclose(pe.get(), ref_entropy(x[-w:]), rtol=RTOL, atol=ATOL)


def test_permutation_entropy_rejects_bad_window() -> None:
    with pytest.raises(ValueError, match="window"):
        PermutationEntropy(2)


# --------------------------------------------------------------------------- RollingTail


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("w", WINDOWS)
def test_rolling_tail_matches_numpy_step_by_step(name: str, w: int) -> None:
    x = stream(name, w)
    rt = RollingTail(w, ALPHA)
    got_var, got_es = [], []
    for i, v in enumerate(x.tolist()):
        rt.update(v)
        if i < w - 1:
            assert rt.get() is None
            assert rt.quantile() is None
        else:
            out = rt.get()
            assert out is not None
            got_var.append(out[0])
            got_es.append(out[1])
    wins = windows(x, w)
    q = np.quantile(wins, ALPHA, axis=1)
    expected_es = [-np.mean(win[win <= qi]) for win, qi in zip(wins, q, strict=True)]
    np.testing.assert_allclose(got_var, -q, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got_es, expected_es, rtol=RTOL, atol=ATOL)
    # ES is the mean of a tail at or below Q, so never less than VaR
    assert all(e >= v - 1e-12 * max(1.0, abs(v)) for v, e in zip(got_var, got_es, strict=True))


@pytest.mark.parametrize("alpha", [0.01, 0.25, 0.5, 0.99])
def test_rolling_tail_other_alphas(alpha: float) -> None:
    rng = np.random.default_rng(3)
    x = ties(rng, 600)
    for w in (3, 7, 50):
        rt = RollingTail(w, alpha)
        for i, v in enumerate(x.tolist()):
            rt.update(v)
            if i >= w - 1:
                win = x[i - w + 1 : i + 1]
                q = np.quantile(win, alpha)
                var, es = rt.get()
                np.testing.assert_allclose(var, -q, rtol=RTOL, atol=ATOL)
                np.testing.assert_allclose(es, -np.mean(win[win <= q]), rtol=RTOL, atol=ATOL)


def test_rolling_tail_long_stream() -> None:
    rng = np.random.default_rng(5)
    n, w = 200_000, 300
    x = np.where(rng.random(n) < 0.2, 0.0, rng.standard_t(3, n) * 1e-3)
    rt = RollingTail(w)
    got = np.empty((n, 2))
    for i, v in enumerate(x.tolist()):
        rt.update(v)
        if i >= w - 1:
            got[i] = rt.get()
    check = np.r_[np.arange(n - 1000, n), rng.integers(w - 1, n - 1000, 1000)]
    expected = np.array([ref_tail(x[i - w + 1 : i + 1]) for i in check.tolist()])
    np.testing.assert_allclose(got[check], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("w", "alpha"), [(1, 0.05), (5, 0.0), (5, 1.0)])
def test_rolling_tail_rejects_bad_settings(w: int, alpha: float) -> None:
    with pytest.raises(ValueError):
        RollingTail(w, alpha)


# --------------------------------------------------------------------------- pickling


def _value(op):
    return op.get()


def _assert_same(a, b) -> None:
    assert (a is None) == (b is None)
    if a is not None:
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RollingVariance(5),
        lambda: PermutationEntropy(5),
        lambda: RollingTail(5),
        lambda: RollingVariance(300),
        lambda: PermutationEntropy(300),
        lambda: RollingTail(300),
    ],
    ids=["var5", "pe5", "tail5", "var300", "pe300", "tail300"],
)
@pytest.mark.parametrize("cut", [2, 4, 450, 777])
def test_pickle_round_trip_mid_stream(make, cut: int) -> None:
    x = ties(np.random.default_rng(cut), 1200) + np.random.default_rng(1).normal(0, 1e-4, 1200)
    op = make()
    for v in x[:cut].tolist():
        op.update(v)
    clone = pickle.loads(pickle.dumps(op))
    assert clone is not op
    _assert_same(_value(clone), _value(op))
    for v in x[cut:].tolist():
        op.update(v)
        clone.update(v)
        _assert_same(_value(clone), _value(op))
    w = op.window
    win = x[-w:]
    expected = {
        RollingVariance: lambda: ref_var(win),
        PermutationEntropy: lambda: ref_entropy(win),
        RollingTail: lambda: ref_tail(win),
    }[type(op)]()
    np.testing.assert_allclose(_value(clone), expected, rtol=RTOL, atol=ATOL)
