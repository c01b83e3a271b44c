"""Ray Tune function trainable for the disentanglement study (FactorVAE, AD-FactorVAE, β-VAE)."""

from __future__ import annotations

from typing import Any

from search_spaces.disentangle import split_trial
from trainables.common import configure_torch_for_trial, run_trial, trial_params
from vae_attention.data import DSprites
from vae_attention.errors import DataError
from vae_attention.training import DisentangleTrainee, TrainState


def disentangle_trainable(config: dict[str, Any]) -> None:
    science, loop = split_trial(trial_params(config))
    device, device_tags = configure_torch_for_trial()
    dataset = DSprites(science.data_dir)
    if science.data_dir is not None and dataset.source != "npz":  # e.g. a worker node without the file
        raise DataError(f"{science.data_dir} has no dSprites npz on this node; the sweep was started with it")
    trainee = DisentangleTrainee(TrainState(science, dataset, device=device), loop)
    run_trial(trainee, loop, {"device": str(device), **device_tags, "data_source": data_source_of(dataset)})


def data_source_of(dataset: DSprites) -> str:
    return f"npz:{dataset.sha256}" if dataset.source == "npz" else "generated"
