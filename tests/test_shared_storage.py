"""The multi-node check before launch: every node must see a local --storage and hold the
prepared cache. The verdict is pure; the probe runs for real on a two-node Ray cluster on this
machine (ray.cluster_utils), in a subprocess so it does not meet the session's local Ray."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")

from sweeps import shared  # noqa: E402
from sweeps.grid import GridError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_verdict_names_blind_nodes_and_the_fix():
    shared.verdict("/data/s", {"10.0.0.2": [], "10.0.0.3": []}, 3)      # all fine
    with pytest.raises(GridError, match=r"1 of the cluster's 3 nodes do not see \(10.0.0.3\)"
                                        r".*s3://BUCKET/PATH"):
        shared.verdict("/data/s", {"10.0.0.2": [], "10.0.0.3": [shared.STORAGE]}, 3)
    with pytest.raises(GridError, match=r"node 10.0.0.2: not ready.*cluster_synced_files"):
        shared.verdict("s3://b/s", {"10.0.0.2": ["not ready to run: weights missing"]}, 2)


def test_local_path_tells_paths_from_uris():
    assert shared.local_path("/a/b") == Path("/a/b")
    assert shared.local_path("file:///a/b") == Path("/a/b")
    assert shared.local_path("s3://bucket/x") is None and shared.local_path("gs://b") is None


PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from qimera_core.config import build
    from sweeps import shared
    from sweeps.grid import GridError

    cache, empty, storage = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                                "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    shared.check_nodes(storage, [build("digits-smoke", cache_dir=cache)])
    assert not list(Path(storage).glob(".qimera-shared-check-*")), "marker left behind"
    print("shared ok")
    try:
        shared.check_nodes(storage, [build("digits-smoke", cache_dir=empty)])
    except GridError as e:
        print("cache error:", e)
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.integration
def test_check_nodes_on_a_two_node_cluster(digits_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    p = subprocess.run([sys.executable, "-c", PROBE, str(digits_cache), str(tmp_path / "empty"),
                        str(tmp_path / "storage")], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "shared ok" in p.stdout
    assert re.search(r"cache error: node [\d.]+: not ready to run: teacher weights", p.stdout), \
        p.stdout
