"""A lost node, for real: a two-node Ray cluster on this machine, started by the launcher
(`ray up` of cluster/loopback2.yaml), runs the Table 9 smoke sweep with trials on both nodes;
the worker's namespaces are killed mid-sweep. The lost trials go on from their last checkpoint
in the shared --storage, every row ends `ok` with each epoch's curve row once, the final
metrics equal a clean run's, and `ray down` leaves no process behind. Before that, a --storage
only the head can see is refused before launch.

Each node is an sshd as PID 1 of its own PID, mount and network namespaces; a veth pair joins
the two network namespaces (head 10.213.0.1, worker 10.213.0.2), and the worker's home is a
bind mount of its own. Skips, saying why, without root, sshd, rsync, iproute2 or namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from test_cluster_loopback import (
    LO_UP,
    PY_BIN,
    RAY,
    REPO,
    SSHD,
    _keys_and_config,
    _missing_prerequisite,
    _namespace_child,
    _run,
    _ssh_control_dir,
)

from qimera_core import results
from sweeps import rows

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HEAD_IP, WORKER_IP = "10.213.0.1", "10.213.0.2"
# Inside each node's namespaces: a private /tmp/ray, the worker's own home over the shared
# path, an /etc/passwd whose root home is that path (ssh finds `~/ray_bootstrap_key.pem`
# through the passwd home, not $HOME), loopback up, then sshd as PID 1 (on every address of
# its namespace).
NS_INIT = ('mkdir -p /tmp/ray /run/sshd && mount -t tmpfs tmpfs /tmp/ray && '
           '{ [ -z "$OWN_HOME" ] || mount --bind "$OWN_HOME" "$HOME_PATH"; } && '
           'mount --bind "$PASSWD" /etc/passwd && '
           '"$PY" -c "$LO_UP" && exec "$SSHD" -D -e -f "$SSHD_CONFIG"')

# Final metrics that must not depend on a lost node (timings do).
SAME = ["epoch", "top1", "top5", "best_top1", "best_epoch", "start_top1", "teacher_top1",
        "loss_g", "loss_bns", "loss_s", "loss_kd"]
# Table 9's smoke grid narrowed to p = 0.4 (4 trials), 6 epochs so a trial outlives the kill.
SWEEP = ["--smoke-test", "--mix-prob", "0.4", "--epochs", "6"]


@dataclass
class Nodes:
    head_pid: int        # host PIDs of the two sshds (PID 1 of their namespaces)
    worker_pid: int
    key: Path
    home: Path
    proxy_command: str
    cluster_name: str


def _start_node(tmp: Path, name: str, config: Path, own_home: Path | None) -> tuple:
    passwd = tmp / "passwd"
    if not passwd.exists():
        lines = Path("/etc/passwd").read_text().splitlines()
        passwd.write_text("".join(
            (":".join([*f[:5], str(tmp / "home"), *f[6:]]) if f[0] == "root" else line) + "\n"
            for line in lines for f in [line.split(":")]))
    env = {**os.environ, "PY": sys.executable, "LO_UP": LO_UP, "SSHD": SSHD,
           "SSHD_CONFIG": str(config), "HOME_PATH": str(tmp / "home"),
           "OWN_HOME": str(own_home or ""), "PASSWD": str(passwd)}
    log = open(tmp / f"sshd-{name}.log", "w")  # noqa: SIM115 - closed by the fixture
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--net",
                             "--kill-child", "sh", "-c", NS_INIT],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _in_netns(pid: int, *cmd: str) -> None:
    subprocess.run(["nsenter", "--target", str(pid), "--net", *cmd], check=True,
                   capture_output=True, text=True)


def _link(head_pid: int, worker_pid: int) -> None:
    """A veth pair between the two network namespaces. Each node's address sits on its own
    loopback device, with routes over the veth (and a default route: Ray finds a node's
    address by routing towards a public one), so that the head keeps its address when the
    worker's namespace, and with it the veth pair, is gone."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"qh{tag}", f"qw{tag}"
    subprocess.run(["ip", "link", "add", a, "netns", str(head_pid), "type", "veth", "peer",
                    "name", b, "netns", str(worker_pid)], check=True, capture_output=True)
    for pid, dev, ip, other in ((head_pid, a, HEAD_IP, WORKER_IP),
                                (worker_pid, b, WORKER_IP, HEAD_IP)):
        _in_netns(pid, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
        _in_netns(pid, "ip", "link", "set", dev, "up")
        _in_netns(pid, "ip", "route", "add", f"{other}/32", "dev", dev, "src", ip)
        _in_netns(pid, "ip", "route", "add", "default", "dev", dev, "src", ip)


def _ssh(nodes: Nodes, ip: str, cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-i", str(nodes.key), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"ProxyCommand={nodes.proxy_command}", f"root@{ip}", cmd],
        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[Nodes]:
    reason = _missing_prerequisite() or (None if shutil.which("ip") else
                                         "missing ip: apt-get install -y iproute2")
    if reason:
        pytest.skip(reason)
    config = _keys_and_config(tmp_path, "root")
    config.write_text(config.read_text().replace("ListenAddress 127.0.0.1",
                                                 "ListenAddress 0.0.0.0"))
    (tmp_path / "home-worker").mkdir()
    started = [_start_node(tmp_path, "head", config, None),
               _start_node(tmp_path, "worker", config, tmp_path / "home-worker")]
    pids: list[int] = []
    name = f"qimera-loopback2-{uuid.uuid4().hex[:8]}"
    try:
        for node, (proc, _) in zip(("head", "worker"), started, strict=True):
            try:
                pids.append(_namespace_child(proc, time.time() + 15))
            except TimeoutError:
                pytest.skip("could not start sshd in new PID/mount/network namespaces: "
                            + (tmp_path / f"sshd-{node}.log").read_text()[-1000:])
        try:
            _link(*pids)
        except subprocess.CalledProcessError as e:
            pytest.skip(f"could not join the namespaces with a veth pair: {e.stderr}")
        bridge = REPO / "cluster" / "loopback_bridge.py"
        nodes = Nodes(pids[0], pids[1], tmp_path / "client_ed25519", tmp_path / "home",
                      f"{sys.executable} {bridge} %h 22 --netns {pids[0]}", name)
        deadline = time.time() + 30
        for ip in (HEAD_IP, WORKER_IP):
            while _ssh(nodes, ip, "true").returncode != 0:
                if time.time() > deadline:
                    pytest.fail(f"could not log in to {ip}: {_ssh(nodes, ip, 'true').stderr}")
                time.sleep(0.3)
        yield nodes
    finally:
        for pid in pids:        # PID 1 of a PID namespace: every process in it dies with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc, log in started:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=30)
            log.close()
        shutil.rmtree(_ssh_control_dir(name), ignore_errors=True)


def render(nodes: Nodes, out: Path) -> Path:
    text = (REPO / "cluster" / "loopback2.yaml").read_text()
    fills = {"__SSH_USER__": "root", "__SSH_PRIVATE_KEY__": str(nodes.key),
             "__SSH_PROXY_COMMAND__": nodes.proxy_command, "__PYTHON_BIN__": str(PY_BIN),
             "__HOME__": str(nodes.home),
             "cluster_name: qimera-loopback2": f"cluster_name: {nodes.cluster_name}"}
    for placeholder, value in fills.items():
        assert placeholder in text, f"cluster/loopback2.yaml lost its {placeholder} placeholder"
        text = text.replace(placeholder, value)
    out.write_text(text)
    return out


def _alive_nodes(yaml_path: Path, tmp: Path, env: dict) -> int:
    probe = ("python -c \"import ray; ray.init(address='auto', logging_level='ERROR'); "
             "print('ALIVE', sum(n['Alive'] for n in ray.nodes()))\"")
    out = subprocess.run([str(RAY), "exec", str(yaml_path), probe], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env=env).stdout
    return next((int(line.split()[1]) for line in out.splitlines() if line.startswith("ALIVE")),
                0)


def _results_lines(storage: Path) -> list[dict]:
    found = []
    for path in storage.glob("table9-smoke-*/*/result.json"):
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    found.append({**json.loads(line), "_trial": path.parent.name})
    return found


def _processes_in_pid_namespace(pid: int) -> list[str]:
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    left = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == pid:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(p / "ns" / "pid") == ns:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                if not cmd.startswith("sshd"):       # the login sessions of `ray down` itself
                    left.append(f"{p.name}: {cmd}")
    return left


def test_lost_worker_node_trials_resume_and_match_a_clean_run(two_nodes: Nodes,
                                                              tmp_path: Path) -> None:
    t0 = time.monotonic()
    yaml_path = render(two_nodes, tmp_path / "loopback2.yaml")
    (tmp_path / "client-tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "client-tmp")}
    env.pop("RAY_ADDRESS", None)
    storage, out = tmp_path / "storage", tmp_path / "results"   # shared by both nodes
    up = False
    try:
        _run([str(RAY), "up", "-y", str(yaml_path)], tmp_path, 300, env=env)
        up = True
        deadline = time.time() + 240
        while _alive_nodes(yaml_path, tmp_path, env) < 2:      # the autoscaler adds the worker
            assert time.time() < deadline, "the worker never joined the cluster"
            time.sleep(5)
        t_up = time.monotonic() - t0

        # --storage in the head's home: the worker has a home of its own there, so it cannot
        # see it, and the driver refuses before launching anything.
        private = subprocess.run(
            [str(RAY), "submit", str(yaml_path), "sweeps/table9.py", "--", *SWEEP,
             "--storage", str(two_nodes.home / "storage"), "--results", str(out)],
            capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        said = private.stdout + private.stderr
        assert private.returncode != 0 and "do not see" in said and WORKER_IP in said, said[-3000:]
        assert not list(out.glob("*.parquet"))

        t1 = time.monotonic()
        sweep = subprocess.Popen(
            [str(RAY), "submit", str(yaml_path), "sweeps/table9.py", "--", *SWEEP,
             "--storage", str(storage), "--results", str(out)],
            cwd=REPO, env=env, stdout=open(tmp_path / "sweep.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT)
        killed_after = None
        deadline = time.time() + 300
        while killed_after is None and sweep.poll() is None and time.time() < deadline:
            on_worker = [r for r in _results_lines(storage)
                         if r.get("node_ip") == WORKER_IP and r.get("epoch", 0) >= 1
                         and r.get("epoch", 0) < 6]
            if on_worker:
                os.kill(two_nodes.worker_pid, signal.SIGKILL)      # the worker node is gone
                killed_after = time.monotonic() - t1
                killed = {r["_trial"] for r in on_worker}
            time.sleep(0.5)
        assert killed_after is not None, "no trial reached epoch 1 on the worker before the end"
        sweep.wait(timeout=480)
        log = (tmp_path / "sweep.log").read_text()
        assert sweep.returncode == 0, log[-4000:]
        t_sweep = time.monotonic() - t1

        trials = rows.read_trials(out)
        assert len(trials) == 4 and set(trials["status"]) == {"ok"}, trials[["status", "error"]]
        curves = rows.read_curves(out)
        raw = results.read(out, "curves")
        assert len(raw) == len(curves) == 4 * 6                # every epoch's row exactly once
        # The lost trials went on from a checkpoint on the head, not from scratch.
        lines = _results_lines(storage)
        for trial in killed:
            after = [r for r in lines if r["_trial"] == trial and r.get("node_ip") == HEAD_IP]
            assert after, f"{trial} never ran again after the worker died"
            first = min(after, key=lambda r: r["timestamp"])
            assert first["epoch"] >= 2 and first.get("iterations_since_restore") == 1, first

        t2 = time.monotonic()
        _run([str(RAY), "down", "-y", str(yaml_path)], tmp_path, 180, env=env)
        up = False
        time.sleep(2)
        assert _processes_in_pid_namespace(two_nodes.head_pid) == []
        t_down = time.monotonic() - t2

        # The same four trials on a private local Ray, uninterrupted: the same final metrics.
        clean = tmp_path / "clean"
        _run([sys.executable, "-m", "sweeps.table9", *SWEEP, "--address", "local",
              "--storage", str(clean / "storage"), "--results", str(clean / "results"),
              "--cache-dir", str(two_nodes.home / "qimera-cache")], tmp_path, 480,
             env={k: v for k, v in {**os.environ, "PYTHONPATH": str(REPO)}.items()
                  if k != "RAY_ADDRESS"})
        ref = rows.read_trials(clean / "results").set_index("config_hash")[SAME].sort_index()
        got = trials.set_index("config_hash")[SAME].sort_index()
        pd.testing.assert_frame_equal(got, ref, check_exact=True)
        print(f"\ntwo-node loopback: up {t_up:.0f} s, sweep {t_sweep:.0f} s (worker killed "
              f"{killed_after:.0f} s in, trials lost: {sorted(killed)}), down {t_down:.0f} s, "
              f"total with the clean rerun {time.monotonic() - t0:.0f} s")
    finally:
        if up:
            subprocess.run([str(RAY), "down", "-y", str(yaml_path)], cwd=REPO, env=env,
                           capture_output=True, timeout=180)
