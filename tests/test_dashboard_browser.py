"""The live page in a real browser: the Table 9 smoke sweep runs with --serve, and headless
Chromium watches its table fill in (checked in the DOM after the page's scripts ran), then
saves a screenshot. Set QIMERA_SCREENSHOT_DIR to keep the screenshot (the README's comes from
here)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
               None)
CELL = re.compile(r'<td class="cell[^"]*" data-state="([a-z ]+)"')


def browse(url: str, profile: Path, *args: str) -> str:
    """Load `url` in headless Chromium, let its scripts run, and return what it prints."""
    cmd = [BROWSER, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", "--virtual-time-budget=8000", *args, url]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")               # Chromium refuses to run as root otherwise
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return out.stdout


def cell_states(url: str, profile: Path) -> list[str]:
    return CELL.findall(browse(url, profile, "--dump-dom"))


def wait_for(url: str, profile: Path, driver: subprocess.Popen, done, what: str,
             timeout: float) -> list[str]:
    deadline, states = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        states = cell_states(url, profile)
        if done(states):
            return states
        assert driver.poll() is None, f"the sweep exited ({driver.returncode}) before {what}"
        time.sleep(1.0)
    pytest.fail(f"no {what} within {timeout:.0f} s; last cells: {states}")


def live_shot(url: str, profile: Path, path: Path, tries: int = 20) -> None:
    """A screenshot that shows finished and running cells: taken between two page loads that
    both show them (a trial runs for seconds, so the screenshot's load sees them too)."""
    both = lambda: {"finished", "running"} <= set(cell_states(url, profile))  # noqa: E731
    for _ in range(tries):
        if both():
            browse(url, profile, "--window-size=1400,900", f"--screenshot={path}")
            if both():
                return


def lines_of(proc: subprocess.Popen) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout], daemon=True).start()
    return q


def page_url(lines: queue.Queue, driver: subprocess.Popen) -> str:
    deadline, seen = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            assert driver.poll() is None, f"the sweep exited early: {''.join(seen)}"
            continue
        seen.append(line)
        found = re.search(r"live page at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return found.group(1)
    pytest.fail(f"the sweep printed no page URL: {''.join(seen)}")


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (apt-get install chromium); "
                                            "CI installs it")
def test_smoke_sweep_page_fills_in_live_in_chromium(digits_cache, tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("plotly")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    driver = subprocess.Popen(
        # packs of 6: four packs on 2 CPUs run two at a time, so some cells finish while
        # others run (a pack's runs finish together)
        [sys.executable, "-m", "sweeps.table9", "--smoke-test", "--serve", "--serve-port", "0",
         "--pack", "6", "--address", "local", "--num-cpus", "2",
         "--storage", str(tmp_path / "storage"),
         "--results", str(tmp_path / "results"), "--cache-dir", str(digits_cache)],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        url = page_url(lines_of(driver), driver)
        profile = tmp_path / "chromium-profile"
        mid = wait_for(url, profile, driver,
                       lambda s: "finished" in s and "running" in s,
                       "finished and running cell at once", timeout=300)
        assert len(mid) == 24, mid                   # the grid: 4 K x 6 p, all drawn at once
        keep = os.environ.get("QIMERA_SCREENSHOT_DIR")
        if keep:                                     # the page mid-sweep, for the README
            live_shot(url, profile, Path(keep) / "dashboard-table9-smoke-live.png")
        final = wait_for(url, profile, driver, lambda s: s.count("finished") == 24,
                         "24 finished cells", timeout=400)
        assert final == ["finished"] * 24
        shot = tmp_path / "dashboard.png"
        browse(url, profile, "--window-size=1400,1000", f"--screenshot={shot}")
        assert shot.stat().st_size > 20_000          # a rendered page, not a blank one
        if keep:
            shutil.copy(shot, Path(keep) / "dashboard-table9-smoke.png")
        heat = browse(url + "?view=heatmap", profile, "--dump-dom")
        assert 'class="heatmap' in heat and "main-svg" in heat   # Plotly drew the heatmap
    finally:
        os.killpg(driver.pid, signal.SIGKILL)        # the driver (still serving) and its Ray
        driver.wait()
