"""Shared fixtures: one local Ray per test session, and a digits teacher cache made once."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """A 2-CPU local Ray without dashboard, shared by the tests that need one."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory) -> Path:
    """A cache holding the digits teacher (trained offline in seconds), for `--cache-dir`."""
    from qimera_core import prepare
    from qimera_core.config import build
    cache = tmp_path_factory.mktemp("qimera-cache")
    prepare.prepare(build("digits-smoke", cache_dir=str(cache)))
    return cache
