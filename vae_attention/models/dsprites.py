"""The dSprites VAE of Kim & Mnih (2018), "Disentangling by Factorising", Table 1 of their appendix.

Encoder: four 4×4 stride-2 convs (32, 32, 64, 64 channels; 64→32→16→8→4 pixels), FC 128, FC 2·z.
Decoder mirrors it and returns Bernoulli logits for 1×64×64 images. About 0.57 M parameters at z = 10.
Module names are stable API: ``encoder.0`` is the first conv (the default layer for L_AD), ``encoder.6``
the last conv.
"""

from __future__ import annotations

import torch
from torch import nn

from vae_attention.models.base import VAE, View, init_normal_


class DSpritesVAE(VAE):
    def __init__(self, z_dim: int = 10, generator: torch.Generator | None = None):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1),  # encoder.0: 32×32×32
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, 2, 1),  # encoder.2: 32×16×16
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),  # encoder.4: 64×8×8
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, 2, 1),  # encoder.6: 64×4×4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 2 * z_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, 128),
            nn.ReLU(),
            nn.Linear(128, 64 * 4 * 4),
            nn.ReLU(),
            View(64, 4, 4),
            nn.ConvTranspose2d(64, 64, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1),
        )
        init_normal_(self, generator=generator)


class Discriminator(nn.Module):
    """FactorVAE's total-correlation discriminator: an MLP over z with 2 logits (0 = q(z), 1 = ∏ q(z_j)).

    Kim & Mnih use 6 hidden layers of 1000 units with LeakyReLU(0.2): ~5 M parameters, which dominate the
    checkpoint size (with Adam's two moments, ~66 MB).
    """

    def __init__(
        self,
        z_dim: int = 10,
        hidden_units: int = 1000,
        hidden_layers: int = 6,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = z_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_units), nn.LeakyReLU(0.2)]
            width = hidden_units
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)
        init_normal_(self, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
