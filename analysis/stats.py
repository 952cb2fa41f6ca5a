"""Seed statistics for a table's cells: intervals, ties with the best, axis effects, power.

Every function here takes plain numbers (a cell is a mapping seed -> value) so that the tables,
the live page, the race in `sweeps` and `bench/racing.py` share one rule. The choices, and why,
are in docs/statistics.md:

- a cell's interval is the Student-t interval of its own seeds (no pooling, no bootstrap);
- a cell is *tied with the best* unless a one-sided test says it is worse than the cell with the
  best mean: paired by seed on the seeds both have (two or more), Welch otherwise, against a
  constant (a paper value) by a one-sample test; Holm across the table's cells;
- an axis matters by a type-II ANOVA of an OLS fit with the seed as a block (valid when racing
  leaves the design unbalanced); its size is a slope per unit (per doubling of K) with its
  interval, or the range of the level means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
# Cells whose values are constants (a paper baseline) rather than seeds.
Cell = Mapping[int, float] | float


def finite(values: Mapping[int, float]) -> dict[int, float]:
    """The seeds with a finite value (a diverged run's NaN is left out)."""
    return {int(s): float(v) for s, v in values.items()
            if v is not None and math.isfinite(float(v))}


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; (nan, nan) below two values. Zero spread: the mean."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    m, s = float(x.mean()), float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, len(x) - 1)) * s / math.sqrt(len(x))
    return m - half, m + half


@dataclass(frozen=True)
class Comparison:
    """One cell against the best: H0 'not worse', H1 'worse' (one-sided)."""

    p: float            # one-sided p-value; nan = no test possible
    test: str           # "paired (n=3)", "Welch", "one-sample", "untested: ..."
    diff: float         # mean(cell) - mean(best), on the values the test used


def _mean(c: Cell) -> float:
    return float(c) if isinstance(c, int | float) else float(np.mean(list(c.values())))


def _degenerate(diff: float) -> float:
    """The p-value when the spread is zero: worse for sure, or no evidence at all."""
    return 0.0 if diff < 0 else 1.0


def compare(best: Cell, other: Cell) -> Comparison:
    """Is `other` worse than `best`? One-sided; see the module doc for the test chosen."""
    if not isinstance(best, Mapping) and not isinstance(other, Mapping):
        d = float(other) - float(best)     # two reported numbers: nothing to test
        return Comparison(_degenerate(d) if d else 1.0, "constants", d)
    if not isinstance(best, Mapping) or not isinstance(other, Mapping):
        sample, const = (other, best) if isinstance(other, Mapping) else (best, other)
        x = np.asarray(list(sample.values()), dtype=float)
        sign = 1.0 if sample is other else -1.0      # test other - best < 0
        d = sign * (x.mean() - float(const)) if len(x) else math.nan
        if len(x) < 2:
            return Comparison(math.nan, f"untested: n={len(x)}", d)
        if x.std(ddof=1) == 0:
            return Comparison(_degenerate(d), "one-sample", d)
        alt = "less" if sign > 0 else "greater"
        return Comparison(float(sps.ttest_1samp(x, float(const), alternative=alt).pvalue),
                          "one-sample", d)
    common = sorted(set(best) & set(other))
    if len(common) >= 2:
        x = np.array([other[s] for s in common]) - np.array([best[s] for s in common])
        d = float(x.mean())
        if x.std(ddof=1) == 0:
            return Comparison(_degenerate(d), f"paired (n={len(common)})", d)
        return Comparison(float(sps.ttest_1samp(x, 0.0, alternative="less").pvalue),
                          f"paired (n={len(common)})", d)
    a, b = (np.asarray(list(c.values()), dtype=float) for c in (other, best))
    d = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(math.nan, f"untested: n={len(a)} vs {len(b)}", d)
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return Comparison(_degenerate(d), "Welch", d)
    return Comparison(float(sps.ttest_ind(a, b, equal_var=False, alternative="less").pvalue),
                      "Welch", d)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values; a nan (no test) stays nan and takes no share of alpha.

    The step-down formula itself (the k-th smallest of m times m - k + 1, made monotone, at
    most 1), as statsmodels' multipletests(method="holm") computes it: that function runs a
    full gc.collect() on every call, which made a race's decision twice as slow; the tests
    check this one against it and against a hand-computed case."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        m = len(order)
        out[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return out.tolist()


def seed_adjusted_means(cells: Mapping[object, Mapping[int, float]], iterations: int = 50
                        ) -> dict[object, float]:
    """Cell means with the shared seed effect taken out: the least-squares fit of the additive
    model value = cell + seed (by backfitting), so that cells measured on different seeds
    compare fairly. Equal to the plain means when every cell has the same seeds."""
    seeds = sorted({s for c in cells.values() for s in c})
    effect = dict.fromkeys(seeds, 0.0)
    means = {k: float(np.mean(list(c.values()))) for k, c in cells.items()}
    if all(set(c) == set(seeds) for c in cells.values()):
        return means
    for _ in range(iterations):
        means = {k: float(np.mean([v - effect[s] for s, v in c.items()]))
                 for k, c in cells.items()}
        new = {s: float(np.mean([c[s] - means[k] for k, c in cells.items() if s in c]))
               for s in seeds}
        centre = float(np.mean(list(new.values())))
        new = {s: v - centre for s, v in new.items()}
        if max(abs(new[s] - effect[s]) for s in seeds) < 1e-9:
            effect = new
            break
        effect = new
    return {k: float(np.mean([v - effect[s] for s, v in c.items()])) for k, c in cells.items()}


def ties(cells: Mapping[object, Cell], alpha: float = ALPHA,
         rank: Mapping[object, float] | None = None) -> pd.DataFrame:
    """Which cells are not significantly worse than the one with the best mean (or the best
    `rank` score, e.g. seed_adjusted_means).

    Returns one row per cell (index = the keys): mean, n, best (the top mean), p (one-sided,
    raw), p_holm, test, tied. A cell that cannot be tested (n = 1 on either side) is tied: no
    test at `alpha` says it is worse.
    """
    keys = [k for k, c in cells.items() if not isinstance(c, Mapping) or len(c)]
    frame = pd.DataFrame(index=pd.Index(list(cells), dtype=object, tupleize_cols=False),
                         columns=["mean", "n", "best", "p", "p_holm", "test", "tied", "diff"])
    frame["best"], frame["tied"] = False, False
    if not keys:
        return frame
    top = max(keys, key=lambda k: rank[k] if rank is not None else _mean(cells[k]))
    comps = {k: compare(cells[top], cells[k]) for k in keys if k != top}
    adjusted = dict(zip(comps, holm([c.p for c in comps.values()]), strict=True))
    for k in keys:
        c = cells[k]
        frame.at[k, "mean"] = _mean(c)
        frame.at[k, "n"] = len(c) if isinstance(c, Mapping) else 0
        if k == top:
            frame.at[k, "best"], frame.at[k, "tied"], frame.at[k, "test"] = True, True, "best"
            continue
        comp, p_adj = comps[k], adjusted[k]
        frame.at[k, "p"], frame.at[k, "p_holm"], frame.at[k, "test"] = comp.p, p_adj, comp.test
        frame.at[k, "diff"] = comp.diff
        frame.at[k, "tied"] = bool(math.isnan(p_adj) or p_adj >= alpha)
    return frame


def tost(best: Mapping[int, float], other: Mapping[int, float], delta: float) -> float:
    """TOST p-value that `other` is within ±delta of `best` (paired on common seeds when two
    or more, Welch otherwise); nan when no test is possible."""
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired
    common = sorted(set(best) & set(other))
    if len(common) >= 2:
        x = np.array([other[s] for s in common])
        y = np.array([best[s] for s in common])
        if np.std(x - y) == 0:
            return 0.0 if abs(float(np.mean(x - y))) < delta else 1.0
        return float(ttost_paired(x, y, -delta, delta)[0])
    a, b = np.asarray(list(other.values())), np.asarray(list(best.values()))
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(ttost_ind(a, b, -delta, delta, usevar="unequal")[0])


def upper_bound(best: Mapping[int, float], other: Mapping[int, float],
                alpha: float = ALPHA) -> float:
    """One-sided (1 - alpha) upper bound of mean(other) - mean(best), paired where possible;
    +inf when there is too little data to bound it."""
    common = sorted(set(best) & set(other))
    if len(common) >= 2:
        x = np.array([other[s] - best[s] for s in common])
    else:
        a, b = np.asarray(list(other.values())), np.asarray(list(best.values()))
        if len(a) < 2 or len(b) < 2:
            return math.inf
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / max(va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1), 1e-300)
        return float(a.mean() - b.mean() + sps.t.ppf(1 - alpha, df) * se)
    se = x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() + sps.t.ppf(1 - alpha, len(x) - 1) * se)


# ---- power --------------------------------------------------------------------------------------
MAX_SEEDS_SHOWN = 1000


def seeds_for_difference(diff: float, sd: float, alpha: float = ALPHA, paired: bool = True,
                         power: float = POWER) -> float:
    """Seeds per cell for a one-sided t-test at `alpha` to detect `diff` with `power` when
    the (paired-difference or per-cell) std is `sd`; inf when diff is 0, nan without sd."""
    from statsmodels.stats.power import TTestIndPower, TTestPower
    if not (math.isfinite(diff) and math.isfinite(sd)) or sd < 0:
        return math.nan
    if diff == 0:
        return math.inf
    if sd == 0:
        return 2.0
    solver = TTestPower() if paired else TTestIndPower()
    effect = abs(diff) / sd

    def power_at(n: float) -> float:        # both solvers: (effect_size, nobs[1], alpha)
        return float(solver.power(effect, n, alpha, alternative="larger"))
    # statsmodels' root finder starts at 10 seeds and fails (nan, a ConvergenceWarning) when
    # the answer lies below 2, which is any effect of about 3 std or more: check the ends first
    if power_at(2) >= power:
        return 2.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n = float(np.ravel(solver.solve_power(effect_size=effect, alpha=alpha, power=power,
                                                  alternative="larger"))[0])
    except (ValueError, RuntimeError):
        n = math.nan
    if not math.isfinite(n):                # bracket it ourselves
        hi = 2.0
        while power_at(hi) < power and hi < 1e9:
            hi *= 2
        if hi >= 1e9:
            return math.inf
        n = optimize.brentq(lambda m: power_at(m) - power, hi / 2, hi)
    return max(2.0, math.ceil(n))


def seeds_for_slope(slope: float, se: float, n_now: float, alpha: float = ALPHA,
                    power: float = POWER) -> float:
    """Seeds per cell for a one-sided test of a slope: its standard error shrinks as
    1/sqrt(seeds), so n = n_now * ((z_alpha + z_power) * se / slope)^2 (normal approximation)."""
    if not (math.isfinite(slope) and math.isfinite(se)) or n_now < 1:
        return math.nan
    if slope == 0:
        return math.inf
    z = sps.norm.ppf(1 - alpha) + sps.norm.ppf(power)
    return max(2.0, math.ceil(n_now * (z * se / abs(slope)) ** 2))


def seeds_text(n: float) -> str:
    if math.isnan(n):
        return "unknown"
    if math.isinf(n) or n > MAX_SEEDS_SHOWN:
        return f"> {MAX_SEEDS_SHOWN}"
    return str(int(n))
