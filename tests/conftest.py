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
def tiny_data():
    """The data set of the tiny trainer rig (`rigs.tiny()`), loaded once per session."""
    from rigs import tiny

    from dncml.trainers.data.loading import load_dataset

    return load_dataset(tiny(), progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread, for a module that asks (`pytest.mark.usefixtures("one_thread")`): on a
    small, shared CPU, OpenMP threads that spin-wait for each other make steps an order of
    magnitude slower (and timings erratic) when other work is running."""
    import faiss
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3-compatible server for the session (started on first use): moto's standalone
    server on 127.0.0.1, on a free port, in its own process group (ended by it at the end), with
    one bucket. The standard AWS variables point every client (pyarrow, boto3, Ray, the CLI's
    subprocesses) at it; nothing in dncml knows it is a test server. The secret key is a random
    string, so a test can grep the store for it."""
    import secrets
    import types

    from local_s3 import moto_server

    env = {
        "AWS_ACCESS_KEY_ID": "dncml-test-key",
        "AWS_SECRET_ACCESS_KEY": f"dncml-secret-{secrets.token_hex(8)}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    previous = {name: os.environ.get(name) for name in [*env, "AWS_ENDPOINT_URL"]}
    with open(tmp_path_factory.mktemp("moto") / "server.log", "wb") as log, moto_server(output=log) as endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
        try:
            os.environ.update(env)
            import boto3

            bucket = "dncml-test"
            boto3.client("s3").create_bucket(Bucket=bucket)
            yield types.SimpleNamespace(endpoint=endpoint, bucket=bucket, env=env, secret=env["AWS_SECRET_ACCESS_KEY"])
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.fixture()
def s3_store(s3_server, request):
    """A fresh prefix in the test bucket: `s3://dncml-test/<test name>-<random>`, a store's URI."""
    import re
    import secrets

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return f"s3://{s3_server.bucket}/{name}-{secrets.token_hex(3)}"
