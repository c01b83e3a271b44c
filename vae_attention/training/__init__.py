"""Training without Ray: the disentanglement config, the explicit two-optimiser step and ``TrainState``."""

from vae_attention.training.anomaly_config import AnomalyConfig
from vae_attention.training.anomaly_state import AnomalyState
from vae_attention.training.config import DisentangleConfig
from vae_attention.training.disentangle import Models, Optimizers, build_models, build_optimizers, train_step
from vae_attention.training.disentangle_run import DisentangleTrainee, LoopConfig
from vae_attention.training.loop import check_cadences, load_checkpoint, run_loop
from vae_attention.training.state import MetricWindow, TrainState

__all__ = [
    "AnomalyConfig",
    "AnomalyState",
    "DisentangleConfig",
    "DisentangleTrainee",
    "LoopConfig",
    "MetricWindow",
    "Models",
    "Optimizers",
    "TrainState",
    "build_models",
    "build_optimizers",
    "check_cadences",
    "load_checkpoint",
    "run_loop",
    "train_step",
]
