"""VAEs (each ``forward`` returns ``VAEOutput``), the FactorVAE discriminator, and RBMs (the report's extension)."""

from vae_attention.models.base import VAE, VAEOutput, init_normal_, reparameterize
from vae_attention.models.dsprites import Discriminator, DSpritesVAE
from vae_attention.models.mnist import MNISTConvVAE
from vae_attention.models.rbm import RBM, StackedRBM
from vae_attention.models.resnet import DEFAULT_RESNET_LAYER, ResNet18VAE, SeedResNet18VAE
from vae_attention.models.ucsd import UCSD_ATTENTION_LAYERS, SeedUCSDConvVAE, UCSDConvVAE

__all__ = [
    "VAE",
    "VAEOutput",
    "DSpritesVAE",
    "Discriminator",
    "MNISTConvVAE",
    "RBM",
    "StackedRBM",
    "ResNet18VAE",
    "SeedResNet18VAE",
    "SeedUCSDConvVAE",
    "UCSDConvVAE",
    "DEFAULT_RESNET_LAYER",
    "UCSD_ATTENTION_LAYERS",
    "init_normal_",
    "reparameterize",
]
