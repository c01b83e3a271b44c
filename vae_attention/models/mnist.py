"""The MNIST ConvVAE of the authors' code (expVAE), used for one-class anomaly localisation.

Encoder: Conv 1→64 and 64→128 (4×4, stride 2; 28→14→7 pixels), Linear 6272→1024, then μ and log σ² heads
(z = 32). The authors compute attention at the second conv, ``encoder.2`` here. Decoder mirrors it and returns
logits for 1×28×28 images. PyTorch's default init, as the authors' code (seeded from our generator).
"""

from __future__ import annotations

import torch
from torch import nn

from vae_attention.models.base import VAE, View, seeded_default_init


class MNISTConvVAE(VAE):
    def __init__(self, z_dim: int = 32, generator: torch.Generator | None = None):
        super().__init__()
        with seeded_default_init(generator):
            self.z_dim = z_dim
            self.encoder = nn.Sequential(
                nn.Conv2d(1, 64, 4, 2, 1),  # encoder.0: 64×14×14
                nn.ReLU(),
                nn.Conv2d(64, 128, 4, 2, 1),  # encoder.2: 128×7×7
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(128 * 7 * 7, 1024),
                nn.ReLU(),
                nn.Linear(1024, 2 * z_dim),
            )
            self.decoder = nn.Sequential(
                nn.Linear(z_dim, 1024),
                nn.ReLU(),
                nn.Linear(1024, 128 * 7 * 7),
                nn.ReLU(),
                View(128, 7, 7),
                nn.ConvTranspose2d(128, 64, 4, 2, 1),
                nn.ReLU(),
                nn.ConvTranspose2d(64, 1, 4, 2, 1),
            )
