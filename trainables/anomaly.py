"""Ray Tune function trainable for the anomaly-localisation study (MNIST, UCSD Ped1, MVTec-AD)."""

from __future__ import annotations

from typing import Any

from search_spaces.anomaly import trial_config
from search_spaces.common import trial_params
from trainables.common import configure_torch_for_trial, run_trial
from vae_attention.training.anomaly import AnomalyState


def anomaly_trainable(config: dict[str, Any]) -> None:
    anomaly = trial_config(trial_params(config))
    device, device_tags = configure_torch_for_trial()
    state = AnomalyState(anomaly, device=device)
    run_trial(state, anomaly.schedule, {"device": str(device), **device_tags, "data_source": data_source_of(anomaly)})


def data_source_of(config) -> str:
    return f"{config.dataset}:{config.data_dir}"
