"""bench/flops.py: grouped conv backward counted per group (torch's counter ignores groups)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import flops  # noqa: E402


def _count(fn, mode):
    with mode as c:
        fn()
    return c.get_total_flops()


@pytest.mark.parametrize("groups", [1, 4])
def test_a_grouped_conv_counts_as_its_groups_alone(groups):
    torch.manual_seed(0)
    x = torch.randn(3, 8 * groups, 10, 10, requires_grad=True)
    w = torch.randn(16 * groups, 8, 3, 3, requires_grad=True)

    def grouped():
        torch.nn.functional.conv2d(x, w, padding=1, groups=groups).sum().backward()

    def separate():
        for xs, ws in zip(x.chunk(groups, 1), w.chunk(groups, 0), strict=True):
            torch.nn.functional.conv2d(xs, ws, padding=1).sum().backward()

    fwd = 2 * 3 * 16 * groups * 100 * 8 * 9
    ours = _count(grouped, flops.counter())
    assert ours == 3 * fwd == _count(separate, flops.counter())   # forward + 2 gradients
    assert _count(separate, flops.counter()) == _count(
        separate, torch.utils.flop_counter.FlopCounterMode(display=False))  # groups = 1: as torch
    if groups > 1:                  # torch's own formula over-counts the grouped backward
        assert _count(grouped, torch.utils.flop_counter.FlopCounterMode(display=False)) > ours
