"""``cluster.yaml``: valid for the installed Ray's cluster launcher, safe by default, installs this project.

Both the AWS config and the on-premise (``provider: local``) variant in its comments are checked against the
schema Ray ships (``ray/autoscaler/ray-schema.json``), as written and after Ray's own ``prepare_config`` (the
defaults merge that ``ray up`` does before it talks to the cloud) and ``validate_config``. Nothing here
reaches the network: socket connections fail for the length of each test.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
LOCAL_BEGIN = "# --- BEGIN provider: local ---"
LOCAL_END = "# --- END provider: local ---"
PROJECT_DIR = "~/vae-attention-study"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any attempt to open a connection (AWS API, instance metadata, pip) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # boto3 may not even look for credentials or a region
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def text() -> str:
    return CLUSTER_YAML.read_text()


def aws_config() -> dict:
    return yaml.safe_load(text())


def local_config() -> dict:
    """The commented on-premise variant between the marker lines, uncommented and parsed."""
    lines = text().splitlines()
    assert lines.count(LOCAL_BEGIN) == 1 and lines.count(LOCAL_END) == 1, "marker lines missing or repeated"
    block = lines[lines.index(LOCAL_BEGIN) + 1: lines.index(LOCAL_END)]
    assert block and all(line == "#" or line.startswith("# ") for line in block), "every line must be commented"
    return yaml.safe_load("\n".join(line[2:] for line in block))


def check_with_ray(config: dict) -> dict:
    """What ``ray up`` checks before it contacts a provider: the raw schema, then defaults merged and validated."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(config, schema)  # as written (typos in keys fail: additionalProperties is false)
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def test_aws_config_is_valid_for_the_installed_ray():
    config = aws_config()
    prepared = check_with_ray(config)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    assert isinstance(config["provider"]["cache_stopped_nodes"], bool)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0 and head["node_config"]["InstanceType"].startswith("m")
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in gpu)
    assert all(0 <= t.get("min_workers", 0) <= t["max_workers"] <= config["max_workers"] for t in workers.values())
    # the same image on every node type (one place to fill it in), and the way to find it is written down
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1
    assert "/aws/service/deeplearning/ami/" in text()
    # prepare_config merged the common setup into the head's, as ray up runs it
    assert prepared["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]


def test_local_variant_is_valid_for_the_installed_ray():
    config = local_config()
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert "available_node_types" not in config and "head_node_type" not in config  # the local provider refuses them
    prepared = check_with_ray(config)
    node_type = prepared["available_node_types"][prepared["head_node_type"]]
    assert node_type["resources"] == {}  # CPUs and GPUs: detected on each machine by ray start
    assert node_type["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("variant", [aws_config, local_config], ids=["aws", "local"])
def test_dashboard_binds_to_localhost_only(variant):
    config = variant()
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--head" in head_start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    assert not any("0.0.0.0" in c for c in commands)
    assert any(c.startswith("ray stop") for c in config["worker_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize("variant", [aws_config, local_config], ids=["aws", "local"])
def test_setup_installs_this_project(variant):
    config = variant()
    # the working tree, relative to the folder `ray up` runs in (this one), goes to the same path on every node
    assert config["file_mounts"] == {PROJECT_DIR: "."}
    pyproject = (CLUSTER_YAML.parent / "pyproject.toml").read_text()
    assert re.search(r'^name = "vae-attention-study"$', pyproject, re.M)
    assert ".gitignore" in config.get("rsync_filter", [])  # no ray_results/, mlflow.db, .venv/ shipped
    setup = config["setup_commands"]
    assert f"cd {PROJECT_DIR} && pip install -q -e ." in setup
    assert f'cd {PROJECT_DIR} && pip install -q -e ".[dev]"' in config["head_setup_commands"]
    assert not any("[dev]" in c for c in setup)  # workers need no test tools
    # the cluster runs the Ray version that launches it (and that the project pins)
    pins = {m for c in setup for m in re.findall(r'"ray\[default\]==([^"]+)"', c)}
    assert pins == {ray.__version__}
    # Ray runs setup in an interactive login bash; the venv must be on PATH for ray start there
    assert any("~/.bashrc" in c and "venv/bin/activate" in c for c in setup)


def test_comments_explain_the_shared_storage_requirement():
    header = text().split("\ncluster_name:", 1)[0]
    assert all(line.startswith("#") or not line.strip() for line in header.splitlines())
    assert "Ray 2.7" in header and "--storage" in header
    assert re.search(r"--storage s3://\S+", header)
    assert re.search(r"--storage /mnt/nfs/\S+", header) and "NFS" in header
    assert "--data-dir" in header  # data must be at the same path on every node too


def test_no_credentials_or_real_account_in_the_file():
    content = text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", content)
    assert not re.search(r"arn:aws:iam::\d{12}:", content)
