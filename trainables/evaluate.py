"""Ray task body of a re-score (``python -m study.evaluate``): a trained model's evaluation under changed settings.

The driver hands over one job per (trial, settings) — the study, the trial's resolved config with the changed
settings applied, the step the weights were saved at, the torch threads — and the weights as bytes (the
trial's ``model/vae.pt`` artifact, shared through Ray's object store so a worker needs no access to the
driver's artifact store). The task rebuilds the study's state exactly as the trial built it (data sets,
model; nothing is trained), loads the weights and runs the study's own evaluation, so the metric names and
definitions are those of training-time evaluation. Tasks never talk to MLflow: the driver is its one writer.

Returns ``{"metrics": {...}, "figure_name": str | None, "figure_png": bytes | None}``, or ``{"error": line}``
for what a user can cause (missing data, weights that do not fit the config): one line, and the other jobs go on.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import torch

from vae_attention.errors import StudyError
from vae_attention.training.loop import figure_files


def _device() -> torch.device:
    """CUDA when Ray gave this task a GPU (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _load_into(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    try:
        module.load_state_dict(weights)
    except RuntimeError as err:  # missing/unexpected keys or size mismatches: a model of another config
        first = " ".join(str(err).split())[:200]
        raise StudyError(f"weights do not fit its config ({first})") from None


def _anomaly_state(params: dict[str, Any], weights, device, step: int):
    from search_spaces.anomaly import trial_config
    from vae_attention.training.anomaly import AnomalyState

    state = AnomalyState(trial_config(params), device=device)
    _load_into(state.model, weights)
    state.epoch = step  # the figure's title and file name carry the epoch the weights are from
    return state


def _disentangle_state(params: dict[str, Any], weights, device, step: int):
    from search_spaces.disentangle import trial_configs
    from vae_attention.data import DSprites
    from vae_attention.training.disentangle import DisentangleState

    config, _ = trial_configs(params)
    state = DisentangleState(config, DSprites(config.data_dir), device=device)
    _load_into(state.models.vae, weights)
    state.iteration = step
    return state


STATES = {"anomaly": _anomaly_state, "disentangle": _disentangle_state}


def rescore(kind: str, params: dict[str, Any], weights: dict[str, torch.Tensor], step: int,
            device: torch.device | str = "cpu") -> tuple[dict[str, float], str | None, bytes | None]:
    """The study's evaluation of ``weights`` under ``params``: (metrics, figure file name, figure PNG bytes).

    The figure is the evaluation's first, its attention figure (a re-score does not return the traversal and
    reconstruction figures a disentangle evaluation also writes)."""
    state = STATES[kind](params, weights, torch.device(device), step)
    with tempfile.TemporaryDirectory(prefix="rescore-") as scratch:
        metrics, figures = state.evaluate(Path(scratch))
        figure = next(iter(figure_files(figures)), None)
        png = Path(figure).read_bytes() if figure is not None and Path(figure).is_file() else None
        name = Path(figure).name if png is not None else None
    return {k: float(v) for k, v in metrics.items()}, name, png


def evaluate_task(job: dict[str, Any], weights: bytes) -> dict[str, Any]:
    """The Ray task: ``job`` = {kind, params, step, threads}; ``weights`` = the bytes of ``model/vae.pt``."""
    torch.set_num_threads(max(1, int(job.get("threads", 1))))
    try:
        device = _device()
        try:
            state_dict = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
        except Exception as err:  # a torn or foreign file: same user-facing problem as a wrong one
            raise StudyError(f"weights unreadable ({type(err).__name__})") from None
        metrics, name, png = rescore(job["kind"], job["params"], state_dict, int(job["step"]), device)
    except StudyError as err:
        return {"error": str(err).splitlines()[0] if str(err) else type(err).__name__}
    return {"metrics": metrics, "figure_name": name, "figure_png": png, "device": str(device)}
