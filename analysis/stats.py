"""Seed statistics for a table's cells: intervals, ties with the best, axis effects, power.

Every function here takes plain numbers (a cell is a mapping seed -> value) so that the tables,
the live page, the race in `sweeps` and `bench/racing.py` share one rule. The choices, and why,
are in docs/statistics.md:

- a cell's interval is the Student-t interval of its own seeds (no pooling, no bootstrap);
- bold is the set of cells that could be the best, at level alpha for the whole table: a cell
  is out of it when some other cell is above it by simultaneous bounds on every ordered pair's
  difference (`pair_bounds`: paired by seed, and pooled over the table's seed-blocked model,
  Bonferroni over the pairs and the two), so every truly best cell is bold with probability at
  least 1 - alpha; a race uses the same bounds at each look's share of alpha;
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
from scipy import optimize, special
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


def look_alpha(alpha: float, look: int) -> float:
    """A race's share of alpha at look r = 1, 2, ...: 6 alpha / (pi^2 r^2), summing to alpha."""
    return 6.0 * alpha / (math.pi ** 2 * look ** 2)


# ---- which cells could be the best: simultaneous bounds on every pairwise difference ----------
def t_upper(share: float, df: np.ndarray | float) -> np.ndarray:
    """The Student-t quantile with `share` above it (scipy.stats.t.ppf(1 - share, df)), by
    scipy.special's ufunc: the same numbers, without the distribution wrapper's overhead that a
    race pays at every look (nan where df < 1)."""
    return -special.stdtrit(df, share)


def resolution(values: Sequence[float] | np.ndarray) -> float:
    """The finest step between the distinct values: a recorded accuracy is a count over a test
    set (0.1 points on 1000 images), so two values that look equal may differ by less than this
    step. 0.0 when there are fewer than two distinct values."""
    v = np.asarray(values, dtype=float).ravel()
    v = np.unique(np.round(v[np.isfinite(v)], 9))
    return float(np.diff(v).min()) if len(v) > 1 else 0.0


def additive_fit(y: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Least-squares fit of value = cell + seed to y[cell, seed] (nan = not run): the cell
    means with the seed effect taken out (seed effects centred on zero over the seeds), the
    residual sum of squares and its degrees of freedom (runs - rank of the design)."""
    has = np.isfinite(y)
    rows, cols = has.any(1), has.any(0)
    out = np.full(len(y), np.nan)
    if not rows.any():
        return out, math.nan, 0
    z, m = y[np.ix_(rows, cols)], has[np.ix_(rows, cols)]
    k, s = z.shape
    if m.all():                                          # balanced: the closed form
        cell, seed = z.mean(1), z.mean(0) - z.mean()
        resid = z - cell[:, None] - seed[None, :]
        out[rows] = cell
        return out, float((resid ** 2).sum()), (k - 1) * (s - 1)
    # unbalanced: the normal equations with the cell effects eliminated (a seeds x seeds system,
    # seed 0 the reference level), which a race's many looks can afford; the same fit as least
    # squares on the design matrix (tests/test_stats.py checks it against statsmodels' OLS)
    w = m.astype(float)
    zz = np.where(m, z, 0.0)
    n, c = w.sum(1), w.sum(0)
    r_cell, r_seed = zz.sum(1), zz.sum(0)
    schur = np.diag(c) - w.T @ (w / n[:, None])
    rhs = r_seed - w.T @ (r_cell / n)
    sol, _, rank, _ = np.linalg.lstsq(schur[1:, 1:], rhs[1:], rcond=None)
    seed = np.concatenate([[0.0], sol])
    cell = (r_cell - w @ seed) / n
    resid = (z - cell[:, None] - seed[None, :])[m]
    out[rows] = cell + seed.mean()
    return out, float(resid @ resid), int(m.sum() - k - rank)


_FITS: dict[tuple, tuple[np.ndarray, float, int]] = {}


def cached_fit(y: np.ndarray) -> tuple[np.ndarray, float, int]:
    """`additive_fit`, remembered for the last few matrices: a race's look asks for the same fit
    three times (its bounds, the seed-adjusted means, the screen)."""
    key = (y.shape, y.tobytes())
    if key not in _FITS:
        if len(_FITS) >= 8:
            _FITS.pop(next(iter(_FITS)))
        _FITS[key] = additive_fit(y)
    adj, rss, df = _FITS[key]
    return adj.copy(), rss, df


@dataclass(frozen=True)
class Bounds:
    """Simultaneous upper bounds on mu_a - mu_b for every ordered pair (a, b) of a table's cells
    (row a, column b): with probability at least 1 - alpha all of them hold at once.

    Each pair gets two one-sided t bounds, each at alpha / (2 x pairs) (Bonferroni over the
    ordered pairs and the two halves), and the lower one is used:
    - *paired*: the pair's own seed-by-seed differences on the seeds both have (Welch on the
      plain means when they share none; one-sample against a constant);
    - *pooled*: the same mean difference with the residual variance of the whole table's
      seed-blocked model (value = cell + seed), which has (cells - 1)(seeds - 1) degrees of
      freedom when balanced; not used against a constant, whose gap also holds the seed effect.
    No variance is taken below the rounding of the values (`resolution`): h^2/12 per value, so
    two seeds with equal differences never give certainty. `diff` is the mean difference on the
    common seeds (plain means when none; a constant's own value)."""

    keys: list
    mean: np.ndarray
    n: np.ndarray
    diff: np.ndarray
    upper: np.ndarray
    p: np.ndarray
    test: np.ndarray
    alpha: float
    pairs: int
    pooled_sd: float
    pooled_df: int
    resolution: float


def pair_bounds(y: np.ndarray, alpha: float = ALPHA, const: np.ndarray | None = None,
                keys: Sequence[object] | None = None, *, each: bool = False) -> Bounds:
    """`Bounds` of the cells y[cell, seed] (nan = no finite value at that seed); `const[i]`, when
    not nan, makes cell i a reported constant (a paper baseline) instead of seeds. Every cell
    given must have a value (a constant, or at least one finite seed). `each=True` puts every
    one-sided bound at `alpha` itself (no Bonferroni split): per-comparison bounds, which hold
    for no family; the race uses them only to choose where seeds go."""
    with np.errstate(invalid="ignore", divide="ignore"):   # n = 0 (constants) is masked out
        return _pair_bounds(y, alpha, const, keys, each)


def _pair_bounds(y: np.ndarray, alpha: float, const: np.ndarray | None,
                 keys: Sequence[object] | None, each: bool = False) -> Bounds:
    y = np.asarray(y, dtype=float)
    k = len(y)
    const = np.full(k, np.nan) if const is None else np.asarray(const, dtype=float)
    is_c = np.isfinite(const)
    y = np.where(is_c[:, None], np.nan, y)
    has = np.isfinite(y)
    n = has.sum(1)
    if ((n == 0) & ~is_c).any():
        raise ValueError("pair_bounds: every cell needs a value (filter out cells without one)")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(is_c, const, np.nansum(y, 1) / n)
    h = resolution(y[has])
    pairs = 1 if each else k * (k - 1)
    a_half = alpha if each else alpha / (2 * max(pairs, 1))
    floor_d, floor_v = h * h / 6, h * h / 12          # a difference of two roundings; one
    upper = np.full((k, k), math.inf)
    p = np.ones((k, k))
    test = np.full((k, k), "untested", dtype=object)
    diff = mean[:, None] - mean[None, :]

    def bound(d, se, df, share, name, where):
        """Put a one-sided bound in where it is lower than the one already there."""
        with np.errstate(invalid="ignore", divide="ignore"):
            u = d + t_upper(share, df) * se
            pv = np.minimum(1.0, (alpha / share) * special.stdtr(df, d / se)) \
                if share else np.ones_like(d)
            pv = np.where(se > 0, pv, np.where(d < 0, 0.0, 1.0))
        better = where & (u < upper)
        upper[better] = u[better]
        test[better] = name if isinstance(name, str) else name[better]
        p[where] = np.minimum(p[where], pv[where])

    # the paired half: each pair's own differences on their common seeds
    z = np.where(has, y, 0.0)
    both = has[:, None, :] & has[None, :, :]
    nc = both.sum(-1)
    dsum = (z[:, None, :] - z[None, :, :]) * both
    with np.errstate(invalid="ignore", divide="ignore"):
        dbar = dsum.sum(-1) / nc
        var = (((dsum - dbar[..., None]) * both) ** 2).sum(-1) / (nc - 1)
    paired = (nc >= 2) & ~is_c[:, None] & ~is_c[None, :]
    diff = np.where(nc >= 1, dbar, diff)
    names = np.array([f"paired (n={c})" for c in range(int(nc.max(initial=0)) + 1)],
                     dtype=object)[nc]
    bound(diff, np.sqrt(np.maximum(var, floor_d) / nc), nc - 1, a_half, names, paired)
    # no common seed: Welch on the plain means
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.nansum((y - mean[:, None]) ** 2 * has, 1) / (n - 1)
    v = np.maximum(cv, floor_v) / n
    welch = (nc == 0) & (n[:, None] >= 2) & (n[None, :] >= 2) & ~is_c[:, None] & ~is_c[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        vs = v[:, None] + v[None, :]
        wdf = vs ** 2 / (v[:, None] ** 2 / (n[:, None] - 1) + v[None, :] ** 2 / (n[None, :] - 1))
    bound(diff, np.sqrt(vs), wdf, a_half, "Welch", welch)
    # against a constant: a one-sample bound, the pair's whole share
    one = ~is_c & (n >= 2)
    se1 = np.sqrt(v)
    a_one = alpha if each else alpha / max(pairs, 1)
    bound(diff, np.broadcast_to(se1[:, None], (k, k)), np.broadcast_to(n[:, None] - 1, (k, k)),
          a_one, "one-sample", one[:, None] & is_c[None, :])
    bound(diff, np.broadcast_to(se1[None, :], (k, k)), np.broadcast_to(n[None, :] - 1, (k, k)),
          a_one, "one-sample", is_c[:, None] & one[None, :])
    cc = is_c[:, None] & is_c[None, :]
    upper[cc], p[cc], test[cc] = diff[cc], np.where(diff[cc] < 0, 0.0, 1.0), "constants"
    # the pooled half: the table's seed-blocked residual variance
    samples = ~is_c
    pooled_sd, pooled_df = math.nan, 0
    if samples.sum() >= 2:
        adj, rss, pooled_df = cached_fit(y[samples])
        if pooled_df >= 1:
            pooled_sd = math.sqrt(max(rss / pooled_df, floor_v))
            idx = np.flatnonzero(samples)
            sub = np.ix_(idx, idx)
            ncs = nc[sub]
            with np.errstate(invalid="ignore", divide="ignore"):
                se = pooled_sd * np.where(ncs >= 1, np.sqrt(2.0 / ncs),
                                          np.sqrt(1.0 / n[idx][:, None] + 1.0 / n[idx][None, :]))
            d = np.where(ncs >= 1, diff[sub], adj[:, None] - adj[None, :])
            u_sub, p_sub, t_sub = upper[sub], p[sub], test[sub]
            with np.errstate(invalid="ignore", divide="ignore"):
                u = d + t_upper(a_half, pooled_df) * se
                pv = np.minimum(1.0, (alpha / a_half) * special.stdtr(pooled_df, d / se))
            better = u < u_sub
            u_sub[better], t_sub[better] = u[better], f"pooled (df={pooled_df})"
            upper[sub], test[sub], p[sub] = u_sub, t_sub, np.minimum(p_sub, pv)
    np.fill_diagonal(upper, math.nan)
    np.fill_diagonal(p, math.nan)
    np.fill_diagonal(test, "")
    return Bounds(keys=list(range(k)) if keys is None else list(keys), mean=mean, n=n,
                  diff=diff, upper=upper, p=p, test=test, alpha=alpha, pairs=pairs,
                  pooled_sd=pooled_sd, pooled_df=pooled_df, resolution=h)


def _has_value(c: Cell) -> bool:
    if isinstance(c, Mapping):
        return bool(finite(c))
    return c is not None and math.isfinite(float(c))


def cell_bounds(cells: Mapping[object, Cell], alpha: float = ALPHA, *, each: bool = False
                ) -> Bounds:
    """`pair_bounds` of cells given as seed -> value mappings (or constants); cells without a
    finite value are left out (a NaN never decides)."""
    keys = [k for k, c in cells.items() if _has_value(c)]
    seeds = sorted({s for k in keys if isinstance(cells[k], Mapping) for s in finite(cells[k])})
    col = {s: j for j, s in enumerate(seeds)}
    y = np.full((len(keys), len(seeds)), np.nan)
    const = np.full(len(keys), np.nan)
    for i, k in enumerate(keys):
        if isinstance(cells[k], Mapping):
            for s, v in finite(cells[k]).items():
                y[i, col[s]] = v
        else:
            const[i] = float(cells[k])
    return pair_bounds(y, alpha, const, keys, each=each)


def seed_adjusted_means(cells: Mapping[object, Mapping[int, float]]) -> dict[object, float]:
    """Cell means with the shared seed effect taken out: the least-squares fit of the additive
    model value = cell + seed (`additive_fit`), so that cells measured on different seeds
    compare fairly. Equal to the plain means when every cell has the same seeds."""
    keys = [k for k, c in cells.items() if finite(c)]
    seeds = sorted({s for k in keys for s in finite(cells[k])})
    col = {s: j for j, s in enumerate(seeds)}
    y = np.full((len(keys), len(seeds)), np.nan)
    for i, k in enumerate(keys):
        for s, v in finite(cells[k]).items():
            y[i, col[s]] = v
    adj = cached_fit(y)[0]
    return {k: float(adj[i]) for i, k in enumerate(keys)}


def ties(cells: Mapping[object, Cell], alpha: float = ALPHA,
         rank: Mapping[object, float] | None = None) -> pd.DataFrame:
    """Which cells could be the best, at level `alpha` for the whole table: a cell is bold
    (`tied`) unless some other cell's simultaneous bound (`pair_bounds`) says it is above it.
    With probability at least 1 - alpha every truly best cell is bold, so equal cells lose bold
    together at most alpha of the time.

    One row per cell (index = the keys): mean, n, best (the top mean, or the top `rank` score),
    tied, p (the simultaneous p-value that some cell is above it: tied iff p >= alpha), by (that
    cell), test (the bound used), diff (mean(cell - best) on their common seeds), upper (its
    simultaneous upper bound of mu_cell - mu_best). A cell without a finite value has no row
    values and is neither best nor tied.
    """
    frame = pd.DataFrame(index=pd.Index(list(cells), dtype=object, tupleize_cols=False),
                         columns=["mean", "n", "best", "tied", "p", "by", "test", "diff",
                                  "upper"])
    frame["best"], frame["tied"] = False, False
    frame["test"] = "no finite value"
    b = cell_bounds(cells, alpha)
    if not b.keys:
        return frame
    score = [rank[k] if rank is not None else b.mean[i] for i, k in enumerate(b.keys)]
    top = int(np.argmax(score))
    for i, k in enumerate(b.keys):
        frame.at[k, "mean"], frame.at[k, "n"] = float(b.mean[i]), int(b.n[i])
        row = np.where(np.arange(len(b.keys)) == i, np.inf, b.p[i])
        j = int(np.argmin(row))
        pv = float(row[j]) if len(b.keys) > 1 else math.nan
        frame.at[k, "p"] = pv
        frame.at[k, "tied"] = bool(not pv < alpha)
        frame.at[k, "by"] = b.keys[j] if len(b.keys) > 1 else None
        frame.at[k, "test"] = "best" if i == top else str(b.test[i, j])
        if i == top:
            frame.at[k, "best"] = True
        else:
            frame.at[k, "diff"] = float(b.diff[i, top])
            frame.at[k, "upper"] = float(b.upper[i, top])
    return frame


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
