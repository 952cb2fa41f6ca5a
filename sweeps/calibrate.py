"""--pack auto by measurement: time a few real packed steps at N = 1, 2, 4, 8, ... members on
the kind of node the trials run on, and pick the pack size from the curve.

    measure(make, ...)     the timing core: any `make(n) -> step` and an injectable clock
    choose(rows)           the smallest N within TOLERANCE of the best throughput
    calibrate_local(cfg)   real Trial steps of `cfg`'s pack kind here, cached on disk
    calibrate_on_ray(cfg)  the same as a Ray task with the trial's CPUs and GPU share
                           (the driver may have no GPU), with a timeout

Throughput is member-steps per second (N / seconds per packed step). Sizes double until the
throughput stops rising (by at least RISE), a step fails (out of memory, say), the memory cap
is reached or the time budget is spent. The cap is predicted from the measured peak at N = 1
and N = 2 (CUDA: torch's peak allocation; CPU: the process's peak RSS) against
MEMORY_FRACTION of the device's memory.

Results are cached as JSON per (device name, torch version, pack key, threads) in
`$QIMERA_CALIBRATION` if set, else `<cache dir>/calibration.json` (the prepared cache,
default ~/.cache/qimera-sweeps), where later sweeps on the same kind of node find them.
Delete the file (or an entry) to measure again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qimera_core.config import TrainConfig

log = logging.getLogger(__name__)

SIZES = (1, 2, 4, 8, 16, 32, 64)
TOLERANCE = 0.10        # the smallest N within 10 % of the best throughput is chosen
RISE = 0.03             # doubling N must raise throughput by at least 3 % to go on
MEMORY_FRACTION = 0.8   # of the GPU's (or the machine's available) memory
WARMUP_STEPS = 1
TIMED_STEPS = 3
BUDGET_S = 60.0         # measuring stops at the next size once this much time is spent
TIMEOUT_S = 300.0       # the Ray task; past it, today's rule is used
VERSION = 1             # of the cache entries


@dataclass
class Row:
    n: int
    step_s: float                       # seconds per packed step (all n members)
    peak_bytes: float | None = None     # peak memory of the process while stepping

    @property
    def throughput(self) -> float:      # member-steps per second
        return self.n / self.step_s


@dataclass
class Calibration:
    key: str
    device: str
    rows: list[Row] = field(default_factory=list)
    size: int = 1
    stop: str = ""                      # why measuring stopped
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "key": self.key, "device": self.device, "size": self.size,
                "stop": self.stop, "rows": [dataclasses.asdict(r) for r in self.rows],
                "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        return cls(key=d["key"], device=d["device"], rows=[Row(**r) for r in d["rows"]],
                   size=int(d["size"]), stop=d.get("stop", ""), cached=True)

    def table(self) -> str:
        """The measured curve, as printed before a sweep launches."""
        best = max((r.throughput for r in self.rows), default=1.0)
        lines = [f"pack calibration on {self.device}{' (cached)' if self.cached else ''}: "
                 f"N = {self.size} ({self.stop})",
                 "     N   ms/step   member-steps/s   vs N=1   of best   peak MiB"]
        one = self.rows[0].throughput if self.rows else 1.0
        for r in self.rows:
            peak = f"{r.peak_bytes / 2**20:9.0f}" if r.peak_bytes else "        -"
            mark = "  <-" if r.n == self.size else ""
            lines.append(f"  {r.n:4d}  {r.step_s * 1e3:8.1f}  {r.throughput:15.1f}  "
                         f"{r.throughput / one:6.2f}x  {r.throughput / best:7.0%}  {peak}{mark}")
        return "\n".join(lines)


class CalibrationError(RuntimeError):
    """No usable measurement (the N = 1 step failed): the caller falls back."""


# ---- the timing core -------------------------------------------------------------------------
def measure(make: Callable[[int], Callable[[], None]], *, sizes: Sequence[int] = SIZES,
            limit: int | None = None, clock: Callable[[], float] = time.perf_counter,
            peak: Callable[[], float | None] = lambda: None, memory_cap: float | None = None,
            warmup: int = WARMUP_STEPS, steps: int = TIMED_STEPS, budget_s: float = BUDGET_S
            ) -> tuple[list[Row], str]:
    """Rows of the timing curve and why it stopped. `make(n)` builds a pack of n and returns
    one step of it; `peak()` is the peak memory while stepping the last built size (None:
    unknown), `memory_cap` what may be used; `limit` caps N (the trials there are to pack)."""
    rows: list[Row] = []
    start = clock()
    for n in sizes:
        if limit is not None and n > limit:
            return rows, f"all {limit} trials of this kind fit in one pack"
        if len(rows) >= 2 and memory_cap and rows[0].peak_bytes and rows[1].peak_bytes:
            per = rows[1].peak_bytes - rows[0].peak_bytes
            predicted = rows[0].peak_bytes + per * (n - 1)
            if per > 0 and predicted > memory_cap:
                return rows, (f"N = {n} would need ~{predicted / 2**20:.0f} MiB, over the "
                              f"{memory_cap / 2**20:.0f} MiB cap")
        try:
            step = make(n)
            for _ in range(warmup):
                step()
            t0 = clock()
            for _ in range(steps):
                step()
            dt = (clock() - t0) / steps
        except Exception as e:      # noqa: BLE001 - out of memory and the like end the curve
            if not rows:
                raise CalibrationError(f"a step of one member failed: {e}") from e
            return rows, f"N = {n} failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
        rows.append(Row(n, dt, peak()))
        if len(rows) >= 2 and rows[-1].throughput < rows[-2].throughput * (1 + RISE):
            return rows, f"throughput stopped rising at N = {n}"
        spent = clock() - start
        if spent > budget_s:
            return rows, f"time budget of {budget_s:g} s spent"
        nxt = next((m for m in sizes if m > n), None)      # its steps, if time grew with N
        if nxt is not None and spent + (warmup + steps) * dt * nxt / n > budget_s:
            return rows, f"N = {nxt} would pass the time budget of {budget_s:g} s"
    return rows, f"largest size tried ({rows[-1].n})"


def choose(rows: Sequence[Row], tolerance: float = TOLERANCE) -> int:
    """The smallest N whose throughput is within `tolerance` of the best measured."""
    best = max(r.throughput for r in rows)
    return min(r.n for r in rows if r.throughput >= (1 - tolerance) * best)


# ---- real steps -------------------------------------------------------------------------------
def cache_file(cfg: TrainConfig) -> Path:
    env = os.environ.get("QIMERA_CALIBRATION")
    return Path(env).expanduser() if env else cfg.cache / "calibration.json"


def device_name(cfg: TrainConfig) -> str:
    import torch
    if cfg.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(cfg.device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {max(1, cfg.num_threads)} thread{'s' if cfg.num_threads > 1 else ''}"


def entry_key(cfg: TrainConfig, device: str) -> str:
    import torch

    from qimera_core import pack
    return f"{device} | torch {torch.__version__} | pack {pack.pack_key(cfg)}"


def members(cfg: TrainConfig, n: int) -> list[TrainConfig]:
    """n packable configs like `cfg` (sigma differs by a hair: the same work per member)."""
    return [dataclasses.replace(cfg, noise_sigma=cfg.noise_sigma + i * 1e-3) for i in range(n)]


def _read(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, key: str, cal: Calibration) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    d = _read(path)
    d[key] = cal.to_json()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(d, indent=1, sort_keys=True))
    os.replace(tmp, path)


def calibrate_local(cfg: TrainConfig, limit: int | None = None, *,
                    budget_s: float = BUDGET_S, use_cache: bool = True) -> Calibration:
    """Measure (or read from the cache) the pack curve of `cfg`'s kind on this process's
    device, `cfg.device` and `cfg.num_threads` as a trial would use them."""
    import torch

    from qimera_core.builders import resolve_device
    from qimera_core.step import Trial
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    name = device_name(cfg)
    key = entry_key(cfg, name)
    path = cache_file(cfg)
    old = _read(path).get(key) if use_cache else None
    if old and old.get("version") == VERSION:
        cal = Calibration.from_json(old)
        # a curve cut short by the trials there were to pack stands for no more trials
        cut = cal.stop.startswith("all ") and cal.size == cal.rows[-1].n
        if not cut or (limit is not None and limit <= cal.rows[-1].n):
            return cal
    cuda = device.type == "cuda"
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        cap = MEMORY_FRACTION * total

        def peak() -> float:
            return float(torch.cuda.max_memory_allocated(device))
    else:
        cap = MEMORY_FRACTION * _available_bytes()

        def peak() -> float:
            return _peak_rss()
    state: dict[str, Any] = {}

    def make(n: int) -> Callable[[], None]:
        state.clear()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        trial = Trial(members(cfg, n), device, stacked=n > 1)
        state["trial"] = trial

        def step() -> None:
            trial.step(train_student=True, calibrate=False)
            if cuda:
                torch.cuda.synchronize(device)
        return step

    rows, stop = measure(make, limit=limit, peak=peak, memory_cap=cap, budget_s=budget_s)
    state.clear()
    cal = Calibration(key=key, device=name, rows=rows, size=choose(rows), stop=stop)
    try:
        _write(path, key, cal)
    except OSError as e:
        log.warning("could not cache the pack calibration in %s: %s", path, e)
    return cal


def _peak_rss() -> float:
    import resource
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _available_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def calibrate_on_ray(cfg: TrainConfig, limit: int | None, cpus: int, gpus: float,
                     timeout_s: float = TIMEOUT_S, use_cache: bool = True) -> Calibration:
    """calibrate_local as a Ray task with a trial's resources (`gpus`: one pack's share);
    raises CalibrationError when the task fails or times out."""
    import ray
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_task)
    ref = task.remote(cfg.to_dict(), limit, use_cache)
    try:
        d = ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise CalibrationError(f"timed out after {timeout_s:g} s") from None
    except Exception as e:  # noqa: BLE001 - a failed task: its error, one line
        raise CalibrationError(str(e).strip().splitlines()[-1][:200]) from None
    return Calibration.from_json(d) if d.pop("cached_", False) else _fresh(d)


def _fresh(d: dict[str, Any]) -> Calibration:
    cal = Calibration.from_json(d)
    cal.cached = False
    return cal


def _task(cfg_dict: dict[str, Any], limit: int | None, use_cache: bool) -> dict[str, Any]:
    cal = calibrate_local(TrainConfig.from_dict(cfg_dict), limit, use_cache=use_cache)
    return {**cal.to_json(), "cached_": cal.cached}


def sweep_measure(gpus: dict[str, float], cpus: int, say: Callable[[str], None] = print,
                  timeout_s: float = TIMEOUT_S, use_cache: bool = True,
                  ) -> Callable[[TrainConfig, int], int | None]:
    """For sweeps.plan.plan_packs: the measured pack size of a kind (a Ray task per kind and
    device, or its cached result unless `use_cache` is off: --recalibrate), its table
    printed; None, saying so, when it fails."""
    from sweeps.plan import place

    def measure(cfg: TrainConfig, count: int) -> int | None:
        if count < 2:
            return 1
        placed = place(cfg, gpus, cpus)
        share = gpus[cfg.teacher]
        try:
            cal = calibrate_on_ray(placed, count, cpus, min(1.0, share * count) if share else 0,
                                   timeout_s=timeout_s, use_cache=use_cache)
        except CalibrationError as e:
            say(f"pack calibration of {cfg.teacher} failed ({e}); packing by the fixed rule "
                "instead (sweeps.plan.auto_pack_size)")
            return None
        say(cal.table())
        if not cal.cached:
            say(f"  (cached in {cache_file(placed)})")
        return cal.size
    return measure
