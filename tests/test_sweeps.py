"""Sweep grids without Ray: every table expands into valid, unique trials; bad grids fail fast
naming the key; --smoke-test, --only and overrides; result rows, reuse and curve dedupe; the
three ways to run a table script."""

import importlib
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qimera_core import results
from qimera_core.config import build
from sweeps import grid, rows, search
from sweeps.grid import Block, GridError, expand

ROOT = Path(__file__).resolve().parents[1]
TABLES = ["table6", "table7", "table8", "table9", "table10", "main", "methods"]
# Trials per table with the default 3 seeds; pins the grids to the paper's tables. The method
# tables run the baselines (ZeroQ, DSG, ZAQ; AdaDFQ in the main table) besides Qimera and GDFQ.
COUNTS = {"table6": 10 * 6 * 3, "table7": 10 * 6 * 3, "table8": 2 * 5 * 3,
          "table9": 2 * 24 * 3, "table10": 5 * 3 * 3, "main": 10 * 6 * 3, "methods": 10 * 6 * 3}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize("name", TABLES)
def test_table_grid_expands_validated_and_unique(name):
    blocks = importlib.import_module(f"sweeps.{name}").BLOCKS
    configs = grid.plan(blocks, seeds=3)
    assert len(configs) == COUNTS[name]
    assert len({c.config_hash for c in configs}) == len(configs)
    smoke = grid.plan(blocks, seeds=1, smoke_test=True)
    first = blocks[0]
    n_first = math.prod(len(v) for v in first.grid.values())
    assert len(smoke) == n_first
    for cfg in smoke:                      # the digits setting, the block's method and axes
        assert (cfg.teacher, cfg.eval_data, cfg.w_bits, cfg.epochs) == ("digits_resnet8",
                                                                        "digits", 2, 3)
        assert cfg.method == first.base_dict()["method"]
    for key, values in first.grid.items():
        assert sorted({getattr(c, key) for c in smoke}) == sorted(values)


def test_table9_axes_are_the_papers():
    from sweeps.table9 import BLOCKS
    cifar, imagenet = BLOCKS
    assert cifar.grid["mix_prob"] == [0.10, 0.25, 0.40, 0.55, 0.70, 0.85]
    assert cifar.grid["mix_classes"] == [2, 10, 25, 100]
    assert imagenet.grid["mix_classes"] == [100, 250, 500, 1000]
    assert (cifar.base.teacher, imagenet.base.teacher) == ("resnet20_cifar100", "resnet50")


def test_table_scripts_import_and_expand_without_ray():
    code = ("import sys, importlib\nfrom sweeps import grid\n"
            f"for t in {TABLES!r}:\n"
            "    grid.plan(importlib.import_module('sweeps.' + t).BLOCKS, seeds=3)\n"
            "assert 'ray' not in sys.modules, 'a table script imported ray'\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=env(), cwd=ROOT)


def test_bad_value_names_key_value_and_what_is_allowed():
    base = build("digits-smoke")
    with pytest.raises(GridError, match=r"grid key 'mix_prob' value 1\.5.*\[0, 1\]"):
        expand(base, {"mix_prob": [0.4, 1.5]})
    with pytest.raises(GridError, match="'mix_prb'.*did you mean 'mix_prob'"):
        expand(base, {"mix_prb": [0.4]})
    with pytest.raises(GridError, match="--seeds"):
        expand(base, {"seed": [0, 1]})
    with pytest.raises(GridError, match="non-empty list"):
        expand(base, {"mix_prob": []})
    with pytest.raises(GridError, match="do not go together.*freeze_embeddings"):
        expand(base, {"emb_init": ["random", "extracted"], "freeze_embeddings": [True]})


def test_expand_is_seed_major_and_duplicates_are_refused():
    trials = expand(build("digits-smoke"), {"mix_classes": [2, 3]}, seeds=2)
    assert [(c.seed, c.mix_classes) for c in trials] == [(0, 2), (0, 3), (1, 2), (1, 3)]
    twice = [Block("a", build("digits-smoke")), Block("b", build("digits-smoke"))]
    with pytest.raises(GridError, match="rows a and b"):
        grid.plan(twice, seeds=1)


def test_only_overrides_and_paths(tmp_path, monkeypatch):
    from sweeps.table9 import BLOCKS
    assert [b.row for b in grid.select(BLOCKS, ["cifar100"])] == ["cifar100-resnet20-4w4a"]
    with pytest.raises(GridError, match="matches no row.*imagenet-resnet50-4w4a"):
        grid.select(BLOCKS, ["cifar10-"])
    narrowed = grid.plan(BLOCKS, seeds=1, smoke_test=True, overrides={"mix_prob": 0.4})
    assert sorted(c.mix_classes for c in narrowed) == [2, 10, 25, 100]
    assert {c.mix_prob for c in narrowed} == {0.4}
    monkeypatch.chdir(tmp_path)
    cfg = grid.absolute_paths(build("digits-smoke", cache_dir="cache", eval_data="npz:x.npz"))
    assert cfg.cache_dir == str(tmp_path / "cache")
    assert cfg.eval_data == f"npz:{tmp_path / 'x.npz'}"


def test_smoke_keeps_gdfq_switches():
    from sweeps.table6 import BLOCKS
    smoke = grid.plan(BLOCKS, seeds=1, smoke_test=True)
    assert {c.method for c in smoke} == {"gdfq"} and {c.mix_prob for c in smoke} == {0.0}
    assert sorted(c.noise_sigma for c in smoke) == [0.25, 0.5, 1.0, 1.5, 2.0]


def _metrics(epoch: int, top1: float, **kw) -> dict:
    return {"epoch": epoch, "top1": top1, "best_top1": top1, "diverged": 0,
            "time_total_s": 10.0, "device_name": "cpu", **kw}


def test_rows_status_gpu_seconds_and_curve_dedupe(tmp_path):
    cfg = build("digits-smoke")
    row = rows.trial_row("t", "a_0", cfg, _metrics(3, 50.0), gpus=0.25)
    assert set(row) == set(results.columns())
    assert (row["status"], row["gpu_seconds"], row["device_name"]) == ("ok", 2.5, "cpu")
    assert rows.trial_row("t", "a_0", cfg, _metrics(3, 50.0, diverged=1))["status"] == "diverged"
    assert rows.trial_row("t", "a_0", cfg, {}, error="boom")["status"] == "error"
    # a restored trial reports epoch 2 again: each epoch is kept once, the later report wins
    reports = [_metrics(1, 10.0), _metrics(2, 20.0), _metrics(2, 21.0), _metrics(3, 30.0)]
    curves = rows.curve_rows("t", "a_0", cfg, reports, status="ok")
    assert [(r["epoch"], r["top1"]) for r in curves] == [(1, 10.0), (2, 21.0), (3, 30.0)]
    results.write(curves[:2], tmp_path, rows.CURVES)
    results.write(curves[1:], tmp_path, rows.CURVES)
    assert list(rows.read_curves(tmp_path)["epoch"]) == [1, 2, 3]


def test_finished_rows_reuse_and_adopt(tmp_path):
    a, b, c = (build("digits-smoke", seed=s) for s in range(3))
    results.write([rows.trial_row("main", "x_0", a, _metrics(3, 50.0)),
                   rows.trial_row("main", "x_1", b, {}, error="boom")], tmp_path, rows.TRIALS)
    results.write(rows.curve_rows("main", "x_0", a, [_metrics(1, 5.0), _metrics(3, 50.0)],
                                  status="ok"), tmp_path, rows.CURVES)
    ids, hashes = rows.recorded(tmp_path)
    assert ids == {"x_0", "x_1"} and hashes == {a.config_hash}      # errors are rerun
    assert rows.is_recorded(tmp_path, "new", a.config_hash)
    assert not rows.is_recorded(tmp_path, "new", c.config_hash)
    done = rows.finished_rows(tmp_path)
    assert rows.adopt(tmp_path, "table7", done) == 1
    assert rows.adopt(tmp_path, "table7", done) == 0                 # idempotent
    trials = rows.read_trials(tmp_path)
    assert sorted(trials["table"]) == ["main", "main", "table7"]
    curves = rows.read_curves(tmp_path)
    assert len(curves[curves["table"] == "table7"]) == 2


def test_search_space_parsing_and_validation():
    space = search.parse_space("mix_prob=uniform:0.05:0.95,mix_classes=int:2:10,"
                               "dm_activation=choice:relu|none")
    assert space["mix_classes"].values == (2, 10)
    assert space["dm_activation"].values == ("relu", "none")
    search.check_space(build("digits-smoke"), space)
    for bad, needle in [("mix_prob=normal:0:1", "KIND"), ("mix_prb=uniform:0:1", "mix_prb"),
                        ("mix_prob=uniform:0.9:0.1", "LO < HI"), ("lr_student=loguniform:0:1",
                                                                  "loguniform")]:
        with pytest.raises(GridError, match=needle):
            search.parse_space(bad)
    with pytest.raises(GridError, match=r"mix_prob: value 1\.5"):
        search.check_space(build("digits-smoke"), search.parse_space("mix_prob=uniform:0:1.5"))


BAD_SCRIPT = '''"""A sweep with an invalid grid value."""
from qimera_core.config import build
from sweeps.grid import Block

BLOCKS = [Block("digits", build("digits-smoke"), {"mix_prob": [0.4, 1.5]})]

if __name__ == "__main__":
    import sys
    from sweeps.launch import main
    sys.exit(main("bad", BLOCKS))
'''


def test_invalid_grid_value_exits_before_ray_naming_the_key(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(BAD_SCRIPT)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(script), "--storage", str(tmp_path / "s"),
                          "--results", str(tmp_path / "r")], capture_output=True, text=True,
                         env=env(), cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "grid key 'mix_prob' value 1.5" in out.stderr and "[0, 1]" in out.stderr
    assert "Ray" not in out.stdout + out.stderr and not (tmp_path / "s").exists()
    assert time.monotonic() - t0 < 30       # imports only: ~2-5 s on a busy 2-core machine


def test_three_ways_to_run_a_table_script(tmp_path):
    """`python -m sweeps.table9`, `python sweeps/table9.py` from the repo root, and the file
    copied alone elsewhere (what `ray submit` does) all plan the same 24 smoke trials."""
    copy = tmp_path / "table9.py"
    shutil.copy(ROOT / "sweeps" / "table9.py", copy)
    args = ["--smoke-test", "--dry-run", "--results", str(tmp_path / "r")]
    for cmd, cwd in [([sys.executable, "-m", "sweeps.table9"], ROOT),
                     ([sys.executable, "sweeps/table9.py"], ROOT),
                     ([sys.executable, str(copy)], tmp_path)]:
        out = subprocess.run(cmd + args, capture_output=True, text=True, env=env(), cwd=cwd,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "table9: 24 trials, 0 reused, 24 to run" in out.stdout
        assert len([ln for ln in out.stdout.splitlines() if "mix_classes=" in ln]) == 24


def test_dry_run_counts_reused_trials(tmp_path, capsys):
    from sweeps.launch import main
    from sweeps.table8 import BLOCKS
    done = grid.plan(BLOCKS, seeds=1, smoke_test=True)[0]
    results.write([rows.trial_row("table8", "y_0", done, _metrics(3, 40.0))], tmp_path,
                  rows.TRIALS)
    assert main("table8", BLOCKS, ["--smoke-test", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "table8: 5 trials, 1 reused, 4 to run" in out
    assert done.config_hash not in out and out.count("dm_layers=") == 4


def test_resources_storage_and_placement(tmp_path, monkeypatch):
    from sweeps.experiment import storage_path
    from sweeps.plan import default_gpus, place
    digits, imagenet = build("digits-smoke"), build("imagenet-resnet50-4w4a")
    assert default_gpus(digits, None, have_gpus=True) == 0.25
    assert default_gpus(imagenet, None, have_gpus=True) == 1.0
    assert default_gpus(imagenet, None, have_gpus=False) == 0.0
    assert default_gpus(imagenet, 0.5, have_gpus=False) == 0.5        # the flag wins
    on_gpu = place(digits, {"digits_resnet8": 0.25}, cpus=4)
    assert (on_gpu.device, on_gpu.num_threads) == ("cuda", 4)
    assert on_gpu.config_hash == digits.config_hash                   # where, not what
    assert place(digits, {"digits_resnet8": 0.0}, cpus=1).device == "cpu"
    monkeypatch.chdir(tmp_path)
    assert storage_path("runs/s") == str(tmp_path / "runs" / "s")
    assert storage_path("s3://bucket/sweeps") == "s3://bucket/sweeps"


def test_status_of_tells_ok_error_diverged_and_stopped_apart():
    from sweeps.rows import status_of

    assert status_of({"epoch": 3, "diverged": 0}, "", 3) == "ok"
    assert status_of({"epoch": 3, "diverged": 0}, "Traceback ...", 3) == "error"
    assert status_of({"epoch": 2, "diverged": 1}, "", 3) == "diverged"
    assert status_of({"epoch": 1, "diverged": 0}, "", 3) == "stopped"   # ASHA ended it early


def test_offline_is_the_first_settings_rows_on_the_digits_offline_schedule():
    from sweeps import main as main_table
    from sweeps import table8, table9
    t9 = grid.plan(table9.BLOCKS, seeds=3, offline=True)
    assert len(t9) == 72 and {c.teacher for c in t9} == {"digits_resnet8"}
    assert {(c.epochs, c.steps_per_epoch, c.batch_size) for c in t9} == {(8, 40, 32)}
    assert len({(c.mix_prob, c.mix_classes) for c in t9}) == 24
    m = grid.plan(main_table.BLOCKS, seeds=3, offline=True)
    assert sorted({c.method for c in m}) == ["adadfq", "dsg", "gdfq", "qimera", "zaq", "zeroq"]
    assert len(m) == 18
    ptq = [c for c in m if c.method in ("zeroq", "dsg")]      # the preset's PTQ form
    assert {(c.epochs, c.warmup_epochs, c.mix_prob, c.act_range_mode) for c in ptq} == \
        {(0, 0, 0.0, "minmax")}
    assert {c.batch_size for c in ptq if c.method == "zeroq"} == {64}
    assert sorted({c.dm_layers for c in grid.plan(table8.BLOCKS, seeds=3, offline=True)}) == \
        [0, 1, 2, 4, 8]


def test_pack_flag_and_auto_pack_sizes():
    pytest.importorskip("ray")
    from sweeps.cli import _pack_flag, build_parser
    from sweeps.plan import auto_pack_size
    assert _pack_flag("auto") == "auto" and _pack_flag("off") == "off" and _pack_flag("6") == 6
    with pytest.raises(SystemExit):
        build_parser("table9").parse_args(["--pack", "0"])
    digits, cifar = build("digits-offline"), build("cifar100-resnet20-4w4a")
    imagenet = build("imagenet-resnet50-4w4a")
    assert auto_pack_size(digits, 72, gpus=0.0, slots=2) == 18       # 4 packs, 2 per slot
    assert auto_pack_size(digits, 24, gpus=0.0, slots=2) == 12
    assert auto_pack_size(digits, 3, gpus=0.0, slots=4) == 1         # more slots than runs
    assert auto_pack_size(cifar, 72, gpus=0.0, slots=2) == 1         # compute-bound on CPUs
    assert auto_pack_size(cifar, 72, gpus=0.25, slots=2) == 8
    assert auto_pack_size(imagenet, 72, gpus=1.0, slots=2) == 1


def test_a_packs_rows_are_one_per_member(tmp_path):
    pytest.importorskip("ray")
    from sweeps.trial import gpus_for, pack_configs, pack_gpus, pack_params
    from sweeps.writer import write_trial
    cfgs = [build("digits-smoke", mix_prob=p) for p in (0.1, 0.4)]
    params = {"pack": pack_params([c.to_dict() for c in cfgs], gpus_for(0.25, 2), "p")}
    assert pack_gpus(params) == 0.5 and pack_configs(params) == cfgs
    assert set(params) == {"pack"}            # one shape; the run constants are not in it
    # an experiment started by an older version: run constants and GPUs in the params, and
    # search mode's {"config": ...}; still read, to resume it
    legacy = {"pack": {"configs": [c.to_dict() for c in cfgs]},
              "run": {"gpus": {"digits_resnet8": 0.25}}}
    assert pack_gpus(legacy) == 0.5
    old_search = {"config": cfgs[0].to_dict(), "run": {"gpus": {"digits_resnet8": 0.25}}}
    assert pack_configs(old_search) == cfgs[:1] and pack_gpus(old_search) == 0.25
    last = {"epoch": 3, "time_total_s": 100.0, "device_name": "cpu",
            "members": [_metrics(3, 50.0), _metrics(3, 60.0)]}
    curves = {0: {e: _metrics(e, 40.0 + e) for e in (1, 2, 3)},
              1: {e: _metrics(e, 50.0 + e) for e in (1, 2, 3)}}
    write_trial("table9", tmp_path, "abc_00001", params, last, "", curves)
    trials = rows.read_trials(tmp_path)
    assert list(trials["trial_id"]) == ["abc_00001_m0", "abc_00001_m1"]
    assert list(trials["config_hash"]) == [c.config_hash for c in cfgs]
    assert list(trials["top1"]) == [50.0, 60.0] and set(trials["pack_id"]) == {"abc_00001"}
    assert set(trials["pack_size"]) == {2} and list(trials["gpu_seconds"]) == [25.0, 25.0]
    assert len(rows.read_curves(tmp_path)) == 6
    assert rows.unrecorded(tmp_path, "abc_00001", cfgs) == []
    third = build("digits-smoke", mix_prob=0.7)
    assert rows.unrecorded(tmp_path, "abc_00001", [*cfgs, third]) == [2]


def test_the_parsed_flags_are_read_only():
    from sweeps.cli import Options, build_parser
    opts = Options.of(build_parser("table9").parse_args(["--seeds", "2", "--storage", "s"]))
    assert opts.seeds == 2 and opts.storage == "s"
    with pytest.raises(AttributeError, match="read-only"):
        opts.storage = "elsewhere"
    moved = opts.replace(storage="/abs/s")
    assert moved.storage == "/abs/s" and opts.storage == "s"
    with pytest.raises(AttributeError, match="no flag 'nope'"):
        opts.nope  # noqa: B018
