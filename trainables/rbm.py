"""Ray Tune function trainable for the RBM study (stacked RBMs vs the MNIST VAE on pasted MNIST)."""

from __future__ import annotations

from typing import Any

from search_spaces.common import trial_params
from search_spaces.rbm import trial_config
from trainables.common import configure_torch_for_trial, run_trial
from vae_attention.training.rbm import RBMState


def rbm_trainable(config: dict[str, Any]) -> None:
    rbm = trial_config(trial_params(config))
    device, device_tags = configure_torch_for_trial()
    state = RBMState(rbm, device=device)
    run_trial(state, rbm.schedule, {"device": str(device), **device_tags, "data_source": data_source_of(rbm)})


def data_source_of(config) -> str:
    """The same form as the anomaly study's MNIST runs (``mnist:<data_dir>``), so reports can set them side by side."""
    return f"mnist:{config.data_dir}"
