"""analysis.effects on raced rows (`balanced_seeds=n0`): the tests come from the round-0 rows,
a fixed design, and hold their level; the raced rows' estimate is carried beside them, labelled
after selection; a table that was not raced comes out as before."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as sps

from analysis import effects, resolve
from analysis.resolve import Resolution

DM = (0, 1, 2, 3, 4, 8)          # Table 8's one axis: six cells


def _rows(values: dict[int, dict[int, float]], setting: str = "digits BN-ResNet-8 2w2a",
          ) -> pd.DataFrame:
    """Table 8 samples: values[dm_layers] = {seed: value}."""
    return pd.DataFrame([dict(setting=setting, dataset="digits", dm_layers=k, seed=s, value=v,
                              start=40.0 + s)
                         for k, vs in values.items() for s, v in vs.items()])


def _race(y: np.ndarray, n0: int, max_seeds: int, alpha: float = 0.05) -> np.ndarray:
    """A stand-in race (not sweeps.race): every cell gets seeds 0..n0-1; at each look a cell
    goes out when its paired one-sided t against the best-mean cell has p below the look's
    alpha (6 alpha / (pi^2 r^2)) over the number of others; the cells left get one more seed,
    until one is left or max_seeds. Returns the seeds each cell got. Cells stop *because*
    they look bad: the selection the round-0 test has to survive."""
    k = y.shape[0]
    n, alive, look = np.full(k, n0), np.ones(k, bool), 1
    while alive.sum() > 1 and n[alive].max() < max_seeds:
        a = 6 * alpha / (math.pi ** 2 * look ** 2)
        idx = np.flatnonzero(alive)
        m = int(n[idx].min())
        best = idx[np.argmax(y[idx, :m].mean(1))]
        for c in idx[idx != best]:
            d = y[best, :m] - y[c, :m]
            t = d.mean() / (d.std(ddof=1) / math.sqrt(m))
            if sps.t.sf(t, m - 1) < a / (len(idx) - 1):
                alive[c] = False
        n[alive] += 1
        look += 1
    return n


def _draw(rng: np.random.Generator, setting: str, n0: int = 3, max_seeds: int = 8
          ) -> pd.DataFrame:
    """One raced Table 8 block with no axis effect: seed std 1, a seed effect 0.5 shared by
    every cell at that seed."""
    y = rng.normal(0, 1, (len(DM), max_seeds)) + rng.normal(0, 0.5, max_seeds)
    n = _race(y, n0, max_seeds)
    return _rows({k: {s: float(y[i, s]) for s in range(n[i])} for i, k in enumerate(DM)},
                 setting)


# ---- (a) the p-value is the plain ANOVA on the seed < n0 rows --------------------------------
def test_raced_p_is_the_anova_on_round0_rows_by_hand():
    rng = np.random.default_rng(3)
    # cells 0 and 8 went out after round 0 (seeds 0-2); the others raced on to seeds 0-7
    values = {k: {s: 60 - 0.3 * k + rng.normal(0, 1) for s in range(3 if k in (0, 8) else 8)}
              for k in DM}
    samples = _rows(values)
    e = effects.axis_effects(samples, "table8", balanced_seeds=3).iloc[0]

    first = samples[samples["seed"] < 3]
    fit = smf.ols("value ~ C(dm_layers) + C(seed)", data=first).fit()
    p = sm.stats.anova_lm(fit, typ=2).loc["C(dm_layers)", "PR(>F)"]
    assert e["p"] == pytest.approx(p, rel=1e-12)
    assert e["runs"] == len(first) == 18
    slope = smf.ols("value ~ dm_layers + C(seed)", data=first).fit()
    lo, hi = slope.conf_int().loc["dm_layers"]
    assert (e["effect"], e["ci_low"], e["ci_high"]) == pytest.approx(
        (slope.params["dm_layers"], lo, hi), rel=1e-12)
    assert e["test"] == ("type-II ANOVA, OLS C(dm_layers) + C(seed) on round-0 rows "
                         "(seeds 0-2, every cell)")

    # the estimate on every raced row, after selection
    every = smf.ols("value ~ dm_layers + C(seed)", data=samples).fit()
    lo, hi = every.conf_int().loc["dm_layers"]
    assert e["selected_runs"] == len(samples) == 38
    assert (e["selected_effect"], e["selected_ci_low"], e["selected_ci_high"]) == pytest.approx(
        (every.params["dm_layers"], lo, hi), rel=1e-12)


def test_raced_claims_test_round0_and_show_the_rest_after_selection():
    rng = np.random.default_rng(4)
    values = {k: {s: 60 - 0.3 * k + rng.normal(0, 1) for s in range(3 if k == 8 else 7)}
              for k in DM}
    samples = _rows(values)
    c = effects.claims(samples, "table8", balanced_seeds=3).set_index("claim")
    row = c.iloc[0]                                   # the best of 1-8 above 0 layers
    assert row["test"] == "paired t (n=3) on round-0 rows (seeds 0-2, every cell)"
    assert row["seeds_per_cell"] == 3
    best = int(row.name.split("the best, ")[1].split(" ")[0])
    diff = np.array([values[best][s] - values[0][s] for s in range(3)])
    assert row["effect"] == pytest.approx(diff.mean())
    assert row["p"] == pytest.approx(sps.ttest_1samp(diff, 0, alternative="greater").pvalue)
    every = np.array([values[best][s] - values[0][s] for s in range(7)])
    assert row["selected_effect"] == pytest.approx(every.mean())
    assert row["selected_test"] == "paired t (n=7) on raced seeds, after selection"

    # Table 9's slope claims: the slope on the round-0 rows, the raced slope beside it
    grid = pd.DataFrame([dict(setting="CIFAR-100 ResNet-20 4w4a", dataset="CIFAR-100",
                              mix_classes=k, mix_prob=p, seed=s,
                              value=70 - 8 * p + rng.normal(0, 0.5), start=math.nan)
                         for k in (2, 10) for p in (0.1, 0.4, 0.7)
                         for s in range(3 if p == 0.7 else 6)])
    c = effects.claims(grid, "table9", balanced_seeds=3).set_index("claim")
    row = c.loc["lower p is better on CIFAR (Table 9)"]
    first = grid[grid["seed"] < 3]
    fit = smf.ols("value ~ mix_prob + C(mix_classes) + C(seed)", data=first).fit()
    assert row["effect"] == pytest.approx(fit.params["mix_prob"], rel=1e-10)
    assert row["test"].endswith("on round-0 rows (seeds 0-2, every cell)")
    every = smf.ols("value ~ mix_prob + C(mix_classes) + C(seed)", data=grid).fit()
    assert row["selected_effect"] == pytest.approx(every.params["mix_prob"], rel=1e-10)
    assert "after selection" in row["selected_test"]


# ---- (b) the round-0 test holds its level under a race ---------------------------------------
def test_round0_test_rejects_at_alpha_after_a_race_with_no_axis_effect():
    rng = np.random.default_rng(2024)
    draws = 200
    samples = pd.concat([_draw(rng, f"draw {i}") for i in range(draws)], ignore_index=True)
    assert samples.groupby("setting").size().nunique() > 1       # the races differ
    # the six cells as levels of a factor (the main table's method axis): the same ANOVA,
    # without the slope fits, so 200 draws take seconds
    samples = samples.assign(method_label="m" + samples.pop("dm_layers").astype(str))
    e = effects.axis_effects(samples, "main", balanced_seeds=3)
    assert len(e) == draws and (e["runs"] == 18).all() and (e["levels"] == 6).all()
    rejected = int((e["p"] < 0.05).sum())
    # 4 of 200 (2.0 %) with this seed; a 99 % binomial interval about alpha (3-19) holds it
    lo, hi = sps.binom.ppf([0.005, 0.995], draws, 0.05)
    assert lo <= rejected <= hi, f"{rejected} of {draws} rejected at alpha 0.05"


# ---- (c) not raced: as before ----------------------------------------------------------------
def test_not_raced_is_unchanged():
    rng = np.random.default_rng(5)
    samples = _rows({k: {s: 60 - 0.3 * k + rng.normal(0, 1) for s in range(3 if k else 6)}
                     for k in DM})
    plain = effects.axis_effects(samples, "table8")
    assert plain.equals(effects.axis_effects(samples, "table8", balanced_seeds=None))
    assert list(plain.columns) == ["setting", "axis", "label", "levels", "runs", "test", "p",
                                   "effect", "ci_low", "ci_high", "effect_unit", "note",
                                   "slope_p", *effects.SELECTED_COLUMNS]
    assert plain[effects.SELECTED_COLUMNS].isna().all().all()
    e = plain.iloc[0]
    fit = smf.ols("value ~ C(dm_layers) + C(seed)", data=samples).fit()
    assert e["p"] == sm.stats.anova_lm(fit, typ=2).loc["C(dm_layers)", "PR(>F)"]
    assert e["runs"] == len(samples) and e["test"] == "type-II ANOVA, OLS C(dm_layers) + C(seed)"
    c = effects.claims(samples, "table8")
    assert c.equals(effects.claims(samples, "table8", balanced_seeds=None))
    assert not c["test"].str.contains("round-0|selection").any()
    assert (c["selected_test"] == "").all() and c["selected_effect"].isna().all()

    # the stats file of a table that was not raced says nothing of round 0 or selection
    r = Resolution(table="table8", alpha=0.05, ties=pd.DataFrame(), effects=plain, claims=c)
    frame = resolve.to_frame(r)
    assert list(frame.columns) == resolve.CSV_COLUMNS
    assert set(frame["part"]) == {"axis", "claim"}
    text = resolve.to_markdown(r) + resolve.to_latex(r) + "\n".join(r.lines())
    assert "round-0" not in text and "selection" not in text


def test_raced_stats_file_shows_both_estimates_labelled():
    rng = np.random.default_rng(6)
    samples = _rows({k: {s: 60 - 0.3 * k + rng.normal(0, 1) for s in range(3 if k == 8 else 6)}
                     for k in DM})
    r = Resolution(table="table8", alpha=0.05, ties=pd.DataFrame(),
                   effects=effects.axis_effects(samples, "table8", balanced_seeds=3),
                   claims=effects.claims(samples, "table8", balanced_seeds=3),
                   options=dict(balanced_seeds=3))
    frame = resolve.to_frame(r)
    assert list(frame.columns) == resolve.CSV_COLUMNS
    axis = frame[frame["part"] == "axis"].iloc[0]
    assert "round-0 rows" in axis["test"]
    sel = frame[frame["part"] == "axis after selection"].iloc[0]
    assert "after selection" in sel["test"] and sel["effect"] == pytest.approx(
        r.effects.iloc[0]["selected_effect"]) and math.isnan(sel["p"])
    assert (frame["part"] == "claim after selection").any()
    lines = "\n".join(r.lines())
    assert "round-0 rows" in lines and "after selection" in lines
    assert "after selection" in resolve.to_markdown(r) and "after selection" in resolve.to_latex(r)
