"""The UCSD Ped1 ConvVAE: the authors' MNIST ConvVAE with a third conv for 1×100×100 frames (as the report).

Encoder convs 64/128/256 channels (100→50→25→13 pixels), Linear 256·13·13→1024, μ and log σ² (z = 32).
Attention can be taken at any of the three convs (``encoder.0``, ``encoder.2``, ``encoder.4``); the
report compared them. The decoder mirrors the encoder back to 100×100 logits. PyTorch's default init,
as the authors' MNIST model (seeded from our generator).
"""

from __future__ import annotations

import torch
from torch import nn

from vae_attention.models.base import VAE, View, seeded_default_init

UCSD_ATTENTION_LAYERS = ("encoder.0", "encoder.2", "encoder.4")


class UCSDConvVAE(VAE):
    def __init__(self, z_dim: int = 32, generator: torch.Generator | None = None):
        super().__init__()
        with seeded_default_init(generator):
            self.z_dim = z_dim
            self.encoder = nn.Sequential(
                nn.Conv2d(1, 64, 4, 2, 1),  # encoder.0: 64×50×50
                nn.ReLU(),
                nn.Conv2d(64, 128, 4, 2, 1),  # encoder.2: 128×25×25
                nn.ReLU(),
                nn.Conv2d(128, 256, 3, 2, 1),  # encoder.4: 256×13×13
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(256 * 13 * 13, 1024),
                nn.ReLU(),
                nn.Linear(1024, 2 * z_dim),
            )
            self.decoder = nn.Sequential(
                nn.Linear(z_dim, 1024),
                nn.ReLU(),
                nn.Linear(1024, 256 * 13 * 13),
                nn.ReLU(),
                View(256, 13, 13),
                nn.ConvTranspose2d(256, 128, 3, 2, 1),  # 25×25
                nn.ReLU(),
                nn.ConvTranspose2d(128, 64, 4, 2, 1),  # 50×50
                nn.ReLU(),
                nn.ConvTranspose2d(64, 1, 4, 2, 1),  # 100×100
            )
