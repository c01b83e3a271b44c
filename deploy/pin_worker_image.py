"""Pin the workers of a `ray up cluster.yaml` cluster to the AMI the head booted from.

cluster.yaml names its image as AWS's public SSM parameter (``ImageId: resolve:ssm:/aws/service/...``), which
EC2 resolves at each launch. `ray up` launches the head with your credentials; the head's autoscaler launches
the workers later with the ``ray-autoscaler-v1`` role, and a launch through a ``resolve:ssm:`` id needs
``ssm:GetParameters``, which that role (Ray creates it with AmazonEC2FullAccess and AmazonS3FullAccess only)
may lack. So, on the head, this copies the autoscaler config that `ray up` uploads (``~/ray_bootstrap_config.yaml``)
to the file the head's autoscaler reads (``--autoscaling-config``), with every ``resolve:ssm:`` ImageId replaced
by the head's own AMI id from the instance metadata service. Every node then runs the same image, also after
AWS republishes the parameter.

The copy is a file of its own so that the autoscaler never sees the unpinned config: `ray up` rewrites
``~/ray_bootstrap_config.yaml`` on every run, and a worker whose launch config no longer matches is terminated
as outdated. The copy is replaced atomically (the autoscaler re-reads it at every update).

cluster.yaml runs it first in setup_commands and again just before the head's ``ray start``. On a worker
(no bootstrap config) it does nothing. Standard library only: the first setup command runs with the image's
python3, before the virtualenv exists. If the metadata service cannot be reached, it copies the config as it
is and says so (workers then launch through the parameter).

    python3 deploy/pin_worker_image.py ~/ray_bootstrap_config.yaml ~/ray_bootstrap_config.pinned.yaml [--ami ID]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.request
from pathlib import Path

SSM_PREFIX = "resolve:ssm:"
IMDS = "http://169.254.169.254/latest"
AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")


def this_instance_ami(timeout_s: float = 2.0) -> str:
    """The AMI id this EC2 instance booted from (IMDSv2: a session token first, then the metadata)."""
    token_request = urllib.request.Request(f"{IMDS}/api/token", method="PUT",
                                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(token_request, timeout=timeout_s) as response:
        token = response.read().decode()
    ami_request = urllib.request.Request(f"{IMDS}/meta-data/ami-id", headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(ami_request, timeout=timeout_s) as response:
        return response.read().decode().strip()


def ssm_node_types(config: dict) -> list[str]:
    """Node types whose ImageId is an SSM parameter reference."""
    return [name for name, node_type in config.get("available_node_types", {}).items()
            if str(node_type.get("node_config", {}).get("ImageId", "")).startswith(SSM_PREFIX)]


def pin(config: dict, ami: str) -> list[str]:
    """Replace every ``resolve:ssm:`` ImageId by ``ami`` in place; returns the node types changed."""
    if not AMI_ID.match(ami):
        raise ValueError(f"not an AMI id: {ami!r}")
    names = ssm_node_types(config)
    for name in names:
        config["available_node_types"][name]["node_config"]["ImageId"] = ami
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the config `ray up` uploads: ~/ray_bootstrap_config.yaml")
    parser.add_argument("pinned", type=Path, help="where to write the pinned copy the autoscaler reads")
    parser.add_argument("--ami", help="AMI id to pin (default: this instance's, from the metadata service)")
    args = parser.parse_args(argv)
    source, target = args.config.expanduser(), args.pinned.expanduser()
    if not source.is_file():
        return 0  # a worker: `ray up` uploads the autoscaler config to the head only
    text = source.read_text()
    try:
        config = json.loads(text)  # `ray up` writes it as JSON
    except json.JSONDecodeError:
        import yaml  # a hand-written YAML config; only reached where Ray (and so PyYAML) is installed

        config = yaml.safe_load(text)
    if ssm_node_types(config):
        try:
            ami = args.ami or this_instance_ami()
            names = pin(config, ami)
            print(f"pin_worker_image: {', '.join(names)} -> {ami}")
        except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
            print(f"pin_worker_image: ImageId left as it is ({exc}); workers launch through the SSM parameter, "
                  "which needs ssm:GetParameters for the head's instance profile", file=sys.stderr)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, target)  # the autoscaler re-reads this file at every update: never let it see half a file
    return 0


if __name__ == "__main__":
    sys.exit(main())
