"""Training without Ray: the shared loop (``loop``) and one package per study (``disentangle``, ``anomaly``),
each with the same roles (config, state = the loop's trainee, evaluate; disentanglement also has ``step``)."""

from vae_attention.training.anomaly import AnomalyConfig, AnomalyState
from vae_attention.training.disentangle import (
    DisentangleConfig,
    DisentangleState,
    Models,
    Optimizers,
    build_models,
    build_optimizers,
    train_step,
)
from vae_attention.training.loop import MetricWindow, Schedule, check_cadences, load_checkpoint, run_loop

__all__ = [
    "AnomalyConfig",
    "AnomalyState",
    "DisentangleConfig",
    "DisentangleState",
    "MetricWindow",
    "Models",
    "Optimizers",
    "Schedule",
    "build_models",
    "build_optimizers",
    "check_cadences",
    "load_checkpoint",
    "run_loop",
    "train_step",
]
