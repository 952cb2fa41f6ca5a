"""Live rows and the live page: per-epoch curve rows while a trial runs, the page's JSON state
for finished, running, pending, error and diverged trials, and the HTTP server's limits."""

from __future__ import annotations

import argparse
import http.client
import json
import math
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis import pagestate, serve
from analysis.cli import build_parser
from analysis.load import load
from qimera_core import results
from qimera_core.config import build
from sweeps import rows
from sweeps.page import add_page_flags

RUN_INFO = {"git_sha": "test", "versions": "{}"}


def cfg(k: int, p: float, seed: int = 0):
    return build("digits-smoke", mix_classes=k, mix_prob=p, seed=seed)


def metrics(epoch: int, top1: float) -> dict:
    return {"epoch": epoch, "top1": top1, "best_top1": top1 + 1.0, "loss_s": 1.0 / epoch,
            "loss_g": 2.0, "loss_bns": 0.5, "wall_time_s": 10.0 * epoch,
            "time_total_s": 10.0 * epoch}


def finish_trial(d: Path, trial_id: str, c, last: dict, status: str, error: str = "") -> None:
    """What the sweep's callback writes when a trial ends: its curves, then its trials row."""
    reports = [metrics(e, last["top1"] - 3 + e) for e in range(1, int(last["epoch"]))] + [last]
    results.write(rows.curve_rows("table9", trial_id, c, reports, status=status), d, rows.CURVES)
    results.write([results.make_row(c, last, table="table9", trial_id=trial_id, status=status,
                                    error=error, run_info=RUN_INFO)], d, rows.TRIALS)
    rows.drop_live_curves(d, trial_id)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """A sweep caught mid-way: 2 ok, 1 error, 1 diverged, 1 running (epoch 2 of 3), 1 pending."""
    d = tmp_path_factory.mktemp("live")
    planned = [cfg(2, 0.1), cfg(2, 0.1, seed=1), cfg(2, 0.4), cfg(10, 0.1), cfg(10, 0.4),
               cfg(25, 0.1)]
    rows.write_plan("table9", d, planned)
    for e in (1, 2, 3):                            # live rows first, as the callback writes them
        rows.write_live_curve("table9", d, "t-ok0", planned[0], metrics(e, 40.0 + e))
    finish_trial(d, "t-ok0", planned[0], metrics(3, 43.0), "ok")
    finish_trial(d, "t-ok1", planned[1], metrics(3, 45.0), "ok")
    finish_trial(d, "t-err", planned[2], metrics(1, 20.0), "error",
                 "Traceback ...\nRuntimeError: CUDA out of memory")
    finish_trial(d, "t-div", planned[3], {**metrics(2, 10.0), "diverged": 1.0}, "diverged")
    for e in (1, 2):
        rows.write_live_curve("table9", d, "t-run", planned[4], metrics(e, 30.0 + e))
    return d


def by_position(state: dict) -> dict[tuple[str, str], dict]:
    (table,) = state["tables"]
    return {(c["row"].rsplit("K=", 1)[1], c["column"]): c for c in table["cells"]}


# ---- live rows --------------------------------------------------------------------------------
def test_live_rows_are_merged_into_one_file_when_the_trial_ends(results_dir):
    names = [p.name for p in results_dir.glob("curves-*.parquet")]
    live = [n for n in names if n.startswith("curves-live-")]
    assert sorted(n.split("-e")[0] for n in live) == ["curves-live-t-run"] * 2
    assert len(names) - len(live) == 4               # one final file per ended trial
    curves = rows.read_curves(results_dir)
    assert curves.groupby("trial_id")["epoch"].apply(list).to_dict() == {
        "t-div": [1, 2], "t-err": [1], "t-ok0": [1, 2, 3], "t-ok1": [1, 2, 3], "t-run": [1, 2]}
    ok0 = curves[curves["trial_id"] == "t-ok0"]
    assert set(ok0["status"]) == {"ok"} and list(ok0["top1"]) == [41.0, 42.0, 43.0]
    assert set(curves.loc[curves["trial_id"] == "t-run", "status"]) == {"running"}


def test_analysis_tells_running_trials_from_finished_ones(results_dir):
    res = load(results_dir)
    assert list(res.running["trial_id"]) == ["t-run"] and res.running["epoch"].item() == 2
    assert sorted(res.trials["trial_id"]) == ["t-div", "t-err", "t-ok0", "t-ok1"]


def test_a_long_running_trial_keeps_few_live_files(tmp_path):
    c = cfg(2, 0.1)
    for e in range(1, 21):
        rows.write_live_curve("table9", tmp_path, "t-long", c, metrics(e, 30.0 + e))
        assert len(list(tmp_path.glob("curves-live-*.parquet"))) <= rows.LIVE_FILES_MAX
    rows.write_live_curve("table9", tmp_path, "t-long", c, metrics(20, 99.0))  # replayed epoch
    curves = rows.read_curves(tmp_path)
    assert list(curves["epoch"]) == list(range(1, 21)) and set(curves["status"]) == {"running"}
    assert curves["top1"].iloc[-1] == 99.0 and curves["top1"].iloc[0] == 31.0
    assert load(tmp_path).running["epoch"].item() == 20


def test_a_file_gone_between_glob_and_read_is_skipped(tmp_path):
    assert results._read_file(tmp_path / "curves-live-x-e0001-0.parquet", None) is None


def test_results_callback_writes_each_reported_epoch_at_once(tmp_path):
    pytest.importorskip("ray")
    from sweeps.trial import pack_params
    from sweeps.writer import ResultsWriter

    c = cfg(2, 0.1)
    trial = SimpleNamespace(trial_id="abc_00000",
                            config={"pack": pack_params([c.to_dict()], 0.5, "")})
    writer = ResultsWriter("table9", tmp_path)
    for e in (1, 2):
        writer.on_trial_result(e, [trial], trial, {"epoch": e, "members": [metrics(e, 50.0)],
                                                   "device_name": "cpu"})
        curves = rows.read_curves(tmp_path)
        assert list(curves["epoch"]) == list(range(1, e + 1))
    assert set(curves["status"]) == {"running"} and list(curves["gpu_seconds"]) == [5.0, 10.0]
    assert writer.get_state()["curves"]["abc_00000"][0].keys() == {1, 2}  # kept for the end


# ---- the page's data --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def state(results_dir) -> dict:
    return pagestate.page_state(results_dir, storage="/data/sweeps")


def test_state_has_every_kind_of_cell(state):
    cells = by_position(state)
    assert cells[("2", "0.10")]["state"] == "finished"
    assert (cells[("2", "0.10")]["n"], cells[("2", "0.10")]["mean"]) == (2, 44.0)
    assert cells[("2", "0.10")]["best_mean"] == 45.0
    assert cells[("2", "0.40")]["state"] == "error"
    assert "CUDA out of memory" in cells[("2", "0.40")]["reason"]
    assert cells[("10", "0.10")]["state"] == "diverged"
    assert "diverged" in cells[("10", "0.10")]["reason"]
    run = cells[("10", "0.40")]
    assert run["state"] == "running"
    assert run["live"] == [{"trial_id": "t-run", "epoch": 2.0, "epochs": 3, "top1": 32.0}]
    assert cells[("25", "0.10")]["state"] == "pending"
    notes = state["tables"][0]["notes"]             # about the data; cells explain themselves
    assert any(n.startswith("NOT PAPER RESULTS") for n in notes)
    assert not any("pending" in n or "running" in n for n in notes)
    assert {c["state"] for k, c in cells.items() if k not in {
        ("2", "0.10"), ("2", "0.40"), ("10", "0.10"), ("10", "0.40"), ("25", "0.10")}} \
        == {"not run"}


def test_state_progress_counts_eta_and_cost(state):
    p = state["progress"]
    assert p["counts"] == {"ok": 2, "error": 1, "diverged": 1, "running": 1, "pending": 1}
    assert p["total"] == 6 and state["live"] is True
    assert p["mean_trial_s"] == pytest.approx(22.5)   # wall_time_s of the ended trials
    # 1 pending + 1/3 of the running trial left, at the measured mean, one trial at a time
    assert p["eta_s"] == pytest.approx((1 + 1 / 3) * 22.5, rel=1e-3)
    assert p["gpu_hours"] == 0.0 and p["gpu_hours_projected"] == 0.0
    assert any("tensorboard --logdir /data/sweeps" in link["command"] for link in state["links"])


def test_state_is_strict_json(state):
    json.dumps(state, allow_nan=False)


def test_a_finished_directory_is_static(tmp_path):
    finish_trial(tmp_path, "t-1", cfg(2, 0.1), metrics(3, 40.0), "ok")
    s = pagestate.page_state(tmp_path)
    assert s["live"] is False and s["progress"]["eta_s"] == 0.0
    assert by_position(s)[("2", "0.10")]["state"] == "finished"


def test_a_sweep_that_has_only_its_plan_shows_pending_cells(tmp_path):
    rows.write_plan("table9", tmp_path, [cfg(2, 0.1), cfg(10, 0.1)])
    s = pagestate.page_state(tmp_path)
    assert s["error"] == "" and s["live"] is True
    assert {c["state"] for c in by_position(s).values()} == {"pending"}
    assert s["progress"]["counts"] == {"pending": 2} and s["progress"]["eta_s"] is None


def test_an_empty_directory_says_what_to_do(tmp_path):
    s = pagestate.page_state(tmp_path)
    assert s["tables"] == [] and "python -m sweeps.table9" in s["error"]


def test_cell_trials_give_curves_per_seed(results_dir):
    trials = pagestate.cell_trials(results_dir, [cfg(10, 0.4).config_hash])
    assert [(t["trial_id"], t["status"], t["epoch"]) for t in trials] == \
        [("t-run", "running", [1, 2])]
    assert trials[0]["top1"] == [31.0, 32.0] and trials[0]["loss_s"] == [1.0, 0.5]


# ---- the server -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(results_dir):
    srv = serve.make_server(results_dir, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path: str) -> tuple[int, bytes, str]:
    """A raw GET: the path goes out as written (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, r.getheader("Content-Type", "")


def test_server_binds_loopback_by_default(server):
    assert server.server_address[0] == "127.0.0.1"
    assert build_parser().parse_args(["serve", "--results", "r"]).host == "127.0.0.1"
    p = argparse.ArgumentParser()
    add_page_flags(p)
    assert p.parse_args([]).serve_host == "127.0.0.1"


def test_any_other_host_warns_what_is_exposed(results_dir, capsys):
    srv = serve.make_server(results_dir, host="127.0.0.2", port=0)
    srv.server_close()
    out = capsys.readouterr().out
    assert "WARNING: --host 127.0.0.2 exposes" in out and str(results_dir) in out


def test_busy_port_is_a_clear_error(results_dir, server):
    with pytest.raises(serve.AnalysisError, match="pass a free --port"):
        serve.make_server(results_dir, port=server.server_address[1])


def test_page_scripts_and_data_are_served_from_this_server(server):
    status, html, kind = get(server, "/")
    assert status == 200 and kind.startswith("text/html")
    assert b'<script src="/plotly.min.js">' in html and b"http" not in html.split(b"<body>")[0]
    status, js, _ = get(server, "/dashboard.js")
    assert status == 200 and b"https://" not in js and b"http://" not in js
    status, plotly_js, kind = get(server, "/plotly.min.js")
    assert status == 200 and kind.startswith("text/javascript") and len(plotly_js) > 1_000_000
    status, body, kind = get(server, "/api/state")
    assert status == 200 and kind == "application/json"
    cells = by_position(json.loads(body))
    assert cells[("10", "0.40")]["state"] == "running"
    status, body, _ = get(server, f"/api/trials?table=table9&cell={cells[('2', '0.40')]['id']}")
    trial = json.loads(body)["trials"][0]
    assert status == 200 and "CUDA out of memory" in trial["error"]


def test_downloads_are_the_tables_files(server, results_dir):
    status, body, _ = get(server, "/download/table9.csv")
    header = body.decode().splitlines()[0].split(",")
    assert status == 200 and {"mean", "std", "n", "paper", "delta", "delta_final"} <= set(header)
    status, body, _ = get(server, "/download/table9.tex")
    assert status == 200 and b"\\begin{table}" in body and b"\\toprule" in body
    assert get(server, "/download/table9.exe")[0] == 404
    assert get(server, "/download/table1.csv")[0] == 404


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/download/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
    "/download/..%2f..%2f..%2fetc%2fpasswd", "/static/dashboard.js/../../serve.py",
    "/analysis/serve.py", "/dashboard.html", "//etc/passwd", "/api/trials?table=../x&cell=1",
    "/.parquet", "/trials-0.parquet"])
def test_path_traversal_and_other_files_are_refused(server, path):
    status, body, _ = get(server, path)
    assert status == 404 and b"root:" not in body and b"import" not in body


def test_nan_free_numbers():
    assert pagestate.num(math.nan) is None and pagestate.num(1.23456) == 1.2346
