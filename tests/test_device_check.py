"""bench/device_check.sh on a machine without CUDA: it says why it skips, writes its JSON and
summary, and exits 0 (the GPU path itself runs only on a lent GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script "
                    "would run its GPU measurements")
def test_device_check_without_cuda_skips_cleanly(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    d = json.loads((tmp_path / "device_check.json").read_text())
    assert d["skipped"].startswith("no CUDA device") and d["env"]["torch"] == torch.__version__
    assert d["env"]["tf32_cudnn_conv"] is True and d["env"]["tf32_matmul"] is False
    assert "skipped: no CUDA device" in (tmp_path / "summary.txt").read_text()
