"""Ray Tune function trainable for the disentanglement study (FactorVAE, AD-FactorVAE, β-VAE)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from search_spaces.disentangle import split_trial
from trainables.common import configure_torch_for_trial, node_context, restore_dir, trial_params, tune_report
from vae_attention.data import DSprites
from vae_attention.training import DisentangleTrainee, TrainState, load_checkpoint, run_loop


def disentangle_trainable(config: dict[str, Any]) -> None:
    science, loop = split_trial(trial_params(config))
    device = configure_torch_for_trial()
    dataset = DSprites(science.data_dir)
    trainee = DisentangleTrainee(TrainState(science, dataset, device=device), loop)
    restore_dir(lambda directory: load_checkpoint(trainee, directory))
    context = {"device": str(device), **node_context(), "data_source": data_source_of(dataset)}

    def report(metrics, write):
        # Strings ride along on every report (cheap); the MLflow callback turns them into tags.
        tune_report({**metrics, **context}, write)

    with tempfile.TemporaryDirectory(prefix="figures-") as scratch:
        run_loop(trainee, loop, report, Path(scratch))


def data_source_of(dataset: DSprites) -> str:
    return f"npz:{dataset.sha256}" if dataset.source == "npz" else "generated"
