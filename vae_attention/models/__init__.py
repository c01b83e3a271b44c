"""VAEs (each ``forward`` returns ``VAEOutput``) and the FactorVAE discriminator."""

from vae_attention.models.base import VAE, VAEOutput, init_normal_, reparameterize
from vae_attention.models.dsprites import Discriminator, DSpritesVAE
from vae_attention.models.mnist import MNISTConvVAE

__all__ = [
    "VAE",
    "VAEOutput",
    "DSpritesVAE",
    "Discriminator",
    "MNISTConvVAE",
    "init_normal_",
    "reparameterize",
]
