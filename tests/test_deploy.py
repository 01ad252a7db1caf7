"""The shipped cluster configs take the safe path: token authentication on every node, the
dashboard (whose job API runs any code) off the network, and no placeholders that look like
variables but are never substituted."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "platform" / "deploy"


def test_cluster_launcher_config():
    text = (DEPLOY / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    starts = config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]
    assert all("RAY_AUTH_MODE=token" in command for command in starts)
    head = config["head_start_ray_commands"][-1]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in text.split("head_start_ray_commands")[1]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # The launcher substitutes $RAY_HEAD_IP only; ${...} would reach the shell unset.
    assert not re.findall(r"\$\{[A-Z_]+\}", text)
    assert set(re.findall(r"\$([A-Z_]{3,})", text)) <= {"RAY_HEAD_IP", "HOME", "PATH"}


def test_kuberay_rayjob_uses_token_auth_and_no_exposed_dashboard():
    config = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    cluster = config["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert not re.findall(r"\$\{[A-Z_]+\}", (DEPLOY / "rayjob.yaml").read_text())
    assert "serviceType" not in cluster["headGroupSpec"]  # ClusterIP: inside the cluster network only


def test_kuberay_rayjob_keeps_the_store_in_a_bucket_with_credentials_from_a_secret():
    """No shared filesystem for results: the store is a bucket, every Ray container gets the
    standard AWS variables from a Secret, and no credential is written in the file."""
    text = (DEPLOY / "rayjob.yaml").read_text()
    config = yaml.safe_load(text)
    assert "--storage s3://" in config["spec"]["entrypoint"]
    cluster = config["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert {"secretRef": {"name": "dncml-s3"}} in container["envFrom"]
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID)\s*[:=]\s*[A-Za-z0-9/+]{8,}", text)  # placeholders only
