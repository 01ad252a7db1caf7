"""Shared fixtures: one glyph cache and (lazily) one local Ray runtime per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# The session's local Ray binds the loopback only, as one `dncml` starts (`console.LOOPBACK_RAY_ENV`;
# read when ray is imported). The multi-node test removes it for its `ray start` nodes.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session", autouse=True)
def glyph_cache(tmp_path_factory):
    """Glyph renders are cached per session, never in the user's ~/.cache."""
    previous = os.environ.get("DNCML_CACHE")
    path = os.environ.get("DNCML_TEST_CACHE") or str(tmp_path_factory.mktemp("dncml-cache"))
    os.environ["DNCML_CACHE"] = path
    yield path
    if previous is None:
        os.environ.pop("DNCML_CACHE", None)
    else:
        os.environ["DNCML_CACHE"] = previous


@pytest.fixture(scope="session")
def ray_session():
    """One private local Ray runtime for all in-process Ray tests (started on first use)."""
    import ray

    from dncml.platform.train import local_ray_options

    if not ray.is_initialized():
        ray.init(**local_ray_options(num_cpus=2, log_to_driver=False))  # on the loopback only, as `dncml` starts one
    yield ray
    ray.shutdown()


@pytest.fixture()
def ray_local(ray_session):
    import ray

    from dncml.platform.train import local_ray_options

    if not ray.is_initialized():  # a test that needed Ray down (multi-node) shut it
        ray.init(**local_ray_options(num_cpus=2, log_to_driver=False))
    return ray
