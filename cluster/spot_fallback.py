"""Autoscaler node-type scorer: use spot workers, and their on-demand twins while spot fails.

Ray's v1 autoscaler (the configs select it with RAY_enable_autoscaler_v2=0) picks the worker
type with the best utilization score. It records launch failures per node type (AWS reports
InsufficientInstanceCapacity and the like), but its default scorer ignores that record, so a
sold-out spot type would be retried on every round. (The v2 autoscaler of Ray 2.60 lowers a
type only after an allocation timeout, not after an immediate launch failure.)

This scorer ranks a type whose last launch failed below every type that can launch, and
otherwise prefers types named `*.spot` over their equal-sized on-demand twins. A failure record
expires after AUTOSCALER_NODE_AVAILABILITY_MAX_STALENESS_S (30 min by default), and spot is
tried again.

The head loads it through Ray's scorer hook: `ray start --head` runs with
RAY_AUTOSCALER_UTILIZATION_SCORER=spot_fallback.score and the synced `cluster/` directory on
PYTHONPATH (see head_start_ray_commands in cluster/cluster.yaml).
"""

from __future__ import annotations

from typing import Any

from ray.autoscaler._private.resource_demand_scheduler import (
    _resource_based_utilization_scorer,
)

SPOT_SUFFIX = ".spot"


def score(
    node_resources: dict[str, float],
    resources: list[dict[str, float]],
    node_type: str,
    *,
    node_availability_summary: Any,
) -> tuple | None:
    """Ray's own utilization score, prefixed by "can launch" and suffixed by "is spot"."""
    base = _resource_based_utilization_scorer(
        node_resources, resources, node_availability_summary=node_availability_summary
    )
    if base is None:  # the demand does not fit this node type at all
        return None
    record = node_availability_summary.node_availabilities.get(node_type)
    can_launch = record is None or record.is_available
    return (can_launch, *base, node_type.endswith(SPOT_SUFFIX))
