"""The science of the study: models, latent attention maps, losses, metrics, data and training.

Pure PyTorch/numpy. Nothing here imports Ray or MLflow; ``trainables/`` and ``study/`` wrap it.
"""

from vae_attention.errors import ConfigError, DataError, StudyError

__all__ = ["ConfigError", "DataError", "StudyError"]
