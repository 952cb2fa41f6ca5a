"""No silent per-member loops: one packed step (N = 2) of every teacher family, with
functorch's per-member fallback made an error.

An op inside `vmap` without a batching rule would otherwise run once per member in a Python
loop, with only a warning, and a pack's throughput would quietly drop by N. Here such an op
raises `RuntimeError: aten::OP hit the vmap fallback which is currently disabled`, naming it.

Random teacher weights, batch 2 per member. The pytorchcv ImageNet teachers end in a fixed
AvgPool2d(7) (InceptionV3: 8), so they run at their full input size: 11-24 s per step on this
project's 2-core machine when lightly loaded (80-440 s under a load average of 12), so they are
marked `slow` (deselected by default; `pytest -m slow` runs them, as CI does).
"""

import dataclasses

import pytest
import torch
from torch.func import vmap

from qimera_core import teachers
from qimera_core.config import build
from qimera_core.train import Trial

CPU = torch.device("cpu")

FAST = [("digits_resnet8", None),          # our BN ResNet, 1x1-conv shortcuts (option B)
        ("resnet20_cifar10", None),        # pytorchcv ResNet-20, 1x1-conv shortcuts
        ("resnet20_cifar10_a", None),      # akamaster ResNet-20, pad shortcuts (option A)
        ("tv:resnet18", 32)]               # torchvision (adaptive pool: a small input works)
SLOW = ["mobilenetv2_w1", "shufflenet_g1_w1", "sqnxt23_w2", "inceptionv3"]


@pytest.fixture
def no_vmap_fallback():
    was = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(was)


def test_the_disabled_fallback_raises_naming_the_op(no_vmap_fallback):
    """The switch really turns the per-member loop into an error (an op kept without a rule
    for this purpose)."""
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="_test_functorch_fallback hit the vmap fallback"):
        vmap(lambda t: torch.ops.aten._test_functorch_fallback(t, t))(x)


def packed_step(name: str, size: int | None, monkeypatch) -> dict[str, torch.Tensor]:
    s = teachers.spec(name)
    if size is not None:         # a registry entry of a smaller input (spec() looks here first)
        monkeypatch.setitem(teachers.TEACHERS, name,
                            dataclasses.replace(s, input_shape=(s.input_shape[0], size, size)))
    base = dict(teacher=name, teacher_weights="random", eval_data="synthetic", batch_size=2,
                epochs=1, steps_per_epoch=1, warmup_epochs=0, act_range_epochs=1,
                mix_classes=2, device="cpu", num_threads=1)
    # Members differ in p (a random teacher is seeded by the seed, so the seed is shared).
    trial = Trial([build(**base, mix_prob=0.0), build(**base, mix_prob=1.0)], CPU)
    trial.set_calibration(True)          # activation ranges move inside vmap too
    out = trial.step(train_student=True, calibrate=False)
    with torch.no_grad():                # evaluation's path: every member on the same images
        x = torch.zeros(2, *teachers.spec(name).input_shape)
        logits = trial._s.shared(x)
    assert logits.shape[:2] == (2, 2)
    return out


def _check(out):
    assert set(out) >= {"loss_g", "loss_s"}
    for k, v in out.items():
        assert v.shape == (2,) and torch.isfinite(v).all(), k


@pytest.mark.parametrize("name,size", FAST)
def test_packed_step_has_no_per_member_loop(name, size, no_vmap_fallback, monkeypatch):
    _check(packed_step(name, size, monkeypatch))


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_packed_step_has_no_per_member_loop_imagenet(name, no_vmap_fallback, monkeypatch):
    _check(packed_step(name, None, monkeypatch))
