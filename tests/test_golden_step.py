"""Golden-step regression: the first steps of each phase on a fixed tiny CPU setting must give
the recorded losses and parameter-update checksums (tests/golden/step.json).

The fixture is made by `python tests/golden/make_golden.py`. Regenerate it only after a
deliberate, reviewed change of the method or of the step's numerics, and say so in the commit;
when this test fails after any other change, the change broke the step.

Tolerance: 1 % relative. Float rounding differs between CPUs (SIMD width, reduction order) and
the quantization grid and Adam's first steps amplify it: recording with 2 threads instead of
one moved the checksums by up to 0.2 %. A changed loss weight, reduction, temperature, learning
rate or order of operations moves them by far more than 1 %.
"""

import importlib.util
import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
REL = 1e-2


def _make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_first_steps_of_each_phase_match_the_golden_record():
    want = json.loads((GOLDEN / "step.json").read_text())
    mod = _make_golden()
    assert want["config"] == mod.CONFIG, "fixture is stale: run python tests/golden/make_golden.py"
    got = mod.record()
    assert [(s["phase"], s["step"]) for s in got["steps"]] == \
        [(s["phase"], s["step"]) for s in want["steps"]]
    for g, w in zip(got["steps"], want["steps"], strict=True):
        where = f"{w['phase']} step {w['step']}"
        assert set(g["losses"]) == set(w["losses"]), where
        for k, v in w["losses"].items():
            assert g["losses"][k] == pytest.approx(v, rel=REL, abs=1e-6), f"{where} {k}"
        for part in ("generator_update", "student_update"):
            for k, v in w[part].items():
                assert g[part][k] == pytest.approx(v, rel=REL, abs=1e-9), f"{where} {part} {k}"
        assert g["act_hi_sum"] == pytest.approx(w["act_hi_sum"], rel=REL), where
