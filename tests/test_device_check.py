"""bench/device_check.sh on a machine without CUDA: it says why it skips, writes its JSON and
summary, and exits 0 (the GPU path itself runs only on a lent GPU). Its parts
(bench/device_probe.py) run here with --device cpu --quick: tiny sizes, a test of each part's
logic and of the JSON keys the summary reads, not of any speed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import device_probe as dp  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script "
                    "would run its GPU measurements")
def test_device_check_without_cuda_skips_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DEVICE", "QUICK")}
    out = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    d = json.loads((tmp_path / "device_check.json").read_text())
    assert d["skipped"].startswith("no CUDA device") and d["env"]["torch"] == torch.__version__
    assert d["env"]["tf32_cudnn_conv"] is True and d["env"]["tf32_matmul"] is False
    assert "skipped: no CUDA device" in (tmp_path / "summary.txt").read_text()
    assert not (tmp_path / "pair.json").exists()        # nothing measured


@pytest.fixture
def setup(tmp_path):
    threads = torch.get_num_threads()
    yield dp.Setup(torch.device("cpu"), quick=True, out=tmp_path, threads=1)
    torch.set_num_threads(threads)


def _written(setup, part):
    return json.loads((setup.out / f"{part}.json").read_text())


def test_pair_compares_a_pack_of_two_with_two_separate_steps(setup):
    r = dp.pair(setup)
    assert r == _written(setup, "pair")
    assert r["packed_ms_per_member"] > 0 and r["separate_ms_per_member"] > 0
    assert r["speedup"] == pytest.approx(r["separate_ms_per_member"] / r["packed_ms_per_member"])
    assert r["packed_peak_mib"] is None             # CPU: no CUDA peak


def test_convs_time_grouped_against_a_loop_of_the_same_work(setup):
    r = dp.convs(setup)
    assert r["modes"] == ["fp32"] and r["sizes"] == [2]  # CPU: fp32 only
    assert {row["layer"] for row in r["rows"]} == {"resnet20 stem", "resnet20 stage1",
                                                   "generator conv3"}
    for row in r["rows"]:
        assert row["grouped_ms"] > 0 and row["loop_ms"] > 0
        assert row["grouped_over_loop"] == pytest.approx(row["loop_ms"] / row["grouped_ms"])
    assert torch.backends.cudnn.allow_tf32 is True     # the flags are put back


def test_grouped_conv_is_the_loop_of_convs():
    """What the conv benchmark times as one: groups=N over stacked channels is N convs."""
    torch.manual_seed(0)
    n, cin, cout = 3, 4, 5
    xs, ws = torch.randn(n, 2, cin, 6, 6), torch.randn(n, cout, cin, 3, 3)
    grouped = torch.nn.functional.conv2d(xs.transpose(0, 1).reshape(2, n * cin, 6, 6),
                                         ws.reshape(n * cout, cin, 3, 3), None, 2, 1, 1, n)
    loop = torch.cat([torch.nn.functional.conv2d(x, w, None, 2, 1)
                      for x, w in zip(xs, ws, strict=True)], 1)
    torch.testing.assert_close(grouped, loop)


def test_curve_has_a_row_per_size_and_a_reason_it_stopped(setup):
    r = dp.curve(setup, budget_s=1e6)    # (a loaded machine must not stop it early)
    assert [row["n"] for row in r["rows"]] == [1, 2] and r["rows"][0]["x_one"] == 1.0
    assert r["stop"] == "largest size tried (2)"
    row = r["rows"][1]
    assert row["member_steps_per_s"] == pytest.approx(2 / (row["step_ms"] / 1e3))


def test_curve_stops_before_a_size_past_its_time_budget(setup, monkeypatch):
    """Steps of 10 ms per member (no real trial): after N = 1, N = 2's would pass 50 ms."""
    monkeypatch.setattr(dp.Setup, "trial", lambda self, n: n)
    monkeypatch.setattr(dp, "main_step", lambda n: lambda: time.sleep(0.01 * n))
    r = dp.curve(setup, budget_s=0.05)
    assert [row["n"] for row in r["rows"]] == [1]
    assert r["stop"] == "N = 2 would pass the part's time budget of 0.05 s"
    assert r == _written(setup, "curve")


def test_profile_counts_calls_and_names_the_top_ops(setup):
    r = dp.profile(setup)
    assert r["n"] == 2 and r["aten_calls_per_step"] > 100 and r["wall_ms_per_step"] > 0
    assert r["kernels_per_step"] is None and r["gpu_busy_fraction"] is None   # CPU
    assert 1 <= len(r["top_ops_cpu"]) <= 10


def test_calibrate_reports_the_table_and_its_choice(setup, monkeypatch):
    monkeypatch.setenv("QIMERA_CALIBRATION", str(setup.out / "cache.json"))
    r = dp.calibrate(setup)
    assert r["size"] == 1 and r["rows"][0]["n"] == 1 and "pack calibration" in r["table"]
    assert (setup.out / "cache.json").exists()


def test_train_runs_the_cli_and_reads_its_result(setup):
    r = dp.train_run(setup, data=setup.out / "no-such-folder")
    assert r["rc"] == 0 and r["status"] == "ok" and r["steps"] == 2
    assert not r["real_teacher_and_data"] and "lacks the akamaster" in r["note"]
    assert set(r["final"]) >= {"teacher_top1", "top1"} and r["steps_per_s_training"] > 0
    assert "--teacher-weights" in r["argv"] and "random" in r["argv"]


def test_summary_tables_every_part_and_the_headline_ratios(tmp_path):
    """The summary from hand-made part files: the pack-of-8 target against one trial."""
    def put(name, d):
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    put("env", {"env": {"gpu": "H100", "torch": "2.x", "cuda_build": "13.0", "cudnn": 9}})
    put("pair", {"packed_ms_per_member": 10.0, "separate_ms_per_member": 15.0, "speedup": 1.5})
    rows = [{"n": n, "step_ms": 20.0 * (1 + n / 4), "ms_per_member": 20.0 * (1 + n / 4) / n,
             "member_steps_per_s": n / (0.02 * (1 + n / 4)), "peak_mib": 500.0 * n,
             "peak_mib_per_member": 500.0} for n in (1, 2, 4, 8)]
    for r in rows:
        r["x_one"] = r["member_steps_per_s"] / rows[0]["member_steps_per_s"]
    put("curve", {"rows": rows, "stop": "largest size tried (8)"})
    put("procs", {"procs": 4, "alone_steps_per_s": 40.0, "procs_trial_steps_per_s": 80.0})
    put("compile", {"backend": "inductor", "n": 8, "eager_ms_per_step": 60.0})
    put("synthesis", {"method": "zeroq", "teacher": "resnet18", "batch": 64, "seeds": 4,
                      "lone_images_per_s": 100.0, "packed_images_per_s": 250.0,
                      "speedup": 2.5})
    (tmp_path / "parts.jsonl").write_text(
        '{"part": "pair", "rc": 0, "seconds": 12, "why": ""}\n'
        '{"part": "compile", "rc": 124, "seconds": 90, "why": "timed out after 90 s"}\n'
        '{"part": "train", "rc": null, "seconds": 0, "why": "skipped: under 20 s left"}\n')
    d = dp.summarize(tmp_path)
    text = (tmp_path / "summary.txt").read_text()
    assert d == json.loads((tmp_path / "device_check.json").read_text())
    h = d["headline"]
    assert h["pack8_x_one"] == pytest.approx(8 / 3 * 1.25) and h["pack8_target_met"] is False
    assert h["procs4_x_one"] == 2.0 and h["pair_speedup"] == 1.5
    assert "target (pack of 8 >= 4x one trial): NOT met" in text
    assert "timed out after 90 s" in text and "skipped: under 20 s left" in text
    assert "compilation did not finish (timeout)" in text
    assert d["parts"]["convs"] is None and "no JSON written" in text
    assert h["synthesis_packed_x_lone"] == 2.5 and "packed 250 image-iterations/s (2.50x)" in text


@pytest.mark.slow
def test_procs_run_processes_at_a_barrier(setup):
    r = dp.procs(setup)
    assert r["procs"] == 2 and len(r["procs_each_steps_per_s"]) == 2
    assert r["procs_trial_steps_per_s"] > 0 and r["alone_steps_per_s"] > 0


@pytest.mark.slow
def test_compile_times_eager_then_compiled(setup):
    r = dp.compile_part(setup, backend="eager")      # dynamo's capture, no inductor
    assert r["eager_ms_per_step"] > 0 and "error" not in r, r.get("error")
    assert r["compiled_ms_per_step"] > 0 and r["graphs"] >= 1 and r["graph_breaks"] == 0
