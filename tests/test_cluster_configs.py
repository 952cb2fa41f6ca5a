"""The shipped cluster configs: valid for Ray's own launcher, exposing nothing but SSH, and
consistent with the project (install, prepare step, cache, spot fallback). No cloud needed."""

from __future__ import annotations

import copy
import functools
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private.node_provider_availability_tracker import (  # noqa: E402
    NodeAvailabilityRecord,
    NodeAvailabilitySummary,
    UnavailableNodeInformation,
)
from ray.autoscaler._private.resource_demand_scheduler import (  # noqa: E402
    ResourceDemandScheduler,
    get_nodes_for,
)
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER = {p.name: p for p in sorted(CLUSTER.glob("*.yaml"))}
KUBERAY = {p.name: p for p in sorted((CLUSTER / "kuberay").glob("*.yaml"))}
CLOUD = ("cluster.yaml", "gcp.yaml")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Keys whose commands the launcher runs on the nodes.
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def strings(node: Any) -> Iterator[str]:
    """Every string value (and key) in a parsed YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def commands(cfg: dict[str, Any], *keys: str) -> list[str]:
    return [c for k in (keys or COMMAND_KEYS) for c in cfg.get(k) or []]


def flag_values(cmds: list[str], flag: str) -> list[str]:
    out = []
    for cmd in cmds:
        out += re.findall(rf"{re.escape(flag)}(?:=|\s+)(\S+)", cmd)
    return [v.strip("'\"") for v in out]


def test_every_config_is_covered() -> None:
    assert set(LAUNCHER) == {"cluster.yaml", "gcp.yaml", "onprem.yaml", "loopback.yaml",
                             "loopback2.yaml"}
    assert set(KUBERAY) == {"raycluster.yaml", "rayjob.yaml", "storage.yaml"}


# ---- Ray's own validation ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAUNCHER))
def test_valid_for_rays_launcher(name: str) -> None:
    """What `ray up` does before touching any cloud: fill in defaults, then Ray's schema."""
    validate_config(prepare_config(load(LAUNCHER[name])))


def test_validation_catches_a_typo() -> None:
    cfg = load(LAUNCHER["cluster.yaml"])
    cfg["setup_comands"] = cfg.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        validate_config(prepare_config(cfg))


# ---- exposure: dashboard, GCS, client server, firewall -------------------------------------
@pytest.mark.parametrize("name", sorted(LAUNCHER))
def test_dashboard_only_on_localhost(name: str) -> None:
    cfg = load(LAUNCHER[name])
    head = commands(cfg, "head_start_ray_commands")
    assert sum("ray start --head" in c for c in head) == 1, head
    hosts = flag_values(head, "--dashboard-host")
    assert hosts and set(hosts) <= LOCAL_HOSTS, f"{name}: dashboard host {hosts}"
    # A node may advertise the address its provider lists for it (loopback2.yaml: addresses
    # inside the test's own network namespaces), nothing else.
    own = {cfg["provider"].get("head_ip"), *(cfg["provider"].get("worker_ips") or [])}
    for flag in ("--dashboard-host", "--node-ip-address", "--ray-client-server-host"):
        allowed = LOCAL_HOSTS | {"$RAY_HEAD_IP"} | (own if flag == "--node-ip-address" else set())
        bad = set(flag_values(commands(cfg), flag)) - allowed
        assert not bad, f"{name}: {flag} {bad}"


@pytest.mark.parametrize("name", sorted(LAUNCHER) + [f"kuberay/{n}" for n in sorted(KUBERAY)])
def test_nothing_binds_all_interfaces(name: str) -> None:
    path = CLUSTER / name
    for doc in yaml.safe_load_all(path.read_text()):
        found = [s for s in strings(doc) if "0.0.0.0" in s or "[::]" in s]
        assert not found, f"{name}: {found}"


def _ingress_rules(node: Any) -> Iterator[dict[str, Any]]:
    """AWS IpPermissions entries and GCP-style firewall `allowed` entries, wherever they are."""
    if isinstance(node, dict):
        if "FromPort" in node or "ToPort" in node or ("IPProtocol" in node and "ports" in node):
            yield node
        for v in node.values():
            yield from _ingress_rules(v)
    elif isinstance(node, list):
        for v in node:
            yield from _ingress_rules(v)


@pytest.mark.parametrize("name", sorted(LAUNCHER))
def test_firewall_opens_only_ssh(name: str) -> None:
    cfg = load(LAUNCHER[name])
    for rule in _ingress_rules(cfg):
        ports = {rule.get("FromPort"), rule.get("ToPort")} - {None} or set(rule.get("ports", []))
        assert {str(p) for p in ports} == {"22"}, f"{name}: rule opens {ports}: {rule}"
    if cfg["provider"]["type"] == "aws":
        # Ray adds only SSH and intra-group rules itself; anything listed here comes on top.
        assert cfg["provider"]["security_group"]["IpPermissions"] == []


@pytest.mark.parametrize("name", sorted(LAUNCHER))
def test_token_auth_on_every_node(name: str) -> None:
    cfg = load(LAUNCHER[name])
    assert any("RAY_AUTH_MODE=token" in c for c in commands(cfg, "setup_commands")), name
    assert any("ray get-auth-token --generate" in c
               for c in commands(cfg, "head_setup_commands")), name


def _cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("kind") == "RayCluster":
        return [doc["spec"]]
    if doc.get("kind") == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for g in groups:
        yield from g["template"]["spec"]["containers"]


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_exposes_nothing(name: str) -> None:
    docs = list(yaml.safe_load_all(KUBERAY[name].read_text()))
    for doc in docs:
        if doc.get("kind") == "RayJob":
            # The only submission mode whose submitter reaches a 127.0.0.1 dashboard.
            assert doc["spec"]["submissionMode"] == "SidecarMode"
        for spec in _cluster_specs(doc):
            head = spec["headGroupSpec"]
            assert head["rayStartParams"]["dashboard-host"] in LOCAL_HOSTS
            assert head.get("serviceType", "ClusterIP") == "ClusterIP"
            assert not spec.get("enableIngress", False)
            assert spec["authOptions"]["mode"] == "token"
            ports = {p["containerPort"] for c in _containers(spec) for p in c.get("ports", [])}
            assert not ports & {8265, 10001}, f"{name}: service would list ports {ports}"
            assert all(not str(v).startswith("0.0.0.0")
                       for v in spec.get("headGroupSpec", {}).get("rayStartParams", {}).values())


# ---- consistency with the project ----------------------------------------------------------
@pytest.mark.parametrize("name", CLOUD + ("onprem.yaml",))
def test_installs_the_synced_repo_with_sweep_extra(name: str) -> None:
    cfg = load(LAUNCHER[name])
    (remote, local), = cfg["file_mounts"].items()
    assert local == ".", "the repo is synced from where `ray up` runs (the repo root)"
    installs = [c for c in commands(cfg, "setup_commands") if "pip install" in c and " -e " in c]
    assert installs, name
    target = shlex.split(installs[0].split(" -e ", 1)[1])[0]
    assert target.replace("$HOME", "~") == f"{remote}[sweep]", (target, remote)


@pytest.mark.parametrize("name", CLOUD + ("onprem.yaml", "loopback.yaml", "loopback2.yaml"))
def test_prepare_runs_on_the_head_into_the_trials_cache(name: str) -> None:
    cfg = load(LAUNCHER[name])
    env = " ".join(commands(cfg, "setup_commands"))
    cache = re.search(r"QIMERA_CACHE=\"?([^\s\"']+)", env).group(1)
    prepares = [c for c in commands(cfg, "head_setup_commands") if "qimera_core.prepare" in c]
    assert prepares and all(flag_values([c], "--cache") in ([cache], ["$QIMERA_CACHE"])
                            for c in prepares), prepares
    if name != "loopback.yaml":  # one node there; elsewhere workers need the head's copy
        synced = cfg["cluster_synced_files"]
        assert cache.replace("$HOME", "~").replace("~", "__HOME__") in \
            [p.replace("~", "__HOME__") for p in synced], (cache, synced)
        assert any(p.endswith(".ray/auth_token") for p in synced), synced


@pytest.mark.parametrize("name", CLOUD)
def test_gpu_types_with_spot_and_on_demand_twins(name: str) -> None:
    cfg = load(LAUNCHER[name])
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["node_config"]
    assert "InstanceMarketOptions" not in head and "scheduling" not in head, "head on demand"
    spot = [t for t in types if t.endswith(".spot")]
    assert {t.split(".")[0] for t in spot} == {"gpu1", "gpu8"}, "a small and an 8-GPU type"
    for t in spot:
        twin = t.replace(".spot", ".ondemand")
        machine = ("InstanceType", "machineType")
        a, b = types[t]["node_config"], types[twin]["node_config"]
        assert [a.get(k) for k in machine] == [b.get(k) for k in machine]
        assert "InstanceMarketOptions" not in b
        assert "provisioningModel" not in (b.get("scheduling") or {})
        for nt in (types[t], types[twin]):
            assert 0 <= nt["min_workers"] <= nt["max_workers"]
    start = " ".join(commands(cfg, "head_start_ray_commands"))
    assert "RAY_enable_autoscaler_v2=0" in start
    assert "RAY_AUTOSCALER_UTILIZATION_SCORER=spot_fallback.score" in start


# ---- the spot-fallback scorer, loaded the way the head loads it ----------------------------
NODE_TYPES = {
    "head": {"resources": {"CPU": 8}, "max_workers": 0},
    "gpu1.ondemand": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 8},
    "gpu1.spot": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 8},
    "gpu8.ondemand": {"resources": {"CPU": 96, "GPU": 8}, "max_workers": 2},
    "gpu8.spot": {"resources": {"CPU": 96, "GPU": 8}, "max_workers": 2},
}
CIFAR_TRIALS = [{"CPU": 1, "GPU": 0.25}] * 4


@pytest.fixture
def hook_scorer(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAY_AUTOSCALER_UTILIZATION_SCORER", "spot_fallback.score")
    monkeypatch.syspath_prepend(str(CLUSTER))
    monkeypatch.delitem(sys.modules, "spot_fallback", raising=False)
    sched = ResourceDemandScheduler(None, NODE_TYPES, 12, "head", 1.0)
    assert sched.utilization_scorer.__module__ == "spot_fallback"
    return sched.utilization_scorer


def _launch(scorer, failed: dict[str, str]) -> dict[str, int]:
    summary = NodeAvailabilitySummary({
        t: NodeAvailabilityRecord(t, False, 0, UnavailableNodeInformation(code, "test"))
        for t, code in failed.items()})
    score = functools.partial(scorer, node_availability_summary=summary)
    to_add, unfulfilled = get_nodes_for(copy.deepcopy(NODE_TYPES), {}, "head", 10,
                                        CIFAR_TRIALS, score)
    assert not unfulfilled
    return dict(to_add)


def test_scorer_prefers_spot(hook_scorer) -> None:
    assert _launch(hook_scorer, {}) == {"gpu1.spot": 1}


def test_scorer_falls_back_to_on_demand_after_a_spot_failure(hook_scorer) -> None:
    failed = {"gpu1.spot": "InsufficientInstanceCapacity"}
    assert _launch(hook_scorer, failed) == {"gpu1.ondemand": 1}


def test_scorer_never_picks_a_type_that_cannot_fit(hook_scorer) -> None:
    summary = NodeAvailabilitySummary({})
    assert hook_scorer({"CPU": 8}, [{"GPU": 1}], "head",
                       node_availability_summary=summary) is None
