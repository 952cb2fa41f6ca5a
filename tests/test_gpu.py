"""CUDA checks; they skip on machines without a GPU (CI, laptops)."""

import math

import pytest
import torch
from torch import nn

from qimera_core import quant
from qimera_core.config import build
from qimera_core.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_fake_quant_on_cuda_matches_cpu():
    x = torch.randn(4, 8, 6, 6) * 2
    q = quant.QuantAct(nn.ReLU(), 4)
    q.hi.fill_(3.0)
    quant.set_calibration(nn.Sequential(q), False)
    cpu = q(x)
    q.to("cuda")
    quant.set_calibration(nn.Sequential(q), False)
    torch.testing.assert_close(q(x.to("cuda")).cpu(), cpu, atol=0, rtol=0)
    w = torch.randn(16, 8, 3, 3)
    torch.testing.assert_close(quant.quantize_weight(w.to("cuda"), 4).cpu(),
                               quant.quantize_weight(w, 4), atol=1e-6, rtol=0)


def test_tiny_training_on_cuda_runs_and_stays_on_device(tmp_path):
    cfg = build(teacher="tiny_resnet", teacher_weights="random", eval_data="synthetic",
                epochs=2, steps_per_epoch=4, batch_size=16, warmup_epochs=1,
                act_range_epochs=1, device="cuda", channels_last=True, amp_bf16=True)
    final = train(cfg, tmp_path, report=lambda m, checkpoint_dir=None: None)
    assert final["status"] == "ok"
    assert all(math.isfinite(final[k]) for k in ("top1", "loss_g", "loss_s"))
    resumed = train(cfg, tmp_path, resume_from=tmp_path / "checkpoint")
    assert resumed["epoch"] == 2
