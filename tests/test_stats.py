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


# ---- could be the best: simultaneous bounds ---------------------------------------------------
def t2_ppf(q: float) -> float:
    """Student t with 2 degrees of freedom, closed-form quantile."""
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def t1_cdf(t: float) -> float:
    return 0.5 + math.atan(t) / math.pi


def test_two_cells_paired_by_hand():
    best = {0: 66.0, 1: 67.0, 2: 65.0}
    other = {0: 62.0, 1: 64.0, 2: 60.0}                  # differences -4, -3, -5: sd 1
    b = stats.cell_bounds({"best": best, "other": other}, 0.05)
    # 2 ordered pairs, two halves each: every bound at 0.05 / 4 = 0.0125. With two cells the
    # pooled residual variance is half the paired differences' (RSS 1 on 2 df, times 2 for a
    # difference): both halves give the same bound.
    se = 1 / math.sqrt(3)
    assert b.pairs == 2 and b.pooled_df == 2 and b.pooled_sd == pytest.approx(math.sqrt(0.5))
    assert b.diff[1, 0] == pytest.approx(-4.0)
    assert b.upper[1, 0] == pytest.approx(-4 + t2_ppf(1 - 0.0125) * se)    # -0.417
    assert b.p[1, 0] == pytest.approx(4 * t2_cdf(-4 / se))                 # 0.0404
    assert b.upper[0, 1] == pytest.approx(4 + t2_ppf(1 - 0.0125) * se)
    t = stats.ties({"best": best, "other": other}, 0.05)
    assert t.loc["best", "best"] and t.loc["best", "tied"]
    assert not t.loc["other", "tied"] and t.loc["other", "by"] == "best"
    assert t.loc["other", "p"] == pytest.approx(0.0404, abs=1e-4)
    assert stats.ties({"best": best, "other": other}, 0.01).loc["other", "tied"]


def test_pooled_half_is_the_two_way_anova_residual():
    import statsmodels.formula.api as smf
    y = np.array([[10.0, 12.0, 11.0, 13.0], [9.0, 12.5, 10.0, 12.0], [5.0, 6.0, 4.0, 7.0]])
    b = stats.pair_bounds(y, 0.05)
    # textbook: e = y - row mean - column mean + grand mean, on (3-1)(4-1) = 6 df
    e = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    s2 = (e ** 2).sum() / 6
    assert b.pooled_df == 6 and b.pooled_sd == pytest.approx(math.sqrt(s2))
    long = pd.DataFrame([dict(cell=i, seed=j, v=y[i, j]) for i in range(3) for j in range(4)])
    fit = smf.ols("v ~ C(cell) + C(seed)", long).fit()
    assert b.pooled_sd ** 2 == pytest.approx(fit.mse_resid) and fit.df_resid == 6
    share = 0.05 / (2 * 6)
    pooled = b.diff[2, 0] + sps.t.ppf(1 - share, 6) * math.sqrt(s2 * 2 / 4)
    d = y[2] - y[0]
    paired = d.mean() + sps.t.ppf(1 - share, 3) * d.std(ddof=1) / 2
    assert b.upper[2, 0] == pytest.approx(min(pooled, paired))
    assert b.test[2, 0] == ("pooled (df=6)" if pooled < paired else "paired (n=4)")


def test_unbalanced_fit_matches_ols():
    import statsmodels.formula.api as smf
    y = np.array([[10.0, 12.0, 11.0, 13.0, 9.0], [9.0, 12.5, 10.0, np.nan, np.nan],
                  [5.0, 6.0, np.nan, np.nan, np.nan]])
    adj, rss, df = stats.additive_fit(y)
    rows = [dict(cell=i, seed=j, v=y[i, j]) for i in range(3) for j in range(5)
            if np.isfinite(y[i, j])]
    fit = smf.ols("v ~ C(cell) + C(seed)", pd.DataFrame(rows)).fit()
    assert df == fit.df_resid and rss == pytest.approx(fit.ssr)
    # cell differences are the fit's cell coefficients
    assert adj[1] - adj[0] == pytest.approx(fit.params["C(cell)[T.1]"])
    assert adj[2] - adj[0] == pytest.approx(fit.params["C(cell)[T.2]"])


def test_welch_when_no_seed_is_shared():
    b = stats.cell_bounds({"best": {0: 5.0, 1: 6.0, 2: 7.0},
                           "other": {10: 1.0, 11: 2.0, 12: 3.0}}, 0.05)
    se = math.sqrt(1 / 3 + 1 / 3)                         # Welch, df = 4
    assert b.pooled_df == 0                               # disjoint seeds: no pooled fit
    assert b.test[1, 0] == "Welch"
    assert b.p[1, 0] == pytest.approx(4 * t4_cdf(-4 / se))


def test_against_a_constant_one_sample():
    b = stats.cell_bounds({"paper": 66.0, "ours": {0: 62.0, 1: 64.0, 2: 60.0}}, 0.05)
    # one test for the pair (the pooled half does not apply: the gap holds the seed effect)
    assert b.test[1, 0] == "one-sample"
    assert b.p[1, 0] == pytest.approx(2 * t2_cdf((62 - 66) / (2 / math.sqrt(3))))
    assert b.upper[1, 0] == pytest.approx(-4 + t2_ppf(1 - 0.025) * 2 / math.sqrt(3))
    two = stats.cell_bounds({"a": 66.0, "b": 60.0}, 0.05)     # two reported numbers: exact
    assert two.upper[1, 0] == -6.0 and two.p[1, 0] == 0.0 and two.test[1, 0] == "constants"


def test_two_seeds_with_equal_differences_are_not_certain():
    # values recorded to 0.01: the cell is 0.01 below on both seeds
    t = stats.ties({"a": {0: 70.0, 1: 71.0}, "b": {0: 69.99, 1: 70.99}}, 0.05)
    # no variance below rounding's: h^2/12 a value, h = 0.01; paired se = h / sqrt(12), df 1
    p = 4 * t1_cdf(-0.01 / (0.01 / math.sqrt(12)))
    assert t.loc["b", "p"] == pytest.approx(p, rel=1e-6) and p == pytest.approx(0.358, abs=1e-3)
    assert t.loc["b", "tied"]
    assert stats.resolution([70.0, 69.99, 71.0, 70.99]) == pytest.approx(0.01)


def test_a_constant_gap_over_six_seeds_resolves():
    rng = np.random.default_rng(3)
    block = rng.normal(0, 1, 6)
    cells = {"best": dict(enumerate(70 + block)), "gap": dict(enumerate(69.5 + block))}
    for i in range(3):                                     # other cells: seed std 1
        cells[f"noisy{i}"] = dict(enumerate(68 + block + rng.normal(0, 1, 6)))
    t = stats.ties(cells, 0.05)
    assert t.loc["best", "best"] and not t.loc["gap", "tied"]
    assert t.loc["gap", "test"] == "paired (n=6)"


def test_nan_never_decides():
    cells = {"a": {0: 70.0, 1: 71.0, 2: 72.0}, "nan": {0: math.nan, 1: math.nan},
             "one": {0: 10.0}, "b": {0: 69.0, 1: 70.5, 2: 71.0}}
    t = stats.ties(cells, 0.05)
    assert not t.loc["nan", "best"] and not t.loc["nan", "tied"]
    assert t.loc["nan", "test"] == "no finite value" and math.isnan(t.loc["nan", "p"])
    assert t.loc["a", "best"]
    assert stats.ties({"nan": {0: math.nan}, "x": {0: 1.0, 1: 2.0}}).loc["x", "best"]
    with pytest.raises(ValueError, match="every cell needs a value"):
        stats.pair_bounds(np.array([[1.0, 2.0], [np.nan, np.nan]]))


def test_equal_cells_keep_bold_together_at_alpha():
    # the guarantee: with every cell equal, some cell loses bold at most alpha of the time
    rng = np.random.default_rng(0)
    draws, lost = 300, 0
    for _ in range(draws):
        y = rng.normal(0, 1, (8, 3)) + rng.normal(0, 0.5, 3)
        lost += bool((np.nanmin(stats.pair_bounds(y, 0.05).upper, 1) < 0).any())
    assert lost / draws <= 0.05 + 2.58 * math.sqrt(0.05 * 0.95 / draws)


def test_tie_note_says_one_seed_resolves_nothing():
    cells = pd.DataFrame({"kind": ["ours", "ours"], "n": [1, 1]})
    assert "no cell is told apart" in tie_note(cells, 0.05)


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
