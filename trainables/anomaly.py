"""Ray Tune function trainable for the anomaly-localisation study (MNIST, UCSD Ped1, MVTec-AD)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from search_spaces.anomaly import split_trial
from trainables.common import configure_torch_for_trial, node_context, restore_dir, trial_params, tune_report
from vae_attention.training import AnomalyState, load_checkpoint, run_loop


def anomaly_trainable(config: dict[str, Any]) -> None:
    anomaly = split_trial(trial_params(config))
    device = configure_torch_for_trial()
    state = AnomalyState(anomaly, device=device)
    restore_dir(lambda directory: load_checkpoint(state, directory))
    context = {"device": str(device), **node_context(), "data_source": data_source_of(anomaly)}

    def report(metrics, write):
        tune_report({**metrics, **context}, write)

    with tempfile.TemporaryDirectory(prefix="figures-") as scratch:
        run_loop(state, anomaly, report, Path(scratch))


def data_source_of(config) -> str:
    return f"{config.dataset}:{config.data_dir}"
