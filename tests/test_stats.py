"""dllmq.stats: paired differences, relative drops, the paired bootstrap, verdict rules."""

import math

import numpy as np
import pytest
from dllmq import stats


def test_paired_diff_is_mean_and_se_of_differences():
    rng = np.random.default_rng(0)
    for n in (2, 7, 500):
        a, b = rng.normal(size=n), rng.normal(size=n) + 0.3
        m, se = stats.paired_diff(a, b)
        assert m == pytest.approx(np.mean(a - b), abs=1e-12)
        assert se == pytest.approx(np.std(a - b, ddof=1) / math.sqrt(n), rel=1e-12)


def test_paired_se_is_smaller_than_unpaired_for_correlated_items():
    rng = np.random.default_rng(1)
    fp = (rng.random(400) < 0.7).astype(float)
    q = fp.copy()
    flip = rng.random(400) < 0.05
    q[flip] = 1 - q[flip]
    _, se_paired = stats.paired_diff(q, fp)
    se_unpaired = math.hypot(stats.mean_se(q)[1], stats.mean_se(fp)[1])
    assert se_paired < 0.5 * se_unpaired


def test_rel_drop_sign_and_delta_method():
    fp = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 1] * 20, dtype=float)
    q = fp.copy()
    q[::10] = 0  # every first item lost: quantized is worse
    d, se = stats.rel_drop(q, fp)
    assert d == pytest.approx(100 * (fp.mean() - q.mean()) / fp.mean())
    assert d > 0
    # delta method written out with the paired covariance
    n, big_q, big_f = len(q), q.mean(), fp.mean()
    var = (np.var(q, ddof=1) / big_f**2 - 2 * big_q / big_f**3 * np.cov(q, fp, ddof=1)[0, 1]
           + big_q**2 / big_f**4 * np.var(fp, ddof=1)) / n
    assert se == pytest.approx(100 * math.sqrt(var), rel=1e-9)
    assert math.isnan(stats.rel_drop(q, np.zeros_like(fp))[0])


def test_bootstrap_agrees_with_paired_formulas_for_large_n():
    rng = np.random.default_rng(2)
    n = 4000
    fp = (rng.random(n) < 0.6).astype(float)
    q = np.where(rng.random(n) < 0.1, 1 - fp, fp)
    m, se = stats.paired_diff(q, fp)
    est, bse, lo, hi = stats.paired_bootstrap([(q, fp)], lambda mm: mm[:, 0] .sum(0) - mm[:, 1].sum(0),
                                              n_boot=4000, seed=0)
    assert est == pytest.approx(m)
    assert bse == pytest.approx(se, rel=0.05)
    assert lo < m < hi
    d, dse = stats.rel_drop(q, fp)
    bd, bdse = stats.category_drop([(q, fp), (q, fp)][:1])
    assert (bd, bdse) == (d, dse)  # one task: the delta method itself
    est2, bse2 = stats.category_drop([(q, fp), (q, fp)], n_boot=4000)
    # two copies of the same task resampled independently: same drop, se / sqrt(2)
    assert est2 == pytest.approx(d)
    assert bse2 == pytest.approx(dse / math.sqrt(2), rel=0.05)


def test_drop_diff_pairs_two_models_on_the_same_items():
    rng = np.random.default_rng(3)
    n = 3000
    f1 = (rng.random(n) < 0.7).astype(float)
    q1 = np.where(rng.random(n) < 0.1, 0.0, f1)
    f2, q2 = f1.copy(), np.where(rng.random(n) < 0.05, 0.0, f1)
    d, se = stats.drop_diff(q1, f1, q2, f2)
    assert d == pytest.approx(stats.rel_drop(q1, f1)[0] - stats.rel_drop(q2, f2)[0])
    est, bse, _, _ = stats.paired_bootstrap(
        [(q1, f1, q2, f2)],
        lambda m: 100 * (1 - m[0, 0] / m[0, 1]) - 100 * (1 - m[0, 2] / m[0, 3]), n_boot=3000)
    assert bse == pytest.approx(se, rel=0.05)


@pytest.mark.parametrize(("value", "se", "op", "want"), [
    (1.0, 1.0, "<", stats.HOLDS),      # interval [-1, 3] below 4
    (3.0, 1.0, "<", stats.NOISE),      # [1, 5] straddles 4
    (7.0, 1.0, "<", stats.FAILS),      # [5, 9] above 4
    (7.0, 1.0, ">", stats.HOLDS),
    (1.0, 1.0, ">", stats.FAILS),
    (math.nan, 1.0, ">", stats.NOISE),
])
def test_verdict_follows_the_interval(value, se, op, want):
    assert stats.verdict(value, se, op, 4.0) == want


def test_drop_level_words_follow_the_rule():
    assert stats.drop_level(-5.6, 8.8) == "undecided"   # the old table called this "significant"
    assert stats.drop_level(20.0, 2.0) == "significant"
    assert stats.drop_level(0.5, 1.0) == "near-lossless"


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_diff([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="at least 2"):
        stats.paired_diff([1], [0])


def test_items_needed():
    # se of one item's paired drop term 50 points, margin 2 points at z = 2: (2 * 50 / 2)^2
    assert stats.items_needed(50.0, 2.0) == 2500


def test_no_standard_error_below_one_items_worth():
    fp = np.array([1.0, 0.0, 0.0] * 100)
    d, se = stats.rel_drop(fp.copy(), fp)  # identical answers: the formula gives 0
    assert d == 0 and se == pytest.approx(100 / (300 * fp.mean()))
    q0 = np.zeros(3)
    d, se = stats.rel_drop(q0, np.array([0.0, 0.0, 1.0]))  # collapse seen on 3 items
    assert d == pytest.approx(100) and stats.verdict(d, se, ">", 4.0) == stats.NOISE
    assert stats.category_diff([(fp, fp)]) == (0.0, pytest.approx(1 / 300))
