"""Finding and joining Ray: the cluster a sweep runs on (one given, the one running here, or a local one)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import ray

from vae_attention.errors import StudyError


def running_cluster_address(timeout_s: float = 2.0) -> str | None:
    """RAY_ADDRESS, else the address ``ray start`` last recorded on this machine, if its GCS answers.

    ``ray.init(address="auto")`` would also read that record, but it keeps retrying a cluster that has
    since stopped (the record outlives it) instead of failing fast; a TCP probe tells live from stale.
    """
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        try:
            address = record.read_text().strip() or None
        except OSError:
            return None
    if address is None or "://" in address:  # ray:// client addresses are joined as given
        return address
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return address
    except (OSError, ValueError):
        print(f"ignoring the Ray cluster recorded at {address}: it does not answer")
        return None


def connect_ray(address: str | None, log_to_driver: bool = False) -> None:
    """Join ``address``, else the running cluster (e.g. after ``ray up``), else start a local instance.

    ``log_to_driver`` (``--debug``): stream the trials' stdout/stderr to this console, as Ray prints them.
    """
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet = dict(logging_level=logging.WARNING, log_to_driver=log_to_driver)
    address = address or running_cluster_address()
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as err:  # unreachable, refused or unauthenticated: Ray's message is a traceback
            reason = str(err.__cause__ or err).strip().splitlines()[-1][:200]
            raise StudyError(f"cannot join the Ray cluster at {address} ({reason}); check the address "
                             "(`ray status --address ADDRESS`) and, for token auth, RAY_AUTH_TOKEN") from None
        print(f"joined the Ray cluster at {address}")
        return
    ray.init(address="local", include_dashboard=False, **quiet)
    print(f"started a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")
