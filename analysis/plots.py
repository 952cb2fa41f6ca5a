"""Figures from the tables and curves: the Table 9 p×K heatmap, σ and DM-layer curves with error
bars, and per-trial training curves. Each function returns a matplotlib Figure (no pyplot, so no
global state and no display needed); `save` writes PNG and PDF."""

from __future__ import annotations

import functools
import logging
import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qimera_core import tablespec
from qimera_core.results import METRICS

from .cells import COMPARED_FIELDS, PaperTable
from .load import AnalysisError, in_table

log = logging.getLogger(__name__)

LOSSES = [m for m in METRICS if m.startswith("loss_")]
_SYMBOLS = {"mix_classes": "K", "mix_prob": "p", "dm_layers": "DM", "noise_sigma": "σ",
            "method": "method", "freeze_embeddings": "freeze"}


def save(fig: Figure, out_dir: Path, stem: str, formats: tuple[str, ...] = ("png", "pdf")
         ) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{fmt}" for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


def _grid(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _suptitle(fig: Figure, title: str) -> None:
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=10)


# ---- Table 9 heatmap -------------------------------------------------------------------------
def heatmap_table9(table: PaperTable) -> Figure:
    """One p×K heatmap per data set/model block, cells annotated 'mean ± std', best in bold."""
    if table.name != "table9":
        raise AnalysisError(f"heatmap_table9 needs the table9 PaperTable, got {table.name}")
    cells = table.cells
    blocks = list(dict.fromkeys(cells["setting"]))
    ps = sorted(cells["mix_prob"].unique())
    fig, axes = _grid(len(blocks), 2, (1.25 * len(ps) + 1.5, 3.6))
    for ax, block in zip(axes, blocks, strict=True):
        c = cells[cells["setting"] == block]
        mean = c.pivot(index="mix_classes", columns="mix_prob", values="mean").reindex(columns=ps)
        bold = c.pivot(index="mix_classes", columns="mix_prob", values="bold").reindex(columns=ps)
        annot = c.assign(a=[_annot(r) for _, r in c.iterrows()]).pivot(
            index="mix_classes", columns="mix_prob", values="a").reindex(columns=ps)
        with sns.axes_style("white"):
            sns.heatmap(mean, ax=ax, annot=annot.to_numpy(), fmt="", cmap="viridis",
                        cbar_kws={"label": "top-1 (%)"}, linewidths=0.5, annot_kws={"size": 7})
        ax.set_facecolor("0.85")  # missing cells
        present = mean.notna().to_numpy()
        # seaborn annotates only the cells it draws, in row-major order
        for text, is_bold in zip(ax.texts, bold.to_numpy()[present], strict=False):
            text.set_fontweight("bold" if is_bold else "normal")
        for i, j in zip(*np.nonzero(~present), strict=True):
            ax.text(j + 0.5, i + 0.5, "-", ha="center", va="center", color="0.3")
        ax.set_xticklabels([f"{p:.2f}" for p in ps])
        ax.set(xlabel="p (superposition probability)", ylabel="K (classes superposed)",
               title=block)
    _suptitle(fig, table.title)
    return fig


def _annot(c: pd.Series) -> str:
    if math.isnan(c["mean"]):
        return "-"
    text = f"{c['mean']:.2f}"
    if not math.isnan(c["std"]):
        text += f"\n±{c['std']:.2f}"
    if c["n"] < c["seeds"]:
        text += f"\nn={int(c['n'])}"
    return text


# ---- σ and DM-layer curves -------------------------------------------------------------------
def _errorbars(ax, c: pd.DataFrame, x: str, label: str, color) -> None:
    c = c.sort_values(x)
    ours = c[c["mean"].notna()]
    if not ours.empty:
        ax.errorbar(ours[x], ours["mean"], yerr=ours["std"].fillna(0), marker="o", capsize=3,
                    label=label, color=color)
    paper = c[c["paper"].notna()]
    if not paper.empty:
        ax.plot(paper[x], paper["paper"], "x--", color="0.5", lw=0.8, label="paper")


def sigma_curves(table: PaperTable) -> Figure:
    """Table 6: GDFQ top-1 vs σ with ±std error bars; Qimera (σ = 1) as a dashed band."""
    if table.name != "table6":
        raise AnalysisError(f"sigma_curves needs the table6 PaperTable, got {table.name}")
    cells = table.cells
    settings = list(dict.fromkeys(cells["setting"]))
    fig, axes = _grid(len(settings), 4, (3.4, 2.8))
    colors = sns.color_palette("deep")
    for ax, s in zip(axes, settings, strict=True):
        c = cells[cells["setting"] == s]
        _errorbars(ax, c[c["method_label"] == "GDFQ"], "noise_sigma", "GDFQ", colors[0])
        for i, (_, ref) in enumerate(c[(c["method_label"] != "GDFQ")
                                       & c["mean"].notna()].iterrows()):
            color = colors[(i + 1) % len(colors)]
            ax.axhline(ref["mean"], ls="--", color=color, label=ref["column"])
            if not math.isnan(ref["std"]):
                ax.axhspan(ref["mean"] - ref["std"], ref["mean"] + ref["std"], color=color,
                           alpha=0.15)
        ax.set(title=s, xlabel="noise σ", ylabel="top-1 (%)")
        ax.legend(fontsize=7)
    _suptitle(fig, table.title)
    return fig


def dm_curves(table: PaperTable) -> Figure:
    """Table 8: top-1 vs number of DM layers with ±std error bars, one panel per data set."""
    if table.name != "table8":
        raise AnalysisError(f"dm_curves needs the table8 PaperTable, got {table.name}")
    cells = table.cells
    columns = list(dict.fromkeys(cells["column"]))
    fig, axes = _grid(len(columns), 3, (3.6, 2.8))
    for ax, col in zip(axes, columns, strict=True):
        c = cells[cells["column"] == col]
        _errorbars(ax, c, "dm_layers", "Qimera", sns.color_palette("deep")[0])
        ax.set_xticks(sorted(c["dm_layers"].unique()))
        ax.set(title=col, xlabel="DM layers", ylabel="top-1 (%)")
        ax.legend(fontsize=7)
    _suptitle(fig, table.title)
    return fig


# ---- training curves -------------------------------------------------------------------------
def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) \
        else str(v)


def _encode(curves: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Name each trial by what varies across the table (setting, K, p, σ, DM, ...).

    Two varying knobs (Table 9's K and p) become colour and line style; otherwise each cell
    gets its own colour. Returns the curves with the new columns and the lineplot arguments.
    """
    varying = [f for f in COMPARED_FIELDS if curves[f].astype(str).nunique() > 1
               and f not in ("eval_data", "teacher", "w_bits", "a_bits")]
    keys = (["setting"] if curves["setting"].nunique() > 1 else []) + varying
    ordered = curves.sort_values(keys) if keys else curves
    if len(varying) == 2 and len(keys) == 2 and curves[varying[1]].nunique() <= 6:
        hue, style = (_SYMBOLS.get(f, f) for f in varying)
        out = curves.assign(**{hue: curves[varying[0]].map(_fmt),
                               style: curves[varying[1]].map(_fmt)})
        return out, dict(hue=hue, hue_order=list(dict.fromkeys(ordered[varying[0]].map(_fmt))),
                         style=style,
                         style_order=list(dict.fromkeys(ordered[varying[1]].map(_fmt))))
    labels = [", ".join([r["setting"]] * ("setting" in keys)
                        + [f"{_SYMBOLS.get(f, f)}={_fmt(r[f])}" for f in varying]) or r["setting"]
              for _, r in curves.iterrows()]
    out = curves.assign(cell=labels)
    return out, dict(hue="cell", hue_order=list(dict.fromkeys(out.loc[ordered.index, "cell"])))


def training_curves(curves: pd.DataFrame, table: str) -> Figure:
    """Top-1 and each loss by epoch, one line per trial, coloured by cell (seeds share a colour)."""
    c = in_table(curves, table)
    if c.empty:
        raise AnalysisError(f"no curves for {table}: the sweep writes curves-*.parquet as "
                            "trials report; check --results")
    c, enc = _encode(c)
    panels = ["top1"] + [m for m in LOSSES if c[m].notna().any()]
    fig, axes = _grid(len(panels), 3, (3.6, 2.7))
    n = len(enc["hue_order"])
    palette = sns.color_palette("husl" if n > 10 else "deep", n)
    for ax, metric in zip(axes, panels, strict=True):
        d = c[c[metric].notna()]
        sns.lineplot(d, x="epoch", y=metric, units="trial_id", estimator=None, ax=ax,
                     palette=palette, lw=1, legend=metric == "top1", **enc,
                     marker="o" if d["epoch"].nunique() < 12 else None, markersize=3)
        ax.set(title=metric, xlabel="epoch", ylabel="%" if metric == "top1" else "loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes and axes[0].get_legend():
        handles, labels = axes[0].get_legend_handles_labels()
        axes[0].get_legend().remove()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7,
                   ncols=1 + len(labels) // 25)
    note = "" if c["paper_setting"].all() else " — offline digits/smoke data, not paper results"
    _suptitle(fig, f"{table}: training curves ({c['trial_id'].nunique()} trials){note}")
    return fig


# A spec's `figure` (qimera_core.tablespec) -> (file stem suffix, maker).
FIGURES: dict[str, tuple[str, Callable[[PaperTable], Figure]]] = {
    "heatmap": ("heatmap", heatmap_table9), "sigma": ("sigma", sigma_curves),
    "dm": ("dm_layers", dm_curves)}


def figure_jobs(tables: list[PaperTable], curves: pd.DataFrame, only: list[str] | None = None
                ) -> list[tuple[str, Callable[[], Figure]]]:
    """(file stem, maker) for every figure the given tables and curves support; training
    curves for the tables in `only` (default: every table that has curves)."""
    jobs = [(f"{t.name}_{FIGURES[spec.figure][0]}",
             functools.partial(FIGURES[spec.figure][1], t))
            for t in tables if (spec := tablespec.get(t.name)).figure]
    names = sorted(set().union(*curves["tables"])) if not curves.empty else []
    names = [n for n in names if only is None or n in only]
    jobs += [(f"{n}_curves", functools.partial(training_curves, curves, n)) for n in names]
    return jobs
