"""ResNet-18 VAE for MVTec-AD (the paper: "ResNet-18 as the encoder"; the report: last two layers replaced).

Encoder: ``torchvision.models.resnet18(weights=None)`` up to ``layer4`` (512 × S/32 × S/32), with its
``avgpool`` and ``fc`` replaced by a flatten and one linear latent head (μ and log σ², z = 32) so the
latent keeps the spatial layout. Decoder: a linear map back to 512 × S/32 × S/32, then five
ConvTranspose 4×4/2 + BatchNorm + ReLU blocks (512→256→128→64→32→16 channels, ×32 in size) and a 3×3
conv to RGB logits. At S = 256: ≈ 17 M parameters.

Module names keep torchvision's (``encoder.layer3.1.conv2`` etc.), so attention layers are addressed as
in any ResNet. BatchNorm makes a batch's images interact in training mode: compute maps in eval mode.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn

from vae_attention.errors import ConfigError
from vae_attention.models.base import VAE, View, seeded_default_init

DEFAULT_RESNET_LAYER = "encoder.layer3.1.conv2"  # 16×16 maps at S = 256
DECODER_CHANNELS = (512, 256, 128, 64, 32, 16)


class ResNet18VAE(VAE):
    def __init__(self, z_dim: int = 32, image_size: int = 256, generator: torch.Generator | None = None):
        super().__init__()
        if image_size % 32 or image_size < 32:
            raise ConfigError(f"image_size must be a multiple of 32 for the ResNet-18 VAE, got {image_size}")
        self.z_dim = z_dim
        side = image_size // 32
        with seeded_default_init(generator):  # torchvision's init, reproducible from our generator
            trunk = torchvision.models.resnet18(weights=None)
            self.encoder = nn.Sequential(OrderedDict(
                conv1=trunk.conv1, bn1=trunk.bn1, relu=trunk.relu, maxpool=trunk.maxpool,
                layer1=trunk.layer1, layer2=trunk.layer2, layer3=trunk.layer3, layer4=trunk.layer4,
                flatten=nn.Flatten(), fc=nn.Linear(512 * side * side, 2 * z_dim),
            ))
            blocks: list[nn.Module] = [nn.Linear(z_dim, 512 * side * side), View(512, side, side)]
            for c_in, c_out in zip(DECODER_CHANNELS[:-1], DECODER_CHANNELS[1:], strict=True):
                blocks += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
            blocks.append(nn.Conv2d(DECODER_CHANNELS[-1], 3, 3, 1, 1))
            self.decoder = nn.Sequential(*blocks)
