"""Every bench script runs on tiny sizes: its flags parse, its code paths run and it prints its
table, in seconds. No speed is checked, only that the scripts still work after the code they
time has changed (bench/racing.py, bench/flops.py and bench/device_check.sh with
bench/device_probe.py have their own tests: test_racing_bench.py, test_bench_flops.py and
test_device_check.py).

A script runs in this process as `python bench/NAME.py ARGS` runs it (bench/ on sys.path,
`__name__ == "__main__"`), so torch is imported once for the whole file; scripts that start
processes of their own (digits_seeds.py, table10_presets.py) still do. What needs a GPU skips
without one, and what cannot be made quick (it starts Ray) is marked slow, saying why.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture
def bench(monkeypatch, capsys):
    """bench(NAME, *ARGS) -> what `python bench/NAME ARGS` prints, run in this process; the
    torch thread count it may set is put back."""
    def run(name: str, *args: str) -> str:
        monkeypatch.syspath_prepend(str(BENCH))
        monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
        threads = torch.get_num_threads()
        try:
            runpy.run_path(str(BENCH / name), run_name="__main__")
        finally:
            torch.set_num_threads(threads)
        return capsys.readouterr().out
    return run


def test_device_env_writes_the_environment_and_says_why_it_skips(bench, tmp_path):
    out = tmp_path / "env.json"
    with pytest.raises(SystemExit) as e:
        bench("device_env.py", str(out))
    d = json.loads(out.read_text())
    assert d["env"]["torch"] == torch.__version__
    if torch.cuda.is_available():
        assert e.value.code == 0 and d["env"]["gpus"] >= 1
    else:
        assert e.value.code == 3 and d["skipped"].startswith("no CUDA device")


def test_digits_seeds_runs_each_seed_once(bench, tmp_path, digits_cache):
    tiny = ["--cache-dir", str(digits_cache), "--epochs", "2", "--steps-per-epoch", "2",
            "--warmup-epochs", "1", "--act-range-epochs", "1", "--lr-milestones", "1",
            "--batch-size", "8", "--eval-limit", "50", "--num-threads", "1"]
    first = bench("digits_seeds.py", "--seeds", "3", "--out", str(tmp_path), "--", *tiny)
    assert "seed 3: teacher_top1" in first and "(mean ± std over seeds)" in first
    result = tmp_path / "seed3" / "result.json"
    stamp = result.stat().st_mtime_ns
    again = bench("digits_seeds.py", "--seeds", "3", "--out", str(tmp_path), "--", *tiny)
    assert result.stat().st_mtime_ns == stamp            # a finished seed is read, not rerun
    assert again.splitlines()[1:] == first.splitlines()[1:]


def test_live_rows(bench):
    out = bench("live_rows.py", "--trials", "2", "--epochs", "10", "--repeat", "1")
    assert "2 trials x 10 epochs = 20 curve rows" in out
    assert out.count("read_curves,") == 3 and "page_state while all 2 trials run" in out


def test_pack_routes(bench):
    out = bench("pack_routes.py", "--threads", "1", "--sizes", "1,2", "--reps", "1")
    assert "N= 1" in out and "N= 2" in out and "grouped" in out


def test_step_time_quick(bench):
    out = bench("step_time.py", "--quick")
    assert "device=cpu" in out and "batch=4" in out
    assert "main-phase step" in out and "generator_fwd" in out and "matmul 256^2" in out


def test_step_time_quick_times_another_methods_step(bench):
    out = bench("step_time.py", "--quick", "--method", "zaq")
    assert "method=zaq" in out and "main-phase step" in out


def test_step_time_refuses_too_few_steps(bench, capsys):
    with pytest.raises(SystemExit):
        bench("step_time.py", "--steps", "1")
    assert "--steps must be >= 2" in capsys.readouterr().err


def test_pack_throughput_direct_quick(bench, monkeypatch, digits_cache):
    monkeypatch.setenv("QIMERA_BENCH_CACHE", str(digits_cache))
    out = bench("pack_throughput.py", "direct", "--quick")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [r[0] for r in rows] == ["1", "2"] and rows[0][4] == "1.00"   # x unpacked


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fractional shares one CUDA GPU "
                    "between processes (--gpus-per-trial 0.25's baseline): needs CUDA")
def test_pack_throughput_fractional_on_a_gpu():
    out = subprocess.run([sys.executable, str(BENCH / "pack_throughput.py"), "fractional",
                          "--procs", "2", "--steps", "2", "--start-in", "20"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 processes of one CIFAR trial on one GPU" in out.stdout


@pytest.mark.slow
def test_pack_throughput_tune_commands_plan(bench):
    """Slow (30-60 s): `tune` runs three sweep commands in processes of their own, each
    importing Ray; --dry-run checks that they parse and plan, without Ray's start."""
    out = bench("pack_throughput.py", "tune", "--dry-run", "--epochs", "1",
                "--steps-per-epoch", "1")
    assert out.count("24 trials in") == 3


def test_table10_presets_one_preset(bench):
    out = bench("table10_presets.py", "--preset", "imagenet-shufflenet-6w6a", "--batch-size",
                "2", "--steps", "1", "--threads", "2")
    assert "imagenet-shufflenet-6w6a" in out and "peak RSS" in out


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_overhead(tmp_path, digits_cache):
    """Slow (2-4 minutes on 2 cores): what it measures is Ray's start and Tune's per-trial
    cost, so it starts a local Ray and runs four sweeps of the smallest size it allows
    (3 trials)."""
    out = subprocess.run([sys.executable, str(BENCH / "sweep_overhead.py"), "--trials", "3",
                          "--cache-dir", str(digits_cache)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "direct train()" in out.stdout and "Tune, fresh worker per trial" in out.stdout


def test_synthesis_bench_times_lone_and_packed_seeds(bench, tmp_path):
    out = bench("synthesis.py", "--teacher", "tiny_resnet", "--seeds", "2", "--iters", "2",
                "--batch-size", "4", "--threads", "1", "--json", str(tmp_path / "s.json"))
    assert "packed / lone throughput" in out
    row = json.loads((tmp_path / "s.json").read_text())
    assert row["seeds"] == 2 and row["lone_s_per_batch"] > 0 and row["speedup"] > 0


SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "resnet20_cifar10_akamaster.th").is_file(),
                    reason="needs ../shared/data (akamaster checkpoint, CIFAR-10 npz)")
def test_ptq_fidelity_bench_one_tiny_setting(bench, tmp_path, monkeypatch):
    # the bench's own schedule is ZeroQ's 500 iterations; here 2, through the same path
    from qimera_core import config
    real = config.build
    monkeypatch.setattr(config, "build", lambda *a, **k: real(*a, **{**k, "synth_iters": 2,
                                                                   "eval_limit": 100}))
    out = bench("ptq_fidelity.py", "--seeds", "1", "--bits", "8", "--settings",
                "zeroq official", "--json", str(tmp_path / "f.json"))
    assert "zeroq official" in out and "8w8a" in out
    row = json.loads((tmp_path / "f.json").read_text())[0]
    assert row["teacher"] > 80 and len(row["top1"]) == 1


@pytest.mark.skipif(not (SHARED / "resnet20_cifar10_akamaster.th").is_file(),
                    reason="needs ../shared/data (akamaster checkpoint, CIFAR-10 npz)")
def test_generator_fidelity_bench_one_tiny_schedule(bench, tmp_path, monkeypatch):
    from qimera_core import config
    real = config.build
    monkeypatch.setattr(config, "build", lambda *a, **k: real(*a, **{**k, "eval_limit": 64,
                                                                   "batch_size": 8}))
    args = ("generator_fidelity.py", "--seeds", "1", "--methods", "adadfq,zaq", "--epochs", "1",
            "--steps-per-epoch", "1", "--work-dir", str(tmp_path / "work"))
    out = bench(*args, "--json", str(tmp_path / "g.json"))
    assert "adadfq" in out and "zaq" in out
    rows = json.loads((tmp_path / "g.json").read_text())
    assert [r["method"] for r in rows] == ["adadfq", "zaq"] and rows[0]["teacher"] > 80
    assert (tmp_path / "work" / "zaq" / "checkpoint" / "state.pt").is_file()
    # run again with the work dir: every pack continues from its finished checkpoint
    bench(*args, "--json", str(tmp_path / "again.json"))
    again = json.loads((tmp_path / "again.json").read_text())
    assert [(r["start"], r["top1"]) for r in again] == [(r["start"], r["top1"]) for r in rows]


def test_fidelity_benches_share_the_progress_line_and_the_missing_data_error(monkeypatch, capsys,
                                                                           tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import akamaster
    akamaster.progress("zaq", 12)({"epoch": 5, "members": [{"top1": 13.3}, {"top1": 10.25}]})
    captured = capsys.readouterr()
    assert captured.out == "" and "zaq: epoch 5/12  top-1 per seed 13.30, 10.25" in captured.err
    akamaster.progress("zaq", 12)({"epoch": 6, "members": [{"top1": None}, {}]})   # not evaluated
    assert "epoch 6/12  top-1 per seed -, -" in capsys.readouterr().err
    msg = akamaster.missing(tmp_path)
    assert str(tmp_path) in msg and akamaster.CHECKPOINT in msg and "--shared" in msg
    if (SHARED / akamaster.CHECKPOINT).is_file() and (SHARED / akamaster.IMAGES).is_file():
        assert akamaster.missing(SHARED) is None
