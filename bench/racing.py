"""Do bold and `--seeds auto` hold their stated level, and is the race worth it? Whole tables
simulated with a known truth, raced with the shipped rule and run as fixed designs.

    python bench/racing.py --quick                  # a few minutes: fewer repetitions
    python bench/racing.py --json /tmp/racing.json  # the default run (see docs/benchmarks.md)

**Truth.** Table settings: the cell means of the paper's Table 9 (CIFAR-100 ResNet-20 and
ImageNet ResNet-50, 4w4a, 24 cells over p x K each) and Table 8 (CIFAR-10 and CIFAR-100
ResNet-20, 5 DM levels each), from `analysis.paper.paper_tables()` (the packaged copy of
../shared/reference/paper_tables.csv; `--paper-csv` reads another), each at the seed stds s in
`--sds` (default 0.5 1.0 1.5 points): 12 table settings. Extra settings (`--extras`) for the
guarantees: "equal-5" (5 equal cells) and "near-tie" (the best 0.1 points above four equal
cells) at every s, and "equal-24" (24 equal cells, named as Table 9's p x K grid) at s = 1.
A trial's value is `mu_cell + b_seed + e`: e ~ N(0, s^2) per trial, b_seed ~ N(0, (block s)^2)
shared by every cell at that seed (`--block`, default 0.5). Values are not rounded.

**Common random numbers.** Repetition r of a setting is one array x[cell, seed] drawn from its
own generator (keyed by `--seed`, the setting's name, s and r), and every design reads seed j of
cell i as x[i, j]: the designs are compared on the same draws, and a repetition's values do not
depend on how many repetitions or which other settings run (so `--workers` changes nothing).

**Designs.**
- fixed n seeds per cell (`--fixed`, default 2 3 4 5 6 8 10 12 15 20 25 30 40 50 60 80 100 120
  160; `--reps` repetitions, default 1000): the reported best is the highest mean; bold is the
  shipped rule, `analysis.stats.pair_bounds` on the repetition's y[cell, seed] (a cell is not
  bold iff some other cell has p[i, j] < alpha, which is `analysis.stats.ties`;
  tests/test_racing_bench.py checks it);
- races (`--variants`, default "race" = `sweeps.race.Settings()` and the same race at
  max_seeds 10, 40, 80, 160 ("race maxN"); on request "race screen=0" (seeds by the race's own
  bounds), "race lucb" (the previous release's rounds: width 3, no growth; with screen 0 it is
  that release's race) and "race tost"; `--race-reps` races, default 200): the
  SHIPPED rule, `sweeps.race.decide`, called look by look in a loop on arrays that is
  `sweeps.race.replay`'s (round 0: every cell seeds 0..n0-1; after look r the alive cells are
  the survivors, cell k's new seeds are n[k] .. n[k] + more[k] - 1; it ends when the Decision
  has a stop). replay itself needs TrainConfig cells and rows; tests/test_racing_bench.py
  checks on fake rows that the two make the same decisions. The reported best is the pick;
  a cell is bold as a raced table shows it (analysis.cells): not put out, and bold by
  `pair_bounds` on all its raced values at one more look's share of alpha.

**Measured**, per setting x design (Wilson 95 % intervals, statsmodels, on the counts):
- P(right): the reported best (pick) is truly within delta = 0.25 points of the true best;
- P(best lost): some truly best cell (mu = the top mean; every cell of equal-5 / equal-24, the
  top one of near-tie) is not bold, or, for a race, put out or not bold;
- P(best out) (races): some truly best cell was put out by the race;
- P(worse bold): some cell truly more than delta below the best is bold;
- trials: the mean number of trials; for races, how each stopped (delta-good: no cell can beat
  the pick by delta; no survivor could beat the pick at the screen; one left; max seeds; tost).

**The comparison** at a fixed target, P(right) >= 0.95. A design *reaches* it when the lower end
of its Wilson interval is >= 0.95 (the same rule for fixed designs and races; with 200 races
that needs about 196 right, with 1000 fixed repetitions about 962). Per table setting and race
variant: the cheapest fixed design that reaches it, and ratio = its trials / the race's. A WIN
needs the race to reach the target and ratio >= 2. When no fixed design reaches it, the ratio
against the largest fixed design (which does not reach) is a lower bound, and that counts as a
win only when the race reaches and the bound is already >= 2. "best race" is the cheapest race
variant that reaches: the race tuned by its one knob, --max-seeds, as the fixed design is by its
seeds. Why a setting is not a win: round 0 alone (n0 x cells) costs more than half the cheapest
fixed design; or `oracle` (seeds allotted knowing the true means, the fewest per cell whose best
mean is right with probability >= 0.963) saves less than half, which no race that must learn the
means can beat; or the race does not reach; or the ratio is below 2.

**Targets** (issue 20), printed PASS / FAIL with the figure and its interval. PASS: the upper
end of the interval is within the target; "PASS (point)": the estimate is, its interval is not;
FAIL: the estimate is not.
- equal-5, default race: P(some cell put out) <= 0.05; near-tie: P(true best put out) <= 0.05;
- equal-24, fixed n = 3: P(some cell not bold) <= 0.05;
- known answer: a cell 0.5 below the best on every one of 6 seeds (the best's values minus
  0.5, rounded to 0.01; three other cells noisy, s = 1) is not bold by `analysis.stats.ties`,
  on each of 100 seeded draws;
- axis effects after a race: on equal-24's default races (24 equal cells as Table 9's p x K,
  s = 1, block 0.5), `analysis.effects.axis_effects(samples, "table9", balanced_seeds=n0)`
  (the test on round-0 rows) rejects p or K at 0.05 at most 5 % of the time; beside it the
  rate on all raced rows (no balanced_seeds), for comparison;
- the race (best race) wins in at least 8 of the 12 table settings; the figure says how many of
  the 12 are within any race's reach.

Time: `pair_bounds` and `decide` are a few ms each; a 24-cell race looks 5-21 times on average
(its rounds grow by a quarter). The default run took about 30 min on 2 loaded cores; settings run
in `--workers` processes (default 2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# One BLAS thread: `decide` fits the seed-blocked model by least squares (numpy lstsq) on every
# look, and a threaded OpenBLAS on this 2-core machine under load ran that fit 65x slower
# (0.145 s against 0.0022 s for 24 cells, 431 runs). Set before numpy loads; the workers are
# processes over settings.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analysis import effects, stats  # noqa: E402  (loaded once: the workers fork with it)
from sweeps import race  # noqa: E402

DELTA = 0.25
TARGET = 0.95        # P(right) the comparison asks for
LEVEL = 0.05         # the guarantees' level (P(lost) <= LEVEL)
WIN_RATIO = 2.0
# name -> (paper table block, dataset, model, the param columns naming a cell)
TABLES = {
    "t9-cifar100": ("table9_p_k", "CIFAR-100", "ResNet-20", ("p", "K")),
    "t9-imagenet": ("table9_p_k", "ImageNet", "ResNet-50", ("p", "K")),
    "t8-cifar10": ("table8_dm_layers", "CIFAR-10", "ResNet-20", ("dm_layers",)),
    "t8-cifar100": ("table8_dm_layers", "CIFAR-100", "ResNet-20", ("dm_layers",)),
}
# extra settings: name -> (means, the seed stds it runs at; None = every --sds)
EXTRAS = {
    "equal-5": ([0.0] * 5, None),
    "near-tie": ([0.1, 0.0, 0.0, 0.0, 0.0], None),
    "equal-24": ([0.0] * 24, (1.0,)),
}
VARIANTS = {
    "race": {},
    "race max10": {"max_seeds": 10},
    "race max40": {"max_seeds": 40},
    "race max80": {"max_seeds": 80},
    "race max160": {"max_seeds": 160},
    "race screen=0": {"screen": 0.0},
    "race lucb": {"width": 3, "growth": 0.0},
    "race tost": {"stop": "tost"},
}
DEFAULT_VARIANTS = ("race", "race max10", "race max40", "race max80", "race max160")
FIXED = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 160)
T9_P = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)      # equal-24's cells are named as Table 9's grid
T9_K = (2, 10, 25, 100)


def truth(name: str, paper: pd.DataFrame | None = None) -> dict[str, float]:
    """cell label -> the true mean: a paper table block's, or an extra setting's."""
    if name in EXTRAS:
        mu = EXTRAS[name][0]
        if len(mu) == len(T9_P) * len(T9_K):
            return {f"p={p:g} K={k:g}": m for (k, p), m in
                    zip(((k, p) for k in T9_K for p in T9_P), mu, strict=True)}
        return {f"c{i}": m for i, m in enumerate(mu)}
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
    """values[r, cell, seed] = mu[cell] + b[r, seed] + e[r, cell, seed]. Repetition r comes from
    its own generators (one for b, one for e, drawn seed by seed), so its values are the same
    whatever the number of repetitions, and asking for fewer seeds gives a prefix."""
    out = np.empty((reps, len(mu), seeds))
    for r in range(reps):
        b = np.random.default_rng([*key, r, 0]).normal(0.0, block * s, seeds)
        e = np.random.default_rng([*key, r, 1]).normal(0.0, s, (seeds, len(mu))).T
        out[r] = mu[:, None] + b[None, :] + e
    return out


def setting_key(seed: int, name: str, s: float) -> tuple[int, int, int]:
    """The generator key of a setting: stable across runs, subsets and worker counts."""
    return (seed, zlib.crc32(name.encode()), int(round(s * 1000)))


def bold_of(y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(bold mask, means) of y[cell, seed] (nan = not run) by the shipped rule: a cell is not bold
    iff some other cell's simultaneous bound is above it (analysis.stats.ties)."""
    b = stats.pair_bounds(y, alpha)
    with np.errstate(invalid="ignore"):
        return ~(b.p < alpha).any(1), b.mean


# ---- fixed designs ----------------------------------------------------------------------------
def fixed_design(x: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(reported best [reps], bold [reps, cells]) of n seeds per cell: the highest mean, and the
    shipped bold rule on each repetition's seeds 0..n-1."""
    best = np.empty(len(x), dtype=int)
    bold = np.empty(x.shape[:2], dtype=bool)
    for r in range(len(x)):
        bold[r], mean = bold_of(x[r, :, :n], alpha)
        best[r] = int(np.argmax(mean))
    return best, bold


# ---- what any allocation could save -------------------------------------------------------------
def oracle(mu: np.ndarray, s: float, delta: float = DELTA, target: float = TARGET + 0.013,
           draws_n: int = 20_000, seed: int = 1) -> dict[str, float]:
    """How much an allocation that KNOWS the true means could save: the fewest seeds per cell
    n_i >= 2 (greedy, from the cheapest uniform design down) whose best mean is within delta of
    the true best with probability >= `target` (0.963: what 1000 repetitions need for a Wilson
    lower end of 0.95), each cell's mean N(mu_i, s^2 / n_i) (the seed effect taken out, as the
    race's seed-adjusted means do). Its ratio uniform / oracle is about the most any race can
    save at that setting: a race must also learn the means."""
    k = len(mu)
    good = mu >= mu.max() - delta
    z = np.random.default_rng(seed).normal(size=(draws_n, k))

    def p_right(n: np.ndarray) -> float:
        return float(good[(mu + s * z / np.sqrt(n)).argmax(1)].mean())
    u = next((m for m in range(2, 1000) if p_right(np.full(k, float(m))) >= target), 1000)
    n, step = np.full(k, float(u)), max(1, u // 10)
    while True:
        best = None
        for i in range(k):
            if n[i] - step >= 2:
                m = n.copy()
                m[i] -= step
                q = p_right(m)
                if q >= target and (best is None or q > best[0]):
                    best = (q, i)
        if best is None:
            if step == 1:
                break
            step = max(1, step // 2)
            continue
        n[best[1]] -= step
    return {"uniform": float(u * k), "oracle": float(n.sum()),
            "ratio": float(u * k / n.sum())}


# ---- the race (the shipped decide) ------------------------------------------------------------
@dataclass
class RaceRun:
    pick: int
    survivors: list[int]
    n: np.ndarray          # seeds each cell got
    out_at: np.ndarray     # look that put the cell out (0 = never)
    looks: int
    stop: str


def run_race(x: np.ndarray, s: race.Settings) -> RaceRun:
    """One race on one repetition's values x[cell, seed], as sweeps.race.replay runs it (one
    group, no budget, no re-measure): round 0 gives every cell seeds 0..n0-1; at look r
    `decide` sees every cell's values (alive or out) and the alive cells; the survivors stay
    alive; cell k's next seeds are n[k] .. n[k] + more[k] - 1. Cells are keyed 0..k-1."""
    k = len(x)
    n = np.full(k, s.n0, dtype=int)
    out_at = np.zeros(k, dtype=int)
    alive = list(range(k))
    look = 0
    while True:
        look += 1
        values = {i: dict(enumerate(x[i, :n[i]].tolist())) for i in range(k)}
        d = race.decide(values, alive, {i: int(n[i]) for i in range(k)}, s, look)
        for i in d.out:
            out_at[i] = look
        alive = list(d.survivors)
        if d.stop:
            return RaceRun(int(d.pick), alive, n, out_at, look, d.stop)
        for i, m in d.more.items():
            n[i] += m


def stop_kind(stop: str) -> str:
    """A race's stop, short."""
    if "can beat the pick" in stop:
        return "delta-good"
    if "within ±" in stop:
        return "tost"
    if stop == "one cell left":
        return "one left"
    if "--max-seeds" in stop:
        return "max seeds"
    return stop[:30]


def race_design(x: np.ndarray, s: race.Settings, alpha: float) -> dict[str, np.ndarray | list]:
    """Every repetition's race: the pick, the cells put out, bold as a raced table shows it (not
    out, and bold by pair_bounds on every raced value), trials, seeds per cell, the stop."""
    reps, k, _ = x.shape
    pick = np.empty(reps, dtype=int)
    out = np.zeros((reps, k), dtype=bool)
    bold = np.zeros((reps, k), dtype=bool)
    n = np.zeros((reps, k), dtype=int)
    looks = np.zeros(reps, dtype=int)
    stops = []
    for r in range(reps):
        run = run_race(x[r], s)
        pick[r], n[r], looks[r] = run.pick, run.n, run.looks
        out[r] = run.out_at > 0
        y = x[r, :, :run.n.max()].copy()
        y[np.arange(y.shape[1])[None, :] >= run.n[:, None]] = np.nan
        # a raced table's bold: not put out, and bold by the bounds of one more look of the race
        # (its share of alpha, so that the race and the table's bold hold together at alpha)
        bold[r] = bold_of(y, race.look_alpha(s.alpha, run.looks + 1))[0] & ~out[r]
        stops.append(stop_kind(run.stop))
    return {"pick": pick, "out": out, "bold": bold, "n": n, "looks": looks,
            "trials": n.sum(1).astype(float), "stops": stops}


# ---- axis effects after a race ------------------------------------------------------------------
def grid_samples(x: np.ndarray, n: np.ndarray, keys: Sequence[str], name: str) -> pd.DataFrame:
    """A Table-9-shaped race's rows (cell i's seeds 0..n[i]-1) as analysis.effects reads them."""
    p = [float(k.split()[0].split("=")[1]) for k in keys]
    kk = [float(k.split()[1].split("=")[1]) for k in keys]
    ci, sj = np.nonzero(np.arange(x.shape[1])[None, :] < n[:, None])
    return pd.DataFrame({"setting": name, "mix_prob": np.take(p, ci),
                         "mix_classes": np.take(kk, ci), "seed": sj, "value": x[ci, sj],
                         "start": np.nan})


def axis_rejections(x: np.ndarray, n: np.ndarray, keys: Sequence[str], name: str, n0: int
                    ) -> dict[str, np.ndarray]:
    """Per race: the axis p-values for p and K on the round-0 rows (balanced_seeds=n0, the
    shipped test after a race) and on every raced row (no balanced_seeds)."""
    out = {f"{a}_{m}": np.full(len(x), np.nan) for a in ("p", "K") for m in ("round0", "raced")}
    for r in range(len(x)):
        d = grid_samples(x[r], n[r], keys, name)
        for mode, kw in (("round0", {"balanced_seeds": n0}), ("raced", {})):
            e = effects.axis_effects(d, "table9", covariate=False, **kw).set_index("axis")
            out[f"p_{mode}"][r] = float(e.at["mix_prob", "p"])
            out[f"K_{mode}"][r] = float(e.at["mix_classes", "p"])
    return out


# ---- one setting -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    name: str
    s: float
    block: float
    reps: int
    race_reps: int
    fixed: tuple[int, ...]
    variants: tuple[tuple[str, tuple[tuple[str, object], ...]], ...]
    seed: int
    alpha: float
    delta: float
    cells: tuple[tuple[str, float], ...]
    axis: bool = False        # also the axis effects of the default race (equal-24)


def one_blas_thread():
    """Limit BLAS to one thread where numpy was loaded before this module (an import in tests)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def run_task(t: Task) -> dict:
    """Every design of one setting on the same draws: counts (not yet proportions) per design."""
    with one_blas_thread():
        return _run_task(t)


def _run_task(t: Task) -> dict:
    t0 = time.perf_counter()
    keys = [k for k, _ in t.cells]
    mu = np.array([m for _, m in t.cells])
    top = mu.max()
    good, worse, best = mu >= top - t.delta, mu < top - t.delta, mu >= top
    settings = {name: race.Settings(**dict(kw)) for name, kw in t.variants}
    width = max([*t.fixed, *(st.max_seeds for st in settings.values()), 1])
    x = draws(mu, t.s, t.block, max(t.reps, t.race_reps), width,
              setting_key(t.seed, t.name, t.s))
    kind = "table" if t.name in TABLES else "extra"
    base = dict(setting=t.name, kind=kind, cells=len(keys), s=t.s)
    rows, extra = [], {}
    for n in t.fixed:
        pick, bold = fixed_design(x[:t.reps], n, t.alpha)
        rows.append({**base, "design": f"fixed {n}", "race": False, "reps": t.reps,
                     "right": int(good[pick].sum()),
                     "best_lost": int((~bold & best).any(1).sum()),
                     "best_out": None,
                     "worse_bold": int((bold & worse).any(1).sum()),
                     "trials": float(n * len(keys)), "trials_max": float(n * len(keys)),
                     "looks": None, "stops": ""})
    for vname, st in settings.items():
        r0 = time.perf_counter()
        out = race_design(x[:t.race_reps], st, t.alpha)
        stops = pd.Series(out["stops"]).value_counts()
        rows.append({**base, "design": vname, "race": True, "reps": t.race_reps,
                     "right": int(good[out["pick"]].sum()),
                     "best_lost": int((~out["bold"] & best).any(1).sum()),
                     "best_out": int((out["out"] & best).any(1).sum()),
                     "worse_bold": int((out["bold"] & worse).any(1).sum()),
                     "trials": float(out["trials"].mean()),
                     "trials_max": float(out["trials"].max()),
                     "looks": float(out["looks"].mean()),
                     "stops": "; ".join(f"{k} {v}" for k, v in stops.items()),
                     "race_s": time.perf_counter() - r0})
        extra.setdefault("races", {})[vname] = {
            "pick": out["pick"].tolist(), "trials": out["trials"].astype(int).tolist(),
            "out": [np.flatnonzero(o).tolist() for o in out["out"]], "stops": out["stops"]}
        if t.axis and vname == "race":
            extra["axis_n"] = out["n"].tolist()
            extra["axis_trials"] = float(out["trials"].mean())
            try:       # the races above stand whatever this does
                extra["axis"] = axis_rejections(x[:t.race_reps], out["n"], keys, t.name,
                                                st.n0)
            except Exception as e:  # noqa: BLE001
                extra["axis_error"] = f"{type(e).__name__}: {e}"
    if kind == "table":
        extra["oracle"] = oracle(mu, t.s, t.delta)
    return {"rows": rows, "extra": extra, "seconds": time.perf_counter() - t0,
            "label": f"{t.name} s={t.s:g}"}


# ---- the bench ----------------------------------------------------------------------------------
def wilson(count, nobs) -> tuple[np.ndarray, np.ndarray]:
    """Wilson 95 % interval of count / nobs (statsmodels), vectorised."""
    from statsmodels.stats.proportion import proportion_confint
    lo, hi = proportion_confint(np.asarray(count, dtype=float), np.asarray(nobs, dtype=float),
                                alpha=0.05, method="wilson")
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)


def tasks(tables: Sequence[str], sds: Sequence[float], extras: Sequence[str], *,
          block: float, reps: int, race_reps: int, fixed: Sequence[int],
          variants: Mapping[str, Mapping], seed: int, alpha: float, delta: float,
          paper: pd.DataFrame | None = None) -> list[Task]:
    out = []
    var = tuple((k, tuple(sorted(dict(v).items()))) for k, v in variants.items())
    for name in [*tables, *extras]:
        cells = tuple(truth(name, paper).items())
        levels = sds if name in TABLES or EXTRAS[name][1] is None else EXTRAS[name][1]
        for sd in levels:
            out.append(Task(name, float(sd), block, reps, race_reps, tuple(fixed), var, seed,
                            alpha, delta, cells, axis=(name == "equal-24")))
    return out


def bench(tables: Sequence[str], sds: Sequence[float], extras: Sequence[str] = (), *,
          block: float = 0.5, reps: int = 1000, race_reps: int = 200,
          fixed: Sequence[int] = FIXED, variants: Mapping[str, Mapping] | None = None,
          seed: int = 0, alpha: float = stats.ALPHA, delta: float = DELTA,
          paper: pd.DataFrame | None = None, workers: int = 1, log=None
          ) -> tuple[pd.DataFrame, dict]:
    """(one row per setting x design: counts, probabilities and Wilson intervals; the extras:
    per setting's seconds and the axis effects' p-values); see the module doc."""
    variants = {k: VARIANTS[k] for k in DEFAULT_VARIANTS} if variants is None else variants
    for kw in variants.values():
        race.Settings(**kw).check()
    todo = tasks(tables, sds, extras, block=block, reps=reps, race_reps=race_reps, fixed=fixed,
                 variants=variants, seed=seed, alpha=alpha, delta=delta, paper=paper)
    # the longest settings first, so that the workers end together (results stay in order):
    # a race looks more often the more cells it has and the closer they are against s
    def cost(t: Task) -> float:
        mu = [m for _, m in t.cells]
        return len(mu) ** 2 / (1.0 + (max(mu) - min(mu)) / t.s)
    order = sorted(range(len(todo)), key=lambda i: -cost(todo[i]))
    results: list[dict | None] = [None] * len(todo)
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            for i, res in zip(order, pool.imap(run_task, [todo[i] for i in order]),
                              strict=True):
                results[i] = res
                if log:
                    log(f"{res['label']}: {res['seconds']:.0f} s")
    else:
        for i in order:
            results[i] = run_task(todo[i])
            if log:
                log(f"{results[i]['label']}: {results[i]['seconds']:.0f} s")
    frame = pd.DataFrame([r for res in results for r in res["rows"]])
    for col in ("right", "best_lost", "best_out", "worse_bold"):
        c = pd.to_numeric(frame[col], errors="coerce")
        frame[f"P_{col}"] = c / frame["reps"]
        lo, hi = wilson(c.fillna(0), frame["reps"])
        frame[f"{col}_lo"] = np.where(c.notna(), lo, np.nan)
        frame[f"{col}_hi"] = np.where(c.notna(), hi, np.nan)
    extra = {"seconds": {res["label"]: res["seconds"] for res in results},
             "oracle": {res["label"]: res["extra"]["oracle"] for res in results
                        if "oracle" in res["extra"]},
             "races": {res["label"]: res["extra"].get("races", {}) for res in results}}
    for res in results:
        if "axis_n" in res["extra"]:
            extra["axis_setting"] = res["label"]
            for k in ("axis_n", "axis_trials", "axis_error"):
                if k in res["extra"]:
                    extra[k] = res["extra"][k]
            if "axis" in res["extra"]:
                extra["axis"] = {k: v.tolist() for k, v in res["extra"]["axis"].items()}
    return frame, extra


def reaches(frame_rows: pd.DataFrame) -> pd.Series:
    return frame_rows["right_lo"] >= TARGET


def verdicts(frame: pd.DataFrame, n0: int = race.Settings().n0,
             oracles: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Per table setting and race variant, and for "best race" (the cheapest of the variants that
    reaches the target: the race tuned by its one knob, --max-seeds, as the fixed design is by
    its seeds): does it reach P(right) >= 0.95 (Wilson lower end), the cheapest fixed design that
    does, the ratio of trials, whether it is a win, and why not."""
    out = []
    tab = frame[frame["kind"] == "table"]
    for (name, sd), g in tab.groupby(["setting", "s"], sort=False):
        fx = g[~g["race"]].sort_values("trials")
        ok = fx[reaches(fx)]
        races = g[g["race"]]
        reached = races[reaches(races)].sort_values("trials")
        best = reached.iloc[[0]] if not reached.empty else races.sort_values(
            "P_right", ascending=False).iloc[[0]]
        for label, r in [*((r["design"], r) for _, r in races.iterrows()),
                         *((f"best race ({b['design']})", b) for _, b in best.iterrows())]:
            row = {"setting": name, "s": sd, "race": label, "P_right": r["P_right"],
                   "right_lo": r["right_lo"], "right_hi": r["right_hi"],
                   "race_trials": r["trials"], "race_reaches": bool(r["right_lo"] >= TARGET)}
            if ok.empty:
                big = fx.iloc[-1]
                row.update(fixed=f"none (largest: {big['design']}, P {big['P_right']:.3f}, "
                                 f"lower {big['right_lo']:.3f})",
                           fixed_trials=big["trials"], bound=True)
            else:
                f = ok.iloc[0]
                row.update(fixed=f"{f['design']} ({f['P_right']:.3f}, lower "
                                 f"{f['right_lo']:.3f})",
                           fixed_trials=f["trials"], bound=False)
            row["ratio"] = row["fixed_trials"] / r["trials"]
            row["wins"] = bool(row["race_reaches"] and row["ratio"] >= WIN_RATIO)
            orc = (oracles or {}).get(f"{name} s={sd:g}")
            row["oracle_ratio"] = orc["ratio"] if orc else math.nan
            round0 = n0 * int(r["cells"])
            if row["wins"]:
                why = ("win" if not row["bound"] else
                       f"win: no fixed design reaches; the largest already costs "
                       f"{row['ratio']:.2f}x")
            elif not row["bound"] and round0 * WIN_RATIO > row["fixed_trials"]:
                why = (f"out of any race's reach: round 0 alone ({n0} seeds x {int(r['cells'])} "
                       f"cells = {round0} trials) is more than 1/{WIN_RATIO:g} of the cheapest "
                       f"fixed design ({row['fixed_trials']:.0f})")
            elif orc and orc["ratio"] < WIN_RATIO:
                why = (f"out of any race's reach: even seeds allotted knowing the true means "
                       f"({orc['oracle']:.0f} trials against a uniform {orc['uniform']:.0f}) "
                       f"save only {orc['ratio']:.2f}x")
            elif not row["race_reaches"]:
                why = (f"race does not reach (lower {r['right_lo']:.3f} < {TARGET})"
                       + ("; no fixed design reaches either" if row["bound"] else ""))
            elif row["bound"]:
                why = (f"no fixed design reaches: ratio > {row['ratio']:.2f} is a bound "
                       f"below {WIN_RATIO:g}")
            else:
                why = f"ratio {row['ratio']:.2f} < {WIN_RATIO:g}"
            row["why"] = why
            out.append(row)
    return pd.DataFrame(out)


def axis_from(path: Path) -> dict:
    """The axis effects again from a run's JSON: its equal-24 races' seeds per cell (axis_n)
    and the same draws (its --seed and --block), without racing again."""
    d = json.loads(path.read_text("utf-8"))
    if "axis_n" not in d:
        raise SystemExit(f"{path} has no axis_n (run with the equal-24 extra and race)")
    n = np.asarray(d["axis_n"], dtype=int)
    name, sd = "equal-24", 1.0
    cells = truth(name)
    keys, mu = list(cells), np.array(list(cells.values()))
    x = draws(mu, sd, float(d["args"]["block"]), len(n), int(n.max()),
              setting_key(int(d["args"]["seed"]), name, sd))
    n0 = race.Settings().n0
    with one_blas_thread():
        axis = axis_rejections(x, n, keys, name, n0)
    return {"axis": {k: v.tolist() for k, v in axis.items()}, "axis_n": d["axis_n"],
            "axis_trials": d.get("axis_trials"), "axis_setting": f"{name} s={sd:g}"}


def known_answer(draws_n: int = 100, seed: int = 0, alpha: float = stats.ALPHA
                 ) -> dict[str, object]:
    """A cell 0.5 below the best on each of 6 seeds (the best's values minus 0.5), three other
    cells noisy (s = 1), a shared seed effect; rounded to 0.01 like a recorded accuracy. How
    many of the draws leave it bold by analysis.stats.ties (the target: none)."""
    bold, worst_p = 0, 0.0
    for r in range(draws_n):
        g = np.random.default_rng([seed, 7, r])
        b = g.normal(0, 0.5, 6)
        top = 70.0 + b + g.normal(0, 1.0, 6)
        cells = {"best": top, "gap": top - 0.5}
        for i in range(3):
            cells[f"noisy{i}"] = 69.5 + b + g.normal(0, 1.0, 6)
        v = stats.ties({k: dict(enumerate(np.round(c, 2).tolist())) for k, c in cells.items()},
                       alpha)
        bold += bool(v.at["gap", "tied"])
        worst_p = max(worst_p, float(v.at["gap", "p"]))
    return {"draws": draws_n, "gap_bold": bold, "largest_p": worst_p}


def _grade(p: float, hi: float, target: float = LEVEL) -> str:
    if hi <= target:
        return "PASS"
    return "PASS (point)" if p <= target else "FAIL"


def targets(frame: pd.DataFrame, v: pd.DataFrame, extra: dict, known: dict | None,
            sd: float = 1.0) -> list[dict]:
    """The issue's targets, each with its figure and interval."""
    out = []

    def row(setting, design, col, text):
        g = frame[(frame["setting"] == setting) & (frame["design"] == design)
                  & (frame["s"] == sd)]
        if g.empty:
            return
        r = g.iloc[0]
        out.append(dict(target=text, figure=float(r[f"P_{col}"]), lo=float(r[f"{col}_lo"]),
                        hi=float(r[f"{col}_hi"]), n=int(r["reps"]),
                        result=_grade(float(r[f"P_{col}"]), float(r[f"{col}_hi"]))))

    row("equal-5", "race", "best_out", f"equal-5 (s={sd:g}), race: P(some cell put out) <= 0.05")
    row("near-tie", "race", "best_out",
        f"near-tie (s={sd:g}), race: P(true best put out) <= 0.05")
    row("equal-24", "fixed 3", "best_lost",
        "equal-24 (s=1), fixed 3: P(some cell not bold) <= 0.05")
    if known:
        out.append(dict(target="known answer: a cell 0.5 below the best on 6 seeds is not bold",
                        figure=known["gap_bold"] / known["draws"], lo=math.nan, hi=math.nan,
                        n=known["draws"], result="PASS" if known["gap_bold"] == 0 else "FAIL",
                        note=f"bold in {known['gap_bold']} of {known['draws']} draws; largest "
                             f"p {known['largest_p']:.2g}"))
    if "axis_error" in extra and "axis" not in extra:
        out.append(dict(target="axis effects after a race", figure=math.nan, lo=math.nan,
                        hi=math.nan, n=0, result="ERROR",
                        note=f"{extra['axis_error']} (rerun: --axis-from the JSON)"))
    if "axis" in extra:
        a = extra["axis"]
        for axis in ("p", "K"):
            for mode, text in (("round0", "round-0 rows (balanced_seeds=n0)"),
                               ("raced", "all raced rows (for comparison)")):
                pv = np.asarray(a[f"{axis}_{mode}"], dtype=float)
                k, m = int((pv < LEVEL).sum()), int(np.isfinite(pv).sum())
                lo, hi = wilson([k], [m])
                res = _grade(k / m, float(hi[0])) if mode == "round0" else "(not a target)"
                out.append(dict(target=f"axis {axis} after a race, {text}: rejection at 0.05 "
                                       "<= 0.05", figure=k / m, lo=float(lo[0]),
                                hi=float(hi[0]), n=m, result=res))
    if not v.empty:
        d = v[v["race"].str.startswith("best race")]
        wins = int(d["wins"].sum())
        out_of_reach = int(d["why"].str.startswith("out of any race's reach").sum())
        possible = len(d) - out_of_reach
        out.append(dict(target="race wins (reaches P(right) >= 0.95, ratio >= 2) in >= 8 of 12",
                        figure=float(wins), lo=math.nan, hi=math.nan, n=len(d),
                        result="PASS" if wins >= 8 else "FAIL",
                        note=f"{wins} of {len(d)} table settings (the race at its cheapest "
                             f"--max-seeds that reaches), of the {possible} that any race could "
                             f"win; {out_of_reach} are out of any race's reach (round 0 alone "
                             f"costs more than half the cheapest fixed design, or even seeds "
                             f"allotted knowing the true means save less than half)"))
    return out


def _ci(p: float, lo: float, hi: float) -> str:
    if p != p:
        return ""
    return f"{p:.3f} [{lo:.3f}, {hi:.3f}]"


def _table(df: pd.DataFrame) -> str:
    try:
        return df.to_markdown(index=False, floatfmt=".3g")
    except ImportError:
        return df.to_string(index=False)


def designs_table(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "setting": frame["setting"], "s": frame["s"], "design": frame["design"],
        "reps": frame["reps"],
        "P(right) [95% CI]": [_ci(*a) for a in zip(frame["P_right"], frame["right_lo"],
                                                   frame["right_hi"], strict=True)],
        "trials": frame["trials"].round(1),
        "P(best lost) [95% CI]": [_ci(*a) for a in zip(frame["P_best_lost"],
                                                       frame["best_lost_lo"],
                                                       frame["best_lost_hi"], strict=True)],
        "P(best out) [95% CI]": [_ci(*a) for a in zip(frame["P_best_out"],
                                                      frame["best_out_lo"],
                                                      frame["best_out_hi"], strict=True)],
        "P(worse bold)": frame["P_worse_bold"].round(3),
        "stops": frame["stops"]})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="*", default=list(TABLES), choices=list(TABLES))
    p.add_argument("--extras", nargs="*", default=list(EXTRAS), choices=list(EXTRAS),
                   help="the guarantee settings (default all)")
    p.add_argument("--sds", nargs="+", type=float, default=[0.5, 1.0, 1.5],
                   help="seed std s of a trial, points (default 0.5 1.0 1.5)")
    p.add_argument("--block", type=float, default=0.5,
                   help="std of the seed-block effect shared by all cells, as a multiple of s")
    p.add_argument("--reps", type=int, default=None, help="repetitions of the fixed designs "
                   "(default 1000; --quick 100)")
    p.add_argument("--race-reps", type=int, default=None, help="races per setting and variant "
                   "(default 200; --quick 20)")
    p.add_argument("--fixed", nargs="+", type=int, default=None,
                   help=f"seeds per cell of the fixed designs (default {' '.join(map(str, FIXED))}"
                        "; --quick 2 3 5 10 20)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help=f"race variants (default {', '.join(DEFAULT_VARIANTS)}; --quick: race)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes over settings (default 2; the figures do not depend on it)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and variants")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (the figures repeat)")
    p.add_argument("--paper-csv", type=Path, default=None,
                   help="read the truth from this paper_tables.csv (default: the package copy)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--axis-from", type=Path, default=None, metavar="JSON",
                   help="only the axis effects after a race, again, from the equal-24 races "
                        "of a run's JSON (its seeds per cell; the same draws)")
    a = p.parse_args(argv)
    if a.axis_from:
        extra = axis_from(a.axis_from)
        rows = targets(pd.DataFrame(columns=["setting", "design", "s"]), pd.DataFrame(),
                       extra, None)
        for r in rows:
            print(f"  {r['result']:<14} {r['target']}: {r['figure']:.3f} [{r['lo']:.3f}, "
                  f"{r['hi']:.3f}] of {r['n']}")
        if a.json:
            d = json.loads(a.axis_from.read_text("utf-8"))
            d.update(extra)
            d.pop("axis_error", None)
            d["targets"] = [r for r in d.get("targets", [])
                            if not r["target"].startswith("axis")] + rows
            a.json.write_text(json.dumps(d, indent=1, default=str), "utf-8")
        return 0
    reps = a.reps or (100 if a.quick else 1000)
    race_reps = a.race_reps or (20 if a.quick else 200)
    fixed = a.fixed or ([2, 3, 5, 10, 20] if a.quick else list(FIXED))
    names = a.variants or (["race"] if a.quick else list(DEFAULT_VARIANTS))
    paper = None
    if a.paper_csv:
        paper = pd.read_csv(a.paper_csv, dtype={"param": str}, keep_default_na=False)
        parsed = [dict(kv.split("=", 1) for kv in filter(None, str(s).split(";")) if "=" in kv)
                  for s in paper["param"]]
        for col in ("p", "K", "dm_layers"):
            paper[col] = [float(d[col]) if col in d else math.nan for d in parsed]
        paper["accuracy"] = pd.to_numeric(paper["accuracy"], errors="coerce")
    t0 = time.perf_counter()
    frame, extra = bench(a.tables, a.sds, a.extras, block=a.block, reps=reps,
                         race_reps=race_reps, fixed=fixed,
                         variants={k: VARIANTS[k] for k in names}, seed=a.seed, paper=paper,
                         workers=a.workers,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    known = known_answer(seed=a.seed)
    wall = time.perf_counter() - t0
    v = verdicts(frame, oracles=extra.get("oracle"))
    t = targets(frame, v, extra, known)
    print(f"# racing bench: tables {' '.join(a.tables) or '-'}; extras "
          f"{' '.join(a.extras) or '-'}; s {a.sds}; block {a.block:g} x s; {reps} reps (fixed "
          f"{' '.join(map(str, fixed))}), {race_reps} races ({', '.join(names)}); seed "
          f"{a.seed}; delta {DELTA:g}; alpha {stats.ALPHA:g}; {a.workers} workers; "
          f"{wall:.0f} s\n")
    print("## every design: P(right) = pick within 0.25 of the true best; P(best lost) = a "
          "truly best cell not bold (races: put out or not bold); P(best out) = a truly best "
          "cell put out by the race; Wilson 95 % intervals\n")
    print(_table(designs_table(frame)), "\n")
    if not v.empty:
        print(f"## the comparison at P(right) >= {TARGET} (Wilson lower end >= {TARGET}): the "
              f"cheapest fixed design that reaches it against the race; win = the race reaches "
              f"it and ratio >= {WIN_RATIO:g}\n")
        shown = v[["setting", "s", "race", "P_right", "right_lo", "race_trials", "fixed",
                   "fixed_trials", "ratio", "oracle_ratio", "bound", "wins", "why"]]
        print(_table(shown), "\n")
        kind = v["race"].where(~v["race"].str.startswith("best race"), "best race")
        for vname, g in v.groupby(kind, sort=False):
            print(f"{vname}: wins {int(g['wins'].sum())} of {len(g)} table settings")
        d = v[v["race"].str.startswith("best race") & ~v["wins"]]
        if not d.empty:
            print("\nThe race at its cheapest --max-seeds that reaches does not win in:")
            for _, r in d.iterrows():
                print(f"  {r['setting']} s={r['s']:g}: {r['why']} (race P(right) "
                      f"{r['P_right']:.3f} [{r['right_lo']:.3f}, {r['right_hi']:.3f}], "
                      f"{r['race_trials']:.0f} trials; fixed {r['fixed']}: "
                      f"{r['fixed_trials']:.0f} trials)")
        print()
    print("## targets (issue 20)\n")
    for r in t:
        fig = (f"{r['figure']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] of {r['n']}"
               if r["lo"] == r["lo"] else r.get("note", f"{r['figure']:g}"))
        print(f"  {r['result']:<14} {r['target']}: {fig}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "args": {k: (str(x) if isinstance(x, Path) else x) for k, x in vars(a).items()},
            "reps": reps, "race_reps": race_reps, "fixed": fixed, "wall_s": wall,
            "settings": {k: dataclasses.asdict(race.Settings(**VARIANTS[k])) for k in names},
            "designs": frame.to_dict("records"), "verdicts": v.to_dict("records"),
            "targets": t, "known_answer": known, **extra}, indent=1, default=str), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
