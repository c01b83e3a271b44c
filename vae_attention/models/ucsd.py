"""The UCSD Ped1 ConvVAE: the authors' MNIST ConvVAE with a third conv for 1×100×100 frames (as the report).

Encoder convs 64/128/256 channels (100→50→25→13 pixels), Linear 256·13·13→1024, μ and log σ² (z = 32).
Attention can be taken at any of the three convs (``encoder.0``, ``encoder.2``, ``encoder.4``); the
report compared them. The decoder mirrors the encoder back to 100×100 logits. PyTorch's default init,
as the authors' MNIST model (seeded from our generator).

``SeedUCSDConvVAE`` (``AnomalyConfig(architecture="seed")``): the report's UCSD model as its code has it
(FACT-2021 ``expVAE_pl/vae_model.py``, lines 62–89): third conv Conv(128, 256, 4, 2, 1) + ReLU (25→12 pixels),
Linear 256·12·12→1024, and a decoder whose first transposed conv has a 5×5 kernel (12→25). The report's text
and this project's issue describe it otherwise (Conv(128, 128, k5) + LeakyReLU); the code is what ran.
"""

from __future__ import annotations

import torch
from torch import nn

from vae_attention.models.base import VAE, View, seeded_default_init

UCSD_ATTENTION_LAYERS = ("encoder.0", "encoder.2", "encoder.4")


def _conv_vae(vae: VAE, z_dim: int, third_kernel: int, side: int, first_deconv_kernel: int) -> None:
    """Build ``vae``'s encoder/decoder; only the third conv's kernel (hence the last feature side) and the
    first transposed conv's kernel differ between the two UCSD models. Construction order fixes the init."""
    vae.z_dim = z_dim
    vae.encoder = nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1),  # encoder.0: 64×50×50
        nn.ReLU(),
        nn.Conv2d(64, 128, 4, 2, 1),  # encoder.2: 128×25×25
        nn.ReLU(),
        nn.Conv2d(128, 256, third_kernel, 2, 1),  # encoder.4: 256×side×side
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256 * side * side, 1024),
        nn.ReLU(),
        nn.Linear(1024, 2 * z_dim),
    )
    vae.decoder = nn.Sequential(
        nn.Linear(z_dim, 1024),
        nn.ReLU(),
        nn.Linear(1024, 256 * side * side),
        nn.ReLU(),
        View(256, side, side),
        nn.ConvTranspose2d(256, 128, first_deconv_kernel, 2, 1),  # 25×25
        nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1),  # 50×50
        nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1),  # 100×100
    )


class UCSDConvVAE(VAE):
    def __init__(self, z_dim: int = 32, generator: torch.Generator | None = None):
        super().__init__()
        with seeded_default_init(generator):
            _conv_vae(self, z_dim, third_kernel=3, side=13, first_deconv_kernel=3)


class SeedUCSDConvVAE(VAE):
    def __init__(self, z_dim: int = 32, generator: torch.Generator | None = None):
        super().__init__()
        with seeded_default_init(generator):
            _conv_vae(self, z_dim, third_kernel=4, side=12, first_deconv_kernel=5)
