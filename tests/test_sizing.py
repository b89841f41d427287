"""Position sizing, risk adjustments, golden-ratio ladders and ATR stops, checked by hand."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest

from operators.signals.sizing import PHI, Adjustment, PositionSizer, SizingSettings, fib_ladder, ladder_prices

MINUTE = SizingSettings(bar_interval_ms=60_000)  # 1440 bars a day, sqrt = 37.9473


def test_bars_per_day() -> None:
    assert SizingSettings().bars_per_day == 86_400
    assert MINUTE.bars_per_day == 1440


def test_vol_target_alone_when_kelly_unknown() -> None:
    sizer = PositionSizer(MINUTE)
    # f_vol = 0.02 / (0.002 * 37.9473) = 0.263523, capped at 0.2, times strength 0.5
    base, f_vol, f_kelly = sizer.base_fraction(0.5, 0.002)
    assert math.isclose(f_vol, 0.02 / (0.002 * math.sqrt(1440)))
    assert f_kelly is None and math.isclose(base, 0.1)
    # below the cap: sigma 0.004 -> f_vol 0.131762, strength 0.5 -> 0.065881
    base, f_vol, _ = sizer.base_fraction(0.5, 0.004)
    assert math.isclose(base, 0.5 * 0.02 / (0.004 * math.sqrt(1440)))
    # var <= 0 means Kelly unknown
    assert sizer.base_fraction(1.0, 0.004, mu=1e-4, var=0.0)[2] is None


def test_kelly_binds_when_smaller() -> None:
    sizer = PositionSizer(MINUTE)
    # f_kelly = 0.25 * 1e-5 / 1e-4 = 0.025 < f_vol 0.1318 < cap 0.2
    base, f_vol, f_kelly = sizer.base_fraction(0.8, 0.004, mu=1e-5, var=1e-4)
    assert math.isclose(f_kelly, 0.025) and math.isclose(base, 0.8 * 0.025)
    # a larger edge: f_kelly = 0.25 * 1e-4 / 1e-4 = 0.25 -> f_vol binds
    base, f_vol, f_kelly = sizer.base_fraction(1.0, 0.004, mu=1e-4, var=1e-4)
    assert math.isclose(f_kelly, 0.25) and math.isclose(base, f_vol)
    # no edge, no position
    assert sizer.base_fraction(1.0, 0.004, mu=-1e-5, var=1e-4)[0] == 0.0
    # sigma 0: the volatility target is unbounded, the cap binds
    base, f_vol, _ = sizer.base_fraction(1.0, 0.0)
    assert f_vol == math.inf and base == 0.2


def test_adjustments_in_order_and_thresholds() -> None:
    sizer = PositionSizer(MINUTE)
    r = sizer.size(1.0, 0.004, qvar_share=0.81, entropy=0.61, max_corr=-0.3, defensive=True)
    assert r.adjustments == (
        Adjustment("qvar_budget", 0.85),
        Adjustment("entropy", 0.80),
        Adjustment("correlation", 0.90),
        Adjustment("defensive", 0.5),
    )
    f_vol = 0.02 / (0.004 * math.sqrt(1440))
    assert math.isclose(r.base, f_vol) and math.isclose(r.fraction, f_vol * 0.85 * 0.8 * 0.9 * 0.5)
    # at the limits nothing applies (strictly "more than")
    r = sizer.size(1.0, 0.004, qvar_share=0.8, entropy=0.6, max_corr=0.28, defensive=False)
    assert r.adjustments == () and r.fraction == r.base
    # unknown inputs never trigger
    assert sizer.size(1.0, 0.004).adjustments == ()
    assert [a.name for a in sizer.size(0.3, 0.004, entropy=0.95, defensive=True).adjustments] == [
        "entropy",
        "defensive",
    ]


def test_qvar_share_helper() -> None:
    sizer = PositionSizer()
    assert math.isclose(sizer.qvar_share(0.017), 0.85)
    assert sizer.size(1.0, 1e-4, qvar_share=sizer.qvar_share(0.017)).adjustments[0].name == "qvar_budget"


def test_size_rejects_bad_inputs_and_settings() -> None:
    sizer = PositionSizer()
    with pytest.raises(ValueError):
        sizer.base_fraction(1.5, 0.01)
    with pytest.raises(ValueError):
        sizer.base_fraction(0.5, -0.01)
    for bad in [
        {"bar_interval_ms": 0},
        {"max_fraction": 0.0},
        {"qvar_factor": 1.5},
        {"kelly_fraction": -1.0},
        {"stop_atr": 0.0},
    ]:
        with pytest.raises(ValueError):
            SizingSettings(**bad)


def test_stop_target_formula() -> None:
    sizer = PositionSizer()
    entry, atr, h = 50_000.0, 120.0, 0.9
    widen = 1 + 0.5 * h
    stop, target = sizer.stop_target(entry, atr, 1, h)
    assert math.isclose(stop, entry - 2 * atr * widen) and math.isclose(target, entry + 3 * atr * widen)
    stop, target = sizer.stop_target(entry, atr, -1, h, stop_multiplier=0.75)
    assert math.isclose(stop, entry + 2 * atr * widen * 0.75) and math.isclose(
        target, entry - 3 * atr * widen
    )
    custom = PositionSizer(SizingSettings(stop_atr=1.5, target_atr=4.0, entropy_widen=0.0))
    assert custom.stop_target(100.0, 2.0, 1, 0.9) == (97.0, 108.0)
    with pytest.raises(ValueError):
        sizer.stop_target(entry, atr, 0, h)


@pytest.mark.parametrize("levels", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("total", [1.0, 0.7, 0.123456789, 1e-8, 3.3, 12345.678, 1 / 3])
def test_fib_ladder_sums_exactly_with_phi_ratios(levels: int, total: float) -> None:
    q = fib_ladder(total, levels)
    assert len(q) == levels and sum(q) == total and all(x > 0 for x in q)
    for a, b in itertools.pairwise(q):
        assert math.isclose(b / a, PHI, rel_tol=1e-9)
    norm = sum(PHI**k for k in range(levels))
    assert math.isclose(q[0], total / norm, rel_tol=1e-12)


def test_fib_ladder_sums_exactly_on_a_dense_sweep() -> None:
    # includes splits where total - done is a round-half-even tie of the last addition
    for levels in (2, 3, 4):
        for i in range(1, 3000):
            total = i * 0.001 + 3e-7
            assert sum(fib_ladder(total, levels)) == total


def test_fib_ladder_lot_step() -> None:
    q = fib_ladder(10.0, 3, step=1.0)  # 1.9098, 3.0902 floored; the rest last
    assert q == [1.0, 3.0, 6.0]
    q = fib_ladder(0.05, 4, step=0.001)
    assert sum(q) == 0.05 and all(abs(x / 0.001 - round(x / 0.001)) < 1e-9 for x in q[:-1])
    assert fib_ladder(0.0, 3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        fib_ladder(1.0, 0)
    with pytest.raises(ValueError):
        fib_ladder(1.0, 3, step=0.0)


def test_ladder_prices() -> None:
    atr = 2.0
    long_in = ladder_prices(100.0, atr, 4, 1)
    assert long_in[0] == 100.0
    dist = [100.0 - p for p in long_in]
    assert (
        math.isclose(dist[1], atr)
        and math.isclose(dist[2], atr * PHI)
        and math.isclose(dist[3], atr * PHI**2)
    )
    short_in = ladder_prices(100.0, atr, 4, -1)
    assert all(math.isclose(a - 100.0, 100.0 - b) for a, b in zip(short_in, long_in, strict=True))
    long_out = ladder_prices(100.0, atr, 3, 1, spacing=0.5, scale_out=True)
    assert [round(p - 100.0, 9) for p in long_out] == [round(0.5 * atr * PHI**k, 9) for k in range(3)]
    short_out = ladder_prices(100.0, atr, 3, -1, spacing=0.5, scale_out=True)
    assert all(math.isclose(a - 100.0, 100.0 - b) for a, b in zip(short_out, long_out, strict=True))
    with pytest.raises(ValueError):
        ladder_prices(100.0, atr, 3, 0)


def test_sizer_pickles_and_is_deterministic() -> None:
    sizer = PositionSizer(MINUTE)
    again = pickle.loads(pickle.dumps(sizer))
    kw = {"mu": 2e-5, "var": 1e-4, "qvar_share": 0.9, "entropy": 0.7, "max_corr": 0.5, "defensive": True}
    assert again.size(0.7, 0.003, **kw) == sizer.size(0.7, 0.003, **kw)
    assert again.settings == sizer.settings
