"""Wrong input to every CLI, tried systematically: each case must exit non-zero with one line
on stderr that names the problem (and the fix), before any expensive work and with no
traceback. The table of cases is the documentation of what is checked."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qimera_core import results
from qimera_core.config import build
from sweeps import rows

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["--preset", "digits-smoke"]
SMOKE = ["--smoke-test", "--dry-run"]

# (cli, argv with {T} = a scratch directory of prepared bad inputs, what the line must say)
CASES = [
    # qimera_core.train
    ("train", [], "the following arguments are required: --out"),
    ("train", ["--out", "{T}/o", "--epochs", "abc"], "argument --epochs: invalid int value"),
    ("train", ["--out", "{T}/o", *DIGITS, "--epochs", "0"], "epochs must be >= 1"),
    ("train", ["--out", "{T}/o", *DIGITS, "--mix-prob", "1.5"], "mix_prob (p) must be in [0, 1]"),
    ("train", ["--out", "{T}/o", "--preset", "nope"], "argument --preset: invalid choice"),
    ("train", ["--out", "{T}/o", *DIGITS, "--teacher", "resnet999"], "unknown teacher 'resnet999'"),
    ("train", ["--out", "{T}/o", *DIGITS, "--eval-data", "npz:{T}/missing.npz"], "not found"),
    ("train", ["--out", "{T}/o", *DIGITS, "--eval-data", "npz:{T}"], "is not a file"),
    ("train", ["--out", "{T}/o", *DIGITS, "--eval-data", "npz:{T}/nchw.npz"],
     "save 'images' as uint8 (N, 8, 8, 1)"),
    ("train", ["--out", "{T}/o", *DIGITS, "--eval-data", "npz:{T}/labels.npz"],
     "one label per image"),
    ("train", ["--out", "{T}/o", *DIGITS, "--eval-data", "npz:{T}/keys.npz"],
     "needs arrays 'images'"),
    ("train", ["--out", "{T}/o", *DIGITS, "--eval-data", "npz:{T}/text.txt"],
     "is not a readable .npz file"),
    ("train", ["--out", "{T}/o", *DIGITS, "--teacher-weights", "{T}/missing.pt"], "does not exist"),
    ("train", ["--out", "{T}/o", *DIGITS, "--teacher-weights", "{T}/text.txt"],
     "cannot read teacher weights"),
    ("train", ["--out", "{T}/text.txt", *DIGITS], "is a file; pass a directory"),
    ("train", ["--out", "{T}/text.txt/o", *DIGITS, "--cache-dir", "{T}/cache"],
     "must be directories this user can write"),
    ("train", ["--out", "{T}/o", *DIGITS, "--resume"], "holds no checkpoint"),
    # sweeps.table9 / sweeps.table8
    ("table9", [*SMOKE, "--seeds", "abc"], "argument --seeds: --seeds takes a number or auto"),
    ("table9", [*SMOKE, "--seeds", "0"], "--seeds must be >= 1"),
    ("table9", [*SMOKE, "--cpus-per-trial", "0"], "--cpus-per-trial must be >= 1"),
    ("table9", [*SMOKE, "--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    ("table9", [*SMOKE, "--mix-prob", "2"], "mix_prob (p) must be in [0, 1]"),
    ("table9", [*SMOKE, "--teacher", "resnet999"], "unknown teacher 'resnet999'"),
    ("table9", [*SMOKE, "--eval-data", "npz:{T}/missing.npz"], "not found"),
    ("table9", [*SMOKE, "--eval-data", "npz:{T}/nchw.npz"], "save 'images' as uint8"),
    ("table9", [*SMOKE, "--teacher-weights", "{T}/text.txt"], "cannot read teacher weights"),
    ("table9", [*SMOKE, "--results", "{T}/text.txt"], "--results {T}/text.txt is a file"),
    ("table9", [*SMOKE, "--storage", "{T}/text.txt"], "--storage {T}/text.txt is a file"),
    ("table9", [*SMOKE, "--results", "{T}/newer"], "reads version 1 at most"),
    ("table9", [*SMOKE, "--only", "zzz"], "--only zzz matches no row"),
    ("table9", ["--smoke-test", "--resume", "--storage", "{T}/none"], "no experiment"),
    ("table8", [*SMOKE, "--epochs", "-1"], "epochs must be >= 1"),
    ("table8", [*SMOKE, "--seed", "3"], "--seed is set by the sweep; use --seeds N"),
    # python -m analysis
    ("analysis", ["tables", "--results", "{T}/missing", "--out", "{T}/a"], "does not exist"),
    ("analysis", ["tables", "--results", "{T}/text.txt", "--out", "{T}/a"], "is not a directory"),
    ("analysis", ["tables", "--results", "{T}/newer", "--out", "{T}/a"], "reads version 1 at most"),
    ("analysis", ["status", "--results", "{T}/newer"], "reads version 1 at most"),
    ("analysis", ["status", "--results", "{T}/cache"], "holds no trials-*.parquet"),
    ("analysis", ["tables", "--results", "{T}/one", "--out", "{T}/a", "--metric", "x"],
     "argument --metric: invalid choice"),
    ("analysis", ["tables", "--results", "{T}/one", "--out", "{T}/a", "--table", "99"],
     "unknown table"),
    ("analysis", ["tables", "--results", "{T}/one", "--out", "{T}/a", "--seeds", "0"],
     "--seeds must be >= 1"),
    ("analysis", ["tables", "--results", "{T}/one", "--out", "{T}/a", "--format", "doc"],
     "--format takes a comma list"),
    ("analysis", ["watch", "--results", "{T}/one", "--out", "{T}/a", "--interval", "-1"],
     "--interval must be > 0"),
    ("analysis", ["plots", "--results", "{T}/one", "--out", "{T}/a", "--checkpoint", "{T}/no"],
     "is not a directory"),
    ("analysis", ["tables", "--results", "{T}/one", "--out", "{T}/text.txt"], "is a file"),
    ("analysis", ["tables", "--results"], "argument --results: expected one argument"),
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    t = tmp_path_factory.mktemp("bad-inputs")
    np.savez(t / "nchw.npz", images=np.zeros((5, 1, 8, 8), np.uint8), labels=np.zeros(5, int))
    np.savez(t / "labels.npz", images=np.zeros((5, 8, 8, 1), np.uint8), labels=np.zeros(4, int))
    np.savez(t / "keys.npz", x=np.zeros(3))
    (t / "text.txt").write_text("not what you think\n")
    (t / "cache").mkdir()
    cfg = build("digits-smoke")
    one = rows.trial_row("table9", "a_0", cfg, {"epoch": cfg.epochs, "top1": 50.0})
    results.write([one], t / "one", rows.TRIALS)
    (t / "newer").mkdir()
    pd.DataFrame([one]).assign(schema_version=results.SCHEMA_VERSION + 1).to_parquet(
        t / "newer" / "trials-from-the-future.parquet")
    return t


def _call(cli: str, argv: list[str]) -> int:
    if cli == "train":
        from qimera_core.train import main
        return main(argv)
    if cli == "analysis":
        from analysis.cli import main
        return main(argv)
    from sweeps.launch import main
    return main(cli, importlib.import_module(f"sweeps.{cli}").BLOCKS, argv)


@pytest.mark.parametrize(("cli", "argv", "says"), CASES,
                         ids=[f"{c}:{' '.join(a[-2:])}" for c, a, _ in CASES])
def test_bad_input_gives_one_clear_line(bad_inputs, capsys, cli, argv, says):
    t = str(bad_inputs)
    argv = [a.replace("{T}", t) for a in argv]
    if cli == "train" and "--cache-dir" not in argv:
        argv += ["--cache-dir", f"{t}/cache"]           # never touch the user's cache
    try:
        code = _call(cli, argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), err
    assert len(lines) == 1, err
    assert "error:" in lines[0] and says.replace("{T}", t) in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("cmd", [
    ["qimera_core.train", "--out", "{T}/o", *DIGITS, "--eval-data", "npz:{T}/nchw.npz"],
    ["sweeps.table9", *SMOKE, "--results", "{T}/newer"],
    ["analysis", "tables", "--results", "{T}/newer", "--out", "{T}/a"],
], ids=["train", "table9", "analysis"])
def test_bad_input_as_a_user_runs_it(bad_inputs, cmd):
    """The same, as real processes: nothing else (log lines, warnings) reaches stderr."""
    cmd = [a.replace("{T}", str(bad_inputs)) for a in cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", *cmd], cwd=bad_inputs, env=env,
                       capture_output=True, text=True, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "error:" in lines[0], p.stderr
