"""What every VAE in the study shares: the output tuple, the encode/sample/decode contract, weight init.

Every VAE's ``forward(x)`` returns ``VAEOutput(recon_logits, mu, logvar, z)``; decoders return logits, so the
Bernoulli likelihood is computed with ``binary_cross_entropy_with_logits`` (stable for saturated pixels).
Attention maps (``vae_attention.attention``) only need ``encode`` and a conv layer addressable by module name.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn


class VAEOutput(NamedTuple):
    recon_logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ·ε with ε ~ N(0, I) drawn from ``generator`` (so a trial's seed fixes every draw)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def init_normal_(module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """N(0, 0.02) weights and zero biases for conv/linear layers, as the FactorVAE references initialise."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@contextmanager
def seeded_default_init(generator: torch.Generator | None):
    """Build modules with PyTorch's default init, drawn from ``generator`` instead of the global RNG.

    Default initialisers take no generator; forking the CPU RNG and seeding it from ours keeps model
    construction reproducible without touching anyone else's random stream. Models are built on CPU.
    """
    with torch.random.fork_rng(devices=[], enabled=generator is not None):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        yield


class VAE(nn.Module):
    """A Gaussian-encoder VAE whose encoder emits ``2·z_dim`` values: μ then log σ²."""

    z_dim: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.encoder(x)
        return stats[:, : self.z_dim], stats[:, self.z_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Sample z in training mode; use z = μ in eval mode (deterministic reconstructions and maps)."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator) if self.training else mu
        return VAEOutput(self.decode(z), mu, logvar, z)


class View(nn.Module):
    """``Tensor.view`` as a module, so encoders/decoders stay plain ``nn.Sequential`` with indexable names."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
