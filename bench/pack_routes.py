"""Two ways to train N small conv nets as one, on a small case, against a loop of N nets.

    python bench/pack_routes.py --threads 1 --sizes 1,4,8,16,24

Each step is forward, cross-entropy, backward and an SGD step of N conv-BN-ReLU nets
(digits-sized: 1x8x8 inputs, batch 64). Routes:
- loop: N ordinary modules, one after another (what N trials in one process would do);
- vmap: torch.func.stack_module_state + functional_call + vmap (what qimera_core.pack does);
- grouped: one hand-written module whose convolutions have groups=N and whose BatchNorm and
  classifier cover all N nets' channels (the HFTA route: a fused copy of every layer type).
Median milliseconds per step of all N nets, and each route's speed-up over the loop.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

B, C, H = 64, 1, 8


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(C, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


class Grouped(nn.Module):
    """N copies of `net()` fused: member i owns channel block i of every layer."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.c1 = nn.Conv2d(C * n, 16 * n, 3, padding=1, groups=n)
        self.b1 = nn.BatchNorm2d(16 * n)
        self.c2 = nn.Conv2d(16 * n, 32 * n, 3, padding=1, stride=2, groups=n)
        self.b2 = nn.BatchNorm2d(32 * n)
        self.c3 = nn.Conv2d(32 * n, 32 * n, 3, padding=1, groups=n)
        self.b3 = nn.BatchNorm2d(32 * n)
        self.fc = nn.Conv1d(32 * n, 10 * n, 1, groups=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # (N, B, C, H, W)
        n = self.n
        x = x.transpose(0, 1).reshape(x.shape[1], n * C, H, H)
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3))[:, :, None]).view(-1, n, 10).transpose(0, 1)


def median_ms(step, reps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = out.shape[0]        # the sum of each net's mean loss: each gets its own gradient
    return F.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="none").view(n, -1
                                                                                  ).mean(1).sum()


def routes(n: int) -> dict:
    nets = [net() for _ in range(n)]
    x, y = torch.randn(n, B, C, H, H), torch.randint(10, (n, B))
    opt_loop = torch.optim.SGD([p for m in nets for p in m.parameters()], lr=0.01, momentum=0.9)

    def loop() -> None:
        opt_loop.zero_grad()
        sum(F.cross_entropy(m(x[i]), y[i]) for i, m in enumerate(nets)).backward()
        opt_loop.step()

    params, buffers = stack_module_state(nets)
    template = copy.deepcopy(nets[0]).to("meta")
    batched = vmap(lambda p, b, xx: functional_call(template, (p, b), (xx,)))
    opt_vmap = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9)

    def vmapped() -> None:
        opt_vmap.zero_grad()
        loss_of(batched(params, buffers, x), y).backward()
        opt_vmap.step()

    fused = Grouped(n)
    opt_grouped = torch.optim.SGD(fused.parameters(), lr=0.01, momentum=0.9)

    def grouped() -> None:
        opt_grouped.zero_grad()
        loss_of(fused(x), y).backward()
        opt_grouped.step()

    return {"loop": loop, "vmap": vmapped, "grouped": grouped}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", default="1,4,8,16,24")
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}; median ms per step of "
          f"all N nets (speed-up over the loop)")
    for n in (int(s) for s in args.sizes.split(",")):
        fns = routes(n)
        ms = {}
        for _ in range(2):                   # interleaved rounds; the faster of the two counts
            for k, f in fns.items():
                ms[k] = min(ms.get(k, float("inf")), median_ms(f, args.reps))
        print(f"N={n:2d}  " + "  ".join(
            f"{k} {v:7.2f} ({ms['loop'] / v:4.2f}x)" for k, v in ms.items()), flush=True)


if __name__ == "__main__":
    main()
