"""The anomaly-localisation study's training (one-class VAEs on MNIST, UCSD Ped1, MVTec-AD), in the roles every
study has: ``config`` (typed config and its schedule), ``state`` (``AnomalyState``, the shared loop's trainee,
with its data sets, model and one-epoch update), ``objective`` (the training losses: ELBO or the report's) and
``evaluate`` (attention maps over the test set, metrics, figure)."""

from vae_attention.training.anomaly.config import DATASETS, AnomalyConfig
from vae_attention.training.anomaly.state import AnomalyState, build_datasets, build_model, check_model

__all__ = ["DATASETS", "AnomalyConfig", "AnomalyState", "build_datasets", "build_model", "check_model"]
