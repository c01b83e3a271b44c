"""Ray Tune function trainable for the anomaly-localisation study (MNIST, UCSD Ped1, MVTec-AD)."""

from __future__ import annotations

from typing import Any

from search_spaces.anomaly import split_trial
from trainables.common import configure_torch_for_trial, run_trial, trial_params
from vae_attention.training import AnomalyState


def anomaly_trainable(config: dict[str, Any]) -> None:
    anomaly = split_trial(trial_params(config))
    device, device_tags = configure_torch_for_trial()
    state = AnomalyState(anomaly, device=device)
    run_trial(state, anomaly, {"device": str(device), **device_tags, "data_source": data_source_of(anomaly)})


def data_source_of(config) -> str:
    return f"{config.dataset}:{config.data_dir}"
