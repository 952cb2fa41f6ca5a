"""A table is its spec (qimera_core.tablespec): a new toy table, registered as a spec and
nothing else, gets its dry run, its Markdown/CSV/LaTeX tables, its statistics file, its status
lines and its live-page state with no other edit; and the registry's own checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qimera_core import results, tablespec
from qimera_core.config import build
from qimera_core.tablespec import Axis, Block, Claim, TableSpec

RUN_INFO = {"git_sha": "test", "versions": "{}"}
P, DM = [0.2, 0.5, 0.8], [0, 2]


@pytest.fixture
def toy():
    spec = tablespec.register(TableSpec(
        name="toy", title="Toy table", subtitle="accuracy vs. p and DM layers (digits)",
        blocks=[Block("digits", build("digits-smoke"), {"mix_prob": P, "dm_layers": DM})],
        layout="grid", axes=(Axis("mix_prob", "p", fmt="{:.1f}"), Axis("dm_layers", "DM")),
        claims=(Claim("lower p is better (toy)", "slope", "mix_prob", -1),)))
    yield spec
    tablespec.unregister("toy")


def toy_results(spec: TableSpec, d) -> None:
    """Three seeds of every cell: p costs 10 points per unit, DM nothing, seeds shift all."""
    from sweeps import grid
    rng = np.random.default_rng(0)
    rows = []
    for i, c in enumerate(grid.plan(spec.blocks, seeds=3)):
        top1 = 70 - 10 * c.mix_prob + [0.0, 1.0, -1.0][c.seed] + rng.normal(0, 0.3)
        rows.append(results.make_row(c, {"epoch": 2, "top1": top1, "best_top1": top1 + 0.5,
                                         "start_top1": 40.0, "teacher_top1": 99.0},
                                     table="toy", trial_id=f"t{i}", status="ok",
                                     run_info=RUN_INFO))
    results.write(rows, d, "trials")


def test_a_spec_is_a_whole_table(toy, tmp_path, capsys):
    from analysis import load, pagestate, resolve, status, tables
    from sweeps.launch import main

    # the dry run: the spec's blocks, nothing else
    assert main("toy", argv=["--dry-run", "--seeds", "2", "--results", str(tmp_path / "r0")]) == 0
    out = capsys.readouterr().out
    assert "toy: 12 trials, 0 reused, 12 to run" in out

    toy_results(toy, tmp_path / "r")
    res = load(tmp_path / "r")
    (t,) = tables.make_tables(res)
    assert t.name == "toy" and t.title.startswith("Toy table: accuracy vs. p and DM layers")
    assert list(t.frame.columns) == ["0.2", "0.5", "0.8"]
    assert t.frame.index.names == ["setting", "DM"] and len(t.frame) == 2
    from analysis import render
    written = render.write_table(t, tmp_path / "out", ["md", "csv", "tex"])
    assert {p.suffix for p in written} == {".md", ".csv", ".tex"}
    assert pd.read_csv(tmp_path / "out" / "toy.csv")["n"].eq(3).all()

    r = resolve.resolve(t)
    axes = r.effects.set_index("axis")
    assert axes.loc["mix_prob", "p"] < 0.05 and axes.loc["mix_prob", "effect"] < 0
    assert axes.loc["dm_layers", "label"] == "DM"
    (claim,) = r.claims.itertuples()
    assert claim.claim == "lower p is better (toy)" and claim.verdict == "supported"
    resolve.write(r, tmp_path / "out", ["md", "csv", "tex"])
    assert (tmp_path / "out" / "toy-stats.md").read_text().count("lower p is better") == 1

    lines = status.resolution_lines(res)
    assert "toy: what it resolves" in lines
    assert any("lower p is better (toy)" in line for line in lines)

    state = pagestate.page_state(tmp_path / "r")
    (page,) = state["tables"]
    assert page["name"] == "toy" and len(page["cells"]) == 6
    assert {c["row"] for c in page["cells"]} == {"digits BN-ResNet-8 2w2a, DM=0",
                                                   "digits BN-ResNet-8 2w2a, DM=2"}


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="layout 'pie' is not one of"):
        tablespec.register(TableSpec("x", "X", "", [], layout="pie"))
    with pytest.raises(ValueError, match="the grid layout needs 2 axes"):
        tablespec.register(TableSpec("x", "X", "", [], layout="grid", axes=(Axis("p", "p"),)))
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        tablespec.get("nope")


def test_the_papers_tables_are_registered_in_order():
    assert tablespec.names()[:6] == ["main", "table6", "table7", "table8", "table9", "table10"]
    t9 = tablespec.get("table9")
    assert t9.cell_keys == ["setting", "mix_classes", "mix_prob"]
    assert t9.row_keys == ["setting", "mix_classes"] and t9.figure == "heatmap"
    from sweeps import table9
    assert table9.BLOCKS == t9.blocks
