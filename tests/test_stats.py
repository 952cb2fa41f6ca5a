"""analysis.stats and analysis.effects against hand-computed references: intervals, paired and
Welch tests, Holm, the tie with the best, axis tests (balanced and not), claims and power."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import effects, stats
from analysis.cells import tie_note


def t2_cdf(t: float) -> float:
    """Student t with 2 degrees of freedom, closed form."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def t4_cdf(t: float) -> float:
    """Student t with 4 degrees of freedom, closed form."""
    x = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * (x - x ** 3 / 3)


# ---- one cell --------------------------------------------------------------------------------
def test_t_interval_by_hand_and_n1():
    lo, hi = stats.t_interval([1.0, 2.0, 4.0])
    m, s = 7 / 3, math.sqrt(7 / 3)                       # mean, sample std
    half = 4.302652729911275 * s / math.sqrt(3)          # t(0.975, df=2)
    assert lo == pytest.approx(m - half) and hi == pytest.approx(m + half)
    assert all(math.isnan(v) for v in stats.t_interval([5.0]))
    assert all(math.isnan(v) for v in stats.t_interval([5.0, math.nan]))  # NaN row dropped
    assert stats.t_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)                # zero spread


def test_finite_drops_a_diverged_run():
    assert stats.finite({0: 60.0, 1: math.nan, 2: None, 3: 61.0}) == {0: 60.0, 3: 61.0}


# ---- two cells -------------------------------------------------------------------------------
def test_paired_one_sided_by_hand():
    best = {0: 66.0, 1: 67.0, 2: 65.0}
    other = {0: 62.0, 1: 64.0, 2: 60.0}                  # differences -4, -3, -5: sd 1
    c = stats.compare(best, other)
    t = -4 / (1 / math.sqrt(3))
    assert c.test == "paired (n=3)" and c.diff == -4.0
    assert c.p == pytest.approx(t2_cdf(t))               # 0.0101
    assert c.p == pytest.approx(0.010102, abs=1e-6)


def test_paired_uses_only_common_seeds():
    best = {0: 66.0, 1: 67.0, 2: 65.0, 3: 70.0, 4: 10.0}
    other = {0: 62.0, 1: 64.0, 2: 60.0}
    assert stats.compare(best, other).p == pytest.approx(t2_cdf(-4 * math.sqrt(3)))


def test_welch_by_hand_when_seeds_differ():
    best = {0: 5.0, 1: 6.0, 2: 7.0}
    other = {10: 1.0, 11: 2.0, 12: 3.0}                  # no common seed: Welch
    c = stats.compare(best, other)
    se = math.sqrt(1 / 3 + 1 / 3)
    df = (2 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)
    assert df == pytest.approx(4.0) and c.test == "Welch"
    assert c.p == pytest.approx(t4_cdf(-4 / se))


def test_welch_unbalanced_by_hand():
    best = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0, 4: 9.0}    # n=5, var 2.5
    other = {7: 8.0, 8: 10.0}                              # n=2, var 2
    va, vb = 2 / 2, 2.5 / 5
    t = (9.0 - 11.0) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 1 + vb ** 2 / 4)
    assert stats.compare(best, other).p == pytest.approx(sps.t.cdf(t, df))


def test_against_a_constant_and_zero_variance():
    paper = 66.0
    c = stats.compare(paper, {0: 62.0, 1: 64.0, 2: 60.0})
    assert c.test == "one-sample" and c.p == pytest.approx(t2_cdf((62 - 66) / (2 / math.sqrt(3))))
    # a paper value below our best cell: is the constant worse than our seeds?
    c = stats.compare({0: 62.0, 1: 64.0, 2: 60.0}, 58.0)
    assert c.p == pytest.approx(t2_cdf((58 - 62) / (2 / math.sqrt(3))))
    # zero spread: a constant gap is certain; no gap is no evidence
    assert stats.compare({0: 5.0, 1: 6.0}, {0: 3.0, 1: 4.0}).p == 0.0
    assert stats.compare({0: 5.0, 1: 6.0}, {0: 5.0, 1: 6.0}).p == 1.0
    assert stats.compare({0: 5.0, 1: 5.0}, {7: 4.0, 8: 4.0}).p == 0.0


def test_n1_is_untested():
    c = stats.compare({0: 66.0, 1: 67.0}, {5: 10.0})
    assert math.isnan(c.p) and c.test.startswith("untested")


def test_holm_by_hand_and_nan_takes_no_share():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


# ---- ties with the best ----------------------------------------------------------------------
def test_ties_with_holm_unbalanced_n1_and_nan():
    cells = {
        "best": {0: 66.0, 1: 67.0, 2: 65.0, 3: 66.0},
        "worse": {0: 62.0, 1: 64.0, 2: 60.0},             # paired p 0.0101
        "close": {0: 65.5, 1: 67.2, 2: 64.0},             # within the noise
        "one": {0: 10.0},                                 # n = 1: untested, so tied
        "nan": stats.finite({0: 50.0, 1: math.nan}),      # the diverged seed is dropped: n = 1
    }
    t = ties(cells)
    assert t.loc["best", "best"] and t.loc["best", "tied"]
    p_worse = t2_cdf(-4 * math.sqrt(3))
    p_close = stats.compare(cells["best"], cells["close"]).p
    # Holm over the two testable cells: the smaller p doubled, the larger kept (or raised)
    assert t.loc["worse", "p_holm"] == pytest.approx(2 * p_worse)
    assert t.loc["close", "p_holm"] == pytest.approx(max(2 * p_worse, p_close))
    assert not t.loc["worse", "tied"] and t.loc["close", "tied"]
    assert t.loc["one", "tied"] and t.loc["nan", "tied"] and math.isnan(t.loc["one", "p_holm"])
    assert t.loc["nan", "n"] == 1


def ties(cells, alpha=0.05):
    return stats.ties(cells, alpha)


def test_ties_alpha_changes_the_verdict():
    cells = {"a": {0: 66.0, 1: 67.0, 2: 65.0}, "b": {0: 62.0, 1: 64.0, 2: 60.0}}
    assert not ties(cells, 0.05).loc["b", "tied"]          # p = 0.0101
    assert ties(cells, 0.01).loc["b", "tied"]


def test_tie_note_says_one_seed_resolves_nothing():
    cells = pd.DataFrame({"kind": ["ours", "ours"], "n": [1, 1]})
    assert "no cell is told apart" in tie_note(cells, 0.05)


def test_tost_and_upper_bound_by_hand():
    best = {0: 10.0, 1: 11.0, 2: 12.0}
    same = {0: 10.1, 1: 10.9, 2: 12.1}                     # differences .1 -.1 .1
    d = np.array([0.1, -0.1, 0.1])
    se = d.std(ddof=1) / math.sqrt(3)
    # TOST: the larger of the two one-sided p-values against -delta and +delta
    p_low = 1 - sps.t.cdf((d.mean() + 1.0) / se, 2)
    p_high = sps.t.cdf((d.mean() - 1.0) / se, 2)
    assert stats.tost(best, same, 1.0) == pytest.approx(max(p_low, p_high))
    assert stats.upper_bound(best, same) == pytest.approx(d.mean() + 2.919985580355516 * se)
    assert stats.upper_bound({0: 1.0}, {1: 2.0}) == math.inf


# ---- power -----------------------------------------------------------------------------------
@pytest.mark.parametrize("d, n", [(0.5, 64), (1.0, 17), (1.5, 9), (2.0, 6)])
def test_seeds_for_difference_matches_the_design_table(d, n):
    # ../shared/design/statistics.md: two-sided alpha 0.05, power 0.8, two independent cells
    assert stats.seeds_for_difference(d, 1.0, alpha=0.025, paired=False) == n


def test_seeds_for_a_large_difference_are_few_not_unknown():
    """statsmodels' solver returns nan for answers below 2 seeds; ours checks the power at 2
    and brackets the root itself. Reference: the one-sided one-sample t-test's power from the
    noncentral t, P(T' > t_0.95(n-1)), T' ~ nct(n - 1, effect sqrt(n))."""
    def power(effect, n):
        return sps.nct.sf(sps.t.ppf(0.95, n - 1), n - 1, effect * math.sqrt(n))
    assert power(6.0, 2) >= 0.8
    assert stats.seeds_for_difference(3.0, 0.5) == 2            # effect 6: 2 seeds are enough
    assert power(2.5, 2) < 0.8 <= power(2.5, 3)
    assert stats.seeds_for_difference(2.5, 1.0) == 3
    assert stats.seeds_for_difference(10.0, 1.0, paired=False) == 2
    assert stats.seeds_for_difference(1e-5, 1.0) > 1e9 and stats.seeds_text(
        stats.seeds_for_difference(1e-5, 1.0)) == "> 1000"


def test_seeds_for_slope_by_hand_and_edge_cases():
    z = sps.norm.ppf(0.95) + sps.norm.ppf(0.8)
    assert stats.seeds_for_slope(1.0, 1.0, 3) == math.ceil(3 * z ** 2)
    assert stats.seeds_for_slope(0.0, 1.0, 3) == math.inf
    assert stats.seeds_text(math.inf) == "> 1000" and stats.seeds_text(12.0) == "12"


# ---- axis effects ----------------------------------------------------------------------------
def _grid(values, setting="digits BN-ResNet-8 2w2a"):
    """samples for Table 9: values[(K, p)] = list of per-seed values."""
    rows = [dict(setting=setting, dataset="digits", mix_classes=k, mix_prob=p, seed=s,
                 value=v, start=40.0 + s)
            for (k, p), vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_axis_anova_balanced_by_hand():
    # 3 levels of p x 3 seeds, K fixed: randomized blocks, SS by the textbook formulas
    y = np.array([[60.0, 58.0, 55.0], [57.0, 56.0, 50.0], [52.0, 53.0, 45.0]])  # p x seed
    samples = _grid({(2, p): list(y[i]) for i, p in enumerate((0.1, 0.4, 0.7))})
    a, b = y.shape
    grand = y.mean()
    ss_a = b * ((y.mean(1) - grand) ** 2).sum()
    ss_b = a * ((y.mean(0) - grand) ** 2).sum()
    ss_e = ((y - grand) ** 2).sum() - ss_a - ss_b
    f = (ss_a / (a - 1)) / (ss_e / ((a - 1) * (b - 1)))
    e = effects.axis_effects(samples, "table9").set_index("axis")
    assert e.loc["mix_prob", "p"] == pytest.approx(sps.f.sf(f, a - 1, (a - 1) * (b - 1)))
    assert e.loc["mix_classes", "note"] == "one level: nothing to compare"
    # the slope per unit of p, by least squares on the block-centred values
    x = np.repeat([0.1, 0.4, 0.7], 3)
    yc = (y - y.mean(0)).ravel()
    xc = x - x.mean()
    assert e.loc["mix_prob", "effect"] == pytest.approx((xc * yc).sum() / (xc ** 2).sum())


def test_axis_anova_unbalanced_is_the_nested_f_test():
    rng = np.random.default_rng(0)
    vals = {(k, p): list(70 - 10 * p - 0.5 * np.log2(k) + rng.normal(0, 1, n))
            for (k, p), n in {(2, 0.1): 5, (2, 0.4): 3, (2, 0.7): 3,
                              (10, 0.1): 4, (10, 0.4): 2, (10, 0.7): 3}.items()}
    samples = _grid(vals)
    e = effects.axis_effects(samples, "table9").set_index("axis")

    def rss(cols):
        X = np.column_stack([np.ones(len(samples)), *cols])
        beta, *_ = np.linalg.lstsq(X, samples["value"], rcond=None)
        return float(((samples["value"] - X @ beta) ** 2).sum()), X.shape[1]

    dummies = lambda c: [(samples[c] == v).astype(float) for v in sorted(samples[c].unique())[1:]]  # noqa: E731
    full, k_full = rss(dummies("mix_prob") + dummies("mix_classes") + dummies("seed"))
    without, k_without = rss(dummies("mix_classes") + dummies("seed"))
    df1, df2 = k_full - k_without, len(samples) - k_full
    f = ((without - full) / df1) / (full / df2)
    assert e.loc["mix_prob", "p"] == pytest.approx(sps.f.sf(f, df1, df2))
    assert e.loc["mix_prob", "effect"] < 0 and e.loc["mix_prob", "ci_low"] < -10 < \
        e.loc["mix_prob", "ci_high"]


def test_axis_with_a_nan_row_and_too_few_runs():
    samples = _grid({(2, 0.1): [60.0, math.nan], (2, 0.4): [58.0, 57.0]})
    e = effects.axis_effects(samples, "table9").set_index("axis")
    assert e.loc["mix_prob", "runs"] == 3                   # the NaN row is left out
    tiny = _grid({(2, 0.1): [60.0], (2, 0.4): [58.0]})
    assert "no residual" in effects.axis_effects(tiny, "table9").set_index("axis").loc[
        "mix_prob", "note"]


# ---- the paper's claims ----------------------------------------------------------------------
def _methods(q, g, setting="CIFAR-10 ResNet-20 4w4a"):
    return pd.DataFrame([dict(setting=setting, dataset="CIFAR-10", method_label=m, seed=s,
                              value=v, start=math.nan)
                         for m, vs in (("Qimera", q), ("GDFQ", g)) for s, v in enumerate(vs)])


def test_claim_supported_contradicted_unresolved():
    c = effects.claims(_methods([91.0, 91.5, 90.8], [89.0, 89.6, 88.9]), "main").iloc[0]
    assert c["verdict"] == "supported" and c["p"] < 0.05 and c["seeds_needed_text"] == ""
    c = effects.claims(_methods([89.0, 89.6, 88.9], [91.0, 91.5, 90.8]), "main").iloc[0]
    assert c["verdict"] == "contradicted"
    c = effects.claims(_methods([91.0, 90.0, 91.4], [90.9, 90.2, 91.0]), "main").iloc[0]
    d = np.array([0.1, -0.2, 0.4])
    assert c["verdict"] == "unresolved"
    assert c["p"] == pytest.approx(1 - t2_cdf(d.mean() / (d.std(ddof=1) / math.sqrt(3))))
    assert c["seeds_needed"] == stats.seeds_for_difference(d.mean(), d.std(ddof=1))


def test_trend_claim_direction_by_dataset():
    rng = np.random.default_rng(1)
    vals = {(k, p): list(70 - 8 * p + rng.normal(0, 0.5, 3)) for k in (2, 10) for p in
            (0.1, 0.4, 0.7)}
    cifar = _grid(vals).assign(dataset="CIFAR-100", setting="CIFAR-100 ResNet-20 4w4a")
    c = effects.claims(cifar, "table9").set_index("claim")
    assert c.loc["lower p is better on CIFAR (Table 9)", "verdict"] == "supported"
    imagenet = cifar.assign(dataset="ImageNet", setting="ImageNet ResNet-50 4w4a")
    c = effects.claims(imagenet, "table9").set_index("claim")
    assert c.loc["higher p is better on ImageNet (Table 9)", "verdict"] == "contradicted"
    assert c.loc["higher K is better on ImageNet (Table 9)", "verdict"] in (
        "unresolved", "supported", "contradicted")


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests
    # ten draws: multipletests runs a full gc.collect() per call, half a second each in a
    # process as big as the whole test run's
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 5, 8, 13, 24, 6, 4, 10):
        p = rng.uniform(0, 0.3, size)
        assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_seed_adjusted_means_take_out_the_shared_seed_effect():
    # seeds shift every cell alike (+0, +5, -5); b is a + 1 but measured on seeds 1, 2 only
    a = {0: 70.0, 1: 75.0, 2: 65.0}
    b = {1: 76.0, 2: 66.0}
    plain = {"a": 70.0, "b": 71.0}
    assert {k: np.mean(list(v.values())) for k, v in (("a", a), ("b", b))} == plain
    adj = stats.seed_adjusted_means({"a": a, "b": b})
    assert adj["b"] - adj["a"] == pytest.approx(1.0)
    same = {"a": a, "b": {0: 71.0, 1: 76.0, 2: 66.0}}       # equal seeds: the plain means
    assert stats.seed_adjusted_means(same) == {"a": 70.0, "b": 71.0}
    assert stats.ties({"a": a, "b": b}, rank=adj).loc["b", "best"]
