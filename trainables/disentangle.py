"""Ray Tune function trainable for the disentanglement study (FactorVAE, AD-FactorVAE, β-VAE)."""

from __future__ import annotations

from typing import Any

from search_spaces.common import trial_params
from search_spaces.disentangle import trial_configs
from trainables.common import configure_torch_for_trial, run_trial
from vae_attention.data import DSprites
from vae_attention.errors import DataError
from vae_attention.training.disentangle import DisentangleState


def disentangle_trainable(config: dict[str, Any]) -> None:
    disentangle, schedule = trial_configs(trial_params(config))
    device, device_tags = configure_torch_for_trial()
    dataset = DSprites(disentangle.data_dir)
    if disentangle.data_dir is not None and dataset.source != "npz":  # e.g. a worker node without the file
        raise DataError(f"{disentangle.data_dir} has no dSprites npz on this node; the sweep was started with it")
    state = DisentangleState(disentangle, dataset, device=device)
    run_trial(state, schedule, {"device": str(device), **device_tags, "data_source": data_source_of(dataset)})


def data_source_of(dataset: DSprites) -> str:
    return f"npz:{dataset.sha256}" if dataset.source == "npz" else "generated"
