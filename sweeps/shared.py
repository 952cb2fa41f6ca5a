"""Before launch on a multi-node Ray cluster: check that every node reaches what its trials use,
the `--storage` path (each node writes checkpoints there and a restarted trial reads them back,
maybe on another node) and the prepared cache (trials never download)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from qimera_core.config import TrainConfig
from sweeps.grid import GridError

log = logging.getLogger(__name__)
STORAGE = "storage"   # the problem a node reports when it cannot see the driver's marker file


@ray.remote(num_cpus=0)
def _node_problems(marker: str, token: str, needs: list[dict[str, Any]]) -> list[str]:
    """Runs on one node: what it lacks (STORAGE, or ensure_ready's message per config)."""
    from qimera_core import prepare
    problems = []
    if marker:
        try:
            if Path(marker).read_text() != token:
                problems.append(STORAGE)
        except OSError:
            problems.append(STORAGE)
    for d in needs:
        try:
            prepare.ensure_ready(TrainConfig.from_dict(d))
        except ValueError as e:
            problems.append(str(e))
    return problems


def local_path(storage: str) -> Path | None:
    """The directory a --storage value names on this machine, or None for an object store URI."""
    if storage.startswith("file://"):
        return Path(storage.removeprefix("file://"))
    return None if "://" in storage else Path(storage)


def check_nodes(storage: str, configs: Sequence[TrainConfig], timeout_s: float = 120.0) -> None:
    """Raise GridError, with the fix, if another node of the cluster cannot see a local
    `storage` or lacks the weights or data of `configs`. One node: nothing to check."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    others = {n["NodeID"]: n["NodeManagerAddress"] for n in nodes if n["NodeID"] != here}
    if not others:
        return
    path, token, marker = local_path(storage), uuid.uuid4().hex, None
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / f".qimera-shared-check-{token}"
        marker.write_text(token)
    distinct = {(c.teacher, c.teacher_weights, c.eval_data, c.cache_dir): c for c in configs}
    needs = [c.to_dict() for c in distinct.values()]
    try:
        refs = {_node_problems.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node, soft=False)).remote(str(marker or ""), token, needs): ip
                for node, ip in others.items()}
        done, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        found = {refs[r]: ray.get(r) for r in done}
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    if late:
        log.warning("%d of %d other nodes did not answer the storage check within %.0f s: %s",
                    len(late), len(refs), timeout_s, ", ".join(refs[r] for r in late))
    verdict(storage, found, len(nodes))


def verdict(storage: str, problems: Mapping[str, list[str]], n_nodes: int) -> None:
    """Raise GridError naming the nodes that lack something, and how to fix it."""
    blind = sorted(ip for ip, p in problems.items() if STORAGE in p)
    if blind:
        raise GridError(
            f"--storage {storage} is a local path that {len(blind)} of the cluster's {n_nodes} "
            f"nodes do not see ({', '.join(blind)}): every node writes checkpoints there and a "
            "restarted trial reads them back. On a multi-node cluster pass a directory mounted "
            "at the same path on every node (NFS, EFS, Filestore) or an object store URI "
            "(s3://BUCKET/PATH, gs://BUCKET/PATH)")
    for ip, found in sorted(problems.items()):
        if found:
            raise GridError(
                f"node {ip}: {found[0]}. Every node needs the prepared cache at the same path: "
                "a shared filesystem for --cache-dir, or the head's copy synced to the workers "
                "(cluster_synced_files in cluster/cluster.yaml) after the prepare step")
