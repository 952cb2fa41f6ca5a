"""--wandb and --mlflow: a real Table 9 smoke sweep on a local Ray with both of Ray Tune's tracker
callbacks attached, offline (W&B in offline mode, MLflow on a local file store), and what each
stored read back: every member's TrainConfig fields, keyed m0/m1 like their trial ids, and every
epoch's metrics, equal to the curves in --results. And bad input: a missing package or an unusable
URI is one line before any work."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from sweeps import rows, table9  # noqa: E402
from sweeps.launch import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAVE = {m: importlib.util.find_spec(m) is not None for m in ("wandb", "mlflow")}
NAME = "tracked"                       # the Tune experiment: W&B's group, MLflow's experiment
# Two seeds of one cell, packed: one Tune trial, so one tracker run holding two members.
SWEEP = ["--smoke-test", "--mix-prob", "0.4", "--mix-classes", "2", "--seeds", "2",
         "--pack", "2", "--name", NAME]
METRICS = ["top1", "top5", "best_top1", "loss_s"]


@pytest.fixture(scope="module")
def tracked(local_ray, digits_cache, tmp_path_factory):
    """One sweep with every installed tracker attached; its folder."""
    if not (HAVE["wandb"] or HAVE["mlflow"]):
        pytest.skip("needs wandb or mlflow: pip install -e '.[trackers]'")
    tmp = tmp_path_factory.mktemp("tracked")
    flags = []
    with pytest.MonkeyPatch.context() as mp:
        if HAVE["wandb"]:
            mp.setenv("WANDB_MODE", "offline")
            mp.setenv("WANDB_DIR", str(tmp))
            mp.setenv("WANDB_SILENT", "true")
            flags += ["--wandb", "qimera-test"]
        if HAVE["mlflow"]:
            mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
            flags += ["--mlflow", (tmp / "mlruns").as_uri()]
        assert main("table9", table9.BLOCKS,
                    [*SWEEP, "--storage", str(tmp / "storage"), "--results", str(tmp / "results"),
                     "--cache-dir", str(digits_cache), *flags]) == 0
    return tmp


@pytest.fixture(scope="module")
def swept(tracked):
    """The sweep's trials and curves rows, as --results has them."""
    trials = rows.read_trials(tracked / "results")
    curves = rows.read_curves(tracked / "results")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    assert trials["pack_id"].nunique() == 1 and set(trials["pack_size"]) == {2}
    return trials, curves


def _members(trials):
    """m0, m1 -> that member's trials row (its trial_id is <pack_id>_m<i>)."""
    return {tid.rpartition("_")[2]: row for tid, row in trials.set_index("trial_id").iterrows()}


def _curve(curves, trial_id, metric):
    return curves[curves["trial_id"] == trial_id].sort_values("epoch")[metric].tolist()


# ---- W&B ----------------------------------------------------------------------------------------
def _wandb_records(path: Path):
    """The records of an offline run's transaction log (`run-<id>.wandb`): W&B's LevelDB-style
    log of protobuf Records (7-byte file header, 32 KiB blocks, chunks with a 7-byte header:
    CRC, length, type FULL/FIRST/MIDDLE/LAST). wandb has no public reader for offline runs."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:                                  # block padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                             # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _wandb_run(path: Path) -> tuple[dict, list[dict], dict]:
    """(config, history rows, run record fields) of an offline run."""
    config, history, run = {}, [], {}
    for rec in _wandb_records(path):
        kind = rec.WhichOneof("record_type")
        items = (rec.run.config.update if kind == "run" else rec.config.update if kind == "config"
                 else rec.history.item if kind == "history" else ())
        got = {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in items}
        if kind == "history":
            history.append(got)
        else:
            config.update(got)
        if kind == "run":
            run = {"id": rec.run.run_id, "project": rec.run.project, "group": rec.run.run_group,
                   "tags": list(rec.run.tags)}
    return config, history, run


@pytest.mark.integration
@pytest.mark.skipif(not HAVE["wandb"], reason="wandb is not installed (the trackers extra)")
def test_wandb_offline_run_has_each_members_config_and_epochs(tracked, swept):
    trials, curves = swept
    (log,) = (tracked / "wandb").glob("offline-run-*/run-*.wandb")   # one Tune trial, one run
    config, history, run = _wandb_run(log)
    pack_id = trials["pack_id"].iloc[0]
    assert run == {"id": pack_id, "project": "qimera-test", "group": NAME, "tags": ["table9"]}
    members = _members(trials)
    assert set(config["pack"]["configs"]) == set(members) == {"m0", "m1"}
    for m, row in members.items():
        got = config["pack"]["configs"][m]
        for field in ("mix_prob", "mix_classes", "seed", "method", "teacher", "w_bits", "epochs"):
            assert got[field] == row[field], (m, field)
    assert sorted(c["seed"] for c in config["pack"]["configs"].values()) == [0, 1]
    # One history row per epoch, stepped by Tune's training_iteration; the members' metrics
    # under members/m<i>/, equal to the curves --results holds.
    history = [h for h in history if "epoch" in h]
    assert [h["_step"] for h in history] == [h["epoch"] for h in history] == [1, 2, 3]
    for m, row in members.items():
        for metric in METRICS:
            assert [h[f"members/{m}/{metric}"] for h in history] == pytest.approx(
                _curve(curves, row.name, metric), nan_ok=True), (m, metric)
    assert [h["top1"] for h in history] == pytest.approx(
        [(a + b) / 2 for a, b in zip(*(_curve(curves, r.name, "top1")
                                      for r in members.values()), strict=True)])


# ---- MLflow -------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.skipif(not HAVE["mlflow"], reason="mlflow is not installed (the trackers extra)")
def test_mlflow_file_store_has_each_members_params_and_epochs(tracked, swept, monkeypatch):
    from mlflow import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    trials, curves = swept
    client = MlflowClient(tracking_uri=(tracked / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["table"] == "table9"
    assert run.data.tags["trial_name"].endswith(trials["pack_id"].iloc[0])
    params = run.data.params
    members = _members(trials)
    for m, row in members.items():
        for field in ("mix_prob", "mix_classes", "seed", "method", "teacher", "w_bits", "epochs"):
            assert params[f"pack/configs/{m}/{field}"] == str(row[field]), (m, field)
    assert sorted(params[f"pack/configs/{m}/seed"] for m in members) == ["0", "1"]
    for m, row in members.items():
        for metric in METRICS:
            hist = sorted(client.get_metric_history(run.info.run_id, f"members/{m}/{metric}"),
                          key=lambda x: x.step)
            assert [h.step for h in hist] == [1, 2, 3], (m, metric)
            assert [h.value for h in hist] == pytest.approx(_curve(curves, row.name, metric),
                                                            nan_ok=True), (m, metric)
    epochs = client.get_metric_history(run.info.run_id, "epoch")
    assert sorted((h.step, h.value) for h in epochs) == [(1, 1.0), (2, 2.0), (3, 3.0)]


# ---- bad input ----------------------------------------------------------------------------------
def _one_line_error(capsys, argv, says, tmp_path):
    with pytest.raises(SystemExit) as e:
        main("table9", table9.BLOCKS, ["--smoke-test", "--dry-run", "--results",
                                       str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1, err
    assert "error:" in lines[0] and says in lines[0] and "Traceback" not in err, lines[0]
    assert not (tmp_path / "r").exists()                       # before any work


@pytest.mark.parametrize("flag", ["--wandb", "--mlflow"])
def test_a_missing_package_names_the_extra(monkeypatch, capsys, tmp_path, flag):
    module = flag[2:]
    monkeypatch.setitem(sys.modules, module, None)      # find_spec: not installed
    _one_line_error(capsys, [flag, "x"], f"{module} is not installed; {flag} needs the trackers "
                    "extra: pip install -e \".[trackers]\"", tmp_path)


@pytest.mark.skipif(not HAVE["mlflow"], reason="mlflow is not installed (the trackers extra)")
@pytest.mark.parametrize(("uri", "says"), [
    ("ftp://host/x", "MLflow cannot use 'ftp://host/x': it has no tracking store for ftp://"),
    ("file://host/x", "'file://host/x' names host 'host'; a file store URI is file:///"),
    ("{T}/text.txt", "text.txt is a file; a file store is a folder"),
    ("file://{T}/mlruns", "refuses file stores (file://{T}/mlruns) unless "
                          "MLFLOW_ALLOW_FILE_STORE=true"),
    ("http://127.0.0.1:{port}", "MLflow cannot use 'http://127.0.0.1:{port}': API request"),
], ids=["scheme", "host", "file", "file-store-off", "no-server"])
def test_an_unusable_mlflow_uri_is_one_line(monkeypatch, capsys, tmp_path, uri, says):
    import socket
    with socket.socket() as s:                          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "text.txt").write_text("not a store\n")
    fill = {"{T}": str(tmp_path), "{port}": str(port)}
    for k, v in fill.items():
        uri, says = uri.replace(k, v), says.replace(k, v)
    _one_line_error(capsys, ["--mlflow", uri], says, tmp_path)


@pytest.mark.skipif(not HAVE["wandb"], reason="wandb is not installed (the trackers extra)")
def test_wandb_without_a_key_is_one_line_as_a_user_runs_it(tmp_path):
    """A real process with no W&B key anywhere (a bare HOME, no WANDB_*): one line, exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), NETRC=str(tmp_path / "none"))
    p = subprocess.run([sys.executable, "-m", "sweeps.table9", "--smoke-test", "--dry-run",
                        "--results", str(tmp_path / "r"), "--wandb", "qimera"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "W&B has no API key here" in lines[0] and "WANDB_MODE=offline" in lines[0], lines[0]
