"""The device environment as JSON, for bench/device_check.sh: torch, CUDA, cuDNN, the GPU and
its memory, and the TF32 flags as PyTorch sets them by default (no trainer run yet).

    python bench/device_env.py [OUT.json]

Exits 3, after writing the JSON with "skipped" saying why, when there is no CUDA device.
"""

from __future__ import annotations

import json
import platform
import sys

import torch


def environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cpu": platform.processor() or platform.machine(),
           "tf32_cudnn_conv": torch.backends.cudnn.allow_tf32,
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}",
                   sm_count=props.multi_processor_count,
                   tf32_hardware=props.major >= 8,
                   cudnn=torch.backends.cudnn.version(), gpus=torch.cuda.device_count())
    return env


def main(argv: list[str]) -> int:
    env = environment()
    out = {"env": env}
    if not env["cuda_available"]:
        out["skipped"] = ("no CUDA device (torch.cuda.is_available() is False; torch built "
                          f"with CUDA {env['cuda_build']}): nothing GPU-only to measure")
    text = json.dumps(out, indent=1)
    if argv:
        with open(argv[0], "w") as f:
            f.write(text + "\n")
    print(text)
    return 3 if "skipped" in out else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
