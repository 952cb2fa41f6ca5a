"""What a table resolves: does each swept axis matter, and do the paper's stated trends hold?

Input is a table's `samples` (one row per finished run: the cell's columns, `seed`, `value`,
`start`). Axis effects fit OLS with the seed as a block and read a type-II ANOVA (statsmodels),
which stays valid for the unbalanced designs a race leaves. Claims are one-sided tests in the
paper's direction, with a power calculation where the rows do not decide. docs/statistics.md
says why each test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats

# Per table: (axis column, label, which runs the axis is tested on). Axes that are not crossed
# with the others (Table 6: σ only for GDFQ) are tested on the rows where they vary.
AXES: dict[str, list[tuple[str, str, Callable[[pd.DataFrame], pd.Series] | None]]] = {
    "table9": [("mix_prob", "p", None), ("mix_classes", "K", None)],
    "table8": [("dm_layers", "DM layers", None)],
    "table6": [("noise_sigma", "σ (GDFQ)", lambda d: d["method_label"] == "GDFQ"),
               ("method_label", "method (σ = 1)", lambda d: d["noise_sigma"] == 1.0)],
    "table7": [("method_label", "method", None)],
    "main": [("method_label", "method", None)],
    "table10": [],
}
# How a numeric axis enters the slope: K spans 2-1000, so per doubling of K.
_SCALE = {"mix_classes": (np.log2, "per doubling of K")}
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


def axis_effects(samples: pd.DataFrame, table: str, *, covariate: bool = False,
                 robust: bool = False, by: str = "setting") -> pd.DataFrame:
    """One row per (setting, axis): the ANOVA p-value that the axis matters, and its size."""
    out = []
    for setting, d0 in samples.groupby(by, sort=False):
        d0 = d0[np.isfinite(d0["value"].astype(float))]
        for axis, label, where in AXES.get(table, []):
            d = d0[where(d0)] if where is not None else d0
            others = [a for a, _, w in AXES[table] if a != axis and w is None and where is None]
            out.append(_one_axis(d, setting, axis, label, others, covariate, robust))
    return pd.DataFrame(out)


def _one_axis(d: pd.DataFrame, setting: str, axis: str, label: str, others: list[str],
              covariate: bool, robust: bool) -> dict:
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
    numeric = pd.api.types.is_numeric_dtype(d[axis])
    if numeric:
        f, unit = _SCALE.get(axis, (lambda v: v, f"per unit of {label}"))
        data = data.assign(**{x: f(data[x].astype(float))})
        slope_fit = _fit(data, [x, *terms])
        lo, hi = slope_fit.conf_int().loc[x]
        row.update(effect=float(slope_fit.params[x]), ci_low=float(lo), ci_high=float(hi),
                   effect_unit=f"slope {unit}", slope_p=float(slope_fit.pvalues[x]))
    else:
        means = d.groupby(axis)["value"].mean()
        row.update(effect=float(means.max() - means.min()),
                   effect_unit=f"range of means ({means.idxmax()} - {means.idxmin()})")
    return row


# ---- the paper's claims --------------------------------------------------------------------------
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


def difference_claim(a: dict[int, float], b: dict[int, float], alpha: float) -> dict:
    """'a is above b': one-sided, paired on common seeds (two or more), Welch otherwise."""
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
                covariate: bool) -> dict:
    """'value falls (sign=-1) or rises (+1) with `axis`': one-sided t-test of the OLS slope with
    the other axes as factors and the seed as a block."""
    d = d[np.isfinite(d["value"].astype(float))]
    if d[axis].nunique() < 2:
        return dict(test="untested (one level)", effect=math.nan, ci_low=math.nan,
                    ci_high=math.nan, verdict=Verdict("unresolved", math.nan, math.nan,
                                                      math.nan), n_now=0)
    data, terms = _design(d, axis, others, covariate)
    x = _safe(axis)
    f, unit = _SCALE.get(axis, (lambda v: v, f"per unit of {axis}"))
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


def _best_of(d: pd.DataFrame, axis: str, levels) -> tuple[object, dict[int, float]]:
    means = {lv: d.loc[d[axis] == lv, "value"].mean() for lv in levels}
    top = max(means, key=lambda k: means[k])
    return top, _cell(d, d[axis] == top)


def _claims_table9(d, setting, dataset, alpha, cov):
    up = dataset == "ImageNet"
    where = "ImageNet" if up else "CIFAR"
    word = "higher" if up else "lower"
    out = []
    for axis, name in (("mix_prob", "p"), ("mix_classes", "K")):
        others = [o for o in ("mix_prob", "mix_classes") if o != axis]
        out.append((f"{word} {name} is better on {where} (Table 9)",
                    slope_claim(d, axis, others, +1 if up else -1, alpha, cov)))
    return out


def _claims_table8(d, setting, dataset, alpha, cov):
    levels = sorted(d["dm_layers"].unique())
    out = []
    if 0 in levels and len(levels) > 1:
        top, cell = _best_of(d, "dm_layers", [v for v in levels if v != 0])
        out.append((f"more DM layers help a little: the best, {top} layers, is above 0 "
                    "(Table 8; picked as the best, so optimistic)",
                    difference_claim(cell, _cell(d, d["dm_layers"] == 0), alpha)))
    if 8 in levels and len(levels) > 1:
        top, cell = _best_of(d, "dm_layers", [v for v in levels if v != 8])
        paper_scope = "" if dataset == "CIFAR-100" else " (the paper says so for CIFAR-100)"
        out.append((f"8 DM layers drop below the best other ({top} layers){paper_scope}",
                    difference_claim(cell, _cell(d, d["dm_layers"] == 8), alpha)))
    return out


def _claims_table6(d, setting, dataset, alpha, cov):
    g = d[d["method_label"] == "GDFQ"]
    out = [("a lower σ helps GDFQ slightly (Table 6)",
            slope_claim(g, "noise_sigma", [], -1, alpha, cov))]
    q = d[(d["method_label"] == "Qimera") & (d["noise_sigma"] == 1.0)]
    if len(g) and len(q):
        top, cell = _best_of(g, "noise_sigma", sorted(g["noise_sigma"].unique()))
        out.append((f"the noise level alone does not close the gap: Qimera is above GDFQ at its "
                    f"best σ ({top:g})", difference_claim(
                        _cell(q, pd.Series(True, index=q.index)), cell, alpha)))
    return out


def _method_claim(d, high, low, text, alpha):
    a, b = _cell(d, d["method_label"] == high), _cell(d, d["method_label"] == low)
    if not a or not b:
        return []
    return [(text, difference_claim(a, b, alpha))]


def _claims_main(d, setting, dataset, alpha, cov):
    return _method_claim(d, "Qimera", "GDFQ", "Qimera is above GDFQ (main table)", alpha)


def _claims_table7(d, setting, dataset, alpha, cov):
    return (_claims_main(d, setting, dataset, alpha, cov)
            + _method_claim(d, "Qimera", "Extracted Init + Freeze",
                            "frozen extracted embeddings are below trained ones (Table 7)",
                            alpha))


CLAIMS = {"table9": _claims_table9, "table8": _claims_table8, "table6": _claims_table6,
          "main": _claims_main, "table7": _claims_table7}


def claims(samples: pd.DataFrame, table: str, alpha: float = stats.ALPHA,
           covariate: bool = False) -> pd.DataFrame:
    """One row per (setting, claim): the test, the effect and its 95 % interval, the one-sided
    p-value in the paper's direction, the verdict, and the seeds per cell that would resolve an
    unresolved claim at the observed variance (power 0.8)."""
    make = CLAIMS.get(table)
    rows = []
    if make is None or samples.empty:
        return pd.DataFrame(rows)
    for setting, d in samples.groupby("setting", sort=False):
        d = d[np.isfinite(d["value"].astype(float))]
        for text, r in make(d, setting, d["dataset"].iloc[0], alpha, covariate):
            v = r["verdict"]
            rows.append(dict(setting=setting, claim=text, test=r["test"], effect=r["effect"],
                             ci_low=r["ci_low"], ci_high=r["ci_high"], p=v.p,
                             p_opposite=v.p_other, verdict=v.verdict,
                             seeds_per_cell=r["n_now"],
                             seeds_needed=v.seeds_needed,
                             seeds_needed_text=stats.seeds_text(v.seeds_needed)
                             if v.verdict == "unresolved" else ""))
    return pd.DataFrame(rows)
