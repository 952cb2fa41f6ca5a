"""--pack auto by measurement (sweeps.calibrate): the choice on synthetic timing curves fed
through an injected clock, the balanced dealing, the fallback to the fixed rule, the cache."""

import argparse
import json

import pytest

from sweeps import calibrate
from sweeps.calibrate import CalibrationError, Row, choose, measure
from sweeps.plan import deal


class FakeClock:
    """A clock that only moves when a fake step runs: t(n) seconds per step of a pack of n."""

    def __init__(self, t, peak_mib=None, fail_at=None):
        self.now, self.t, self.peak_mib, self.fail_at = 0.0, t, peak_mib, fail_at
        self.built = []

    def __call__(self):
        return self.now

    def make(self, n):
        self.built.append(n)
        if self.fail_at is not None and n >= self.fail_at:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        def step():
            self.now += self.t(n)
        return step

    def peak(self):
        return None if self.peak_mib is None else self.peak_mib(self.built[-1]) * 2**20


def curve(clock, **kw):
    return measure(clock.make, clock=clock, peak=clock.peak, **kw)


def test_the_knee_the_smallest_size_within_ten_percent_of_the_best():
    # throughput n / t(n): 100, 180, 300, 380, then 385 (under 3 % more)
    thr = {1: 100, 2: 180, 4: 300, 8: 380, 16: 385, 32: 390}
    clock = FakeClock(lambda n: n / thr[n])
    rows, stop = curve(clock)
    assert [r.n for r in rows] == [1, 2, 4, 8, 16] and "stopped rising at N = 16" in stop
    assert clock.built == [1, 2, 4, 8, 16]                 # 32 was never built
    assert choose(rows) == 8                               # 380 >= 0.9 * 385
    assert rows[3].step_s == pytest.approx(8 / 380)


def test_a_cpu_curve_that_never_pays_chooses_one():
    clock = FakeClock(lambda n: 0.0188 * n * (1.0 if n == 1 else 0.99))
    rows, stop = curve(clock)
    assert [r.n for r in rows] == [1, 2] and choose(rows) == 1


def test_the_memory_cap_from_the_peaks_at_one_and_two_members():
    # 1000 MiB base + 3000 MiB per member, cap 16000 MiB: N = 4 needs ~13000, N = 8 ~25000
    clock = FakeClock(lambda n: n ** -0.5, peak_mib=lambda n: 1000 + 3000 * n)  # rising
    rows, stop = curve(clock, memory_cap=16000 * 2**20)
    assert [r.n for r in rows] == [1, 2, 4] and "over the 16000 MiB cap" in stop
    assert choose(rows) == 4


def test_a_failing_size_ends_the_curve_and_a_failing_first_step_raises():
    clock = FakeClock(lambda n: 1.0 / n if n < 8 else 1.0, fail_at=8)
    rows, stop = curve(clock)
    assert [r.n for r in rows] == [1, 2, 4] and "N = 8 failed (RuntimeError: CUDA out" in stop
    with pytest.raises(CalibrationError, match="one member failed"):
        curve(FakeClock(lambda n: 1.0, fail_at=1))


def test_the_limit_and_the_time_budget_stop_the_curve():
    rows, stop = curve(FakeClock(lambda n: 1.0), limit=3)
    assert [r.n for r in rows] == [1, 2] and stop == "all 3 trials of this kind fit in one pack"
    rows, stop = curve(FakeClock(lambda n: 10.0), budget_s=25)   # 4 steps of 10 s per size
    assert [r.n for r in rows] == [1] and "budget" in stop
    # a slow N = 1 (a CIFAR step on a CPU): N = 2 would take ~8 steps' time, so it stops first
    rows, stop = curve(FakeClock(lambda n: 5.0 * n), budget_s=50)
    assert [r.n for r in rows] == [1] and stop == "N = 2 would pass the time budget of 50 s"


def test_balanced_dealing():
    # Table 8's 15 CIFAR-10 runs: 5 DM depths (5 kinds) x 3 seeds, on 10 slots, packs of <= 8
    groups = [[f"dm{d}-s{s}" for s in range(3)] for d in (0, 1, 2, 4, 8)]
    packs = deal(groups, 8, slots=10)
    assert len(packs) == 10 and sorted(map(len, packs)) == [1] * 5 + [2] * 5
    assert sorted(x for p in packs for x in p) == sorted(x for g in groups for x in g)
    assert all(len({x.split("-")[0] for x in p}) == 1 for p in packs)   # kinds never mix
    # fewer slots than kinds: a whole number of rounds (6 packs on 2 slots); a small cap
    # splits evenly (7 -> 3+2+2)
    assert sorted(len(p) for p in deal(groups, 8, slots=2)) == [1, 2, 3, 3, 3, 3]
    assert sorted(len(p) for p in deal([list(range(7))], 3, slots=1)) == [2, 2, 3]
    # 72 digits runs, one kind, cap 16, 2 slots: 6 packs of 12 (3 rounds, both cores busy)
    assert [len(p) for p in deal([list(range(72))], 16, slots=2)] == [12] * 6
    # more slots than runs: every run alone
    assert [len(p) for p in deal([[1, 2, 3]], 8, slots=16)] == [1, 1, 1]


def _args(pack=None):
    return argparse.Namespace(pack=pack)


def test_plan_packs_uses_the_measure_and_falls_back_where_it_fails():
    from qimera_core.config import build
    from sweeps.plan import plan_packs
    digits = [build("digits-smoke", seed=s, mix_prob=p) for s in range(3) for p in (0.2, 0.4)]
    cifar = [build("cifar10-resnet20-4w4a", seed=s) for s in range(4)]
    gpus = {"digits_resnet8": 0.0, "resnet20_cifar10": 0.25}
    sizes = {"digits_resnet8": 4, "resnet20_cifar10": None}
    asked = []

    def m(cfg, count):
        asked.append((cfg.teacher, count))
        return sizes[cfg.teacher]
    packs = plan_packs(digits + cifar, _args(), gpus, slots=2, measure=m)
    assert sorted(asked) == [("digits_resnet8", 6), ("resnet20_cifar10", 4)]
    by = {t: sorted(len(p) for p in packs if p[0].teacher == t) for t in gpus}
    assert by == {"digits_resnet8": [3, 3], "resnet20_cifar10": [4]}   # fixed rule: GPU, <= 8
    assert [len(p) for p in plan_packs(digits, _args(2), gpus, 2, m)] == [2, 2, 2]
    assert [len(p) for p in plan_packs(digits, _args("off"), gpus, 2, m)] == [1] * 6


def test_gpu_kinds_are_dealt_over_the_packs_the_gpus_hold():
    """A GPU node has many CPUs per GPU: 72 CIFAR runs measured at N = 8 on 8 GPUs and 96
    CPUs run 8 whole-GPU packs at once, not 72 runs alone (the CPU slots); then a whole
    number of rounds: 16 packs of 4-5 (each still a whole GPU's share at 0.25 per run)."""
    from qimera_core.config import build
    from sweeps.plan import pack_slots, plan_packs
    cifar = [build("cifar10-resnet20-4w4a", seed=s, mix_prob=p)
             for s in range(8) for p in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]
    gpus = {"resnet20_cifar10": 0.25}
    packs = plan_packs(cifar, _args(), gpus, slots=96, measure=lambda c, n: 8, cluster_gpus=8)
    assert sorted({len(p) for p in packs}) == [4, 5] and len(packs) == 16
    assert sum(map(len, packs)) == 72
    # without GPUs in the cluster (or a CPU kind) the CPU slots decide, as before
    alone = plan_packs(cifar, _args(), gpus, slots=96, measure=lambda c, n: 8)
    assert len(alone) == 72
    assert pack_slots(0.25, 8, 8) == 8 and pack_slots(0.25, 2, 8) == 16
    assert pack_slots(0.1, 3, 1) == 3 and pack_slots(1.0, 1, 4) == 4      # float-safe floor
    assert pack_slots(0.0, 8, 8) is None and pack_slots(0.25, 8, 0) is None


def test_the_table_and_the_cache_round_trip(tmp_path, monkeypatch):
    cal = calibrate.Calibration(key="k", device="cpu X, 1 thread",
                                rows=[Row(1, 0.02, 100 * 2**20), Row(2, 0.036, 120 * 2**20)],
                                size=2, stop="largest size tried (2)")
    text = cal.table()
    assert "N = 2" in text and "1.11x" in text and text.splitlines()[-1].endswith("<-")
    path = tmp_path / "cal.json"
    calibrate._write(path, "k", cal)
    back = calibrate.Calibration.from_json(json.loads(path.read_text())["k"])
    assert back.cached and back.size == 2 and back.rows[1].n == 2


def test_calibrate_local_measures_real_steps_then_reads_the_cache(tmp_path, monkeypatch):
    """A real digits pack on this CPU, timed for a few steps, then found in the cache."""
    from qimera_core.config import build
    monkeypatch.setenv("QIMERA_CALIBRATION", str(tmp_path / "cal.json"))
    cfg = build("digits-smoke", teacher_weights="random", batch_size=8, device="cpu",
                num_threads=1)
    cal = calibrate.calibrate_local(cfg, limit=2, budget_s=20)
    assert not cal.cached and [r.n for r in cal.rows][:1] == [1] and cal.size in (1, 2)
    assert all(r.step_s > 0 for r in cal.rows) and cal.rows[0].peak_bytes > 0
    again = calibrate.calibrate_local(cfg, limit=2)
    assert again.cached and again.size == cal.size and again.key == cal.key
    fresh = calibrate.calibrate_local(cfg, limit=2, budget_s=20, use_cache=False)  # --recalibrate
    assert not fresh.cached and fresh.key == cal.key
    stored = json.loads((tmp_path / "cal.json").read_text())[cal.key]
    assert [r["step_s"] for r in stored["rows"]] == [r.step_s for r in fresh.rows]  # replaced


def test_recalibrate_reaches_the_ray_task_and_needs_pack_auto(monkeypatch, tmp_path):
    from qimera_core.config import build
    from sweeps import cli, plan
    seen = []

    def fake(cfg, limit, cpus, gpus, timeout_s, use_cache):
        seen.append(use_cache)
        return calibrate.Calibration(key="k", device="d", rows=[calibrate.Row(1, 0.1, 1.0)],
                                     size=1, stop="")
    monkeypatch.setattr(calibrate, "calibrate_on_ray", fake)
    cfg = build("digits-smoke", teacher_weights="random", device="cpu")
    gpus = {cfg.teacher: 0.0}
    calibrate.sweep_measure(gpus, 1, say=lambda s: None)(cfg, 4)
    calibrate.sweep_measure(gpus, 1, say=lambda s: None, use_cache=False)(cfg, 4)
    assert seen == [True, False]
    args = cli.build_parser("table9").parse_args(
        ["--pack", "4", "--recalibrate", "--results", str(tmp_path / "r")])
    with pytest.raises(plan.GridError, match="--recalibrate .* --pack 4 fixes it"):
        plan.check_run_flags(args)
    args = cli.build_parser("table9").parse_args(["--recalibrate", "--results", str(tmp_path)])
    plan.check_run_flags(args)
