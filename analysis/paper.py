"""The paper's published numbers (a package copy of the method doc's §10) and lookups into them.

`paper_trials` turns those numbers into trial rows, so the table code can be checked against
the paper: fed the paper's values, it must print the paper's tables.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from importlib import resources

import pandas as pd

from qimera_core import config, results, tablespec

from .load import dataset_label, model_label

log = logging.getLogger(__name__)

FP32_BLOCK = "fp32_teachers"


def paper_block(table: str) -> str:
    """The block of paper_tables.csv a table compares against: its spec's `paper_block`
    ("" for a table the paper does not have)."""
    if table == "fp32":
        return FP32_BLOCK
    try:
        return tablespec.get(table).paper_block
    except KeyError:
        return table
PAPER_EPOCHS = 400


@functools.cache
def paper_tables() -> pd.DataFrame:
    """paper_tables.csv with its `param` strings parsed into sigma, dm_layers, K, p columns."""
    text = resources.files("analysis").joinpath("data/paper_tables.csv").read_text("utf-8")
    df = pd.read_csv(io.StringIO(text), dtype={"param": str, "flag": str},
                     keep_default_na=False, na_values={"accuracy": [""]})
    parsed = [_parse_param(p) for p in df["param"]]
    for key in ("sigma_z", "dm_layers", "K", "p"):
        df[key] = [d.get(key, math.nan) for d in parsed]
    df["freeze"] = df["param"].str.contains("freeze")
    return df


def _parse_param(param: str) -> dict[str, float]:
    out = {}
    for part in filter(None, param.split(";")):
        if "=" in part and not part.startswith("improvement"):
            key, value = part.split("=", 1)
            out[key] = float(value)
    return out


def lookup(block: str, dataset: str, model: str, bits: str, method: str,
           **params: float) -> tuple[float, str] | None:
    """(accuracy, flag) of one paper cell, or None when the paper has no such cell.

    `params` are matched exactly (sigma_z, dm_layers, K, p, freeze); a param the paper row
    has but the query does not name must be empty there, so Qimera's σ-free cell in Table 6
    is not confused with a GDFQ σ cell.
    """
    df = paper_tables()
    rows = df[(df["table"] == paper_block(block)) & (df["dataset"] == dataset)
              & (df["model"] == model) & (df["bits"] == bits) & (df["method"] == method)]
    for key in ("sigma_z", "dm_layers", "K", "p"):
        if key in params:
            rows = rows[(rows[key] - float(params[key])).abs() < 1e-9]
        else:
            rows = rows[rows[key].isna()]
    rows = rows[rows["freeze"] == bool(params.get("freeze", False))]
    if rows.empty:
        return None
    if len(rows) > 1:
        log.warning("paper_tables.csv has %d rows for %s %s %s %s %s %s; using the first",
                    len(rows), block, dataset, model, bits, method, params)
    return float(rows["accuracy"].iloc[0]), str(rows["flag"].iloc[0])


@functools.cache
def _preset_for() -> dict[tuple[str, str, str], str]:
    """(dataset, model, bits) label -> the preset that reproduces it."""
    out = {}
    for name in config.PRESETS:
        cfg = config.build(name)
        key = (dataset_label(cfg.eval_data, cfg.teacher), model_label(cfg.teacher),
               f"{cfg.w_bits}w{cfg.a_bits}a")
        out.setdefault(key, name)
    return out


_RUN_INFO = {"git_sha": "paper", "versions": "{}"}


def _config(dataset: str, model: str, bits: str, **overrides) -> config.TrainConfig:
    w, a = (int(b) for b in bits.rstrip("a").split("w"))
    preset = _preset_for().get((dataset, model, bits))
    if preset is None:  # the same model at other bits (e.g. ResNet-50 at 6w6a)
        preset = next(p for (d, m, _), p in _preset_for().items() if (d, m) == (dataset, model))
    return config.build(preset, w_bits=w, a_bits=a, **overrides)


# The paper's baselines we run ourselves, by the paper's name.
RUN_BASELINES = {"ZeroQ": "zeroq", "DSG": "dsg", "ZAQ": "zaq"}


def _overrides(row: pd.Series) -> dict:
    if row["method"] in RUN_BASELINES:
        return {"method": RUN_BASELINES[row["method"]]}
    if row["method"] == "GDFQ":
        out = {"method": "gdfq"}
        if not math.isnan(row["sigma_z"]):
            out["noise_sigma"] = row["sigma_z"]
        return out
    out = {"method": "qimera"}
    if row["freeze"]:
        out.update(emb_init="extracted", freeze_embeddings=True)
    if not math.isnan(row["dm_layers"]):
        out["dm_layers"] = int(row["dm_layers"])
    if not math.isnan(row["K"]):
        out.update(mix_classes=int(row["K"]), mix_prob=float(row["p"]))
    return out


def paper_trials(table: str) -> pd.DataFrame:
    """Trial rows (schema of qimera_core.results, one seed) whose top1 is the paper's number.

    Covers every cell we run ourselves (Qimera, GDFQ, Extracted Init + Freeze and the
    baselines ZeroQ, DSG, ZAQ).
    """
    df = paper_tables()
    # Table 7 = the main table's columns plus its own "Extracted Init + Freeze" column.
    blocks = [paper_block("main"), paper_block(table)] if table == "table7" \
        else [paper_block(table)]
    rows = df[df["table"].isin(blocks) & df["method"].isin(["Qimera", "GDFQ", *RUN_BASELINES])]
    out = []
    known = {m for (_, m, _) in _preset_for()}
    skipped = sorted(set(rows["model"]) - known)
    if skipped:
        log.info("paper_trials(%s): no teacher for %s in the registry; rows left out",
                 table, skipped)
    for i, row in enumerate(rows[rows["model"].isin(known)].itertuples(index=False)):
        r = pd.Series(row._asdict())
        cfg = _config(r["dataset"], r["model"], r["bits"], **_overrides(r))
        teacher = lookup("fp32", r["dataset"], r["model"], "32w32a", "FP32")
        metrics = {"epoch": cfg.epochs, "top1": r["accuracy"], "best_top1": r["accuracy"],
                   "teacher_top1": teacher[0] if teacher else math.nan}
        out.append(results.make_row(cfg, metrics, table=table, trial_id=f"paper-{table}-{i}",
                                    status="ok", run_info=_RUN_INFO))
    return results.to_frame(out)
