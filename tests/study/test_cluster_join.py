"""Joining a Ray cluster that refuses us is a user error in one line, raised before the sweep writes anything."""

import pytest
import ray

from study import cluster
from vae_attention.errors import StudyError


def test_a_cluster_that_refuses_the_driver_is_one_line(monkeypatch):
    # What ray.init raises for a head with token auth on and no token (Ray 2.60): a ConnectionError whose
    # cause carries the RPC error, printed by Ray as a multi-screen traceback.
    def refuse(address, **kwargs):
        cause = RuntimeError("Failed to connect to GCS.\nray.exceptions.AuthenticationError: InvalidAuthToken")
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}") from cause

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(StudyError) as raised:
        cluster.connect_ray("127.0.0.1:6391")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("cannot join the Ray cluster at 127.0.0.1:6391 (ray.exceptions.AuthenticationError")
