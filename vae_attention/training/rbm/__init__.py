"""The RBM study's training (the report's extension: a greedily trained stack of RBMs on one MNIST digit, its
Gumbel-relaxed attention maps, and the anomaly study's MNIST VAE on the same digit for the comparison), in the
roles every study has: ``config`` (typed config and its schedule), ``step`` (stack, optimisers, one layer-epoch
of CD updates, the free-energy gap), ``state`` (``RBMState``, the shared loop's trainee) and ``evaluate``
(both RBM constructions and the VAE on the pasted MNIST test set: metrics and figure)."""

from vae_attention.training.rbm.config import RBMConfig
from vae_attention.training.rbm.state import RBMData, RBMState, build_data, vae_config
from vae_attention.training.rbm.step import build_optimizers, build_stack, free_energy_gap, layer_epoch

__all__ = ["RBMConfig", "RBMData", "RBMState", "build_data", "build_optimizers", "build_stack", "free_energy_gap",
           "layer_epoch", "vae_config"]
