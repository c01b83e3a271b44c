"""The dSprites VAEs and FactorVAE's discriminator.

- ``DSpritesVAE``: Kim & Mnih (2018), "Disentangling by Factorising", Table 1 of their appendix. Encoder: four
  4×4 stride-2 convs (32, 32, 64, 64 channels; 64→32→16→8→4 pixels), FC 128, FC 2·z. Decoder mirrors it and
  returns Bernoulli logits for 1×64×64 images. About 0.57 M parameters at z = 10. Module names are stable API:
  ``encoder.0`` is the first conv (the default layer for L_AD), ``encoder.6`` the last conv.
- ``AllConvDSpritesVAE``: 1Konny/FactorVAE's ``FactorVAE1`` (``model.py``), which the reproducibility report's
  code copies: the same four convs, then the FC layers as convs (4×4 valid conv to 128 channels, 1×1 conv to
  2·z); the decoder starts from z as a 1×1 image. About 0.50 M parameters at z = 10.

``encoder_fc_relu`` switches the ReLU after the 128-unit layer: Kim & Mnih's table lists no activation there,
1Konny and disentanglement_lib have one. Off, the ReLU is replaced by ``nn.Identity`` so module and parameter
names stay the same.
"""

from __future__ import annotations

import torch
from torch import nn

from vae_attention.models.base import VAE, View, init_normal_, seeded_default_init


def _fc_activation(relu: bool) -> nn.Module:
    return nn.ReLU() if relu else nn.Identity()


def _conv_trunk() -> list[nn.Module]:
    """Kim & Mnih's four 4×4/2 convs (32, 32, 64, 64 channels; 64→4 px), ``encoder.0``–``encoder.7`` in both
    dSprites VAEs; built fresh per call, in the same order, so a seeded init draws the same weights."""
    return [
        nn.Conv2d(1, 32, 4, 2, 1),  # encoder.0: 32×32×32
        nn.ReLU(),
        nn.Conv2d(32, 32, 4, 2, 1),  # encoder.2: 32×16×16
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, 2, 1),  # encoder.4: 64×8×8
        nn.ReLU(),
        nn.Conv2d(64, 64, 4, 2, 1),  # encoder.6: 64×4×4
        nn.ReLU(),
    ]


class DSpritesVAE(VAE):
    # μ = the first z_dim outputs of ``encoder`` (``VAE.encode``): ``EncoderChain`` may write out ∂μ/∂A
    mu_is_leading_encoder_output = True

    def __init__(self, z_dim: int = 10, generator: torch.Generator | None = None, encoder_fc_relu: bool = True):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(
            *_conv_trunk(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            _fc_activation(encoder_fc_relu),  # encoder.10
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


class AllConvDSpritesVAE(VAE):
    """1Konny's ``FactorVAE1`` for 1×64×64 dSprites; ``encoder``/``decoder`` have the indices of its
    ``encode``/``decode`` (``encoder.N`` here = ``encode.N`` there, e.g. ``encoder.10`` = the last conv, 2·z × 1×1,
    the report's L_AD layer; ``encoder.8`` = the 128-channel conv, ``encoder.1`` = the first conv's ReLU).

    Initialisation as 1Konny's ``normal_init``: N(0, 0.02) weights and zero biases for ``Conv2d`` and ``Linear``
    only. ``ConvTranspose2d`` is not a ``Conv2d`` subclass, so the decoder's transposed convs keep PyTorch's
    default init; here it is drawn from ``generator`` (``seeded_default_init``) so a seed fixes every weight.
    """

    mu_is_leading_encoder_output = True  # μ = the first z_dim channels of ``encoder``'s (B, 2z, 1, 1) output

    def __init__(self, z_dim: int = 10, generator: torch.Generator | None = None, encoder_fc_relu: bool = True):
        super().__init__()
        self.z_dim = z_dim
        with seeded_default_init(generator):
            self.encoder = nn.Sequential(
                *_conv_trunk(),
                nn.Conv2d(64, 128, 4, 1),  # encoder.8: 128×1×1 (Kim & Mnih's FC 128)
                _fc_activation(encoder_fc_relu),  # encoder.9
                nn.Conv2d(128, 2 * z_dim, 1),  # encoder.10: 2z×1×1 (μ, log σ²)
            )
            self.decoder = nn.Sequential(
                nn.Conv2d(z_dim, 128, 1),
                nn.ReLU(),
                nn.ConvTranspose2d(128, 64, 4),  # 1 → 4 pixels
                nn.ReLU(),
                nn.ConvTranspose2d(64, 64, 4, 2, 1),
                nn.ReLU(),
                nn.ConvTranspose2d(64, 32, 4, 2, 1),
                nn.ReLU(),
                nn.ConvTranspose2d(32, 32, 4, 2, 1),
                nn.ReLU(),
                nn.ConvTranspose2d(32, 1, 4, 2, 1),  # 64×64 logits
            )
        for m in self.modules():
            if type(m) in (nn.Conv2d, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.encoder(x).flatten(1)  # (B, 2z, 1, 1) → (B, 2z)
        return stats[:, : self.z_dim], stats[:, self.z_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z[:, :, None, None])


class Discriminator(nn.Module):
    """FactorVAE's total-correlation discriminator: an MLP over z with 2 logits (0 = q(z), 1 = ∏ q(z_j)).

    Kim & Mnih use 6 hidden layers of 1000 units with LeakyReLU(0.2): ~5 M parameters, which dominate the
    checkpoint size (with Adam's two moments, ~66 MB). 1Konny's and the report's ``Discriminator`` have 5
    (Linear(z, 1000), four Linear(1000, 1000), each + LeakyReLU(0.2), then Linear(1000, 2)): ``hidden_layers=5``.
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
