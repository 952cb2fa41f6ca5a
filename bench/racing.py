"""Is `--seeds auto` worth it? Whole tables simulated with a known truth, raced and run fixed.

    python bench/racing.py --quick                 # ~a few minutes on 2 loaded cores
    python bench/racing.py --json runs/racing.json # the default repetitions (much longer)

Truth: the cell means of the paper's Table 9 (CIFAR-100 ResNet-20 and ImageNet ResNet-50, 4w4a,
24 cells over p x K each) and Table 8 (CIFAR-10 and CIFAR-100 ResNet-20, 5 DM levels each),
from `analysis.paper.paper_tables()` (the packaged copy of ../shared/reference/paper_tables.csv;
`--paper-csv` reads another). A trial's value is `mean_cell + b_seed + e`: e ~ N(0, s^2) per
trial, b_seed ~ N(0, (block * s)^2) shared by every cell's run at that seed (`--block`, default
0.5), for each seed std s in `--sds` (default 0.5 1.0 1.5 points).

Designs, all on the same draws (common random numbers: repetition r of a table and s is one
array of values per cell and seed, and every design reads its seeds 0, 1, ... from it):

- fixed n seeds per cell (`--fixed`, default 3 5 10 20 40): the reported best is the highest
  mean; the cells not significantly worse are the paired one-sided t-tests with Holm at
  `--alpha`, the rule of analysis.stats.ties, computed vectorised over repetitions (the first
  repetition of every design is checked against analysis.stats.ties itself);
- the race (`--variants`, default: Settings() and max_seeds=40, stop="best", width=0): the
  SHIPPED rule, `sweeps.race.decide`, called round by round in a loop that mirrors
  `sweeps.race.replay` (round 0 gives every cell n0 seeds; each round's survivors are raced
  with the seeds `decide` adds, new seeds being the next integers n, n+1, ...). `replay` itself
  is not driven: it needs TrainConfig cells and a config hash per trial; tests/test_racing_bench.py
  checks on Table 8 that this loop and `replay` on a fake `done` frame make the same decisions.
  The race's reported best is the final round's best survivor (by seed-adjusted mean, as
  `decide` ranks); "tied" is the race's survivors, as a raced table bolds them (a cell out of
  the race is not bold: analysis.raced).

Per table x s x design, over the repetitions: P(right) = P(the reported best is truly within
delta = 0.25 of the true best); P(worse tied) = P(some cell truly more than delta below the true
best is reported best or tied); the mean number of trials. Then the target: at equal probability
of being right the race should use at most half the trials of the cheapest fixed design that is
as right (ratio = that design's trials / the race's >= 2).

`decide` is slow (scipy and pandas per cell: ~5-10 ms a cell a round on this project's loaded
2-core machine, and a 24-cell race runs ~100 rounds), so the race gets fewer repetitions
(`--race-reps`) than the vectorised fixed designs (`--reps`); the standard errors are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analysis import stats  # noqa: E402
from sweeps import race  # noqa: E402

DELTA = 0.25
# name -> (paper table block, dataset, model, the param columns naming a cell)
TABLES = {
    "t9-cifar100": ("table9_p_k", "CIFAR-100", "ResNet-20", ("p", "K")),
    "t9-imagenet": ("table9_p_k", "ImageNet", "ResNet-50", ("p", "K")),
    "t8-cifar10": ("table8_dm_layers", "CIFAR-10", "ResNet-20", ("dm_layers",)),
    "t8-cifar100": ("table8_dm_layers", "CIFAR-100", "ResNet-20", ("dm_layers",)),
}
VARIANTS = {
    "race": {},
    "race max40": {"max_seeds": 40},
    "race stop=best": {"stop": "best"},
    "race width=0": {"width": 0},
}


def truth(name: str, paper: pd.DataFrame | None = None) -> dict[str, float]:
    """cell label -> the paper's mean of one table block."""
    if paper is None:
        from analysis.paper import paper_tables
        paper = paper_tables()
    block, dataset, model, params = TABLES[name]
    rows = paper[(paper["table"] == block) & (paper["dataset"] == dataset)
                 & (paper["model"] == model) & (paper["bits"] == "4w4a")]
    if rows.empty:
        raise SystemExit(f"no rows for {name} ({block}, {dataset}, {model}) in the paper table")
    return {" ".join(f"{p}={r[p]:g}" for p in params): float(r["accuracy"])
            for _, r in rows.iterrows()}


def draws(mu: np.ndarray, s: float, block: float, reps: int, seeds: int,
          key: Sequence[int]) -> np.ndarray:
    """values[r, cell, seed] = mu[cell] + b[r, seed] + e[r, cell, seed]; repetition r comes from
    its own generator, so it is the same whatever the number of repetitions."""
    out = np.empty((reps, len(mu), seeds))
    for r in range(reps):
        g = np.random.default_rng([*key, r])
        b = g.normal(0.0, block * s, seeds)
        out[r] = mu[:, None] + b[None, :] + g.normal(0.0, s, (len(mu), seeds))
    return out


# ---- fixed designs (vectorised) -------------------------------------------------------------
def holm_matrix(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values along the last axis; nan = no test (takes no share of alpha)."""
    out = np.full(p.shape, np.nan)
    for i in range(p.shape[0]):
        row = p[i]
        ok = ~np.isnan(row)
        q = row[ok]
        order = np.argsort(q, kind="stable")
        m = len(q)
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        back = np.empty(m)
        back[order] = adj
        out[i, ok] = back
    return out


def fixed_design(x: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(reported best cell, tied-or-best mask [reps, cells]) of n seeds per cell: the best mean,
    and the paired one-sided t-test of each cell against it with Holm (analysis.stats.ties)."""
    v = x[:, :, :n]
    means = v.mean(-1)
    best = means.argmax(1)
    reps = np.arange(len(v))
    d = v - v[reps, best][:, None, :]                  # cell - best, seed by seed
    sd = d.std(-1, ddof=1)
    dm = d.mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = sps.t.cdf(dm / (sd / math.sqrt(n)), n - 1)
    p = np.where(sd == 0, np.where(dm < 0, 0.0, 1.0), p)   # stats._degenerate
    p[reps, best] = np.nan
    tied = holm_matrix(p) >= alpha
    tied[reps, best] = True
    return best, tied


# ---- the race (the shipped decide) ------------------------------------------------------------
def run_race(x: np.ndarray, keys: Sequence[str], s: race.Settings
             ) -> tuple[str, dict[str, dict[int, float]], list[str], int, str]:
    """One race on one repetition's values x[cell, seed], as sweeps.race.replay runs it:
    (the final best, every cell's values, the final survivors, trials, why it stopped)."""
    n = {k: 0 for k in keys}
    plan = {k: list(range(s.n0)) for k in keys}
    alive = list(keys)
    rows = {k: i for i, k in enumerate(keys)}
    while True:
        for k, seeds in plan.items():
            n[k] = max(n[k], max(seeds) + 1)
        values = {k: stats.finite({j: float(x[rows[k], j]) for j in range(n[k])})
                  for k in alive}
        values = {k: v for k, v in values.items() if v}
        survivors, verdict, stop, more = race.decide(values, n, s)
        if stop:
            best = next(k for k in values if bool(verdict.at[k, "best"]))
            final = {k: {j: float(x[rows[k], j]) for j in range(n[k])} for k in keys}
            return best, final, survivors, sum(n.values()), stop
        alive = survivors
        plan = {k: list(range(n[k], n[k] + m)) for k, m in more.items()}


def race_design(x: np.ndarray, keys: Sequence[str], s: race.Settings, alpha: float
                ) -> dict[str, np.ndarray | list[str]]:
    best, tied, surv, trials, stops = [], [], [], [], []
    for r in range(len(x)):
        b, final, survivors, used, stop = run_race(x[r], keys, s)
        best.append(keys.index(b))
        # as a raced table shows it: a cell out of the race is not bold (analysis.raced)
        tied.append([k in survivors for k in keys])
        surv.append([k in survivors for k in keys])
        trials.append(used)
        stops.append(stop.split(" (")[0])
    return {"best": np.array(best), "tied": np.array(tied), "survivors": np.array(surv),
            "trials": np.array(trials, dtype=float), "stops": stops}


# ---- the bench ----------------------------------------------------------------------------------
def _check_fixed(x: np.ndarray, keys: Sequence[str], n: int, alpha: float) -> None:
    """The vectorised fixed design's first repetition against analysis.stats.ties."""
    best, tied = fixed_design(x[:1], n, alpha)
    verdict = stats.ties({k: {j: float(x[0, i, j]) for j in range(n)}
                          for i, k in enumerate(keys)}, alpha)
    want = [bool(verdict.at[k, "tied"]) for k in keys]
    if keys[int(best[0])] != next(k for k in keys if verdict.at[k, "best"]) or \
            want != tied[0].tolist():
        raise AssertionError(f"vectorised fixed design (n={n}) disagrees with stats.ties")


def bench(tables: Sequence[str], sds: Sequence[float], *, block: float = 0.5,
          reps: int = 200, race_reps: int = 20, fixed: Sequence[int] = (3, 5, 10, 20, 40),
          variants: Mapping[str, Mapping] | None = None, seed: int = 0,
          alpha: float = stats.ALPHA, delta: float = DELTA, paper: pd.DataFrame | None = None,
          log=None) -> pd.DataFrame:
    """One row per table x s x design: P(right), P(worse tied), trials (and for the races
    P(a worse cell survives), the stops); see the module doc."""
    variants = VARIANTS if variants is None else variants
    settings = {name: race.Settings(**kw) for name, kw in variants.items()}
    for st in settings.values():
        st.check()
    width = max([*fixed, *(st.max_seeds for st in settings.values())])
    rows = []
    for ti, name in enumerate(tables):
        cells = truth(name, paper)
        keys = list(cells)
        mu = np.array([cells[k] for k in keys])
        top = mu.max()
        good, worse = mu >= top - delta, mu < top - delta
        for sd in sds:
            t0 = time.perf_counter()
            x = draws(mu, sd, block, max(reps, race_reps), width,
                      (seed, ti, int(round(sd * 1000))))
            base = dict(table=name, cells=len(keys), s=sd)
            for n in fixed:
                _check_fixed(x, keys, n, alpha)
                best, tied = fixed_design(x[:reps], n, alpha)
                tied[np.arange(reps), best] = True
                rows.append({**base, "design": f"fixed {n}", "reps": reps,
                             "P_right": float(good[best].mean()),
                             "P_worse_tied": float((tied & worse).any(1).mean()),
                             "trials": float(n * len(keys))})
            for vname, st in settings.items():
                out = race_design(x[:race_reps], keys, st, alpha)
                tied = out["tied"]
                tied[np.arange(race_reps), out["best"]] = True
                stops = pd.Series(out["stops"]).value_counts()
                rows.append({**base, "design": vname, "reps": race_reps,
                             "P_right": float(good[out["best"]].mean()),
                             "P_worse_tied": float((tied & worse).any(1).mean()),
                             "trials": float(out["trials"].mean()),
                             "P_worse_survives": float((out["survivors"] & worse).any(1).mean()),
                             "stops": "; ".join(f"{k} x{v}" for k, v in stops.items())})
            if log:
                log(f"{name} s={sd:g}: {time.perf_counter() - t0:.1f} s")
    frame = pd.DataFrame(rows)
    frame["se_right"] = np.sqrt(frame["P_right"] * (1 - frame["P_right"]) / frame["reps"])
    return frame


def verdicts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per table x s x race variant: the race's P(right) and trials, the cheapest fixed design
    at least as right, its trials, and fixed / race (>= 2 is the target)."""
    out = []
    for (table, sd), g in frame.groupby(["table", "s"], sort=False):
        fx = g[g["design"].str.startswith("fixed")].sort_values("trials")
        for _, r in g[~g["design"].str.startswith("fixed")].iterrows():
            ok = fx[fx["P_right"] >= r["P_right"]]
            row = {"table": table, "s": sd, "race": r["design"], "P_right": r["P_right"],
                   "trials": r["trials"], "P_worse_tied": r["P_worse_tied"]}
            if ok.empty:                           # no fixed design is as right: a bound
                big = fx.iloc[-1]
                row.update(fixed=f"none (best: {big['design']}, {big['P_right']:.2f})",
                           fixed_trials=big["trials"], ratio=big["trials"] / r["trials"],
                           bound=True)
            else:
                f = ok.iloc[0]
                row.update(fixed=f"{f['design']} ({f['P_right']:.2f})",
                           fixed_trials=f["trials"], ratio=f["trials"] / r["trials"],
                           bound=False)
            row["wins"] = bool(row["ratio"] >= 2 or row["bound"])
            out.append(row)
    return pd.DataFrame(out)


def _table(df: pd.DataFrame) -> str:
    try:
        return df.to_markdown(index=False, floatfmt=".3g")
    except ImportError:
        return df.to_string(index=False)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    p.add_argument("--sds", nargs="+", type=float, default=[0.5, 1.0, 1.5],
                   help="seed std s of a trial, points (default 0.5 1.0 1.5)")
    p.add_argument("--block", type=float, default=0.5,
                   help="std of the seed-block effect shared by all cells, as a multiple of s")
    p.add_argument("--reps", type=int, default=None, help="repetitions of the fixed designs "
                   "(default 200; --quick 40)")
    p.add_argument("--race-reps", type=int, default=None, help="repetitions of each race "
                   "(default 20; --quick 5): decide is slow")
    p.add_argument("--fixed", nargs="+", type=int, default=[3, 5, 10, 20, 40])
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="race variants (default all; --quick: race)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and variants")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (the figures repeat)")
    p.add_argument("--paper-csv", type=Path, default=None,
                   help="read the truth from this paper_tables.csv (default: the package copy)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    reps = a.reps or (40 if a.quick else 200)
    race_reps = a.race_reps or (5 if a.quick else 20)
    names = a.variants or (["race"] if a.quick else list(VARIANTS))
    paper = None
    if a.paper_csv:
        paper = pd.read_csv(a.paper_csv, dtype={"param": str}, keep_default_na=False)
        parsed = [dict(kv.split("=", 1) for kv in filter(None, str(s).split(";")) if "=" in kv)
                  for s in paper["param"]]
        for col in ("p", "K", "dm_layers"):
            paper[col] = [float(d[col]) if col in d else math.nan for d in parsed]
        paper["accuracy"] = pd.to_numeric(paper["accuracy"], errors="coerce")
    gc.collect()
    gc.freeze()     # statsmodels' multipletests calls gc.collect(): leave the imports out of it
    t0 = time.perf_counter()
    frame = bench(a.tables, a.sds, block=a.block, reps=reps, race_reps=race_reps,
                  fixed=a.fixed, variants={k: VARIANTS[k] for k in names}, seed=a.seed,
                  paper=paper, log=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    v = verdicts(frame)
    print(f"# racing bench: tables {' '.join(a.tables)}; s {a.sds}; block {a.block:g} x s; "
          f"{reps} reps (fixed), {race_reps} reps (race); seed {a.seed}; delta {DELTA:g}; "
          f"{wall:.0f} s\n")
    cols = ["table", "s", "design", "reps", "P_right", "se_right", "P_worse_tied", "trials",
            "P_worse_survives", "stops"]
    shown = frame[[c for c in cols if c in frame]].astype(object)
    print(_table(shown.where(shown.notna(), "")), "\n")
    print("## the target: race trials <= half the cheapest fixed design as right\n")
    print(_table(v), "\n")
    lose = v[~v["wins"]]
    if lose.empty:
        print("The race wins (ratio >= 2) in every setting.")
    else:
        print(f"The race does NOT win (ratio < 2) in {len(lose)} of {len(v)} settings:")
        for _, r in lose.iterrows():
            print(f"  {r['table']} s={r['s']:g} {r['race']}: P(right) {r['P_right']:.2f} with "
                  f"{r['trials']:.0f} trials; {r['fixed']} uses {r['fixed_trials']:.0f} "
                  f"(ratio {r['ratio']:.2f})")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "args": {k: (str(x) if isinstance(x, Path) else x) for k, x in vars(a).items()},
            "reps": reps, "race_reps": race_reps, "wall_s": wall,
            "settings": {k: dataclasses.asdict(race.Settings(**VARIANTS[k])) for k in names},
            "designs": frame.to_dict("records"), "verdicts": v.to_dict("records")},
            indent=1, default=str), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
