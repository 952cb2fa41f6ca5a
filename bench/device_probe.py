"""The parts of bench/device_check.sh, one subcommand each, every one writing OUT/<part>.json.

    python bench/device_probe.py PART --device cuda --out DIR     # what device_check.sh runs
    python bench/device_probe.py PART --device cpu --quick --out DIR   # seconds, to test the logic

Parts (the CIFAR-10 ResNet-20 4w4a preset, batch 200 per member, random teacher weights and
synthetic eval data, so nothing is downloaded; pack members are sweeps.calibrate.members(),
the same work per member):
  pair       a pack of N = 2 against the same two members stepped separately (ms per member)
  convs      our conv shapes (ResNet-20's 16/32/64 channels at 32/16/8 px, the generator's
             convs), forward + backward, as one grouped conv over N members against a Python
             loop of N convs, in fp32, TF32 and bf16 (on a CPU: fp32 only)
  curve      t(N) and peak memory (torch.cuda.max_memory_allocated, reset per N) for
             N = 1, 2, 4, ..., 32, 48, 64 while time and memory allow
  profile    torch.profiler over a few steps at N = 16: kernels and launches per step, the top
             10 kernels by device time, the GPU-busy fraction (kernel time / wall time)
  procs      one trial alone against K processes of one trial each at once on the device
             (what --gpus-per-trial 1/K does), a fixed number of steps each
  calibrate  sweeps.calibrate.calibrate_local's table and choice (no cache read)
  train      python -m qimera_core.train's main, 2,000 steps (10 epochs x 200): steps/s
             (the last epoch's training steps; with evaluation; with setup) and the final
             metrics
  compile    the packed step at N = 8 eager, then with the generator's and the student's
             (vmapped) forwards under torch.compile
  summary    device_check.json and summary.txt from the parts' JSON files

Step times are the mean over a block of steps (one device synchronisation at its end) after
untimed warm-up steps. Every part rewrites its JSON after each point, so a part stopped by
its timeout leaves what it had measured. `--quick` shrinks everything (batch 2, N <= 2,
1 step) for a CPU test of the logic; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qimera_core.builders import resolve_device, set_tf32
from qimera_core.config import TrainConfig, build
from qimera_core.train import Trial  # qimera_core.train re-exports Trial (qimera_core.step)

PRESET = "cifar10-resnet20-4w4a"
CURVE_SIZES = (1, 2, 4, 8, 16, 32, 48, 64)
MEMORY_FRACTION = 0.85          # the curve skips an N predicted to need more of the GPU


# ---- shared helpers ---------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    device: torch.device
    quick: bool
    out: Path
    threads: int = 0

    def config(self, **kw: Any) -> TrainConfig:
        small = {"batch_size": 2, "eval_batch_size": 16} if self.quick else {}
        return build(PRESET, teacher_weights="random", eval_data="synthetic",
                     device=self.device.type, num_threads=self.threads, **{**small, **kw})

    def members(self, n: int) -> list[TrainConfig]:
        from sweeps.calibrate import members
        return members(self.config(), n)

    def trial(self, n: int) -> Trial:
        cfgs = self.members(n)
        return Trial(cfgs if n > 1 else cfgs[0], self.device, stacked=n > 1)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def write(self, part: str, data: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f".{part}.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / f"{part}.json")


def _meta(s: Setup, **kw: Any) -> dict[str, Any]:
    name = torch.cuda.get_device_name(s.device) if s.cuda else "cpu"
    return {"device": name, "torch": torch.__version__, "quick": s.quick,
            "batch_per_member": s.config().batch_size, **kw}


def time_block(fn: Callable[[], object], s: Setup, warmup: int, steps: int) -> float:
    """Seconds per call: `warmup` untimed calls, then the mean of `steps` calls timed as one
    block with a device synchronisation at each end."""
    for _ in range(warmup):
        fn()
    s.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    s.sync()
    return (time.perf_counter() - t0) / steps


def step_times(fn: Callable[[], object], s: Setup, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` calls after `warmup` untimed ones, synchronised per call."""
    times = []
    for i in range(warmup + steps):
        s.sync()
        t0 = time.perf_counter()
        fn()
        s.sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main_step(trial: Trial) -> Callable[[], object]:
    return lambda: trial.step(train_student=True, calibrate=False)


def _reset_peak(s: Setup) -> None:
    gc.collect()                        # the last trial's tensors, cycles included
    if s.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(s.device)


def _peak_mib(s: Setup) -> float | None:
    return round(torch.cuda.max_memory_allocated(s.device) / 2**20, 1) if s.cuda else None


def _steps(s: Setup, full: tuple[int, int]) -> tuple[int, int]:
    return (1, 1) if s.quick else full


# ---- 1. pair: N = 2 packed against two separate steps -----------------------------------------
def pair(s: Setup) -> dict[str, Any]:
    warmup, steps = _steps(s, (3, 15))
    res = _meta(s, part="pair", warmup_steps=warmup, timed_steps=steps)
    cfgs = s.members(2)
    _reset_peak(s)
    singles = [Trial(c, s.device) for c in cfgs]
    one_peak = _peak_mib(s)

    def both() -> None:
        for t in singles:
            t.step(train_student=True, calibrate=False)
    sep = time_block(both, s, warmup, steps)
    res.update(separate_ms_per_member=1e3 * sep / 2, separate_peak_mib=one_peak)
    s.write("pair", res)
    singles.clear()
    _reset_peak(s)
    packed = Trial(cfgs, s.device, stacked=True)
    t = time_block(main_step(packed), s, warmup, steps)
    res.update(packed_ms_per_member=1e3 * t / 2, packed_ms_per_step=1e3 * t,
               packed_peak_mib=_peak_mib(s), speedup=sep / t)
    s.write("pair", res)
    return res


# ---- 2. convs: grouped against a loop -----------------------------------------------------------
# (name, Cin, Cout, kernel, stride, input px, convs of this shape per net). The student is
# packed (grouped over the members); the shared teacher sees one N*B batch instead.
CONV_SHAPES = (
    ("resnet20 stem", 3, 16, 3, 1, 32, 1),
    ("resnet20 stage1", 16, 16, 3, 1, 32, 6),
    ("resnet20 stage2 down", 16, 32, 3, 2, 32, 1),
    ("resnet20 stage2", 32, 32, 3, 1, 16, 5),
    ("resnet20 stage3 down", 32, 64, 3, 2, 16, 1),
    ("resnet20 stage3", 64, 64, 3, 1, 8, 5),
    ("resnet20 shortcut 1x1 16->32", 16, 32, 1, 2, 32, 1),
    ("resnet20 shortcut 1x1 32->64", 32, 64, 1, 2, 16, 1),
    ("generator conv1", 128, 128, 3, 1, 16, 1),
    ("generator conv2", 128, 64, 3, 1, 32, 1),
    ("generator conv3", 64, 3, 3, 1, 32, 1),
)


def _modes(s: Setup) -> list[str]:
    return ["fp32", "tf32", "bf16"] if s.cuda else ["fp32"]


def conv_case(s: Setup, shape: tuple, n: int, batch: int, mode: str,
              warmup: int, reps: int) -> dict[str, Any]:
    """One shape at N members, forward + backward (input and weight gradients), as one conv
    with groups=N (what vmap makes of a pack's convs) and as a loop of N convs."""
    name, cin, cout, k, stride, px, _uses = shape
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    fmt = torch.channels_last
    dev = s.device

    def leaf(*size: int) -> torch.Tensor:
        t = torch.randn(*size, device=dev, dtype=dtype)
        if len(size) == 4:
            t = t.contiguous(memory_format=fmt)
        return t.requires_grad_(True)
    pad = k // 2
    xg, wg = leaf(batch, n * cin, px, px), leaf(n * cout, cin, k, k)
    xs = [leaf(batch, cin, px, px) for _ in range(n)]
    ws = [leaf(cout, cin, k, k) for _ in range(n)]
    out_px = (px + 2 * pad - k) // stride + 1
    gy = torch.ones(batch, n * cout, out_px, out_px, device=dev, dtype=dtype)
    gy = gy.contiguous(memory_format=fmt)
    gys = [torch.ones(batch, cout, out_px, out_px, device=dev,
                      dtype=dtype).contiguous(memory_format=fmt) for _ in range(n)]

    def grouped() -> None:
        xg.grad = wg.grad = None
        F.conv2d(xg, wg, None, stride, pad, 1, n).backward(gy)

    def loop() -> None:
        for x, w, g in zip(xs, ws, gys, strict=True):
            x.grad = w.grad = None
            F.conv2d(x, w, None, stride, pad).backward(g)
    flop = 3 * 2.0 * batch * n * cout * cin * k * k * out_px * out_px   # fwd + 2 gradients
    tg = time_block(grouped, s, warmup, reps)
    tl = time_block(loop, s, warmup, reps)
    return {"layer": name, "cin": cin, "cout": cout, "kernel": k, "stride": stride, "px": px,
            "uses_per_net": shape[6], "n": n, "mode": mode, "grouped_ms": 1e3 * tg,
            "loop_ms": 1e3 * tl, "grouped_over_loop": tl / tg,
            "grouped_tflops": flop / tg / 1e12, "loop_tflops": flop / tl / 1e12}


def convs(s: Setup, sizes: tuple[int, ...] = (8,)) -> dict[str, Any]:
    warmup, reps = _steps(s, (3, 10))
    batch = 2 if s.quick else 200
    shapes = CONV_SHAPES[:2] + CONV_SHAPES[-1:] if s.quick else CONV_SHAPES
    sizes = (2,) if s.quick else sizes
    res = _meta(s, part="convs", batch_per_member=batch, sizes=list(sizes), modes=_modes(s),
                memory_format="channels_last", rows=[])
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        for mode in _modes(s):
            set_tf32("conv" if mode == "tf32" else "off", s.device)
            for n in sizes:
                for shape in shapes:
                    res["rows"].append(conv_case(s, shape, n, batch, mode, warmup, reps))
                    s.write("convs", res)
                    _reset_peak(s)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    return res


# ---- 3. curve: t(N) and peak memory ------------------------------------------------------------
def curve(s: Setup, sizes: tuple[int, ...] = CURVE_SIZES, budget_s: float = 60.0) -> dict[str, Any]:
    warmup, steps = _steps(s, (3, 10))
    sizes = (1, 2) if s.quick else sizes
    total = torch.cuda.get_device_properties(s.device).total_memory if s.cuda else None
    res = _meta(s, part="curve", warmup_steps=warmup, timed_steps=steps, rows=[], stop="",
                gpu_memory_mib=total / 2**20 if total else None)
    rows: list[dict[str, Any]] = res["rows"]
    start = time.perf_counter()
    for n in sizes:
        if len(rows) >= 2 and total and rows[0]["peak_mib"] and rows[1]["peak_mib"]:
            per = (rows[1]["peak_mib"] - rows[0]["peak_mib"]) / (rows[1]["n"] - rows[0]["n"])
            predicted = rows[0]["peak_mib"] + per * (n - rows[0]["n"])
            if predicted > MEMORY_FRACTION * total / 2**20:
                res["stop"] = (f"N = {n} would need ~{predicted:.0f} MiB, over "
                               f"{MEMORY_FRACTION:.0%} of the GPU")
                break
        spent = time.perf_counter() - start
        if rows and spent + (warmup + steps + 2) * rows[-1]["step_ms"] / 1e3 * n / rows[-1]["n"] \
                > budget_s:
            res["stop"] = f"N = {n} would pass the part's time budget of {budget_s:g} s"
            break
        _reset_peak(s)
        try:
            trial = s.trial(n)
            t = time_block(main_step(trial), s, warmup, steps)
        except RuntimeError as e:      # torch.cuda.OutOfMemoryError, or cuDNN's own
            what = "ran out of memory" if "out of memory" in str(e) else "failed"
            res["stop"] = f"N = {n} {what} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            break
        finally:
            trial = None
        one = rows[0]["member_steps_per_s"] if rows else n / t
        peak = _peak_mib(s)
        rows.append({"n": n, "step_ms": 1e3 * t, "ms_per_member": 1e3 * t / n,
                     "member_steps_per_s": n / t, "x_one": n / t / one,
                     "peak_mib": peak, "peak_mib_per_member": peak / n if peak else None})
        s.write("curve", res)
    res["stop"] = res["stop"] or f"largest size tried ({rows[-1]['n']})"
    res["seconds"] = time.perf_counter() - start
    s.write("curve", res)
    return res


# ---- 4. profile at N = 16 ------------------------------------------------------------------------
def profile(s: Setup, n: int = 16) -> dict[str, Any]:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    warmup, steps = _steps(s, (3, 5))
    n = 2 if s.quick else n
    res = _meta(s, part="profile", n=n, profiled_steps=steps)
    trial = s.trial(n)
    step = main_step(trial)
    for _ in range(warmup):
        step()
    s.sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.cuda else [])
    with torch_profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        s.sync()
        wall = time.perf_counter() - t0
    res["wall_ms_per_step"] = 1e3 * wall / steps
    s.write("profile", res)                    # (reading the events takes a while)
    events = prof.events()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    launches = [e for e in events if e.device_type == DeviceType.CPU and "LaunchKernel" in e.name]
    aten = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    res.update(wall_ms_per_step=1e3 * wall / steps, aten_calls_per_step=len(aten) / steps)
    if s.cuda:
        by: dict[str, list[float]] = {}
        for e in kernels:
            by.setdefault(e.name, []).append(e.time_range.elapsed_us())
        busy_us = sum(sum(v) for v in by.values())
        top = sorted(by.items(), key=lambda kv: -sum(kv[1]))[:10]
        res.update(kernels_per_step=len(kernels) / steps,
                   kernel_launches_per_step=len(launches) / steps,
                   kernel_ms_per_step=busy_us / 1e3 / steps,
                   gpu_busy_fraction=busy_us / 1e6 / wall,
                   top_kernels=[{"name": k[:160], "calls_per_step": len(v) / steps,
                                 "ms_per_step": sum(v) / 1e3 / steps,
                                 "share_of_kernel_time": sum(v) / busy_us}
                                for k, v in top])
    else:                                      # CPU: the top aten calls by self CPU time
        by_cpu: dict[str, float] = {}
        for e in aten:
            by_cpu[e.name] = by_cpu.get(e.name, 0.0) + e.self_cpu_time_total
        top_cpu = sorted(by_cpu.items(), key=lambda kv: -kv[1])[:10]
        res.update(kernels_per_step=None, kernel_launches_per_step=None,
                   gpu_busy_fraction=None,
                   top_ops_cpu=[{"name": k, "self_ms_per_step": v / 1e3 / steps}
                                for k, v in top_cpu])
    s.write("profile", res)
    return res


# ---- 5. procs: K processes of one trial each, against one trial alone -------------------------
def procs(s: Setup, k: int = 4, steps: int = 40) -> dict[str, Any]:
    k, steps = (2, 1) if s.quick else (k, steps)
    warmup = 1 if s.quick else 3
    res = _meta(s, part="procs", procs=k, steps_each=steps)
    alone = Trial(s.config(), s.device)
    t = time_block(main_step(alone), s, warmup, steps)
    res.update(alone_steps_per_s=1 / t)
    s.write("procs", res)
    del alone
    _reset_peak(s)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", "--device", s.device.type,
           "--procs", str(k), "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(s.threads)] + (["--quick"] if s.quick else [])
    children = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(k)]
    try:
        for c in children:                       # each warmed up and waiting at the barrier
            said = []
            for line in iter(c.stdout.readline, ""):     # up to "ready", or the end
                if line.strip() == "ready":
                    break
                said.append(line.strip())
            else:
                raise RuntimeError(f"a child process exited {c.wait()} before it was "
                                   f"ready: {' | '.join(said)[-300:]}")
        for c in children:
            c.stdin.write("go\n")
            c.stdin.flush()
        got = [json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    wall = max(g["end"] for g in got) - min(g["start"] for g in got)
    rate = k * steps / wall
    res.update(procs_trial_steps_per_s=rate, procs_each_steps_per_s=[g["rate"] for g in got],
               procs_wall_s=wall, procs_x_alone=rate * t)
    s.write("procs", res)
    return res


def _child(args: argparse.Namespace) -> None:
    s = _setup(args)
    if s.cuda:
        torch.cuda.set_per_process_memory_fraction(1.0 / args.procs, s.device)
    trial = Trial(s.config(), s.device)
    step = main_step(trial)
    for _ in range(args.warmup):
        step()
    s.sync()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return                                     # the parent went away
    start = time.time()
    for _ in range(args.steps):
        step()
    s.sync()
    end = time.time()
    print(json.dumps({"start": start, "end": end, "rate": args.steps / (end - start)}),
          flush=True)


# ---- 6. calibrate -------------------------------------------------------------------------------
def calibrate(s: Setup, budget_s: float = 35.0) -> dict[str, Any]:
    from sweeps import calibrate as cal_mod
    os.environ.setdefault("QIMERA_CALIBRATION", str(s.out / "calibration-cache.json"))
    cfg = s.config()
    cal = cal_mod.calibrate_local(cfg, use_cache=False, budget_s=1.0 if s.quick else budget_s)
    res = _meta(s, part="calibrate", **cal.to_json(), table=cal.table())
    print(cal.table())
    s.write("calibrate", res)
    return res


# ---- 7. train: the 2,000-step CIFAR-10 run ------------------------------------------------------
def train_run(s: Setup, data: Path | None = None) -> dict[str, Any]:
    """qimera_core.train's command line, in this process: the real teacher and test images when
    `data` holds them (the akamaster ResNet-20 and the first 1000 CIFAR-10 test images), else
    random teacher weights and synthetic eval data."""
    from qimera_core import train as train_mod
    run = s.out / "cifar10-run"
    ckpt, npz = ((data / "resnet20_cifar10_akamaster.th", data / "cifar10-test-first1000.npz")
                 if data else (None, None))
    real = bool(ckpt and ckpt.is_file() and npz.is_file())
    teacher = (["--teacher", "resnet20_cifar10_a", "--teacher-weights", str(ckpt),
                "--eval-data", f"npz:{npz}"] if real else
               ["--teacher-weights", "random", "--eval-data", "synthetic"])
    sched = (["--epochs", "2", "--steps-per-epoch", "1", "--warmup-epochs", "1",
              "--act-range-epochs", "1", "--lr-milestones", "1", "--batch-size", "2",
              "--eval-batch-size", "16"] if s.quick else
             ["--epochs", "10", "--steps-per-epoch", "200", "--warmup-epochs", "2",
              "--act-range-epochs", "2", "--lr-milestones", "8"])
    argv = ["--preset", PRESET, *teacher, *sched, "--device", s.device.type,
            "--num-threads", str(s.threads), "--out", str(run)]
    res = _meta(s, part="train", argv=argv, real_teacher_and_data=real)
    if not real:
        res["note"] = ("random teacher weights and synthetic test images: the accuracies "
                       "mean nothing, the speed does" + (f" ({data} lacks the akamaster "
                                                         "checkpoint or the CIFAR-10 file)"
                                                         if data else ""))
    s.write("train", res)
    shutil.rmtree(run, ignore_errors=True)          # a fresh run, not a resumed one
    t0 = time.perf_counter()
    rc = train_mod.main(argv)
    wall = time.perf_counter() - t0
    if not (run / "result.json").is_file():
        res.update(rc=rc, error=f"qimera_core.train exited {rc} without a result.json")
        s.write("train", res)
        return res
    result = json.loads((run / "result.json").read_text())
    metrics, cfg = result["metrics"], result["config"]
    steps = cfg["epochs"] * cfg["steps_per_epoch"]
    step_s = metrics.get("step_time_s") or math.nan          # the last epoch's mean
    run_s = metrics.get("wall_time_s") or math.nan            # training + evaluation
    res.update(rc=rc, status=result["status"], steps=steps, wall_s=wall,
               steps_per_s_wall=steps / wall, steps_per_s_run=steps / run_s,
               steps_per_s_training=1 / step_s,
               final={k: metrics.get(k) for k in ("teacher_top1", "start_top1", "top1", "top5",
                                                  "best_top1", "best_epoch")})
    s.write("train", res)
    return res


# ---- 8. compile ---------------------------------------------------------------------------------
def compile_part(s: Setup, n: int = 8, backend: str = "inductor") -> dict[str, Any]:
    from qimera_core import pack
    warmup, steps = _steps(s, (3, 10))
    n = 2 if s.quick else n
    res = _meta(s, part="compile", n=n, backend=backend,
                what="the generator's and the student's forwards (vmapped over the pack) "
                     "under torch.compile; teacher, losses and optimizers eager")
    trial = s.trial(n)
    res["eager_ms_per_step"] = 1e3 * statistics.median(step_times(main_step(trial), s,
                                                                  warmup, steps))
    s.write("compile", res)
    from torch._dynamo.utils import counters
    # static shapes: the generator sees K = 1 or 2 slots (a plain or a superposed batch), two
    # graphs; symbolic sizes under vmap fail and fall back to eager (torch 2.14)
    for wrap in (trial._g, trial._s):
        if isinstance(wrap, pack.Stack):
            wrap._each = torch.compile(wrap._each, backend=backend, dynamic=False)
        else:
            wrap.module = torch.compile(wrap.module, backend=backend, dynamic=False)
    t0 = time.perf_counter()
    try:
        main_step(trial)()
        s.sync()
        res["first_step_s"] = time.perf_counter() - t0    # the compilation, mostly
        s.write("compile", res)
        times = step_times(main_step(trial), s, warmup, steps)   # a late graph: an outlier
        t = statistics.median(times)
        res.update(compiled_ms_per_step=1e3 * t, compiled_ms_max=1e3 * max(times),
                   speedup=res["eager_ms_per_step"] / 1e3 / t)
    except Exception as e:  # noqa: BLE001 - a failed compilation is a result to report
        res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    res.update(graphs=counters["stats"].get("unique_graphs", 0),
               graph_breaks=sum(counters["graph_break"].values()))
    s.write("compile", res)
    return res


# ---- summary -----------------------------------------------------------------------------
PARTS = ("pair", "convs", "curve", "profile", "procs", "calibrate", "train", "compile")


def _f(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summarize(out: Path) -> dict[str, Any]:
    """Every part's JSON (and its exit status from parts.jsonl, written by device_check.sh)
    in device_check.json, and a table of the headline figures in summary.txt."""
    def load(name: str) -> dict[str, Any] | None:
        p = out / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None
    status: dict[str, dict[str, Any]] = {}
    if (out / "parts.jsonl").is_file():
        for line in (out / "parts.jsonl").read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                status[d["part"]] = d
    env = load("env") or {}
    parts = {name: load(name) for name in PARTS}
    lines = [f"device_check: {env.get('env', {}).get('gpu', 'no GPU')} | torch "
             f"{env.get('env', {}).get('torch', '?')} | CUDA {env.get('env', {}).get('cuda_build')}"
             f" | cuDNN {env.get('env', {}).get('cudnn')}", ""]
    lines.append(f"{'part':10s} {'exit':>5s} {'seconds':>8s}  note")
    for name in ("gpu-tests", *PARTS[:-1], "synthesis", PARTS[-1]):
        st = status.get(name, {})
        why = st.get("why", "")
        if name in parts and parts[name] is None and not why:
            why = "no JSON written"
        lines.append(f"{name:10s} {_f(st.get('rc'), 'd'):>5s} {_f(st.get('seconds'), 'd'):>8s}"
                     f"  {why}")
    head: dict[str, Any] = {}
    if (p := parts["pair"]) and "speedup" in p:
        lines += ["", f"N = 2 packed: {p['packed_ms_per_member']:.2f} ms per member against "
                      f"{p['separate_ms_per_member']:.2f} ms stepped separately "
                      f"({p['speedup']:.2f}x)"]
        head["pair_speedup"] = p["speedup"]
    if (c := parts["convs"]) and c.get("rows"):
        lines += ["", "convs, forward + backward, grouped over N members vs a loop of N "
                      f"(batch {c['batch_per_member']} per member):",
                  f"  {'layer':30s} {'N':>3s} {'mode':>5s} {'grouped ms':>11s} {'loop ms':>9s} "
                  f"{'loop/grp':>9s} {'grp TFLOP/s':>12s}"]
        for r in c["rows"]:
            lines.append(f"  {r['layer']:30s} {r['n']:3d} {r['mode']:>5s} "
                         f"{r['grouped_ms']:11.3f} {r['loop_ms']:9.3f} "
                         f"{r['grouped_over_loop']:9.2f} {r['grouped_tflops']:12.2f}")
    rate: dict[int, float] = {}
    if (c := parts["curve"]) and c.get("rows"):
        lines += ["", f"t(N), main-phase packed step ({c.get('stop', '')}):",
                  f"  {'N':>4s} {'ms/step':>9s} {'ms/member':>10s} {'member-steps/s':>15s} "
                  f"{'x N=1':>6s} {'peak MiB':>9s} {'MiB/member':>11s}"]
        for r in c["rows"]:
            rate[r["n"]] = r["member_steps_per_s"]
            lines.append(f"  {r['n']:4d} {r['step_ms']:9.2f} {r['ms_per_member']:10.2f} "
                         f"{r['member_steps_per_s']:15.1f} {r['x_one']:6.2f} "
                         f"{_f(r['peak_mib'], '.0f'):>9s} "
                         f"{_f(r['peak_mib_per_member'], '.0f'):>11s}")
    if (p := parts["profile"]) and "wall_ms_per_step" in p:
        lines += ["", f"profile at N = {p['n']}: {p['wall_ms_per_step']:.1f} ms/step, "
                      f"{_f(p.get('kernels_per_step'), '.0f')} kernels "
                      f"({_f(p.get('kernel_launches_per_step'), '.0f')} launch calls) and "
                      f"{p['aten_calls_per_step']:.0f} aten calls per step, GPU busy "
                      f"{_f(p.get('gpu_busy_fraction'), '.0%')}"]
        for r in p.get("top_kernels", []):
            lines.append(f"  {r['ms_per_step']:8.3f} ms {r['share_of_kernel_time']:5.1%}  "
                         f"x{r['calls_per_step']:.0f}  {r['name'][:90]}")
        head["gpu_busy_fraction_n16"] = p.get("gpu_busy_fraction")
    one = rate.get(1)
    pr = parts["procs"]
    if pr and "alone_steps_per_s" in pr:
        one = one or pr["alone_steps_per_s"]
    if one:
        lines += ["", "throughput against one trial alone "
                      f"({one:.1f} steps/s; target: a pack of 8 at >= 4x):"]
        if pr and "procs_trial_steps_per_s" in pr:
            x = pr["procs_trial_steps_per_s"] / pr["alone_steps_per_s"]
            lines.append(f"  {pr['procs']} processes x 1/{pr['procs']} GPU: "
                         f"{pr['procs_trial_steps_per_s']:.1f} trial-steps/s = {x:.2f}x "
                         f"(alone in that part: {pr['alone_steps_per_s']:.1f} steps/s)")
            head[f"procs{pr['procs']}_x_one"] = x
        for n in (4, 8):
            if n in rate:
                lines.append(f"  pack of {n}: {rate[n]:.1f} member-steps/s = "
                             f"{rate[n] / rate[1]:.2f}x")
                head[f"pack{n}_x_one"] = rate[n] / rate[1]
        if 8 in rate:
            met = rate[8] / rate[1] >= 4
            lines.append(f"  target (pack of 8 >= 4x one trial): {'met' if met else 'NOT met'}")
            head["pack8_target_met"] = met
    if (c := parts["calibrate"]) and "table" in c:
        lines += ["", c["table"]]
        head["calibrated_size"] = c.get("size")
    if (t := parts["train"]) and "steps_per_s_wall" in t:
        fin = t["final"]
        lines += ["", f"CIFAR-10 run, {t['steps']} steps: {t['steps_per_s_training']:.3g} "
                      f"steps/s training (last epoch), {t['steps_per_s_run']:.3g} with "
                      f"evaluation, {t['steps_per_s_wall']:.3g} with setup ({t['wall_s']:.0f} "
                      f"s); status {t['status']}; teacher top-1 "
                      f"{_f(fin.get('teacher_top1'), '.2f')}, final top-1 "
                      f"{_f(fin.get('top1'), '.2f')}"
                      + ("" if t.get("real_teacher_and_data") else " (random teacher, "
                         "synthetic data: accuracies mean nothing)")]
        head["train_steps_per_s"] = t["steps_per_s_training"]
    if (c := load("synthesis")) and "speedup" in c:
        lines += ["", f"{c['method']} synthesis, {c['teacher']} batch {c['batch']}, "
                      f"{c['seeds']} seeds: lone {c['lone_images_per_s']:.0f}, packed "
                      f"{c['packed_images_per_s']:.0f} image-iterations/s "
                      f"({c['speedup']:.2f}x)"]
        head["synthesis_packed_x_lone"] = c["speedup"]
        parts["synthesis"] = c
    if (c := parts["compile"]) and "eager_ms_per_step" in c:
        got = (f"compiled {c['compiled_ms_per_step']:.2f} ms ({c['speedup']:.2f}x, first "
               f"step {c['first_step_s']:.0f} s)" if "compiled_ms_per_step" in c
               else c.get("error", "compilation did not finish (timeout)"))
        lines += ["", f"torch.compile ({c['backend']}) at N = {c['n']}: eager "
                      f"{c['eager_ms_per_step']:.2f} ms/step, {got}"]
        head["compile_speedup"] = c.get("speedup")
    report = {"env": env.get("env"), "headline": head, "status": status, "parts": parts}
    (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    print(text, end="")
    return report


# ---- command line ------------------------------------------------------------------------
def _setup(args: argparse.Namespace) -> Setup:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return Setup(device, args.quick, Path(args.out), args.threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=[*PARTS, "summary", "_child"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="/tmp/qimera-device-check")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a test of the logic")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all)")
    p.add_argument("--data", default="", help="train: a folder with the akamaster teacher "
                   "and cifar10-test-first1000.npz (else random teacher, synthetic data)")
    p.add_argument("--budget-s", type=float, default=0.0, help="curve, calibrate: time budget")
    p.add_argument("--sizes", default="", help="curve, convs: N values")
    p.add_argument("--n", type=int, default=0, help="profile (16), compile (8): pack size")
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="procs: steps per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backend", default="", help="compile: inductor (default; eager on a CPU "
                   "with --quick)")
    args = p.parse_args(argv)
    if args.part == "summary":
        summarize(Path(args.out))
        return 0
    if args.part == "_child":
        _child(args)
        return 0
    s = _setup(args)
    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else None
    budget = {"budget_s": args.budget_s} if args.budget_s else {}
    n = {"n": args.n} if args.n else {}
    run: dict[str, Callable[[], dict[str, Any]]] = {
        "pair": lambda: pair(s),
        "convs": lambda: convs(s, *([sizes] if sizes else [])),
        "curve": lambda: curve(s, *([sizes] if sizes else []), **budget),
        "profile": lambda: profile(s, **n),
        "procs": lambda: procs(s, args.procs, args.steps),
        "calibrate": lambda: calibrate(s, **budget),
        "train": lambda: train_run(s, Path(args.data) if args.data else None),
        "compile": lambda: compile_part(s, **n, backend=args.backend or (
            "eager" if s.quick and not s.cuda else "inductor")),
    }
    res = run[args.part]()
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
