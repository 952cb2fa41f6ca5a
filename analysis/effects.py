"""What a table resolves: does each swept axis matter, and do the paper's stated trends hold?

Input is a table's `samples` (one row per finished run: the cell's columns, `seed`, `value`,
`start`). Axis effects fit OLS with the seed as a block and read a type-II ANOVA (statsmodels).
Claims are one-sided tests in the paper's direction, with a power calculation where the rows do
not decide. docs/statistics.md says why each test.

After a race (`--seeds auto`) the rows are not a fixed design: a cell stops getting seeds
*because* its values looked bad, so which runs exist depends on the values of the same cells.
An ANOVA or slope test on all raced rows then does not hold its level (in simulation, 12.5 %
rejections at alpha 0.05 with no axis effect, against 7.5 % for a fixed design of that size).
Round 0 is a fixed design: every cell got seeds 0..n0-1 before any value was seen. So with
`balanced_seeds=n0` the p-values, verdicts and the slopes (with intervals) that back them come
from the rows with seed < n0 only, and the estimate on all raced rows is carried beside them in
`selected_*` columns, labelled as after selection: an estimate to read, never a test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from qimera_core import tablespec
from qimera_core.tablespec import Claim

from . import stats


def _axes(table: str) -> list[tuple[str, str, Mapping[str, Any] | None]]:
    """(column, label, the rows it is tested on) of each axis of the table's spec
    (qimera_core.tablespec). Axes that are not crossed with the others (Table 6: σ only for
    GDFQ) are tested on the rows where they vary."""
    try:
        return [(a.column, a.label, a.where) for a in tablespec.get(table).axes]
    except KeyError:
        return []


def _mask(d: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.Series:
    """The rows where every column of `where` has its value (every row for None)."""
    m = pd.Series(True, index=d.index)
    for k, v in (where or {}).items():
        m &= d[k] == v
    return m


def _scale(table: str, column: str, unit_name: str) -> tuple[Callable, str]:
    """How a numeric axis enters the slope: as is ("per unit of ..."), or per doubling for an
    axis the spec marks log2 (K spans 2-1000)."""
    try:
        axis = next(a for a in tablespec.get(table).axes if a.column == column)
    except (KeyError, StopIteration):
        axis = None
    if axis is not None and axis.log2:
        return np.log2, f"per doubling of {axis.label}"
    return (lambda v: v), f"per unit of {unit_name}"


_MIN_RESID_DF = 1


def _safe(name: str) -> str:
    return "x_" + "".join(c if c.isalnum() else "_" for c in name)


def _fit(data: pd.DataFrame, rhs: list[str]):
    import statsmodels.formula.api as smf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smf.ols("value ~ " + (" + ".join(rhs) if rhs else "1"), data=data).fit()


def _anova_p(fit, term: str, robust: bool) -> float:
    import statsmodels.api as sm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sm.stats.anova_lm(fit, typ=2, robust="hc3" if robust else None)
    return float(table.loc[term, "PR(>F)"]) if term in table.index else math.nan


def _design(d: pd.DataFrame, axis: str, others: list[str], covariate: bool
            ) -> tuple[pd.DataFrame, list[str]]:
    """The frame with safe column names and the terms other than `axis`: the other axes as
    factors, the seed as a block (when it has two or more levels), the start accuracy."""
    data = d.rename(columns={c: _safe(c) for c in [axis, *others]})
    terms = [f"C({_safe(o)})" for o in others if d[o].nunique() > 1]
    if d["seed"].nunique() > 1:
        terms.append("C(seed)")
    if covariate and d["start"].notna().all() and d["start"].nunique() > 1:
        terms.append("start")
    return data, terms


SELECTED_COLUMNS = ["selected_runs", "selected_effect", "selected_ci_low", "selected_ci_high"]


def round0(d: pd.DataFrame, balanced_seeds: int) -> pd.DataFrame:
    """A raced table's balanced rows: every cell's round-0 seeds 0..n0-1, given before any value
    was seen (a fixed design)."""
    return d[d["seed"].astype(int) < int(balanced_seeds)]


def round0_text(balanced_seeds: int) -> str:
    n0 = int(balanced_seeds)
    seeds = f"seeds 0-{n0 - 1}" if n0 > 1 else "seed 0"
    return f"on round-0 rows ({seeds}, every cell)"


def axis_effects(samples: pd.DataFrame, table: str, *, covariate: bool = False,
                 robust: bool = False, by: str = "setting",
                 balanced_seeds: int | None = None) -> pd.DataFrame:
    """One row per (setting, axis): the ANOVA p-value that the axis matters, and its size.

    `balanced_seeds=None` (a fixed design): the test and the size on all finite rows, with the
    `selected_*` columns NaN. `balanced_seeds=n0` (a raced table, n0 = the seeds every cell got
    in round 0): `p`, `effect`, `ci_low`, `ci_high`, `runs` and `test` come from the round-0
    rows (seed < n0), the one part of a race that is a fixed design, so the p-value holds its
    level; `selected_effect` and its interval are the same size measure on every raced row,
    after selection (cells stopped getting seeds because they looked bad): shown, not tested.
    They stay NaN when the race ran no seed past round 0 (nothing was selected).
    """
    out = []
    for setting, d0 in samples.groupby(by, sort=False):
        d0 = d0[np.isfinite(d0["value"].astype(float))]
        axes = _axes(table)
        for axis, label, where in axes:
            d = d0[_mask(d0, where)]
            others = [a for a, _, w in axes if a != axis and w is None and where is None]
            scale = _scale(table, axis, label)
            if balanced_seeds is None:
                row = _one_axis(d, setting, axis, label, others, covariate, robust, scale)
                out.append({**row, **dict.fromkeys(SELECTED_COLUMNS, math.nan)})
                continue
            d_bal = round0(d, balanced_seeds)
            row = _one_axis(d_bal, setting, axis, label, others, covariate, robust, scale)
            if row["test"]:
                row["test"] += " " + round0_text(balanced_seeds)
            sel = dict.fromkeys(SELECTED_COLUMNS, math.nan)
            if len(d) > len(d_bal) and d[axis].nunique() > 1:
                effect, lo, hi, _, _ = _size(d, axis, others, covariate, scale)
                sel.update(selected_runs=len(d), selected_effect=effect, selected_ci_low=lo,
                           selected_ci_high=hi)
            out.append({**row, **sel})
    frame = pd.DataFrame(out)
    if not frame.empty:     # the selected_* columns last, after slope_p where there is one
        frame = frame[[c for c in frame if c not in SELECTED_COLUMNS] + SELECTED_COLUMNS]
    return frame


def _one_axis(d: pd.DataFrame, setting: str, axis: str, label: str, others: list[str],
              covariate: bool, robust: bool, scale: tuple[Callable, str]) -> dict:
    row = dict(setting=setting, axis=axis, label=label, levels=int(d[axis].nunique()),
               runs=len(d), test="", p=math.nan, effect=math.nan, ci_low=math.nan,
               ci_high=math.nan, effect_unit="", note="")
    if row["levels"] < 2:
        return {**row, "note": "one level: nothing to compare"}
    data, terms = _design(d, axis, others, covariate)
    x = _safe(axis)
    fit = _fit(data, [f"C({x})", *terms])
    if fit.df_resid < _MIN_RESID_DF:
        return {**row, "note": f"no residual degrees of freedom ({len(d)} runs)"}
    row["p"] = _anova_p(fit, f"C({x})", robust)
    named = " + ".join([f"C({x})", *terms])
    for a in [axis, *others]:                       # the formula's safe names back to columns
        named = named.replace(_safe(a), a)
    row["test"] = "type-II ANOVA, OLS " + named + (", HC3" if robust else "")
    effect, lo, hi, unit, slope_p = _size(d, axis, others, covariate, scale)
    row.update(effect=effect, ci_low=lo, ci_high=hi, effect_unit=unit)
    if slope_p is not None:
        row["slope_p"] = slope_p
    return row


def _size(d: pd.DataFrame, axis: str, others: list[str], covariate: bool,
          scale: tuple[Callable, str]) -> tuple[float, float, float, str, float | None]:
    """The axis's size: for a numeric axis the OLS slope (other axes and the seed as factors)
    with its 95 % interval and p; otherwise the range of the level means (no interval)."""
    if pd.api.types.is_numeric_dtype(d[axis]):
        data, terms = _design(d, axis, others, covariate)
        x = _safe(axis)
        f, unit = scale
        data = data.assign(**{x: f(data[x].astype(float))})
        slope_fit = _fit(data, [x, *terms])
        lo, hi = slope_fit.conf_int().loc[x]
        return (float(slope_fit.params[x]), float(lo), float(hi), f"slope {unit}",
                float(slope_fit.pvalues[x]))
    means = d.groupby(axis)["value"].mean()
    return (float(means.max() - means.min()), math.nan, math.nan,
            f"range of means ({means.idxmax()} - {means.idxmin()})", None)


# ---- the paper's claims --------------------------------------------------------------------------
# On a raced table (`balanced_seeds=n0`) every claim is tested on the round-0 rows, slope and
# difference alike, and carries its estimate on all raced rows as `selected_*`, after selection.
# A paired test of two cells on all their common raced seeds keeps the pairing (both cells got
# the same seeds) but not its level: how many seeds a pair shares was chosen from their values
# (a cell stops when it looked bad, so a gap is measured just when it looked largest, which is
# optional stopping). In a stand-in race (4000 runs, equal cells, seed effect shared, n0 = 3,
# up to 10 seeds, paired eliminations at alpha spent over the looks) the one-sided paired t on
# all common seeds rejected a true "a above b" in 5.5-7.5 % of runs at alpha 0.05, and on the
# round-0 seeds in 4.6-4.9 %. So the verdict comes from round 0 and the rest is shown.
@dataclass(frozen=True)
class Verdict:
    verdict: str         # supported | contradicted | unresolved
    p: float             # one-sided p in the claimed direction
    p_other: float       # one-sided p in the opposite direction
    seeds_needed: float  # seeds per cell to resolve it at the observed variance (unresolved only)


def _verdict(p_claim: float, p_other: float, alpha: float, seeds: float) -> Verdict:
    if p_claim < alpha:
        return Verdict("supported", p_claim, p_other, math.nan)
    if p_other < alpha:
        return Verdict("contradicted", p_claim, p_other, math.nan)
    return Verdict("unresolved", p_claim, p_other, seeds)


def _cell(d: pd.DataFrame, mask: pd.Series) -> dict[int, float]:
    return stats.finite(dict(zip(d.loc[mask, "seed"], d.loc[mask, "value"], strict=True)))


_NO_SELECTED = dict(selected_test="", selected_effect=math.nan, selected_ci_low=math.nan,
                    selected_ci_high=math.nan)


def _first(values: dict[int, float], balanced_seeds: int) -> dict[int, float]:
    return {s: v for s, v in values.items() if s < int(balanced_seeds)}


def difference_claim(a: dict[int, float], b: dict[int, float], alpha: float,
                     balanced_seeds: int | None = None) -> dict:
    """'a is above b': one-sided, paired on common seeds (two or more), Welch otherwise.

    `balanced_seeds=n0` (a raced table): the test on the seeds below n0 (round 0, a fixed
    design), and the same estimate on every raced seed as `selected_*`, after selection."""
    if balanced_seeds is None:
        return {**_difference(a, b, alpha), **_NO_SELECTED}
    a0, b0 = _first(a, balanced_seeds), _first(b, balanced_seeds)
    r = _difference(a0, b0, alpha)
    if r["n_now"]:
        r["test"] += " " + round0_text(balanced_seeds)
    sel = dict(_NO_SELECTED)
    if (len(a), len(b)) != (len(a0), len(b0)):
        s = _difference(a, b, alpha)
        if s["n_now"]:
            sel = dict(selected_test=s["test"] + " on raced seeds, after selection",
                       selected_effect=s["effect"], selected_ci_low=s["ci_low"],
                       selected_ci_high=s["ci_high"])
    return {**r, **sel}


def _difference(a: dict[int, float], b: dict[int, float], alpha: float) -> dict:
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        x = np.array([a[s] - b[s] for s in common])
        diff, sd, paired, test = float(x.mean()), float(x.std(ddof=1)), True, \
            f"paired t (n={len(common)})"
        if sd == 0:
            p = 0.0 if diff > 0 else 1.0
            q = 0.0 if diff < 0 else 1.0
        else:
            p = float(sps.ttest_1samp(x, 0, alternative="greater").pvalue)
            q = float(sps.ttest_1samp(x, 0, alternative="less").pvalue)
        n_now = len(common)
        lo, hi = stats.t_interval(list(x))
    elif len(a) >= 2 and len(b) >= 2:
        xa, xb = np.array(list(a.values())), np.array(list(b.values()))
        diff, paired, test = float(xa.mean() - xb.mean()), False, "Welch t"
        sd = float(math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2))
        p = float(sps.ttest_ind(xa, xb, equal_var=False, alternative="greater").pvalue)
        q = float(sps.ttest_ind(xa, xb, equal_var=False, alternative="less").pvalue)
        n_now = min(len(a), len(b))
        r = sps.ttest_ind(xa, xb, equal_var=False)
        lo, hi = r.confidence_interval(0.95)
    else:
        return dict(test="untested (fewer than 2 seeds)", effect=math.nan, ci_low=math.nan,
                    ci_high=math.nan, verdict=Verdict("unresolved", math.nan, math.nan,
                                                      math.nan), n_now=0)
    need = stats.seeds_for_difference(diff, sd, alpha, paired=paired)
    if math.isnan(p):
        p, q = 1.0, 1.0
    return dict(test=test, effect=diff, ci_low=float(lo), ci_high=float(hi),
                verdict=_verdict(p, q, alpha, need), n_now=n_now)


def slope_claim(d: pd.DataFrame, axis: str, others: list[str], sign: int, alpha: float,
                covariate: bool, balanced_seeds: int | None = None,
                scale: tuple[Callable, str] | None = None) -> dict:
    """'value falls (sign=-1) or rises (+1) with `axis`': one-sided t-test of the OLS slope with
    the other axes as factors and the seed as a block.

    `balanced_seeds=n0` (a raced table): the test on the round-0 rows (seed < n0), and the
    slope on every raced row as `selected_*`, after selection."""
    d = d[np.isfinite(d["value"].astype(float))]
    if balanced_seeds is None:
        return {**_slope(d, axis, others, sign, alpha, covariate, scale), **_NO_SELECTED}
    d0 = round0(d, balanced_seeds)
    r = _slope(d0, axis, others, sign, alpha, covariate, scale)
    if r["n_now"]:
        r["test"] += " " + round0_text(balanced_seeds)
    sel = dict(_NO_SELECTED)
    if len(d) > len(d0):
        s = _slope(d, axis, others, sign, alpha, covariate, scale)
        if s["n_now"]:
            sel = dict(selected_test=f"OLS slope on all {len(d)} raced runs, after selection",
                       selected_effect=s["effect"], selected_ci_low=s["ci_low"],
                       selected_ci_high=s["ci_high"])
    return {**r, **sel}


def _slope(d: pd.DataFrame, axis: str, others: list[str], sign: int, alpha: float,
           covariate: bool, scale: tuple[Callable, str] | None) -> dict:
    if d[axis].nunique() < 2:
        return dict(test="untested (one level)", effect=math.nan, ci_low=math.nan,
                    ci_high=math.nan, verdict=Verdict("unresolved", math.nan, math.nan,
                                                      math.nan), n_now=0)
    data, terms = _design(d, axis, others, covariate)
    x = _safe(axis)
    f, unit = scale or ((lambda v: v), f"per unit of {axis}")
    data = data.assign(**{x: f(data[x].astype(float))})
    fit = _fit(data, [x, *terms])
    if fit.df_resid < _MIN_RESID_DF:
        return dict(test="untested (no residual df)", effect=math.nan, ci_low=math.nan,
                    ci_high=math.nan, verdict=Verdict("unresolved", math.nan, math.nan,
                                                      math.nan), n_now=0)
    b, se, df = float(fit.params[x]), float(fit.bse[x]), float(fit.df_resid)
    t = b / se if se > 0 else math.copysign(math.inf, b) if b else 0.0
    p_up, p_down = float(sps.t.sf(t, df)), float(sps.t.cdf(t, df))
    p, q = (p_up, p_down) if sign > 0 else (p_down, p_up)
    n_now = float(d.groupby([*others, axis], dropna=False).size().mean()) if others \
        else float(d.groupby(axis).size().mean())
    lo, hi = fit.conf_int().loc[x]
    return dict(test=f"OLS slope {unit}, one-sided t", effect=b, ci_low=float(lo),
                ci_high=float(hi), verdict=_verdict(p, q, alpha,
                                                    stats.seeds_for_slope(b, se, n_now, alpha)),
                n_now=n_now)


def _best_of(d: pd.DataFrame, axis: str, levels, n0: int | None = None
             ) -> tuple[object, dict[int, float]]:
    """The level with the best mean (on the round-0 rows when raced, the rows the test uses)
    and its cell's values on every seed."""
    m = round0(d, n0) if n0 is not None else d
    means = {lv: m.loc[m[axis] == lv, "value"].mean() for lv in levels}
    top = max(means, key=lambda k: means[k])
    return top, _cell(d, d[axis] == top)


def _one_claim(c: Claim, table: str, d: pd.DataFrame, dataset: str, alpha: float, cov: bool,
               n0: int | None) -> list[tuple[str, dict]]:
    """A spec's claim (qimera_core.tablespec.Claim) on one setting's rows: its text and test,
    or nothing when the setting lacks the cells it names."""
    scope = "" if not c.datasets or dataset in c.datasets \
        else f" (the paper says so for {', '.join(c.datasets)})"
    if c.kind == "slope":
        rows = d[_mask(d, c.where)]
        crossed = [a for a, _, w in _axes(table) if w is None and a != c.axis]
        others = [] if c.where else crossed
        return [(c.text.format(scope=scope), slope_claim(
            rows, c.axis, others, c.direction, alpha, cov, n0,
            scale=_scale(table, c.axis, c.axis)))]
    if c.kind == "best_above":
        levels = sorted(d[c.axis].unique())
        if c.level not in levels or len(levels) < 2:
            return []
        top, cell = _best_of(d, c.axis, [v for v in levels if v != c.level], n0)
        return [(c.text.format(top=top, scope=scope),
                 difference_claim(cell, _cell(d, d[c.axis] == c.level), alpha, n0))]
    high, low = d[_mask(d, c.high)], d[_mask(d, c.low)]
    if c.low_over:
        if not len(high) or not len(low):
            return []
        top, cell = _best_of(low, c.low_over, sorted(low[c.low_over].unique()), n0)
        return [(c.text.format(top=top, scope=scope), difference_claim(
            _cell(high, pd.Series(True, index=high.index)), cell, alpha, n0))]
    a, b = _cell(d, _mask(d, c.high)), _cell(d, _mask(d, c.low))
    if not a or not b:
        return []
    return [(c.text.format(scope=scope), difference_claim(a, b, alpha, n0))]


def claims(samples: pd.DataFrame, table: str, alpha: float = stats.ALPHA,
           covariate: bool = False, balanced_seeds: int | None = None) -> pd.DataFrame:
    """One row per (setting, claim): the test, the effect and its 95 % interval, the one-sided
    p-value in the paper's direction, the verdict, and the seeds per cell that would resolve an
    unresolved claim at the observed variance (power 0.8).

    `balanced_seeds=n0` marks a raced table. Every claim, slope (Table 9, Table 6's σ) and
    difference (two cells, paired) alike, is then tested on the round-0 rows, seeds 0..n0-1,
    which every cell got before any value was seen: a fixed design, so the one-sided p holds
    its level, and the seeds needed are those of a fixed design. A "best" level a claim names
    is picked on those rows too. The estimate on every raced row is carried as `selected_test`,
    `selected_effect`, `selected_ci_low`, `selected_ci_high`, after selection: the race gave
    more seeds to cells because of their values, so neither a slope nor a paired difference on
    those rows tests at its level (the comment above the claims says what was measured). They
    are empty/NaN for a fixed design and for a race that ran nothing past round 0."""
    try:
        spec = tablespec.get(table)
    except KeyError:
        spec = None
    rows = []
    if spec is None or not spec.claims or samples.empty:
        return pd.DataFrame(rows)
    for setting, d in samples.groupby("setting", sort=False):
        d = d[np.isfinite(d["value"].astype(float))]
        dataset = d["dataset"].iloc[0]
        made = [x for c in spec.claims if c.applies({"dataset": dataset, "setting": setting})
                for x in _one_claim(c, table, d, dataset, alpha, covariate, balanced_seeds)]
        for text, r in made:
            v = r["verdict"]
            rows.append(dict(setting=setting, claim=text, test=r["test"], effect=r["effect"],
                             ci_low=r["ci_low"], ci_high=r["ci_high"], p=v.p,
                             p_opposite=v.p_other, verdict=v.verdict,
                             seeds_per_cell=r["n_now"],
                             seeds_needed=v.seeds_needed,
                             seeds_needed_text=stats.seeds_text(v.seeds_needed)
                             if v.verdict == "unresolved" else "",
                             **{k: r[k] for k in _NO_SELECTED}))
    return pd.DataFrame(rows)
