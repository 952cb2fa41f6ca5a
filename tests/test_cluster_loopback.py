"""The user's cluster commands, end to end, on a real one-node Ray cluster that the launcher
starts over SSH to 127.0.0.1: `ray up`, `ray submit` of the Table 9 smoke sweep, the job API
through `ray dashboard`'s tunnel with the cluster's auth token, and `ray down`.

The sshd runs in its own PID, mount and network namespaces (see cluster/loopback.yaml for
why): nothing it starts can see or touch other Ray instances on this machine, and killing it
ends every process of the cluster. Skips, saying why, without root, sshd, rsync or namespaces.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qimera_core import results

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PY_BIN = Path(sys.executable).parent
RAY = PY_BIN / "ray"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
TOOLS = ("ssh", "ssh-keygen", "rsync", "unshare", "nsenter", "mount")

# Brings the namespace's loopback interface up without needing iproute2.
LO_UP = (
    "import fcntl, socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "req = struct.pack('16sH14s', b'lo', 0, b''); "
    "flags = struct.unpack('16sH14s', fcntl.ioctl(s, 0x8913, req))[1]; "
    "fcntl.ioctl(s, 0x8914, struct.pack('16sH14s', b'lo', flags | 1, b''))"
)
# Inside the namespaces: loopback up, a private /tmp/ray (Ray's session files and the
# `ray_current_cluster` address file stay invisible outside), then sshd as PID 1.
NS_INIT = ('"$PY" -c "$LO_UP" && mkdir -p /tmp/ray /run/sshd && '
           'mount -t tmpfs tmpfs /tmp/ray && exec "$SSHD" -D -e -f "$SSHD_CONFIG"')

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port 22
HostKey {tmp}/host_ed25519
PidFile none
AuthorizedKeysFile {tmp}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding local
PermitOpen localhost:8265 127.0.0.1:8265
X11Forwarding no
AllowAgentForwarding no
PermitTunnel no
SetEnv HOME={tmp}/home
"""


@dataclass
class Sshd:
    ns_pid: int          # sshd = PID 1 of the namespaces, as seen from here
    key: Path            # client private key
    home: Path           # the "remote" user's home
    proxy_command: str
    cluster_name: str    # one per run: the launcher keys its ssh control sockets by it


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (sshd logs in as the test's user; namespaces need CAP_SYS_ADMIN)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append("sshd")
    if missing:
        return (f"missing {', '.join(missing)}: apt-get install -y openssh-server rsync "
                "(util-linux provides unshare, nsenter and mount)")
    if not RAY.exists():
        return f"no ray CLI next to {sys.executable}"
    return None


def _run(cmd: list[str], tmp: Path, timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run a command, fail the test with its output tail if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)
    (tmp / "logs").mkdir(exist_ok=True)
    log_name = f"{Path(cmd[0]).name}-{cmd[1] if len(cmd) > 1 else ''}-{time.time():.0f}.log"
    (tmp / "logs" / log_name).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                    f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def _keys_and_config(tmp: Path, user: str) -> Path:
    for name in ("client_ed25519", "host_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "loopback-test",
                        "-f", str(tmp / name)], check=True)
    shutil.copy(tmp / "client_ed25519.pub", tmp / "authorized_keys")
    (tmp / "home").mkdir()
    config = tmp / "sshd_config"
    config.write_text(SSHD_CONFIG.format(tmp=tmp, user=user))
    return config


def _namespace_child(unshare: subprocess.Popen, deadline: float) -> int:
    """The host PID of unshare's forked child (PID 1 of the new namespaces), once it runs sshd."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    while time.time() < deadline and unshare.poll() is None:
        with contextlib.suppress(OSError):
            pids = children.read_text().split()
            if pids and "sshd" in Path(f"/proc/{pids[0]}/cmdline").read_text():
                return int(pids[0])
        time.sleep(0.1)
    raise TimeoutError("sshd did not start in its namespace")  # or unshare exited


def _wait_for_login(sshd: Sshd, user: str, deadline: float) -> None:
    cmd = ["ssh", "-i", str(sshd.key), "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
           "-o", "BatchMode=yes", "-o", f"ProxyCommand={sshd.proxy_command}",
           f"{user}@127.0.0.1", "true"]
    while time.time() < deadline:
        if subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(0.3)
    raise TimeoutError("could not log in to the loopback sshd")


@pytest.fixture
def loopback_sshd(tmp_path: Path) -> Iterator[Sshd]:
    """sshd on 127.0.0.1:22 of a fresh network namespace, key-only, config and keys in tmp."""
    reason = _missing_prerequisite()
    if reason:
        pytest.skip(reason)
    user = "root"
    config = _keys_and_config(tmp_path, user)
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0 and "privilege separation directory" not in check.stderr:
        pytest.skip(f"sshd rejects its test config: {check.stderr.strip()}")
    env = {**os.environ, "PY": sys.executable, "LO_UP": LO_UP, "SSHD": SSHD,
           "SSHD_CONFIG": str(config)}
    log = open(tmp_path / "sshd.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--net",
                             "--kill-child", "sh", "-c", NS_INIT],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    ns_pid, sshd = None, None
    try:
        try:
            ns_pid = _namespace_child(proc, time.time() + 15)
        except TimeoutError:
            proc.kill()
            proc.wait()
            pytest.skip("could not start sshd in new PID/mount/network namespaces: "
                        + (tmp_path / "sshd.log").read_text()[-1000:])
        bridge = REPO / "cluster" / "loopback_bridge.py"
        sshd = Sshd(ns_pid, tmp_path / "client_ed25519", tmp_path / "home",
                    f"nsenter --target {ns_pid} --net {sys.executable} {bridge} 127.0.0.1 22",
                    f"qimera-loopback-{uuid.uuid4().hex[:8]}")
        try:
            _wait_for_login(sshd, user, time.time() + 20)
        except TimeoutError as e:
            pytest.fail(f"{e}; sshd log:\n" + (tmp_path / "sshd.log").read_text()[-2000:])
        yield sshd
    finally:
        # Killing PID 1 of a PID namespace kills every process in it: sshd, Ray, trials.
        if ns_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ns_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=30)
        log.close()
        if sshd is not None:
            shutil.rmtree(_ssh_control_dir(sshd.cluster_name), ignore_errors=True)


def _ssh_control_dir(cluster_name: str) -> Path:
    """Where the launcher keeps this cluster's ssh control sockets (command_runner.py)."""
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(cluster_name.encode()).hexdigest()[:10]


def render_loopback_yaml(sshd: Sshd, user: str, out: Path) -> Path:
    """cluster/loopback.yaml with its placeholders filled in and a cluster name of its own."""
    text = (REPO / "cluster" / "loopback.yaml").read_text()
    fills = {"__SSH_USER__": user, "__SSH_PRIVATE_KEY__": str(sshd.key),
             "__SSH_PROXY_COMMAND__": sshd.proxy_command, "__PYTHON_BIN__": str(PY_BIN),
             "cluster_name: qimera-loopback": f"cluster_name: {sshd.cluster_name}"}
    for placeholder, value in fills.items():
        assert placeholder in text, f"cluster/loopback.yaml lost its {placeholder} placeholder"
        text = text.replace(placeholder, value)
    out.write_text(text)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, deadline: float) -> None:
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _job_via_dashboard(yaml_path: Path, tmp: Path, env: dict[str, str]) -> str:
    """The documented alternative to `ray submit`: `ray dashboard` tunnels the head's
    127.0.0.1:8265 here, and `ray job submit --working-dir .` ships the local code with the
    cluster's token. Returns the job's output."""
    token = tmp / "cluster-token"
    _run([str(RAY), "rsync-down", str(yaml_path), "~/.ray/auth_token", str(token)], tmp, 60,
         env=env)
    port = _free_port()
    tunnel = subprocess.Popen([str(RAY), "dashboard", "-p", str(port), str(yaml_path)],
                              cwd=REPO, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, time.time() + 30)
        job_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        probe = "import qimera_core; print('imported from', qimera_core.__file__)"
        proc = _run([str(RAY), "job", "submit", "--address", f"http://127.0.0.1:{port}",
                     "--working-dir", ".", "--", "python", "-c", probe], tmp, 120, env=job_env)
        return proc.stdout
    finally:
        tunnel.kill()
        tunnel.wait(timeout=30)


def test_ray_up_submit_table9_smoke_down(loopback_sshd: Sshd, tmp_path: Path) -> None:
    yaml_path = render_loopback_yaml(loopback_sshd, "root", tmp_path / "loopback.yaml")
    # The launcher's local state (cluster state file, config cache) goes to this test's tmp.
    (tmp_path / "client-tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "client-tmp")}
    env.pop("RAY_ADDRESS", None)
    storage, out = tmp_path / "storage", tmp_path / "results"
    up = False
    try:
        _run([str(RAY), "up", "-y", str(yaml_path)], tmp_path, 240, env=env)
        up = True
        # The user's command from docs/cluster.md ("Run a sweep") without --address: on the
        # head, the sweep finds the cluster by itself.
        sub = _run([str(RAY), "submit", str(yaml_path), "sweeps/table9.py", "--",
                    "--smoke-test", "--storage", str(storage), "--results", str(out)],
                   tmp_path, 420, env=env)
        assert "joining the Ray cluster" in sub.stdout + sub.stderr, sub.stderr[-3000:]
        trials = results.read(out, "trials")
        assert len(trials) > 0, f"no trial rows in {out}"
        assert set(trials["status"]) == {"ok"}, trials[["status", "error"]].to_string()
        assert (trials["table"] == "table9").all()
        assert len(results.read(out, "curves")) >= len(trials)
        # The head's v1 autoscaler is up and imported the spot-fallback scorer (a failed import
        # leaves a traceback in monitor.err and in `ray status`).
        status = _run([str(RAY), "exec", str(yaml_path),
                       "ray status && cat /tmp/ray/session_latest/logs/monitor.err"],
                      tmp_path, 60, env=env).stdout
        assert "Autoscaler status" in status and "Traceback" not in status, status[-3000:]
        job_output = _job_via_dashboard(yaml_path, tmp_path, env)
        # The job ran the code shipped by --working-dir, not the copy `ray up` installed.
        assert "imported from" in job_output and "working_dir_files" in job_output, job_output
        _run([str(RAY), "down", "-y", str(yaml_path)], tmp_path, 120, env=env)
        up = False
    finally:
        if up:  # best effort; the fixture's namespace kill stops everything anyway
            subprocess.run([str(RAY), "down", "-y", str(yaml_path)], cwd=REPO, env=env,
                           capture_output=True, timeout=120)
