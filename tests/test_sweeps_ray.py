"""Sweeps on a local 2-CPU Ray with the real trainer on the offline digits setting: rows and
curves land, reruns reuse, a crashed trial recovers to the same result, a killed driver keeps every
reported epoch and resumes without rerunning finished trials, and search mode writes rows too."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from qimera_core import results  # noqa: E402
from sweeps import rows, table8, table9  # noqa: E402
from sweeps.launch import main  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
# Final metrics that must not depend on a crash and restore (timings do).
SAME = ["epoch", "top1", "top5", "best_top1", "best_epoch", "start_top1", "teacher_top1",
        "loss_g", "loss_bns", "loss_s", "loss_kd"]


def run(table: str, blocks, tmp: Path, *extra: str, cache: Path) -> int:
    return main(table, blocks, ["--smoke-test", "--storage", str(tmp / "storage"),
                                "--results", str(tmp / "results"), "--cache-dir", str(cache),
                                *extra])


@pytest.fixture(scope="module")
def smoke4(local_ray, digits_cache, tmp_path_factory):
    """Table 9's smoke grid narrowed to p = 0.4: four trials, K in {2, 10, 25, 100}."""
    tmp = tmp_path_factory.mktemp("smoke4")
    assert run("table9", table9.BLOCKS, tmp, "--mix-prob", "0.4", cache=digits_cache) == 0
    return tmp


def test_smoke_sweep_writes_ok_rows_curves_and_tensorboard(smoke4):
    trials = rows.read_trials(smoke4 / "results")
    assert list(trials.columns) == results.columns()
    assert len(trials) == 4 and set(trials["status"]) == {"ok"}
    assert sorted(trials["mix_classes"]) == [2, 10, 25, 100]
    assert set(trials["table"]) == {"table9"} and set(trials["teacher"]) == {"digits_resnet8"}
    assert (trials["epoch"] == trials["epochs"]).all() and trials["top1"].between(0, 100).all()
    assert (trials["device_name"] == "cpu").all() and (trials["gpu_seconds"] == 0).all()
    curves = rows.read_curves(smoke4 / "results")
    assert len(curves) == 4 * 3 and set(curves["trial_id"]) == set(trials["trial_id"])
    assert list(Path(smoke4 / "storage").glob("table9-smoke-*/*/events.out.tfevents.*"))


def test_pack_auto_trains_measured_packs_with_a_row_and_curves_per_member(smoke4,
                                                                         digits_cache):
    trials = rows.read_trials(smoke4 / "results")
    # --pack auto on 2 CPUs measured this kind's pack size (sweeps.calibrate, cached in the
    # cache dir): 1 -> the 4 compatible trials alone; 2 or more -> 2 packs of 2 (the 2 slots)
    from qimera_core import pack
    from qimera_core.config import FIELD_NAMES, TrainConfig
    cfg = TrainConfig.from_dict({k: trials.iloc[0][k] for k in FIELD_NAMES})
    cal = json.loads((digits_cache / "calibration.json").read_text())
    (size,) = [e["size"] for k, e in cal.items() if k.endswith(f"pack {pack.pack_key(cfg)}")]
    want = 2 if size >= 2 else 1
    assert (trials["pack_size"] == want).all() and trials["pack_id"].nunique() == 4 // want
    assert trials["trial_id"].is_unique and trials["config_hash"].is_unique
    for pack_id, members in trials.groupby("pack_id"):
        assert sorted(members["trial_id"]) == ([f"{pack_id}_m0", f"{pack_id}_m1"] if want == 2
                                               else [pack_id])
    curves = rows.read_curves(smoke4 / "results")
    assert curves.groupby("trial_id")["epoch"].apply(list).map([1, 2, 3].__eq__).all()
    assert (curves["pack_size"] == want).all()


def test_growing_the_grid_runs_only_the_new_members(smoke4, digits_cache, tmp_path, capsys):
    shutil.copytree(smoke4 / "results", tmp_path / "results")
    assert run("table9", table9.BLOCKS, tmp_path, "--mix-prob", "0.4", "--seeds", "2",
               cache=digits_cache) == 0
    assert "table9: 8 trials, 4 reused, 4 to run" in capsys.readouterr().out
    trials = rows.read_trials(tmp_path / "results")
    old = rows.read_trials(smoke4 / "results")
    assert len(trials) == 8 and set(trials["status"]) == {"ok"}
    new = trials[~trials["trial_id"].isin(old["trial_id"])]
    # packed as the first four were: --pack auto deals them by the size it measured (and cached)
    assert sorted(new["seed"]) == [1, 1, 1, 1]
    assert sorted(new["pack_size"]) == sorted(old["pack_size"])


def test_rerun_reuses_all_four(smoke4, digits_cache, capsys):
    before = sorted(p.name for p in (smoke4 / "results").iterdir())
    assert run("table9", table9.BLOCKS, smoke4, "--mix-prob", "0.4", cache=digits_cache) == 0
    assert "table9: 4 trials, 4 reused, 0 to run" in capsys.readouterr().out
    assert sorted(p.name for p in (smoke4 / "results").iterdir()) == before


@pytest.mark.slow
def test_trial_killed_once_resumes_to_the_clean_runs_metrics(smoke4, digits_cache, tmp_path):
    # the same four trials in the same packs as smoke4 (--pack auto's measured size, cached),
    # each pack's process killed once
    assert run("table9", table9.BLOCKS, tmp_path, "--mix-prob", "0.4",
               "--fail-once-at-epoch", "2", cache=digits_cache) == 0
    crashed = rows.read_trials(tmp_path / "results").sort_values("config_hash")
    assert len(crashed) == 4 and set(crashed["status"]) == {"ok"}
    packs = crashed["pack_id"].nunique()
    assert len(list((tmp_path / "storage").glob("table9-smoke-*/*/.failed-once"))) == packs, \
        "no crash happened"
    clean = rows.read_trials(smoke4 / "results").sort_values("config_hash")
    assert crashed[SAME].to_dict("records") == clean[SAME].to_dict("records")
    curves = rows.read_curves(tmp_path / "results")
    assert curves.groupby("trial_id")["epoch"].apply(list).map([1, 2, 3].__eq__).all()


def test_failed_trial_is_an_error_row_and_is_not_reused(local_ray, digits_cache, tmp_path,
                                                       capsys):
    args = ("--only", "cifar10-", "--dm-layers", "0", "--fail-once-at-epoch", "1")
    assert run("table8", table8.BLOCKS, tmp_path, *args, "--max-failures", "0",
               cache=digits_cache) == 1
    row = rows.read_trials(tmp_path / "results")
    assert row["status"].item() == "error" and "died" in row["error"].item()
    assert row["epoch"].item() == 1                       # the last report before the crash
    assert list(rows.read_curves(tmp_path / "results")["status"]) == ["error"]
    assert run("table8", table8.BLOCKS, tmp_path, "--only", "cifar10-", "--dm-layers", "0",
               "--dry-run", cache=digits_cache) == 0
    assert "1 trials, 0 reused, 1 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_driver_killed_mid_sweep_then_resume_reruns_nothing_finished(local_ray, digits_cache,
                                                                      tmp_path):
    argv = ["--smoke-test", "--only", "cifar10-", "--storage", str(tmp_path / "storage"),
            "--results", str(tmp_path / "results"), "--cache-dir", str(digits_cache)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    driver = subprocess.Popen([sys.executable, "-m", "sweeps.table8", *argv, "--num-cpus", "1",
                               "--max-concurrent", "1"], cwd=ROOT, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # Kill once one trial has ended and the next has reported an epoch (a live row).
        while not (list((tmp_path / "results").glob("trials-*.parquet"))
                   and list((tmp_path / "results").glob("curves-live-*.parquet"))):
            assert driver.poll() is None and time.monotonic() < deadline, "no trial finished"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)        # the driver and the Ray it started
        driver.wait()
    first = rows.read_trials(tmp_path / "results")
    assert len(first) == 1
    # Every epoch that reached the driver before it died is in --results: Tune's own log of
    # reported results (written after our callback) holds no epoch that the curves lack.
    curves = rows.read_curves(tmp_path / "results")
    live = curves[~curves["trial_id"].isin(first["trial_id"])]
    assert len(live) and set(live["status"]) == {"running"}
    for log_file in (tmp_path / "storage").glob("table8-smoke-*/*/result.json"):
        trial_id = log_file.parent.name.split("--")[0]
        logged = {json.loads(line)["epoch"] for line in log_file.read_text().splitlines()
                  if line.strip() and "epoch" in json.loads(line)}
        assert logged <= set(curves.loc[curves["trial_id"] == trial_id, "epoch"]), trial_id
    done_dir = next((tmp_path / "storage").glob(f"table8-smoke-*/{first['trial_id'].item()}--*"))
    resumed_at = time.time()
    assert main("table8", table8.BLOCKS, [*argv, "--resume"]) == 0
    trials = rows.read_trials(tmp_path / "results")
    assert len(trials) == 5 and set(trials["status"]) == {"ok"}
    assert trials["trial_id"].is_unique and sorted(trials["dm_layers"]) == [0, 1, 2, 4, 8]
    again = trials[trials["trial_id"] == first["trial_id"].item()]
    assert again["finished_at"].item() == first["finished_at"].item()
    newer = [p for p in done_dir.rglob("checkpoint*/*") if p.stat().st_mtime >= resumed_at]
    assert not newer, f"the finished trial trained again: {newer}"
    curves = rows.read_curves(tmp_path / "results")
    assert len(curves) == 5 * 3


def test_search_mode_writes_rows(local_ray, digits_cache, tmp_path):
    from sweeps.search import main as search
    assert search(["--smoke-test", "--num-samples", "2", "--space", "mix_prob=uniform:0.1:0.9",
                   "--storage", str(tmp_path / "s"), "--results", str(tmp_path / "r"),
                   "--cache-dir", str(digits_cache)]) == 0
    trials = rows.read_trials(tmp_path / "r")
    assert len(trials) == 2 and set(trials["table"]) == {"search"}
    assert trials["mix_prob"].between(0.1, 0.9).all() and trials["mix_prob"].is_unique


@pytest.mark.gpu
def test_fractional_gpu_trial_runs_on_cuda(local_ray, digits_cache, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not local_ray.cluster_resources().get("GPU"):
        pytest.skip("needs CUDA and a Ray that sees the GPU")
    assert run("table8", table8.BLOCKS, tmp_path, "--only", "cifar10-", "--dm-layers", "1",
               "--gpus-per-trial", "0.25", cache=digits_cache) == 0
    trial = rows.read_trials(tmp_path / "results")
    assert trial["status"].item() == "ok" and trial["device"].item() == "cuda"
    assert trial["device_name"].item() != "cpu" and trial["gpu_seconds"].item() > 0


def test_running_cluster_is_found_from_env_or_ray_start_marker(monkeypatch, tmp_path):
    from sweeps import experiment

    monkeypatch.setattr(experiment.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert experiment.running_cluster() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")
    assert experiment.running_cluster() == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert experiment.running_cluster() == "10.0.0.1:6379"
