"""What a paper table *is*, in one place: its blocks, the keys of its cells and rows, its axes,
the paper's stated claims as data, its figure and where its paper numbers are. `sweeps` runs a
spec's blocks; `analysis` derives the layout, the statistics, the live page's keys and the race
marks from it. Neither package is above the other; both import this module.

Specs are registered by name, as timm registers models:

    from qimera_core.tablespec import TableSpec, Axis, Claim, register
    register(TableSpec(name="mytable", title="...", blocks=..., axes=(Axis("mix_prob", "p"),
                       Axis("mix_classes", "K")), layout="grid"))

The paper's own tables are registered by `qimera_core.paper_specs` the first time any spec is
asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qimera_core.config import TrainConfig

# How a table is laid out (analysis.tables has one builder per layout):
#   grid     rows = the second axis, columns = the first, one block of rows per setting;
#   levels   rows = the levels of the one axis, one column per setting;
#   sigma    GDFQ's sigma as columns beside the other methods, one row per setting;
#   methods  one row per setting, one column per method (run or quoted).
LAYOUTS = ("grid", "levels", "sigma", "methods")
# What a claim tests (analysis.effects reads them):
#   slope       the value rises (direction +1) or falls (-1) with `axis`;
#   best_above  the best level of `axis` other than `level` is above `level`;
#   above       the cell at `high` is above the cell at `low` (or the best of `low_over`).
CLAIM_KINDS = ("slope", "best_above", "above")


@dataclass(frozen=True)
class Block:
    """One group of rows of a paper table: a base setting and the axes swept over it.

    `row` names the block for `--only` (a substring match), e.g. "cifar100-resnet20-4w4a".
    """

    row: str
    base: TrainConfig | Mapping[str, Any]
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def base_dict(self) -> dict[str, Any]:
        if isinstance(self.base, TrainConfig):
            return self.base.to_dict()
        return dict(self.base)


@dataclass(frozen=True)
class Axis:
    """A swept axis as the statistics see it: the column, its label, and the rows it is tested
    on (`where`: column -> value; None = every row, crossed with the other crossed axes)."""

    column: str
    label: str
    where: Mapping[str, Any] | None = None
    log2: bool = False                  # its slope is per doubling (K spans 2-1000)
    paper: str = ""                     # its name in the paper's csv (p, K, dm_layers, sigma_z)
    fmt: str = "{:g}"                   # how a level is written in a column header


@dataclass(frozen=True)
class Claim:
    """A trend the paper states, as a one-sided test in the paper's direction.

    `text` may name {top} (the best level picked) and {scope} (said when the setting's data set
    is not one the paper states it for: `datasets`). `only` / `unless` restrict the claim to
    settings whose column has (or has not) one of the values, e.g. {"dataset": ("ImageNet",)}.
    """

    text: str
    kind: str
    axis: str
    direction: int = +1
    level: Any = None                                   # best_above
    high: Mapping[str, Any] | None = None               # above: the cell claimed higher
    low: Mapping[str, Any] | None = None                # above: the cell claimed lower
    low_over: str = ""                                  # above: best of `low` over this axis
    where: Mapping[str, Any] | None = None              # slope: fit on these rows only
    only: Mapping[str, Sequence[Any]] | None = None
    unless: Mapping[str, Sequence[Any]] | None = None
    datasets: Sequence[str] = ()

    def applies(self, setting: Mapping[str, Any]) -> bool:
        ok = all(setting.get(k) in v for k, v in (self.only or {}).items())
        return ok and not any(setting.get(k) in v for k, v in (self.unless or {}).items())


@dataclass(frozen=True)
class TableSpec:
    """Everything the code knows about one table; see the module doc."""

    name: str
    title: str                          # "Table 9"
    subtitle: str                       # what it shows
    blocks: Sequence[Block]
    layout: str
    axes: Sequence[Axis] = ()
    claims: Sequence[Claim] = ()
    paper_block: str = ""               # its rows in analysis/data/paper_tables.csv
    paper_also: Sequence[str] = ()      # other tables whose paper rows it also shows
    paper_method: str = "Qimera"        # grid/levels: the paper's method of every cell
    # methods layout: a column's label -> (the paper's method, params), where they differ
    paper_methods: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    methods: Sequence[str] = ()         # methods layout: our columns, in order
    quoted: Sequence[str] = ()          # methods layout: baselines whose number is the paper's
    # methods layout: columns of ours that show the paper's number, marked "(quoted)", in a
    # setting where they have not been run (the baselines we can run but may not have)
    quote_unrun: Sequence[str] = ()
    teacher_column: bool = True         # methods layout: the FP32 teacher's column
    improvement_over: str = ""          # methods layout: a column of ours minus this baseline
    figure: str = ""                    # analysis.plots' figure for it ("" = none)

    @property
    def cell_keys(self) -> list[str]:
        """The columns that place a trial in a cell."""
        if self.layout == "methods":
            return ["setting", "method_label"]
        if self.layout == "sigma":
            return ["setting", "method_label", "noise_sigma"]
        return ["setting", *(a.column for a in reversed(self.axes))]   # rows, then columns

    @property
    def row_keys(self) -> list[str]:
        """The columns that name a row of the table."""
        if self.layout == "grid":
            return ["setting", self.axes[1].column]
        if self.layout == "levels":
            return [self.axes[0].column]
        return ["dataset", "model", "bits"]

    @property
    def swept(self) -> list[str]:
        """The config fields the blocks sweep."""
        return sorted({k for b in self.blocks for k in b.grid})

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"table {self.name}: layout {self.layout!r} is not one of "
                             f"{', '.join(LAYOUTS)}")
        need = {"grid": 2, "levels": 1}.get(self.layout, 0)
        if len(self.axes) < need:
            raise ValueError(f"table {self.name}: the {self.layout} layout needs {need} axes, "
                             f"got {len(self.axes)}")
        for c in self.claims:
            if c.kind not in CLAIM_KINDS:
                raise ValueError(f"table {self.name}: claim kind {c.kind!r} is not one of "
                                 f"{', '.join(CLAIM_KINDS)}")


_REGISTRY: dict[str, TableSpec] = {}
_BUILTIN = "qimera_core.paper_specs"


def register(spec: TableSpec) -> TableSpec:
    """Add a table (replacing one of the same name); returns it, so it can decorate nothing and
    still read as one statement."""
    spec.check()
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load() -> None:
    importlib.import_module(_BUILTIN)


def names() -> list[str]:
    """Every registered table, the paper's in the paper's order first."""
    _load()
    return list(_REGISTRY)


def get(name: str) -> TableSpec:
    _load()
    if name not in _REGISTRY:
        raise KeyError(f"unknown table {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def specs(where: Callable[[TableSpec], bool] | None = None) -> list[TableSpec]:
    _load()
    return [s for s in _REGISTRY.values() if where is None or where(s)]
