"""analysis: hand-built results with known values through every table, the outputs and the CLI."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import AnalysisError, load, paper, render, status, tables
from analysis.cells import tie_note
from analysis.cli import main as cli
from qimera_core import results
from qimera_core.config import build

RUN_INFO = {"git_sha": "test", "versions": "{}"}
NAN = math.nan


def row(table: str, preset: str, top1: float = NAN, *, status: str = "ok", seed: int = 0,
        error: str = "", when: str | None = None, **overrides) -> dict:
    cfg = build(preset, seed=seed, **overrides)
    metrics = {"epoch": cfg.epochs, "top1": top1, "best_top1": top1 + 1.0,
               "teacher_top1": 70.0, "wall_time_s": 1800.0}
    r = results.make_row(cfg, metrics, table=table, trial_id=f"{table}-{cfg.config_hash}-{status}",
                         status=status, error=error, gpu_seconds=3600.0, run_info=RUN_INFO)
    if when:
        r["finished_at"] = when
    return r


C10, C100 = "cifar10-resnet20-4w4a", "cifar100-resnet20-4w4a"


def table9_rows() -> list[dict]:
    t = lambda *a, **k: row("table9", C100, *a, **k)  # noqa: E731
    return [
        # K=2, p=0.10: 60, 62, 64 -> 62.00 ± 2.00; seed 0 also has an older error and an older ok
        t(50.0, seed=0, mix_classes=2, mix_prob=0.1, when="2024-01-01T00:00:00+00:00"),
        t(status="error", error="boom", seed=0, mix_classes=2, mix_prob=0.1),
        t(60.0, seed=0, mix_classes=2, mix_prob=0.1, when="2024-01-02T00:00:00+00:00"),
        t(62.0, seed=1, mix_classes=2, mix_prob=0.1), t(64.0, seed=2, mix_classes=2, mix_prob=0.1),
        # K=2, p=0.40: 65, 66, 67 -> 66.00 ± 1.00, the block's best
        *[t(65.0 + s, seed=s, mix_classes=2, mix_prob=0.4) for s in range(3)],
        # K=10, p=0.10: two seeds, the third failed -> 62.00 ± 1.41 (n=2)
        t(61.0, seed=0, mix_classes=10, mix_prob=0.1),
        t(63.0, seed=1, mix_classes=10, mix_prob=0.1),
        t(status="error", error="CUDA out of memory\ntraceback...", seed=2, mix_classes=10,
          mix_prob=0.1),
        # K=10, p=0.40 is also Table 7's Qimera config (same hash): its ok rows win over these
        t(status="error", error="CUDA out of memory", seed=0, mix_classes=10, mix_prob=0.4),
        t(12.0, status="diverged", seed=1, mix_classes=10, mix_prob=0.4),
        # K=10, p=0.55: nothing finished -> "-"
        t(status="error", error="CUDA out of memory", seed=0, mix_classes=10, mix_prob=0.55),
        t(12.0, status="diverged", seed=1, mix_classes=10, mix_prob=0.55),
    ]


def other_rows() -> list[dict]:
    """Tables share configs (e.g. CIFAR-10 Qimera at the preset is in tables 6, 8 and main), so
    a shared config has the same values wherever it appears, as real reused trials would."""
    r = []
    for s in range(2):
        r += [row("table8", C10, (90.0, 91.0)[s], seed=s, dm_layers=0),
              row("table8", C10, 92.0, seed=s, dm_layers=1),
              row("table8", C100, (65.0, 66.0)[s], seed=s, dm_layers=1),
              row("table8", C100, 64.0, seed=s, dm_layers=0) if s == 0 else
              row("table8", C100, status="error", error="killed", seed=s, dm_layers=0)]
        r += [row("table6", C10, (90.0, 92.0)[s], seed=s, method="gdfq", noise_sigma=0.5),
              row("table6", C10, 90.0, seed=s, method="gdfq", noise_sigma=1.0),
              row("table6", C10, 92.0, seed=s)]
        r += [row("main", C10, 90.0, seed=s, method="gdfq"), row("main", C10, 92.0, seed=s),
              row("main", C10, (80.0, 82.0)[s], seed=s, method="zeroq"),
              row("main", "cifar10-resnet20-5w5a", 10.0, seed=s, method="gdfq",
                  status="diverged")]
        r += [row("table7", C100, 64.0, seed=s, freeze_embeddings=True),
              row("table7", C100, (65.0, 66.0)[s], seed=s)]
        r += [row("table10", "imagenet-resnet18-4w4a", (60.0, 62.0)[s], seed=s)]
    return r


def curve_rows() -> list[dict]:
    out = []
    for k, trial in [(2, "t-a"), (10, "t-b"), (25, "t-running")]:
        cfg = build(C100, mix_classes=k, mix_prob=0.4)
        for epoch in (1, 2, 3, 3):  # epoch 3 twice: a restored trial reports it again
            m = {"epoch": epoch, "top1": 50.0 + epoch + k / 10, "loss_g": 2.0 / epoch,
                 "loss_bns": 1.0 / epoch, "loss_s": 0.5 / epoch, "loss_kd": 0.3 / epoch,
                 "wall_time_s": 60.0 * epoch}
            out.append(results.make_row(cfg, m, table="table9", trial_id=trial, status="ok",
                                        run_info=RUN_INFO))
    return out


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("results")
    rows9 = table9_rows()
    # two curve trials finished (their trial rows carry the ids); "t-running" has no row yet
    rows9[5]["trial_id"], rows9[12]["trial_id"] = "t-a", "t-b"
    results.write(rows9[:6], d, "trials")  # two files, as two sweep processes would write
    results.write(rows9[6:] + other_rows(), d, "trials")
    results.write(curve_rows(), d, "curves")
    return d


@pytest.fixture(scope="module")
def res(results_dir):
    return load(results_dir)


def cell(t: tables.PaperTable, row_key, col: str) -> tuple[str, bool]:
    """(text, is the block's best mean); ties with the best are tested apart (test_stats.py)."""
    return t.frame.loc[row_key, col], bool(t.top.loc[row_key, col])


# ---- load -----------------------------------------------------------------------------------
def test_load_dedupes_labels_and_finds_running(res):
    tr = res.trials
    assert set(tr["status"]) == {"ok", "error", "diverged"}
    assert tr["config_hash"].is_unique
    k2 = tr[(tr["mix_classes"] == 2) & (tr["mix_prob"] == 0.1) & (tr["seed"] == 0)
            & tr["tables"].map(lambda t: "table9" in t)]
    assert len(k2) == 1 and k2["top1"].iloc[0] == 60.0 and k2["attempts"].iloc[0] == 3
    first = tr.iloc[0]
    assert (first["dataset"], first["model"], first["bits"]) == ("CIFAR-100", "ResNet-20", "4w4a")
    assert set(tr["method_label"]) == {"Qimera", "GDFQ", "Extracted Init + Freeze", "ZeroQ"}
    assert len(res.curves) == 9  # 3 trials x 3 epochs, the repeated epoch deduped
    assert list(res.running["trial_id"]) == ["t-running"]


def test_labels_for_every_teacher():
    assert load.__module__ == "analysis.load"
    from analysis.load import dataset_label, method_label, model_label
    assert [dataset_label(e) for e in ("cifar10", "cifar100", "imagenet:/v", "digits")] == \
        ["CIFAR-10", "CIFAR-100", "ImageNet", "digits"]
    assert dataset_label("npz:/x.npz", "resnet20_cifar10_a") == "CIFAR-10"
    assert [model_label(t) for t in ("resnet20_cifar100", "resnet18", "resnet50",
                                     "mobilenetv2_w1", "digits_resnet8", "inceptionv3")] == \
        ["ResNet-20", "ResNet-18", "ResNet-50", "MobileNetV2", "BN-ResNet-8", "InceptionV3"]
    assert method_label("qimera", True) == "Extracted Init + Freeze"
    assert method_label("gdfq", False) == "GDFQ"
    assert [method_label(m, False) for m in ("zeroq", "dsg", "zaq", "adadfq")] == \
        ["ZeroQ", "DSG", "ZAQ", "AdaDFQ"]
    assert method_label("zeroq", False, epochs=5) == "ZeroQ + KD"   # fine-tuned: its own column


def test_load_refuses_unknown_schema_and_empty_dirs(tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(AnalysisError, match="holds no trials"):
        load(tmp_path)
    df = results.to_frame([row("table9", C100, 60.0)])
    df["schema_version"] = 99
    df.to_parquet(tmp_path / "trials-future.parquet")
    with pytest.raises(AnalysisError, match=r"schema_version 99.*reads version 1 at most"):
        load(tmp_path)


# ---- the tables, cell by cell ---------------------------------------------------------------
B = "CIFAR-100 ResNet-20 4w4a"


def test_table9_cells(res):
    t = tables.build("table9", res)
    assert list(t.frame.columns) == ["0.10", "0.25", "0.40", "0.55", "0.70", "0.85"]
    assert list(t.frame.index) == [(B, k) for k in (2, 10, 25, 100)]
    assert cell(t, (B, 2), "0.10") == ("62.00 ± 2.00", False)
    assert cell(t, (B, 2), "0.40") == ("66.00 ± 1.00", True)
    assert cell(t, (B, 10), "0.10") == ("62.00 ± 1.41 (n=2)", False)
    assert cell(t, (B, 10), "0.40") == ("65.50 ± 0.71 (n=2)", False)  # reused from table7
    assert cell(t, (B, 10), "0.55") == ("-", False)
    assert cell(t, (B, 25), "0.70") == ("-", False)
    assert t.top.to_numpy().sum() == 1
    notes = "\n".join(t.notes)
    assert f"{B}, K=10, p=0.55: error (seed 0): CUDA out of memory; diverged (seed 1)" in notes
    assert f"{B}, K=10, p=0.10: n=2 of 3; error (seed 2): CUDA out of memory" in notes
    assert f"{B}, K=25: not run" in notes
    assert f"{B}, K=2: not run at p=0.25, 0.55, 0.70, 0.85" in notes
    assert "Paper rows not run here: ImageNet ResNet-50 4w4a" in notes
    c = t.cells.set_index(["mix_classes", "mix_prob"])
    assert c.loc[(2, 0.4), ["mean", "std", "n"]].tolist() == [66.0, 1.0, 3]
    assert c.loc[(2, 0.4), "gpu_hours"] == 3.0 and c.loc[(2, 0.4), "wall_hours"] == 1.5


def test_table8_cells(res):
    t = tables.build("table8", res)
    assert list(t.frame.columns) == ["CIFAR-10", "CIFAR-100"]
    assert list(t.frame.index) == [0, 1, 2, 4, 8]
    assert cell(t, 0, "CIFAR-10") == ("90.50 ± 0.71", False)
    assert cell(t, 1, "CIFAR-10") == ("92.00 ± 0.00", True)
    assert cell(t, 0, "CIFAR-100") == ("64.00 (n=1)", False)
    assert cell(t, 1, "CIFAR-100") == ("65.50 ± 0.71", True)
    assert cell(t, 8, "CIFAR-100") == ("-", False)
    assert "DM layers=0, CIFAR-100: n=1 of 2; error (seed 1): killed" in t.notes
    assert "DM layers=8: not run" in t.notes
    t3 = tables.build("table8", res, seeds=3)
    assert cell(t3, 1, "CIFAR-10") == ("92.00 ± 0.00 (n=2)", True)


def test_table6_cells(res):
    t = tables.build("table6", res)
    r = ("CIFAR-10", "ResNet-20", "4w4a")
    assert list(t.frame.columns) == ["σ=0.25", "σ=0.5", "σ=1", "σ=1.5", "σ=2", "Qimera"]
    assert cell(t, r, "σ=0.5") == ("91.00 ± 1.41", False)
    assert cell(t, r, "σ=1") == ("90.00 ± 0.00", False)
    assert cell(t, r, "Qimera") == ("92.00 ± 0.00", True)
    assert cell(t, r, "σ=2") == ("-", False)


def test_main_table_cells_with_paper_baselines(res):
    t = tables.build("main", res)
    r4, r5 = ("CIFAR-10", "ResNet-20", "4w4a"), ("CIFAR-10", "ResNet-20", "5w5a")
    assert list(t.frame.columns) == ["FP32", "ZeroQ", "DSG", "ZAQ", "GDFQ", "AdaDFQ", "Qimera"]
    assert cell(t, r4, "FP32") == ("70.00", False)
    # ZeroQ run here, beside its paper number; DSG has neither a run nor a paper number
    assert cell(t, r4, "ZeroQ") == ("81.00 ± 1.41", False)
    assert cell(t, r4, "DSG") == ("-", False)
    assert cell(t, r4, "ZAQ") == ("92.13 (quoted)", True)  # the paper's ZAQ beats our 92.00
    assert cell(t, r4, "Qimera") == ("92.00 ± 0.00", False)
    assert cell(t, r4, "GDFQ") == ("90.00 ± 0.00", False)
    assert cell(t, r5, "GDFQ") == ("-", False)
    assert cell(t, r5, "ZAQ") == ("93.36 (quoted)", True)
    assert cell(t, r5, "AdaDFQ") == ("-", False)
    assert cell(t, r5, "ZeroQ")[0].endswith("(quoted)")    # not run at 5w5a: the paper's
    notes = "\n".join(t.notes)
    assert "CIFAR-10 ResNet-20 5w5a, GDFQ: diverged (seeds 0, 1)" in notes
    assert "CIFAR-10 ResNet-20 5w5a: DSG, AdaDFQ, Qimera not run" in notes
    assert "Paper rows not run here: CIFAR-100 ResNet-20 4w4a; CIFAR-100 ResNet-20 5w5a; " \
        "ImageNet ResNet-18 4w4a" in notes


def test_table7_and_table10_cells(res):
    t7 = tables.build("table7", res)
    r = ("CIFAR-100", "ResNet-20", "4w4a")
    assert list(t7.frame.columns) == ["FP32", "ZeroQ", "DSG", "ZAQ", "GDFQ", "Qimera",
                                      "Extracted Init + Freeze"]
    assert cell(t7, r, "ZAQ")[0].endswith("(quoted)")
    assert cell(t7, r, "ZeroQ") == ("47.45 (quoted)", False)
    assert cell(t7, r, "Extracted Init + Freeze") == ("64.00 ± 0.00", False)
    assert cell(t7, r, "Qimera") == ("65.50 ± 0.71", True)
    assert cell(t7, r, "GDFQ") == ("-", False)
    t10 = tables.build("table10", res)
    r = ("ImageNet", "ResNet-18", "4w4a")
    assert list(t10.frame.columns) == ["DSG", "ZeroQ", "Qimera", "Improvement"]
    assert [cell(t10, r, c)[0] for c in t10.frame.columns] == \
        ["34.53 (quoted)", "-", "61.00 ± 1.41", "+26.47"]
    assert cell(t10, r, "Qimera")[1]


def test_best_epoch_metric_is_labelled_and_compare_paper_adds_delta(res):
    t = tables.build("table9", res, metric="best_top1", compare_paper=True)
    assert "Best-epoch top-1" in t.title and "chosen on the test set" in t.title
    assert cell(t, (B, 2), "0.40")[0] == "67.00 ± 1.00 [paper 64.90, Δ +2.10]"
    c = t.cells.set_index(["mix_classes", "mix_prob"]).loc[(2, 0.4)]
    assert (c["paper"], round(c["delta"], 6)) == (64.90, 2.1)
    with pytest.raises(AnalysisError, match="metric must be one of"):
        tables.build("table9", res, metric="top5")
    with pytest.raises(AnalysisError, match="no trials for table9"):
        tables.build("table9", results.to_frame([row("table8", C10, 1.0)]))


def test_compare_paper_on_final_cells_takes_delta_from_the_best_epoch(res):
    """The paper reports the best test epoch, so Δ compares our best epoch with it; the final
    epoch's Δ is shown beside it, each labelled."""
    t = tables.build("table9", res, compare_paper=True)
    assert cell(t, (B, 2), "0.40")[0] == \
        "66.00 ± 1.00 [paper 64.90 (best epoch); Δ best-epoch +2.10, Δ final +1.10]"
    c = t.cells.set_index(["mix_classes", "mix_prob"]).loc[(2, 0.4)]
    assert (round(c["delta"], 6), round(c["delta_final"], 6)) == (2.1, 1.1)
    assert (c["final_mean"], c["best_mean"]) == (66.0, 67.0)


def _paper(block: str) -> pd.DataFrame:
    p = paper.paper_tables()
    return p[p["table"] == block]


def test_paper_numbers_reproduce_table9_cell_for_cell():
    t = tables.build("table9", paper.paper_trials("table9"))
    expected = _paper("table9_p_k")
    assert len(t.frame.index) == 8 and t.notes == [tie_note(t.cells, 0.05)]  # no gaps
    for _, e in expected.iterrows():
        block = f"{e['dataset']} {e['model']} {e['bits']}"
        assert t.frame.loc[(block, int(e["K"])), f"{e['p']:.2f}"] == f"{e['accuracy']:.2f}"
    assert t.frame.size == len(expected)
    assert list(t.frame.index.get_level_values(1)) == [2, 10, 25, 100, 100, 250, 500, 1000]
    # top: the best cell of each block, as the paper bolds it (one seed: every cell is tied)
    assert [t.frame.to_numpy()[t.top.to_numpy()].tolist()] == [["65.10", "66.25"]]
    assert t.bold.to_numpy().all()


def test_paper_numbers_reproduce_table8_cell_for_cell():
    t = tables.build("table8", paper.paper_trials("table8"))
    assert list(t.frame.columns) == ["CIFAR-10", "CIFAR-100"]
    assert t.notes == [tie_note(t.cells, 0.05)]  # no gaps
    for _, e in _paper("table8_dm_layers").iterrows():
        assert t.frame.loc[int(e["dm_layers"]), e["dataset"]] == f"{e['accuracy']:.2f}"
    assert t.frame.shape == (5, 2)
    assert t.top.loc[8, "CIFAR-10"] and t.top.loc[1, "CIFAR-100"] and t.top.sum().sum() == 2


def test_package_copy_matches_shared_reference():
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper_tables.csv"
    if not ref.exists():
        pytest.skip(f"{ref} not present (only in the development checkout)")
    copy = Path(tables.__file__).parent / "data" / "paper_tables.csv"
    assert copy.read_text() == ref.read_text()


def test_smoke_results_are_labelled_not_paper(tmp_path):
    rows = [row("table9", "digits-smoke", v, mix_classes=2, mix_prob=p)
            for v, p in [(80.0, 0.1), (82.0, 0.4)]]
    t = tables.build("table9", results.to_frame(rows), compare_paper=True)
    assert "not paper results" in t.title
    assert any(n.startswith("NOT PAPER RESULTS: digits") for n in t.notes)
    assert any("Schedule: epochs [3] (paper: 400)" in n for n in t.notes)
    assert list(t.frame.index) == [("digits BN-ResNet-8 2w2a", 2)]
    assert t.frame.iloc[0].tolist() == ["80.00", "82.00"]  # no paper value attached
    assert t.cells["paper"].isna().all()


# ---- outputs --------------------------------------------------------------------------------
def test_csv_round_trips_and_markdown_latex_mark_bold(res, tmp_path):
    t = tables.build("table9", res)
    paths = render.write_table(t, tmp_path, ["csv", "md", "tex"])
    back = pd.read_csv(paths[0])
    for col in ("mean", "std", "n", "gpu_hours", "paper"):
        pd.testing.assert_series_equal(back[col], t.cells[col], check_dtype=False)
    assert back["bold"].tolist() == t.cells["bold"].tolist()
    md = paths[1].read_text()
    assert "**66.00 ± 1.00 ▲**" in md and "- " + t.notes[0] in md
    tex = paths[2].read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\textbf{66.00 $\pm$ 1.00 $^{\star}$}" in tex and "±" not in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (apt-get install texlive-latex-base "
                           "texlive-latex-recommended); CI installs it")
def test_latex_compiles(res, tmp_path):
    texs = [render.write_table(t, tmp_path, ["tex"])[0]
            for t in tables.make_tables(res, compare_paper=True)]
    paper6 = tables.build("table6", paper.paper_trials("table6"))
    texs.append(render.write_table(paper6, tmp_path / "p", ["tex"])[0]
                .rename(tmp_path / "paper6.tex"))
    (tmp_path / "doc.tex").write_text(render.latex_document(texs))
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_status_summary_counts_and_cost(res):
    s = status.summary(res).set_index("table")
    assert s.loc["table9", ["ok", "error", "diverged", "running"]].tolist() == [10, 2, 1, 1]
    assert s.loc["table9", "gpu_hours"] == 13.0
    assert s.loc["all", "trials"] == len(res.trials) + 1
    assert "running" in status.status_line(res)


# ---- figures and CLI ------------------------------------------------------------------------
def test_every_table_figure_renders(res, tmp_path):
    from analysis import plots
    made = []
    for stem, make in plots.figure_jobs(tables.make_tables(res), res.curves):
        made += plots.save(make(), tmp_path, stem)
    names = {p.name for p in made}
    assert {"table9_heatmap.png", "table9_heatmap.pdf", "table6_sigma.png",
            "table8_dm_layers.png", "table9_curves.png"} <= names
    assert all(p.stat().st_size > 5000 for p in made)


def test_cli_end_to_end(results_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["tables", "--results", str(results_dir), "--out", str(out)]) == 0
    for name in tables.TABLES:
        assert {(out / f"{name}{s}.{f}").exists() for f in ("csv", "md", "tex")
                for s in ("", "-stats")} == {True}
    assert (out / "status.csv").exists()
    assert cli(["tables", "--results", str(results_dir), "--out", str(tmp_path / "o9"),
                "--table", "9", "--format", "csv", "--compare-paper", "--seeds", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "o9").iterdir()) == \
        ["status.csv", "status.md", "table9-stats.csv", "table9.csv"]
    assert cli(["plots", "--results", str(results_dir), "--out", str(out), "--table", "9"]) == 0
    assert (out / "table9_heatmap.png").exists() and (out / "table9_curves.pdf").exists()
    assert cli(["watch", "--results", str(results_dir), "--out", str(tmp_path / "w"),
                "--interval", "0.01", "--max-iterations", "2", "--no-plots"]) == 0
    assert (tmp_path / "w" / "table9.md").exists()
    assert "trials:" in capsys.readouterr().err
    assert cli(["tables", "--results", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["tables", "--results", str(results_dir), "--out", str(out), "--table", "11"]) == 2


def test_python_dash_m_entry_point(results_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis", "status", "--results",
                           str(results_dir)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "table9" in proc.stdout


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real (one-epoch, two-step) trial of the core trainer on the tiny test teacher."""
    from qimera_core.train import train
    cfg = build(teacher="tiny_resnet", eval_data="synthetic", teacher_weights="random", epochs=1,
                steps_per_epoch=2, batch_size=8, warmup_epochs=0, act_range_epochs=1,
                device="cpu")
    out = tmp_path_factory.mktemp("trial")
    train(cfg, out, report=lambda m, checkpoint_dir=None: None)
    return out / "checkpoint"


def test_figure5_and_figure6_from_a_trained_checkpoint(tiny_checkpoint, tmp_path):
    from analysis import plots, samples
    trained = samples.load(tiny_checkpoint)
    fig5 = samples.figure5(trained, classes=4, per_class=20, pair=(1, 3))
    ax_a, ax_b = fig5.axes
    assert len(ax_a.collections) == 8  # real and generated, 4 classes each
    path = [line for line in ax_b.get_lines() if line.get_label().startswith("λ path")]
    assert len(path) == 1 and len(path[0].get_xdata()) == 101
    fig6 = samples.figure6(trained, classes=4, columns=3)
    assert [im.get_array().shape[:2] for ax in fig6.axes for im in ax.get_images()] == \
        [(4 * 9 + 1, 3 * 9 + 1), (4 * 9 + 1, 4 * 9 + 1)]  # 8x8 tiles plus 1-pixel gaps
    paths = plots.save(fig5, tmp_path, "fig5") + plots.save(fig6, tmp_path, "fig6")
    assert all(p.stat().st_size > 5000 for p in paths)
    assert "not a paper setting" in fig5.texts[0].get_text()
    with pytest.raises(AnalysisError, match="pair must be two different classes"):
        samples.figure5(trained, classes=4, pair=(2, 2))


def test_cli_plots_with_checkpoint(results_dir, tiny_checkpoint, tmp_path):
    out = tmp_path / "figs"
    assert cli(["plots", "--results", str(results_dir), "--out", str(out), "--table", "8",
                "--checkpoint", str(tiny_checkpoint), "--classes", "3", "--format", "png"]) == 0
    assert sorted(p.name for p in out.iterdir()) == \
        ["fig5_pca.png", "fig6_samples.png", "table8_dm_layers.png"]
    assert cli(["plots", "--results", str(results_dir), "--out", str(out),
                "--checkpoint", str(tmp_path / "nope")]) == 2


def test_watch_rerenders_only_when_new_files_land(results_dir, tmp_path):
    from analysis.cli import Progress, _watch_step, build_parser
    live = tmp_path / "live"
    out = tmp_path / "view"
    args = build_parser().parse_args(["watch", "--results", str(live), "--out", str(out),
                                      "--no-plots", "--table", "8"])
    quiet = Progress(quiet=True)
    assert _watch_step(args, None, quiet) is None  # directory not there yet: wait, no error
    live.mkdir()
    seen = _watch_step(args, None, quiet)
    assert seen == () and not out.exists()  # empty: still waiting
    for f in results_dir.glob("trials-*.parquet"):
        shutil.copy(f, live)
    seen = _watch_step(args, seen, quiet)
    assert (out / "table8.md").exists()
    (out / "table8.md").unlink()
    assert _watch_step(args, seen, quiet) == seen and not (out / "table8.md").exists()
    results.write([row("table8", C10, 93.0, seed=5, dm_layers=2)], live, "trials")
    _watch_step(args, seen, quiet)
    assert "93.00 (n=1)" in (out / "table8.md").read_text()


def test_curves_filed_under_two_tables_serve_both(tmp_path):
    rows = curve_rows()[:4]  # trial t-a, epochs 1-3 (3 twice)
    again = [{**r, "table": "table8", "finished_at": "2030-01-01T00:00:00+00:00"} for r in rows]
    results.write(rows + again, tmp_path, "curves")
    c = load(tmp_path).curves
    assert len(c) == 3 and set(c["tables"].iloc[0]) == {"table8", "table9"}
    from analysis import plots
    assert [s for s, _ in plots.figure_jobs([], c)] == ["table8_curves", "table9_curves"]
    assert [s for s, _ in plots.figure_jobs([], c, only=["table9"])] == ["table9_curves"]


@pytest.mark.parametrize("name", ["main", "table6", "table7", "table10"])
def test_paper_numbers_come_back_unchanged_in_every_table(name):
    t = tables.TABLE_FUNCTIONS[name](paper.paper_trials(name))
    cols = t.cells[t.cells["kind"] == "ours"]
    ours = cols[cols["status"] != "not run"]          # a column of ours the paper has no number for
    assert cols.loc[cols["status"] == "not run", "paper"].isna().all()
    assert (ours["status"] == "ok").all() and ours["paper"].notna().all()
    assert (ours["mean"] - ours["paper"]).abs().max() < 1e-9
    assert t.top.sum().sum() == t.frame.shape[0]  # one best cell per row (no ties in the paper)


def test_table10_shows_dsg_and_the_papers_qimera_beside_ours_for_every_row():
    from qimera_core.config import TABLE10_PRESETS
    trials = results.to_frame([row("table10", p, 50.0, seed=s) for p in TABLE10_PRESETS
                               for s in range(3)])
    t = tables.build("table10", trials, compare_paper=True)
    expected = {("ImageNet", "InceptionV3", "4w4a"): ("34.89", "73.31"),
                ("ImageNet", "SqueezeNext", "6w6a"): ("60.50", "65.97"),
                ("ImageNet", "ShuffleNet", "6w6a"): ("44.88", "56.16")}
    for r, (dsg, qimera) in expected.items():
        assert cell(t, r, "DSG")[0] == f"{dsg} (quoted)"      # not run: the paper's, quoted
        assert f"paper {qimera}" in cell(t, r, "Qimera")[0]


def test_files_written_before_act_quant_sites_existed_still_load(tmp_path):
    """They hold call_site runs (identical for every teacher that could run then)."""
    old = results.to_frame([row("table10", "imagenet-resnet18-4w4a", 60.0)])
    old.drop(columns=["act_quant_sites"]).to_parquet(tmp_path / "trials-old.parquet", index=False)
    loaded = load(tmp_path)
    assert loaded.trials["act_quant_sites"].tolist() == ["call_site"]
    assert results.read(tmp_path, "trials", ["config_hash", "act_quant_sites"])[
        "act_quant_sites"].tolist() == ["call_site"]
    assert results.read(tmp_path, "trials")["act_quant_sites"].tolist() == ["call_site"]


def test_a_raced_tables_bold_is_one_more_look_of_the_race(tmp_path):
    # DM=1 and 2 are about 1 point below DM=0 on every seed: out of bold at the full alpha,
    # but a raced table's bold is the race's next look (here the 11th: alpha 2.5e-4), where
    # three seeds cannot say it, so that the race and the table spend alpha together
    from analysis import racelog
    from analysis.racelog import GroupLog, RaceLog
    jitter = (0.2, -0.2, 0.0)
    rows = [row("table8", C10, v, seed=s, dm_layers=d)
            for s, base in enumerate((70.0, 72.0, 68.0))
            for d, v in ((0, base), (1, base - 1.0 + jitter[s]),
                         (2, base - 1.01 + jitter[s] / 2))]
    results.write(rows, tmp_path, "trials")
    fixed = tables.build("table8", load(tmp_path)).cells.set_index("dm_layers")
    assert fixed.loc[0, "bold"] and not fixed.loc[1, "bold"] and not fixed.loc[2, "bold"]
    racelog.write(tmp_path / racelog.LOG_NAME.format(table="table8"), RaceLog(
        table="table8", name="t8", plan={}, settings={"alpha": 0.05, "n0": 3}, rounds=[],
        stop="", groups=[GroupLog(group=C10, round=10, stop="", winner="", remeasured={},
                                  todo=0, seeds={})]))
    t = tables.build("table8", load(tmp_path))
    raced = t.cells.set_index("dm_layers")
    assert raced.loc[[0, 1, 2], "bold"].all()
    note = next(n for n in t.notes if n.startswith("▲"))
    assert "at 0.00025, one more look of the race" in note and "at least 95%" in note
