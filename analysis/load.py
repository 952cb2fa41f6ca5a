"""Read a sweep's trial and curve Parquet files, check their schema, dedupe them and label them.

Labels follow the paper: dataset (CIFAR-10, ...), model (ResNet-20, ...), bits ("4w4a") and
method ("Qimera", "GDFQ", "Extracted Init + Freeze"), so the table code never sees registry names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qimera_core import results

from . import racelog

log = logging.getLogger(__name__)

PAPER_DATASETS = ("CIFAR-10", "CIFAR-100", "ImageNet")
PAPER_MODELS = ("ResNet-20", "ResNet-18", "ResNet-50", "MobileNetV2", "InceptionV3",
                "SqueezeNext", "ShuffleNet")
_DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet",
             "digits": "digits", "synthetic": "synthetic"}
_MODELS = {"resnet20_cifar10": "ResNet-20", "resnet20_cifar100": "ResNet-20",
           "resnet20_cifar10_a": "ResNet-20", "resnet18": "ResNet-18", "resnet50": "ResNet-50",
           "mobilenetv2_w1": "MobileNetV2", "mobilenet_v2": "MobileNetV2",
           "digits_resnet8": "BN-ResNet-8", "tiny_resnet": "tiny ResNet"}
# Registry names of the DSG-comparison models vary (pytorchcv vs torchvision), so match prefixes.
_MODEL_PREFIXES = (("inception", "InceptionV3"), ("sqnxt", "SqueezeNext"),
                   ("squeezenext", "SqueezeNext"), ("shufflenet", "ShuffleNet"))


class AnalysisError(ValueError):
    """Input the analysis cannot use; the message says what is wrong and what to do."""


@dataclass
class Results:
    """One results directory: deduped trials (all statuses), deduped curves, running trials."""

    directory: Path
    trials: pd.DataFrame
    curves: pd.DataFrame
    running: pd.DataFrame
    # table -> the race log a `--seeds auto` sweep wrote (sweeps.race), for raced tables only
    races: dict[str, racelog.RaceLog] = field(default_factory=dict)


def read_races(directory: Path) -> dict[str, racelog.RaceLog]:
    """Every race log in `directory`; an unreadable one is skipped with a warning."""
    out = {}
    for path in sorted(directory.glob(racelog.LOG_NAME.format(table="*"))):
        try:
            log_ = racelog.read(path)
        except racelog.RaceLogError as e:
            log.warning("%s; its tables show no race marks", e)
            continue
        out[log_.table] = log_
    return out


def race_of(source: Any, table: str) -> racelog.RaceLog | None:
    """The race log of `table` in a Results (None for raw rows or a table that was not raced)."""
    return getattr(source, "races", {}).get(table)


def dataset_label(eval_data: str, teacher: str = "") -> str:
    kind = eval_data.split(":", 1)[0]
    if kind == "npz":  # an exported test set: the teacher says which data set it is
        if "cifar100" in teacher:
            return "CIFAR-100"
        return "CIFAR-10" if "cifar10" in teacher else "npz"
    return _DATASETS.get(kind, kind)


def model_label(teacher: str) -> str:
    name = teacher.removeprefix("tv:")  # torchvision classifiers are registered as tv:NAME
    if name in _MODELS:
        return _MODELS[name]
    for prefix, label in _MODEL_PREFIXES:
        if name.lower().startswith(prefix):
            return label
    return teacher


PTQ_LABELS = {"zeroq": "ZeroQ", "dsg": "DSG"}
GENERATOR_LABELS = {"gdfq": "GDFQ", "adadfq": "AdaDFQ", "zaq": "ZAQ"}


def method_label(method: str, freeze_embeddings: bool, epochs: int = 0) -> str:
    """A run's column in the method tables. A post-training method fine-tuned on its images
    (epochs > 0) is its own column, "ZeroQ + KD": better data and more training stay apart."""
    if method in PTQ_LABELS:
        return PTQ_LABELS[method] + (" + KD" if epochs else "")
    if method in GENERATOR_LABELS:
        return GENERATOR_LABELS[method]
    return "Extracted Init + Freeze" if freeze_embeddings else "Qimera"


def add_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Adds dataset, model, bits, method_label, setting and paper_setting columns."""
    df = df.copy()
    df["dataset"] = [dataset_label(e, t)
                     for e, t in zip(df["eval_data"], df["teacher"], strict=True)]
    df["model"] = [model_label(t) for t in df["teacher"]]
    df["bits"] = [f"{int(w)}w{int(a)}a" for w, a in zip(df["w_bits"], df["a_bits"], strict=True)]
    df["method_label"] = [method_label(m, bool(f), int(e)) for m, f, e in
                          zip(df["method"], df["freeze_embeddings"], df["epochs"], strict=True)]
    df["setting"] = [f"{d} {m} {b}"
                     for d, m, b in zip(df["dataset"], df["model"], df["bits"], strict=True)]
    # Digits and synthetic runs are pipeline checks; they must never pass for paper results.
    df["paper_setting"] = df["dataset"].isin(PAPER_DATASETS)
    return df


def setting_sort_key(dataset: str, model: str, bits: str) -> tuple:
    """Paper order: CIFAR-10, CIFAR-100, ImageNet; ResNet-20, -18, -50, MobileNetV2; bits."""
    d = PAPER_DATASETS.index(dataset) if dataset in PAPER_DATASETS else len(PAPER_DATASETS)
    m = PAPER_MODELS.index(model) if model in PAPER_MODELS else len(PAPER_MODELS)
    return (d, dataset, m, model, bits)


def _read_files(directory: Path, stem: str) -> pd.DataFrame:
    """results.read, the one reader: bad files go to DIR/quarantine/ with a warning there."""
    try:
        return results.read(directory, stem)
    except results.SchemaError as e:
        raise AnalysisError(str(e)) from None


def dedupe_trials(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per config_hash: the newest `ok` row, else the newest row of any status.

    `tables` keeps every table the config was run for (a reused trial can serve two tables),
    `attempts` how many rows it had.
    """
    if raw.empty:
        out = raw.copy()
        out["tables"], out["attempts"] = pd.Series(dtype=object), pd.Series(dtype="int64")
        return out
    groups = raw.groupby("config_hash", sort=False)
    tables = groups["table"].agg(lambda s: frozenset(s))
    attempts = groups.size()
    best = results.winning_rows(raw).set_index("config_hash", drop=False)
    best = best.assign(tables=tables.reindex(best.index), attempts=attempts.reindex(best.index))
    return best.reset_index(drop=True)


def dedupe_curves(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial_id, epoch), the newest: a restored trial reports some epochs twice.

    `tables` keeps every table the trial's curves were filed under (a sweep that reuses a
    finished trial files its curves again under its own table).
    """
    if raw.empty:
        out = raw.copy()
        out["tables"] = pd.Series(dtype=object)
        return out
    when = pd.to_datetime(raw["finished_at"], utc=True, errors="coerce")
    df = raw.assign(_when=when).sort_values(["trial_id", "epoch", "_when"], kind="stable")
    tables = df.groupby("trial_id")["table"].agg(lambda s: frozenset(s))
    df = df.drop_duplicates(["trial_id", "epoch"], keep="last")
    df = df.assign(tables=df["trial_id"].map(tables))
    return df.drop(columns="_when").reset_index(drop=True)


def _running(curves: pd.DataFrame, raw_trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that have reported epochs but no trial row yet: still running (or killed)."""
    if curves.empty:
        return curves.copy()
    live = curves[~curves["trial_id"].isin(set(raw_trials["trial_id"]))]
    return live.sort_values("epoch").groupby("trial_id", sort=False).tail(1).reset_index(drop=True)


def load(directory: Path | str) -> Results:
    """Reads `DIR/trials-*.parquet` and `DIR/curves-*.parquet`; raises AnalysisError if unusable."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise AnalysisError(f"results directory {directory} {what}; pass the "
                            "--results DIR that the sweep wrote to")
    raw_trials = _read_files(directory, "trials")
    raw_curves = _read_files(directory, "curves")
    if raw_trials.empty and raw_curves.empty:
        raise AnalysisError(f"{directory} holds no trials-*.parquet or curves-*.parquet files; "
                            "run a sweep with --results pointing here (e.g. python -m "
                            f"sweeps.table9 --smoke-test --results {directory}) or fix the path")
    trials = add_labels(dedupe_trials(raw_trials))
    curves = add_labels(dedupe_curves(raw_curves))
    running = _running(curves, raw_trials)
    log.info("%s: %d trials (%d rows), %d curve rows, %d running", directory, len(trials),
             len(raw_trials), len(curves), len(running))
    return Results(directory=directory, trials=trials, curves=curves, running=running,
                   races=read_races(directory))


def in_table(trials: pd.DataFrame, name: str) -> pd.DataFrame:
    """The trials that were run for paper table `name` ("table9", "main", ...)."""
    if trials.empty:
        return trials
    if "tables" in trials.columns:
        mask = [name in t for t in trials["tables"]]
    else:
        mask = trials["table"] == name
    return trials[mask]
