"""ResNet-18 VAE for MVTec-AD (the paper: "ResNet-18 as the encoder"; the report: last two layers replaced).

Encoder: ``torchvision.models.resnet18(weights=None)`` up to ``layer4`` (512 × S/32 × S/32), with its
``avgpool`` and ``fc`` replaced by a flatten and one linear latent head (μ and log σ², z = 32) so the
latent keeps the spatial layout. Decoder: a linear map back to 512 × S/32 × S/32, then five
ConvTranspose 4×4/2 + BatchNorm + ReLU blocks (512→256→128→64→32→16 channels, ×32 in size) and a 3×3
conv to RGB logits. At S = 256: ≈ 17 M parameters.

Module names keep torchvision's (``encoder.layer3.1.conv2`` etc.), so attention layers are addressed as
in any ResNet. BatchNorm makes a batch's images interact in training mode: compute maps in eval mode.
``in_channels=1`` (the report's grayscale MVTec categories) replaces conv1 and the last conv.

``SeedResNet18VAE``: the report's pl_bolts-style ResNet-18 VAE (average pooling, Linear(512, ·) heads,
resize-conv residual decoder); see its docstring.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vae_attention.errors import ConfigError
from vae_attention.models.base import VAE, View, seeded_default_init

if TYPE_CHECKING:
    import torchvision

DEFAULT_RESNET_LAYER = "encoder.layer3.1.conv2"  # 16×16 maps at S = 256
DECODER_CHANNELS = (512, 256, 128, 64, 32, 16)


def _check_size(image_size: int) -> int:
    if image_size % 32 or image_size < 32:
        raise ConfigError(f"image_size must be a multiple of 32 for the ResNet-18 VAE, got {image_size}")
    return image_size // 32


def _trunk(in_channels: int) -> torchvision.models.ResNet:
    """torchvision's ResNet-18 (its own init); a one-channel input gets a fresh 7×7/2 conv1, as the report's
    grayscale MVTec model (``vae_model.py``: ``encoder.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)``)."""
    # imported here: torchvision pulls in torch._dynamo (~2 s of start-up), which every importer of
    # vae_attention.models (each sweep driver and trial) would pay for a model only MVTec trials build
    import torchvision

    trunk = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return trunk


class ResNet18VAE(VAE):
    def __init__(self, z_dim: int = 32, image_size: int = 256, generator: torch.Generator | None = None,
                 in_channels: int = 3):
        super().__init__()
        side = _check_size(image_size)
        self.z_dim = z_dim
        with seeded_default_init(generator):  # torchvision's init, reproducible from our generator
            trunk = _trunk(in_channels)
            self.encoder = nn.Sequential(OrderedDict(
                conv1=trunk.conv1, bn1=trunk.bn1, relu=trunk.relu, maxpool=trunk.maxpool,
                layer1=trunk.layer1, layer2=trunk.layer2, layer3=trunk.layer3, layer4=trunk.layer4,
                flatten=nn.Flatten(), fc=nn.Linear(512 * side * side, 2 * z_dim),
            ))
            blocks: list[nn.Module] = [nn.Linear(z_dim, 512 * side * side), View(512, side, side)]
            for c_in, c_out in zip(DECODER_CHANNELS[:-1], DECODER_CHANNELS[1:], strict=True):
                blocks += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
            blocks.append(nn.Conv2d(DECODER_CHANNELS[-1], in_channels, 3, 1, 1))
            self.decoder = nn.Sequential(*blocks)


class _Interpolate(nn.Module):
    """``F.interpolate`` (nearest) as a module: to a fixed ``size`` or by ``scale``."""

    def __init__(self, size: int | None = None, scale: int | None = None):
        super().__init__()
        self.size, self.scale = size, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, scale_factor=self.scale)


def _resize_conv(c_in: int, c_out: int, kernel: int, scale: int) -> nn.Module:
    """A bias-free k×k conv ("same" padding), preceded by nearest upsampling ×scale when scale > 1."""
    conv = nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, bias=False)
    return conv if scale == 1 else nn.Sequential(_Interpolate(scale=scale), conv)


class _DecoderBlock(nn.Module):
    """pl_bolts' ``DecoderBlock``: a residual block whose second 3×3 conv changes the channels (c_in → c_out)
    after upsampling ×scale; the shortcut is an upsampling 1×1 conv + BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, scale: int = 1):
        super().__init__()
        self.conv1 = _resize_conv(c_in, c_in, 3, 1)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.conv2 = _resize_conv(c_in, c_out, 3, scale)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.upsample = None
        if scale != 1 or c_in != c_out:
            self.upsample = nn.Sequential(_resize_conv(c_in, c_out, 1, scale), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.upsample is None else self.upsample(x)))


class SeedResNet18VAE(VAE):
    """The report's MVTec VAE (FACT-2021 ``expVAE_pl/vae_model.py``: pl_bolts 0.2.5 ``resnet18_encoder`` /
    ``resnet18_decoder`` with ``first_conv=True, maxpool1=True``), as ``AnomalyConfig(architecture="seed")``.

    Encoder: torchvision's ResNet-18 up to ``layer4`` (pl_bolts' ``ResNetEncoder`` is the same graph with the
    same module names), its global average pooling (512 features) and one Linear(512, 2·z) head = the
    report's two Linear(512, z) heads for μ and log σ². Decoder (pl_bolts' ``ResNetDecoder``): Linear(z,
    512·4·4), a 512×4×4 view, nearest resize to S/32, four stages of two ``_DecoderBlock``s (512→256→128→64→64,
    each ×2), nearest ×2 and a bias-free 3×3 conv to ``in_channels``, no output activation: the decoder output
    is the reconstruction itself (the report trains it with MSE), in ``VAEOutput.recon_logits``.

    Init: torchvision's for the encoder (kaiming-normal convs; pl_bolts' encoder kept PyTorch's default init),
    PyTorch's default for heads and decoder, all drawn from ``generator``.
    """

    def __init__(self, z_dim: int = 32, image_size: int = 256, generator: torch.Generator | None = None,
                 in_channels: int = 3):
        super().__init__()
        side = _check_size(image_size)
        self.z_dim = z_dim
        with seeded_default_init(generator):
            trunk = _trunk(in_channels)
            self.encoder = nn.Sequential(OrderedDict(
                conv1=trunk.conv1, bn1=trunk.bn1, relu=trunk.relu, maxpool=trunk.maxpool,
                layer1=trunk.layer1, layer2=trunk.layer2, layer3=trunk.layer3, layer4=trunk.layer4,
                avgpool=trunk.avgpool, flatten=nn.Flatten(), fc=nn.Linear(512, 2 * z_dim),
            ))
            stages = OrderedDict(linear=nn.Linear(z_dim, 512 * 4 * 4), view=View(512, 4, 4),
                                 upscale1=_Interpolate(size=side))
            for name, (c_in, c_out) in zip(("layer1", "layer2", "layer3", "layer4"),
                                           ((512, 256), (256, 128), (128, 64), (64, 64)), strict=True):
                stages[name] = nn.Sequential(_DecoderBlock(c_in, c_out, scale=2), _DecoderBlock(c_out, c_out))
            stages["upscale"] = _Interpolate(scale=2)
            stages["conv1"] = nn.Conv2d(64, in_channels, 3, 1, 1, bias=False)
            self.decoder = nn.Sequential(stages)
