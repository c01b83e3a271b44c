"""``cluster.yaml``: valid for the installed Ray's cluster launcher, safe by default, installs this project.

Both the AWS config and the on-premise (``provider: local``) variant in its comments are checked against the
schema Ray ships (``ray/autoscaler/ray-schema.json``), as written and after Ray's own ``prepare_config`` (the
defaults merge that ``ray up`` does before it talks to the cloud) and ``validate_config``. Nothing here
reaches the network: socket connections fail for the length of each test.
"""

from __future__ import annotations

import importlib.util
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

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
PIN_SCRIPT = ROOT / "deploy" / "pin_worker_image.py"
SSM_AMI = re.compile(r"^resolve:ssm:(/aws/service/deeplearning/ami/x86_64/[\w./-]+/ami-id)$")
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
    # the local variant reads Ray's bootstrap config; the AWS one the copy with the workers' image pinned
    assert "--head" in head_start and re.search(r"--autoscaling-config=~/ray_bootstrap_config(\.pinned)?\.yaml",
                                                head_start)
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


def _strings(value):
    """Every string in a parsed config, at any depth."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_aws_config_runs_as_shipped_with_no_image_to_fill_in():
    """No placeholder anywhere in the active config; the image is AWS's public DLAMI parameter, which Ray's
    AMI step (``_check_ami``, run by ``ray up`` in bootstrap_aws) passes through to EC2 untouched."""
    from ray.autoscaler._private.aws.config import DEFAULT_AMI, _check_ami

    config = aws_config()
    leftovers = [s for s in _strings(config) if re.search(r"REPLACE|YOUR[-_.]|XXXX|ACCOUNT_ID", s)]
    assert not leftovers, f"placeholders left in the active config: {leftovers}"
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(images) == 1
    (image,) = images
    match = SSM_AMI.match(image)
    assert match, f"ImageId is neither AWS's DLAMI SSM parameter nor resolvable as shipped: {image!r}"
    # the fixed-id recipe in the comment names the same parameter
    assert f"--name {match.group(1)}" in text()
    prepared = prepare_config(config)
    _check_ami(prepared)  # what `ray up` does to ImageId: Ray substitutes its default only for "" or latest_dlami
    region = config["provider"]["region"]
    assert {t["node_config"]["ImageId"] for t in prepared["available_node_types"].values()} == {image}
    assert image != DEFAULT_AMI.get(region)


def _pin_module():
    spec = importlib.util.spec_from_file_location("pin_worker_image", PIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_head_pins_workers_to_its_own_image_before_ray_starts():
    config = aws_config()
    pin = (f"python3 {PROJECT_DIR}/deploy/pin_worker_image.py ~/ray_bootstrap_config.yaml "
           f"~/ray_bootstrap_config.pinned.yaml")
    # first setup command (system python3: the venv does not exist yet), and again before the head's ray start,
    # which hands the pinned copy to the autoscaler
    assert config["setup_commands"][0] == pin
    head_start = config["head_start_ray_commands"]
    pins = [i for i, c in enumerate(head_start) if c.startswith(pin)]
    starts = [i for i, c in enumerate(head_start) if "ray start --head" in c]
    assert pins and starts and pins[0] < starts[0]
    assert "--autoscaling-config=~/ray_bootstrap_config.pinned.yaml" in head_start[starts[0]]
    assert PIN_SCRIPT.is_file()


def test_pin_script_writes_the_autoscaler_config_with_the_heads_image(tmp_path, capsys):
    module = _pin_module()
    bootstrap = prepare_config(aws_config())  # `ray up` uploads the prepared config as JSON
    (image,) = {t["node_config"]["ImageId"] for t in bootstrap["available_node_types"].values()}
    source, target = tmp_path / "ray_bootstrap_config.yaml", tmp_path / "ray_bootstrap_config.pinned.yaml"
    source.write_text(json.dumps(bootstrap))
    uploaded = source.read_text()
    ami = "ami-0123456789abcdef0"

    assert module.main([str(source), str(target), "--ami", ami]) == 0
    assert source.read_text() == uploaded  # Ray's file stays as `ray up` wrote it
    pinned = json.loads(target.read_text())
    assert {t["node_config"]["ImageId"] for t in pinned["available_node_types"].values()} == {ami}
    for node_type in bootstrap["available_node_types"].values():  # nothing else differs
        node_type["node_config"]["ImageId"] = ami
    assert pinned == bootstrap
    validate_config(pinned)  # a config the autoscaler accepts
    assert ami in capsys.readouterr().out

    # a config without SSM references is copied as it is, with no metadata lookup
    module.this_instance_ami = lambda: pytest.fail("metadata service queried with nothing to pin")
    source.write_text(json.dumps(pinned))
    assert module.main([str(source), str(target)]) == 0 and json.loads(target.read_text()) == pinned

    # a worker (no bootstrap config): nothing written
    assert module.main([str(tmp_path / "absent.yaml"), str(tmp_path / "out.yaml")]) == 0
    assert not (tmp_path / "out.yaml").exists()

    # metadata service unreachable: the config is copied unpinned (ray start still finds its file), with why
    def unreachable():
        raise OSError("timed out")

    module.this_instance_ami = unreachable
    source.write_text(uploaded)
    assert module.main([str(source), str(target)]) == 0
    assert json.loads(target.read_text()) == json.loads(uploaded)
    assert image in uploaded and "ssm:GetParameters" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp"))

    with pytest.raises(ValueError):
        module.pin(json.loads(uploaded), "not-an-ami")
