"""Record the golden steps: losses and update checksums of the first steps of each phase.

    python tests/golden/make_golden.py          # rewrites tests/golden/step.json

Regenerate ONLY after a deliberate, reviewed change of the method (or of the step's numerics,
such as a change in how latents are drawn), and say so in the commit message; a test that fails
after an unintended change must be fixed in the code, not here. `tests/test_golden_step.py`
imports `record()` from this file, so the test and the fixture always run the same steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "step.json"
CPU = torch.device("cpu")
# A fixed tiny setting on CPU: random tiny ResNet teacher, both phases, superposed and plain
# batches (p = 0.5 per batch), non-default loss weights so that each weight shows in the losses.
CONFIG = dict(teacher="tiny_resnet", teacher_weights="random", eval_data="synthetic",
              epochs=2, steps_per_epoch=3, batch_size=16, warmup_epochs=1, act_range_epochs=1,
              mix_prob=0.5, mix_classes=3, bns_weight=0.3, kd_alpha=3.0, kd_temperature=5.0,
              lr_student=0.02, lr_generator=0.002, w_bits=8, a_bits=8, device="cpu",
              num_threads=1, seed=3)
PHASES = (("warm-up", False, True), ("main", True, False))
STEPS_PER_PHASE = 2


def _snapshot(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _update(before: list[torch.Tensor], m: torch.nn.Module) -> dict[str, float]:
    """Checksums of one step's parameter update: sum |d| and the L2 norm of d. Signed sums are
    left out: biases in front of a BatchNorm get float-noise gradients whose sign (and thus the
    sign of their Adam step) is machine-dependent, while their magnitude is not."""
    d = torch.cat([(p.detach() - b).flatten().double()
                   for p, b in zip(m.parameters(), before, strict=True)])
    return {"abs_sum": float(d.abs().sum()), "l2": float(d.norm())}


def record() -> dict:
    from qimera_core.config import build
    from qimera_core.step import Trial

    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # one thread: no reduction-order differences
    try:
        cfg = build(**CONFIG)
        return {"config": CONFIG, "torch": torch.__version__,
                "steps": [s for phase in PHASES for s in _phase(Trial(cfg, CPU), *phase)]}
    finally:
        torch.set_num_threads(threads)


def _phase(trial, phase: str, train_student: bool, calibrate: bool) -> list[dict]:
    """The first steps of one phase, each phase from a fresh Trial (the same seed), so that
    rounding differences between CPUs cannot compound over many steps: a 4-bit grid and the
    sign-like first Adam steps amplify them. The main phase starts after one calibration step,
    as it would in a run."""
    from qimera_core import quant

    if train_student:
        quant.set_calibration(trial.student, True)
        trial.step(False, True)
    quant.set_calibration(trial.student, calibrate)
    steps = []
    for i in range(STEPS_PER_PHASE):
        g0, s0 = _snapshot(trial.generator), _snapshot(trial.student)
        out = trial.step(train_student, calibrate)
        steps.append({"phase": phase, "step": i,
                      "losses": {k: float(v) for k, v in sorted(out.items())},
                      "generator_update": _update(g0, trial.generator),
                      "student_update": _update(s0, trial.student),
                      "act_hi_sum": sum(float(q.hi) for q in quant.act_quantizers(trial.student))})
    quant.set_calibration(trial.student, False)
    return steps


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))      # run from anywhere inside the checkout
    FIXTURE.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
